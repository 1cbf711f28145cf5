"""A minimal read-only pyfuse3 passthrough: the ceiling any pyfuse3 + trio file system reaches.

Benchmarks mount a folder with it next to dicomfs, so a gap can be split into what FUSE and
pyfuse3 cost by themselves and what dicomfs adds. It does the least possible per request,
with the settings FUSE-NOTES recommends: long entry/attr timeouts, ``keep_cache``, folder
listings kept in memory after the first scan, a blocking ``os.pread`` in the handler,
ENOSYS for flush and extended attributes (the kernel then stops asking), inodes from the
underlying ``st_ino``.

    python -m bench.minimal_fs SOURCE MOUNT     # foreground; SIGTERM/SIGINT unmounts
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import signal
import stat
import sys
from typing import Any

import pyfuse3
import trio

TIMEOUT = 300.0


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.root_ino = os.lstat(source).st_ino
        self.fds: dict[int, int] = {}
        self.listings: dict[int, tuple[list[Any], list[int]]] = {}

    def _attr(self, st: os.stat_result, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.entry_timeout = attr.attr_timeout = TIMEOUT
        attr.st_mode = st.st_mode & ~0o222
        attr.st_nlink = st.st_nlink
        attr.st_uid, attr.st_gid = st.st_uid, st.st_gid
        attr.st_size = st.st_size
        attr.st_blksize = 131072
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def _inode(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None,
                     ) -> pyfuse3.EntryAttributes:
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        inode = self._inode(st)
        self.paths[inode] = path
        return self._attr(st, inode)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(os.lstat(self.paths[inode]), inode)

    async def opendir(self, inode: int, ctx: Any) -> int:
        # Scanned once, then answered from memory (like dicomfs's listing cache): the source
        # is read-only for the life of the mount.
        if inode not in self.listings:
            path = self.paths[inode]
            entries = []
            for entry in os.scandir(path):
                st = entry.stat(follow_symlinks=False)
                entries.append((st.st_ino, os.fsencode(entry.name), self._attr(st, st.st_ino),
                                os.path.join(path, entry.name)))
            entries.sort()
            self.listings[inode] = (entries, [e[0] for e in entries])
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries, inodes = self.listings[fh]
        for ino, name, attr, child in itertools.islice(
                entries, bisect.bisect_right(inodes, start_id), None):
            if not pyfuse3.readdir_reply(token, name, attr, ino):
                break
            self.paths[ino] = child

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fd = os.open(self.paths[inode], os.O_RDONLY | os.O_CLOEXEC)
        self.fds[fd] = fd
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def release(self, fh: int) -> None:
        os.close(self.fds.pop(fh))

    async def flush(self, fh: int) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        return None


async def _run(mount_point: str) -> None:
    async with trio.open_nursery() as nursery:
        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.minimal_fs SOURCE MOUNT", file=sys.stderr)
        return 2
    source, mount_point = map(os.path.abspath, args)
    if not stat.S_ISDIR(os.stat(source).st_mode):
        print(f"{source} is not a folder", file=sys.stderr)
        return 2
    options = set(pyfuse3.default_options) | {"fsname=minimal_fs", "ro"}
    pyfuse3.init(Passthrough(source), mount_point, options)
    try:
        trio.run(_run, mount_point)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
