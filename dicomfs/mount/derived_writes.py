"""Writing in ``derived/`` folders: copy-on-write files, committed whole at flush and close.

A file opened for writing gets a private temporary copy; writes, reads and truncation go
there. ``flush`` (which ``close()`` waits for) makes the copy durable, atomically replaces
the stored version and records it in the index (``DerivedStore``); later writes through the
same handle start from a fresh copy. Two writers of one name each write their own copy: the
last to close wins, and readers only ever see a whole version.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import trio

from dicomfs.derived import DerivedError, DerivedStore, check_name
from dicomfs.mount.handles import Handle, StoredFile
from dicomfs.mount.kernel import Kernel
from dicomfs.mount.kinds import Kind, inode_of, split_inode
from dicomfs.mount.tree import Tree


class DerivedWriter(Handle):
    """A derived file open for writing (copy-on-write, see the module docstring)."""

    __slots__ = ("_dirty", "_fd", "_kernel", "_store", "_temp", "entity_id", "inode", "level", "name")

    def __init__(self, store: DerivedStore, kernel: Kernel, inode: int, level: str, entity_id: int, name: str, *,
                 truncate: bool) -> None:
        self._store = store
        self._kernel = kernel
        self.inode, self.level, self.entity_id, self.name = inode, level, entity_id, name
        self._temp: Path | None = None
        self._fd = -1
        self._dirty = False
        self._start(empty=truncate)
        self._dirty = truncate

    def _start(self, *, empty: bool) -> None:
        """A private copy of the current version (or an empty file) to write into."""
        temp = self._store.temp_path()
        if empty:
            temp.touch()
        else:
            item = self._store.get(split_inode(self.inode)[1])
            shutil.copyfile(self._store.path_of(item), temp)
        if self._fd >= 0:
            os.close(self._fd)
        self._temp, self._fd = temp, os.open(temp, os.O_RDWR | os.O_CLOEXEC)

    def _copy(self) -> int:
        """The descriptor of the private copy, made anew after a flush committed the last one."""
        if self._temp is None:
            self._start(empty=False)
        return self._fd

    async def read(self, off: int, size: int) -> bytes:
        return os.pread(self._copy(), size, off)

    async def write(self, off: int, data: bytes) -> int:
        fd = self._copy()
        self._dirty = True
        return os.pwrite(fd, data, off)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._copy(), size)
        self._dirty = True

    async def flush(self) -> None:
        """Commit: the durable rename waits for the disk, off the event loop; the index row on it."""
        if not self._dirty or self._temp is None:
            return
        placed = await trio.to_thread.run_sync(self._store.place, self.level, self.entity_id, self.name, self._temp)
        self._store.record(self.level, self.entity_id, self.name, placed)
        self._temp, self._dirty = None, False
        await trio.to_thread.run_sync(self._kernel.forget_contents, [self.inode])

    async def release(self) -> None:
        """Commit what a flush has not (normally nothing), and always remove the private copy."""
        try:
            await self.flush()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._temp is not None:
                self._temp.unlink(missing_ok=True)


class DerivedWrites:
    """The writing operations of derived/ folders (and ``rm`` in /orphans), for ``Operations``."""

    def __init__(self, store: DerivedStore, tree: Tree, kernel: Kernel) -> None:
        self.store = store
        self.tree = tree
        self.kernel = kernel

    def create(self, parent_inode: int, raw_name: bytes) -> int:
        """The inode of file ``raw_name`` in a derived/ folder; a new file exists (empty) from now on."""
        level, entity_id = self._origin(parent_inode)
        name = portable_name(raw_name)
        try:
            item = self.store.get_by_name(level, entity_id, name)
        except DerivedError:
            temp = self.store.temp_path()
            temp.touch()
            item = self.store.commit(level, entity_id, name, temp)
        self.tree.forget(parent_inode)
        return inode_of(Kind.DERIVED_FILE, item.id)

    def open(self, inode: int, flags: int) -> Handle:
        item = self.store.get(split_inode(inode)[1])
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return StoredFile(self.store.path_of(item))
        if item.sop_uid or item.origin_deleted_at is not None:
            # A derived DICOM object changes by sending a new one; an orphan is kept as it was.
            raise DerivedError(errno.EROFS, f"{item.name} is read-only")
        return DerivedWriter(self.store, self.kernel, inode, item.level, item.entity_id, item.name,
                             truncate=bool(flags & os.O_TRUNC))

    async def truncate(self, inode: int, size: int, handle: Handle | None) -> None:
        """Truncate through the handle that has the file open for writing, or as a whole write."""
        if isinstance(handle, DerivedWriter):
            handle.truncate(size)
            return
        writer = self.open(inode, os.O_WRONLY)
        assert isinstance(writer, DerivedWriter)
        try:
            writer.truncate(size)
        finally:
            await writer.release()

    def unlink(self, parent_inode: int, raw_name: bytes) -> None:
        """Remove a file of a derived/ folder, or an orphan (whose origin was deleted)."""
        if self.tree.kind(parent_inode) is Kind.ORPHAN:
            kind, derived_id = split_inode(self.tree.lookup(parent_inode, raw_name).inode)
            if kind is not Kind.DERIVED_FILE:
                raise DerivedError(errno.EROFS, "origin.json is read-only")  # origin.json
            item = self.store.get(derived_id)
        else:
            level, entity_id = self._origin(parent_inode)
            item = self.store.get_by_name(level, entity_id, portable_name(raw_name))
        self.store.delete(item.id)
        self.tree.forget(parent_inode)

    def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes) -> None:
        origin = self._origin(parent_old)
        if self._origin(parent_new) != origin:
            raise DerivedError(errno.EXDEV, "derived files stay with their origin")  # mv copies and deletes
        item = self.store.get_by_name(*origin, portable_name(name_old))
        self.store.rename(item.id, portable_name(name_new))
        self.tree.forget(parent_old)
        self.tree.forget(parent_new)

    def _origin(self, parent_inode: int) -> tuple[str, int]:
        if self.tree.kind(parent_inode) is not Kind.DERIVED_FOLDER:
            raise DerivedError(errno.EROFS, "only derived/ folders are writable")
        return self.tree.derived_origin(parent_inode)


def portable_name(raw: bytes) -> str:
    """A name from the kernel, checked against the tree's naming rules (EINVAL otherwise)."""
    try:
        return check_name(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DerivedError(errno.EINVAL, "names must be UTF-8") from None
