"""pyfuse3 operations: kernel requests turned into ``Tree`` look-ups, handle reads and derived/ writes.

No SQL and no pydicom here. Every handler runs under ``_fuse_errors``, which turns any failure
into a ``FUSEError`` (pyfuse3 ends its main loop on any other exception). The tree is
read-only (EROFS) except ``derived/`` folders (``derived_writes``) and ``rmdir`` of a saved
query in ``/query``.
"""

from __future__ import annotations

import bisect
import errno
import functools
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pyfuse3
import trio

from dicomfs.derived import DerivedError, DerivedStore
from dicomfs.mount.derived_writes import DerivedWrites
from dicomfs.mount.handles import GeneratedFile, Handle, RenderedView, StoredFile, VolumeFile
from dicomfs.mount.kernel import Kernel
from dicomfs.mount.kinds import Content, Kind, Top, entity_of, inode_of, split_inode, unframed, volume_of
from dicomfs.mount.rows import InstanceFile
from dicomfs.mount.tree import NotFoundError, Tree
from dicomfs.views.jpeg import placeholder_jpeg
from dicomfs.views.jpeg_size import jpeg_probe
from dicomfs.views.render import RenderError, render_view
from dicomfs.volumes.cache import VolumeCache
from dicomfs.volumes.source import VolumeLayout, VolumeSource

if TYPE_CHECKING:
    from dicomfs.ingest.writer import Ingested
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
        except DerivedError as exc:  # a refused request (read-only, bad name, no such file): no failure
            log.debug("%s refused: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
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


_VIEW_SUFFIX = {Kind.INSTANCE_JSON: "json", Kind.INSTANCE_JPG: "jpg", Kind.FRAME_JPG: "jpg"}
_JPG_KINDS = (Kind.INSTANCE_JPG, Kind.FRAME_JPG)
_QUERY_FOLDER = inode_of(Kind.TOP_FOLDER, Top.QUERY)


def _read_only(*args: Any, **kwargs: Any) -> Any:
    raise pyfuse3.FUSEError(errno.EROFS)


class Operations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, tree: Tree, store_root: Path, *, render_threads: int = 2, remote: Fetcher | None = None,
                 derived: DerivedStore | None = None, kernel: Kernel | None = None,
                 volume_cache: VolumeCache | None = None) -> None:
        super().__init__()
        self.volume_cache = volume_cache
        self.tree = tree
        self.remote = remote
        self.kernel = kernel or Kernel()
        self.derived = DerivedWrites(derived, tree, self.kernel) if derived is not None else None
        self.store_root = store_root
        self.render_limiter = trio.CapacityLimiter(render_threads)
        self._handles: dict[int, Handle] = {}
        self._next_fh = itertools.count(1)
        # Fetched with another file of their series since the kernel was given size 0 for
        # them: the next open refreshes the kernel's sizes.
        self._filled: set[str] = set()
        self._placeholders: set[tuple[str, int]] = set()  # (SOP instance UID, frame) of failed .jpg, logged once
        if remote is not None:
            remote.on_filled = self._note_filled
            tree.filling = remote.retrievals

    def _note_filled(self, filled: list[Ingested]) -> None:
        """Instances fetched with the rest of their series: on the loop, right after they were indexed."""
        self._filled.update(result.sop_uid for result in filled)
        # Lookups until the change watcher comes must not hand out the old size 0 again.
        self.tree.refill(self.tree.instance_ids(result.sop_uid for result in filled))

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
            return self.tree.query_folder(name.decode("utf-8")).attr
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
        """Before a remote study's or series' folder is first listed, ask the remote what is in it;
        a study's, again once that listing is old (``relist_minutes``)."""
        if self.remote is None:
            return
        origin = self.tree.origin(inode)
        if origin is None:
            return
        level, row_id = origin
        if level == "study":
            listed = await self.remote.prepare_study(row_id)
            if listed:
                self.tree.forget_series(listed)  # this very listing shows what came
        elif not self.tree.is_cached(inode):
            await self.remote.prepare_series(row_id)

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        listing = self.tree.listing(fh)
        # Cookies are inodes: entries that come or go meanwhile never shift the others.
        for entry in listing.entries[bisect.bisect_right(listing.inodes, start_id):]:
            if not pyfuse3.readdir_reply(token, entry.name, entry.attr, entry.inode):
                break

    @_fuse_errors
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

    # ---------------------------------------------------------------- opening, reading, closing

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        kind = self.tree.kind(inode)
        if kind.content is Content.DERIVED:
            # Other writers may change it: no page cache.
            return self._keep(self._derived().open(inode, flags), pyfuse3.FileInfo(direct_io=True))
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        if kind.content is Content.GENERATED:
            # Regenerated as data arrives, while the kernel may hold the size of another version:
            # direct_io reads this handle's version whole, never clipped or padded to that size.
            data = self.tree.summary(inode)
            if self.tree.told_other_size(inode, len(data)):  # and stat() tells the size of this one
                await trio.to_thread.run_sync(self.kernel.forget_attributes, [inode])
            return self._keep(GeneratedFile(data), pyfuse3.FileInfo(direct_io=True, keep_cache=False))
        if kind.content is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if kind.content is Content.VOLUME:
            return self._keep(await self._volume(inode), pyfuse3.FileInfo(keep_cache=True))
        instance = await self._local(inode)
        path = self.store_root / instance.file_path
        if kind.content is Content.STORED:
            handle: Handle = StoredFile(path)
        elif kind in _JPG_KINDS:
            size = self.tree.size(inode)
            head, tail = jpeg_probe(size)
            frame = unframed(split_inode(inode)[1])[1] - 1 if kind is Kind.FRAME_JPG else 0
            handle = RenderedView(functools.partial(self._render, kind, path, instance, size, frame), size=size,
                                  head=head, tail=tail)
        else:
            handle = RenderedView(functools.partial(self._render, kind, path, instance))
        return self._keep(handle, pyfuse3.FileInfo(keep_cache=True))

    async def _volume(self, inode: int) -> Handle:
        """The volume as it is now: this handle keeps that version, whatever arrives later."""
        found = self.tree.volume(inode)
        series_id = volume_of(split_inode(inode)[1])[0]
        file_paths = self.tree.stored_files(series_id)
        if isinstance(found, VolumeLayout):
            return VolumeFile(VolumeSource(found, self.store_root, file_paths))
        if self.volume_cache is None:
            raise pyfuse3.FUSEError(errno.EIO)
        log.debug("decoding volume %s of inode %d", found.name, inode)
        path = await trio.to_thread.run_sync(self.volume_cache.path_for, found, self.store_root, file_paths,
                                             limiter=self.render_limiter)
        return StoredFile(path)

    def _keep(self, handle: Handle, info: pyfuse3.FileInfo) -> pyfuse3.FileInfo:
        info.fh = next(self._next_fh)
        self._handles[info.fh] = handle
        return info

    async def _local(self, inode: int) -> InstanceFile:
        """The instance's file, fetched first if it is only listed from a remote PACS."""
        instance = self.tree.instance_file(inode)
        kind, row_id = split_inode(inode)
        instance_id = entity_of(kind, row_id)
        if not instance.file_path:
            if self.remote is None:
                raise pyfuse3.FUSEError(errno.EIO)
            await self.remote.make_local(instance_id)
            instance = self.tree.instance_file(inode)
            await self._refresh_sizes(instance_id)
            self._filled.discard(instance.sop_uid)
        elif instance.fetched and self.remote is not None:
            self.remote.touch(instance.series_id)  # cache eviction goes by last use
        if instance.sop_uid in self._filled:
            # Fetched with another file of its series: the kernel may still hold size 0. Every
            # open until the kernel has forgotten it waits for that (forgotten twice is harmless).
            await self._refresh_sizes(instance_id)
            self._filled.discard(instance.sop_uid)
        return instance

    async def _refresh_sizes(self, instance_id: int) -> None:
        """Drop the kernel's attributes of an instance's files: it re-asks, and reads see the new size."""
        inodes = [inode_of(kind, instance_id) for kind in (Kind.INSTANCE_DCM, Kind.INSTANCE_JSON, Kind.INSTANCE_JPG)]
        await trio.to_thread.run_sync(self.kernel.forget_attributes, inodes)

    async def _render(self, kind: Kind, path: Path, instance: InstanceFile, size: int = 0, frame: int = 0) -> bytes:
        log.debug("rendering %s view of %s (frame %d)", _VIEW_SUFFIX[kind], instance.sop_uid, frame + 1)
        try:
            data = await trio.to_thread.run_sync(render_view, _VIEW_SUFFIX[kind], path, frame,
                                                 limiter=self.render_limiter)
        except RenderError as exc:
            if kind not in _JPG_KINDS:
                raise
            # Listed, so promised: a placeholder of the listed size that says why, never EIO
            # (one bad object must not break cp -r, tar or grep -r of its study).
            if (instance.sop_uid, frame) not in self._placeholders:
                self._placeholders.add((instance.sop_uid, frame))
                log.error("jpg view of %s cannot be rendered, serving a placeholder: %s", instance.sop_uid, exc)
            return placeholder_jpeg(size, str(exc))
        if kind is Kind.INSTANCE_JSON and len(data) != instance.json_size:
            data = self._fit(data, instance.json_size, instance.sop_uid)
        return data

    @staticmethod
    def _fit(data: bytes, size: int, sop_uid: str) -> bytes:
        """Keep a JSON view at the size that was listed (trailing white space is valid JSON)."""
        log.error("json view of %s is %d bytes, index says %d", sop_uid, len(data), size)
        if len(data) < size:
            return data + b" " * (size - len(data))
        raise pyfuse3.FUSEError(errno.EIO)

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handle(fh)
        if type(handle) is StoredFile:  # the hot path (every .dcm byte): no extra await
            return os.pread(handle.fd, size, off)
        return await handle.read(off, size)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._handle(fh).write(off, buf)

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        """close() waits for flush, not for release: written derived files are committed here."""
        handle = self._handles.get(fh)
        if handle is not None:
            await handle.flush()

    @_fuse_errors
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            await handle.release()

    # ---------------------------------------------------------------- extended attributes

    # ENOSYS, answered once, makes the kernel stop asking for the whole mount: `ls -l` asks
    # for the SELinux label and ACLs of every file, two round trips each (measured: `ls -lR`
    # 15x native with ENODATA, 1.4x with ENOSYS). Tools then see "not supported".
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # ---------------------------------------------------------------- writing: derived/ and /query

    mknod = symlink = link = setxattr = removexattr = fallocate = _read_only  # type: ignore[assignment]

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
        self.tree.unsave_query(name.decode("utf-8"))

    def _derived(self) -> DerivedWrites:
        if self.derived is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.derived

    @_fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        derived = self._derived()
        inode = derived.create(parent_inode, name)
        info = self._keep(derived.open(inode, flags | os.O_TRUNC), pyfuse3.FileInfo(direct_io=True))
        return info, self.tree.attributes(inode)

    @_fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        if self.tree.kind(inode) is not Kind.DERIVED_FILE:
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:  # truncate; modes, owners and times are the archive's, not settable
            await self._derived().truncate(inode, attr.st_size, self._handles.get(fh) if fh is not None else None)
        return self.tree.attributes(inode)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        if self.tree.kind(parent_inode) not in (Kind.DERIVED_FOLDER, Kind.ORPHAN):
            raise pyfuse3.FUSEError(errno.EROFS)
        self._derived().unlink(parent_inode, name)

    @_fuse_errors
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes, flags: int,
                     ctx: Any) -> None:
        self._derived().rename(parent_old, name_old, parent_new, name_new)
