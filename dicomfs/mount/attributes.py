"""What the kernel sees of an entry: the one place that builds ``pyfuse3.EntryAttributes``.

The archive belongs to the user who mounted it: files read-only (0444), folders 0555, and
derived/ folders and their files writable by that user (0755, 0644).
"""

from __future__ import annotations

import os
import stat

import pyfuse3

from dicomfs.mount.kinds import KIND_BITS, Kind
from dicomfs.mount.model import ENTRY_TIMEOUT, Node

_BLKSIZE = 131072
# .jpg views: a buffered probe (Python's open().read(132), stdio) reads st_blksize bytes, and a
# small one stays inside the bytes a view answers without rendering (views.jpeg_size).
_VIEW_BLKSIZE = 4096
_PROBED_KINDS = frozenset({Kind.INSTANCE_JPG.value, Kind.FRAME_JPG.value})
_FOLDER_KINDS = frozenset(kind.value for kind in Kind if kind.folder)
_KIND_MASK = (1 << KIND_BITS) - 1
_MODES = {  # (folder, writable) → st_mode
    (True, False): stat.S_IFDIR | 0o555,
    (True, True): stat.S_IFDIR | 0o755,
    (False, False): stat.S_IFREG | 0o444,
    (False, True): stat.S_IFREG | 0o644,
}


class KernelAttributes:
    """Turns ``Node`` into ``EntryAttributes`` for the mounting user."""

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid

    def __call__(self, node: Node) -> pyfuse3.EntryAttributes:
        """Written out flat: a first walk builds millions of these."""
        attr = pyfuse3.EntryAttributes()  # defaults: nlink 1, generation 0, timeouts 300 s
        attr.st_ino = node.inode
        folder = node.inode & _KIND_MASK in _FOLDER_KINDS
        attr.st_mode = _MODES[folder, node.writable]
        if not folder:
            attr.st_size = node.size
            attr.st_blocks = (node.size + 511) >> 9
        attr.st_blksize = _VIEW_BLKSIZE if node.inode & _KIND_MASK in _PROBED_KINDS else _BLKSIZE
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = int(node.mtime * 1e9)
        if node.timeout != ENTRY_TIMEOUT:
            attr.entry_timeout = attr.attr_timeout = node.timeout
        return attr
