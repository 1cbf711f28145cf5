"""pyfuse3 operations: translate kernel requests into ``Tree`` look-ups and view reads.

No SQL and no pydicom here. Every handler turns failures into ``FUSEError``: pyfuse3 ends
its main loop on any other exception. The tree is read-only; every writing operation gets
EROFS, so later writable folders can be added without remounting read-write semantics.
"""

from __future__ import annotations

import bisect
import errno
import functools
import itertools
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pyfuse3
import trio

from dicomfs.derived import DerivedError, DerivedStore, check_name
from dicomfs.mount import kernel
from dicomfs.mount.inodes import IN_MEMORY_KINDS, TOP_QUERY, Kind, inode_of, split_inode
from dicomfs.mount.tree import NotFoundError, Tree
from dicomfs.views import RenderError, render_view

if TYPE_CHECKING:
    from dicomfs.remote.fetch import Fetcher

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _fuse_errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Map our errors to errno values; log anything unexpected instead of dying."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except NotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except NotADirectoryError:
            raise pyfuse3.FUSEError(errno.ENOTDIR) from None
        except RenderError as exc:
            log.error("%s: cannot render view: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            log.error("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(slots=True)
class _Handle:
    fd: int = -1  # a stored .dcm, read with pread
    data: bytes | None = b""  # a generated view; None until the first read renders it
    render: Callable[[], Awaitable[bytes]] | None = None
    lock: trio.Lock | None = None
    writing: _Writing | None = None  # a derived file opened for writing


@dataclass(slots=True)
class _Writing:
    """Copy-on-write state of a derived file: writes go to ``temp``, flush makes it the file."""

    inode: int
    level: str
    entity_id: int
    name: str
    temp: Path | None = None
    dirty: bool = False


_VIEW_SUFFIX = {Kind.JSON: "json", Kind.JPG: "jpg"}
_QUERY_FOLDER = inode_of(Kind.TOP, TOP_QUERY)


class Operations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, tree: Tree, store_root: Path, *, render_threads: int = 2, remote: Fetcher | None = None,
                 derived: DerivedStore | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.remote = remote
        self.derived = derived
        self.store_root = store_root
        self.render_limiter = trio.CapacityLimiter(render_threads)
        self._handles: dict[int, _Handle] = {}
        self._next_fh = itertools.count(1)
        # Fetched with another file of their series since the kernel was given size 0 for
        # them: the next open refreshes the kernel's sizes.
        self._filled: set[str] = set()
        if remote is not None:
            remote.on_filled = self._filled.update

    # ---------------------------------------------------------------- names and attributes

    @_fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        await self._prepare(parent_inode)
        try:
            return self.tree.lookup(parent_inode, name).attr
        except NotFoundError:
            if parent_inode != _QUERY_FOLDER:
                raise
        try:  # any valid query is a folder of /query, saved or not
            return self.tree.query_entry(name.decode("utf-8")).attr
        except (ValueError, UnicodeDecodeError):
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    @_fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.tree.attributes(inode)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        # Inode numbers are derived from row ids, so there is no table to shrink.
        return None

    @_fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        await self._prepare(inode)
        self.tree.listing(inode)  # ENOTDIR / ENOENT now rather than at readdir
        return inode

    async def _prepare(self, inode: int) -> None:
        """Before a remote study's or series' folder is first listed, ask the remote what is in it."""
        if self.remote is None or self.tree.is_cached(inode):
            return
        folder = self.tree.level_folder(inode)
        if folder is None:
            return
        level, row_id = folder
        if level == "study":
            await self.remote.prepare_study(row_id)
        else:
            await self.remote.prepare_series(row_id)

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        listing = self.tree.listing(fh)
        # Cookies are inodes: entries that come or go meanwhile never shift the others.
        for entry in listing.entries[bisect.bisect_right(listing.inodes, start_id):]:
            if not pyfuse3.readdir_reply(token, entry.name, entry.attr, entry.inode):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @_fuse_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.store_root)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(data, name, getattr(st, name))
        data.f_namemax = 255
        return data

    # ---------------------------------------------------------------- reading

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if self.tree.kind(inode) is Kind.DERIVED_FILE:
            return self._open_derived(inode, flags)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        handle = _Handle()
        info = pyfuse3.FileInfo(keep_cache=True)
        if self.tree.kind(inode) in IN_MEMORY_KINDS:
            handle.data = self.tree.summary(inode)
            info.keep_cache = False  # regenerated as instances arrive
        else:
            kind, row = self.tree.instance_row(inode)
            if not row["file_path"]:  # listed from a remote PACS: fetch it now
                await self._make_local(inode)
                kind, row = self.tree.instance_row(inode)
            elif row["fetched"] and self.remote is not None:
                self.remote.touch(row["series_id"])  # cache eviction goes by last use
            if row["sop_uid"] in self._filled:
                # Fetched with another file of its series: the kernel may still hold size 0.
                self._filled.discard(row["sop_uid"])
                await self._refresh_sizes(split_inode(inode)[1])
            path = self.store_root / row["file_path"]
            if kind is Kind.DCM:
                handle.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                # Rendered on the first read: an open whose pages the kernel still caches
                # (keep_cache) never reads, so it costs no rendering at all.
                handle.data, handle.lock = None, trio.Lock()
                handle.render = functools.partial(self._render, kind, path, row)
        fh = next(self._next_fh)
        self._handles[fh] = handle
        info.fh = fh
        return info

    async def _make_local(self, inode: int) -> None:
        if self.remote is None:
            raise pyfuse3.FUSEError(errno.EIO)
        instance_id = split_inode(inode)[1]
        await self.remote.make_local(instance_id)
        self._filled.discard(self.tree.instance_row(inode)[1]["sop_uid"])
        await self._refresh_sizes(instance_id)

    @staticmethod
    async def _refresh_sizes(instance_id: int) -> None:
        """Drop the kernel's attributes of an instance's files: it re-asks, and reads see the new size."""
        inodes = [inode_of(kind, instance_id) for kind in (Kind.DCM, Kind.JSON, Kind.JPG)]
        await trio.to_thread.run_sync(kernel.forget_attributes, inodes)

    async def _render(self, kind: Kind, path: Path, row: dict[str, Any]) -> bytes:
        log.debug("rendering %s view of %s", _VIEW_SUFFIX[kind], row["sop_uid"])
        data = await trio.to_thread.run_sync(render_view, _VIEW_SUFFIX[kind], path, limiter=self.render_limiter)
        if kind is Kind.JSON and len(data) != row["json_size"]:
            data = self._fit(data, row["json_size"], row["sop_uid"])
        return data

    @staticmethod
    def _fit(data: bytes, size: int, sop_uid: str) -> bytes:
        """Keep a JSON view at the size that was listed (trailing white space is valid JSON)."""
        log.error("json view of %s is %d bytes, index says %d", sop_uid, len(data), size)
        if len(data) < size:
            return data + b" " * (size - len(data))
        raise pyfuse3.FUSEError(errno.EIO)

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles[fh]
        if handle.writing is not None:
            return self._read_writing(handle, off, size)
        if handle.fd >= 0:
            return os.pread(handle.fd, size, off)
        if handle.data is None:
            assert handle.lock is not None and handle.render is not None
            async with handle.lock:  # concurrent reads of one handle render once
                if handle.data is None:
                    handle.data = await handle.render()
        return handle.data[off:off + size]

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.writing is not None:
            await self._commit(handle)  # normally done by flush already
            if handle.writing.temp is not None:
                handle.writing.temp.unlink(missing_ok=True)
        if handle.fd >= 0:
            os.close(handle.fd)

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        """close() waits for flush, not for release: written derived files are committed here."""
        handle = self._handles.get(fh)
        if handle is not None and handle.writing is not None:
            await self._commit(handle)

    # ---------------------------------------------------------------- extended attributes

    # ENOSYS, answered once, makes the kernel stop asking for the whole mount: `ls -l` asks
    # for the SELinux label and ACLs of every file, two round trips each (measured: `ls -lR`
    # 15x native with ENODATA, 1.4x with ENOSYS). Tools then see "not supported".
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # ---------------------------------------------------------------- everything that writes

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    mknod = symlink = link = _read_only  # type: ignore[assignment]

    @_fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if parent_inode != _QUERY_FOLDER:
            raise pyfuse3.FUSEError(errno.EROFS)
        # Reached only for names that are no valid query: a valid one exists already (EEXIST).
        raise pyfuse3.FUSEError(errno.EINVAL)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        """``rmdir /query/<query>`` removes a saved query from the list."""
        if parent_inode != _QUERY_FOLDER:
            raise pyfuse3.FUSEError(errno.EROFS)
        self.tree.lookup(parent_inode, name)  # ENOENT unless listed
        self.tree.forget_query(name.decode("utf-8"))
    setxattr = removexattr = fallocate = _read_only  # type: ignore[assignment]

    # ---------------------------------------------------------------- derived/: the writable folders

    def _derived_store(self) -> DerivedStore:
        if self.derived is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.derived

    @_fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.tree.kind(parent_inode) is not Kind.DERIVED:
            raise pyfuse3.FUSEError(errno.EROFS)
        store = self._derived_store()
        level, entity_id = self.tree.derived_origin(parent_inode)
        text = _name(name)
        try:
            item = store.get_by_name(level, entity_id, text)
        except DerivedError:  # a new file: it exists (empty) from now on
            temp = store.temp_path()
            temp.touch()
            item = store.commit(level, entity_id, text, temp)
        self.tree.forget(parent_inode)
        inode = inode_of(Kind.DERIVED_FILE, item.id)
        info = self._open_derived(inode, flags | os.O_TRUNC)
        return info, self.tree.attributes(inode)

    def _open_derived(self, inode: int, flags: int) -> pyfuse3.FileInfo:
        store = self._derived_store()
        item = store.get(split_inode(inode)[1])
        path = store.path_of(item)
        handle = _Handle()
        if (item.sop_uid or item.origin_deleted_at is not None) and flags & os.O_ACCMODE != os.O_RDONLY:
            # A derived DICOM object changes by sending a new one; an orphan is kept as it was.
            raise pyfuse3.FUSEError(errno.EROFS)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            handle.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            writing = handle.writing = _Writing(inode, item.level, item.entity_id, item.name)
            writing.temp = store.temp_path()
            if flags & os.O_TRUNC:
                writing.temp.touch()
                writing.dirty = True
            else:
                shutil.copyfile(path, writing.temp)
            handle.fd = os.open(writing.temp, os.O_RDWR | os.O_CLOEXEC)
        fh = next(self._next_fh)
        self._handles[fh] = handle
        return pyfuse3.FileInfo(fh=fh, direct_io=True)  # other writers may change it: no page cache

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if handle.writing is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        self._ensure_temp(handle)
        handle.writing.dirty = True
        return os.pwrite(handle.fd, buf, off)

    def _read_writing(self, handle: _Handle, off: int, size: int) -> bytes:
        self._ensure_temp(handle)
        return os.pread(handle.fd, size, off)

    def _ensure_temp(self, handle: _Handle) -> None:
        """After a flush committed the temporary, further writes start from a fresh copy."""
        writing = handle.writing
        assert writing is not None
        if writing.temp is not None:
            return
        store = self._derived_store()
        item = store.get(split_inode(writing.inode)[1])
        writing.temp = store.temp_path()
        shutil.copyfile(store.path_of(item), writing.temp)
        os.close(handle.fd)
        handle.fd = os.open(writing.temp, os.O_RDWR | os.O_CLOEXEC)

    async def _commit(self, handle: _Handle) -> None:
        writing = handle.writing
        assert writing is not None
        if not writing.dirty or writing.temp is None:
            return
        store = self._derived_store()
        # The durable rename waits for the disk: off the event loop; the index row on it.
        placed = await trio.to_thread.run_sync(
            store.place, writing.level, writing.entity_id, writing.name, writing.temp)
        store.record(writing.level, writing.entity_id, writing.name, placed)
        writing.temp, writing.dirty = None, False
        os.close(handle.fd)
        handle.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # replaced at the next write
        await trio.to_thread.run_sync(kernel.forget_contents, [writing.inode])

    @_fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        if self.tree.kind(inode) is not Kind.DERIVED_FILE:
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:  # truncate; modes, owners and times are the archive's, not settable
            if fh is not None and fh in self._handles and self._handles[fh].writing is not None:
                handle = self._handles[fh]
                self._ensure_temp(handle)
                os.ftruncate(handle.fd, attr.st_size)
                handle.writing.dirty = True  # type: ignore[union-attr]
            else:
                info = self._open_derived(inode, os.O_WRONLY)
                handle = self._handles[info.fh]
                os.ftruncate(handle.fd, attr.st_size)
                handle.writing.dirty = True  # type: ignore[union-attr]
                await self.release(info.fh)
        return self.tree.attributes(inode)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        """Removes a file of a derived/ folder, or an orphan (whose origin was deleted)."""
        if self.tree.kind(parent_inode) not in (Kind.DERIVED, Kind.ORPHAN):
            raise pyfuse3.FUSEError(errno.EROFS)
        store = self._derived_store()
        if self.tree.kind(parent_inode) is Kind.ORPHAN:
            kind, derived_id = split_inode(self.tree.lookup(parent_inode, name).inode)
            if kind is not Kind.DERIVED_FILE:
                raise pyfuse3.FUSEError(errno.EROFS)  # origin.json
            item = store.get(derived_id)
        else:
            level, entity_id = self.tree.derived_origin(parent_inode)
            item = store.get_by_name(level, entity_id, _name(name))
        store.delete(item.id)
        self.tree.forget(parent_inode)

    @_fuse_errors
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes, flags: int,
                     ctx: Any) -> None:
        if self.tree.kind(parent_old) is not Kind.DERIVED or self.tree.kind(parent_new) is not Kind.DERIVED:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self.tree.derived_origin(parent_old) != self.tree.derived_origin(parent_new):
            raise pyfuse3.FUSEError(errno.EXDEV)  # mv copies and deletes instead
        store = self._derived_store()
        level, entity_id = self.tree.derived_origin(parent_old)
        item = store.get_by_name(level, entity_id, _name(name_old))
        store.rename(item.id, _name(name_new))
        self.tree.forget(parent_old)
        self.tree.forget(parent_new)


def _name(raw: bytes) -> str:
    try:
        return check_name(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
