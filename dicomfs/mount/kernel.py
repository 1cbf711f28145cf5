"""Telling the kernel to forget what it cached: the one place that calls pyfuse3's invalidation.

Runs in worker threads (``trio.to_thread``): invalidating page contents waits for page locks
that an in-flight read may hold, and that read can only finish when the event loop answers
it. Inodes the kernel does not hold are no error.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

import pyfuse3

log = logging.getLogger(__name__)


class Kernel:
    """The kernel's caches of this mount. Tests of the operations without a mount pass a
    stand-in that records the calls (pyfuse3 must not be asked before ``pyfuse3.init``)."""

    def forget_attributes(self, inodes: Iterable[int]) -> None:
        """The kernel re-asks for these inodes' attributes (sizes, listings) at their next use."""
        for inode in inodes:
            _invalidate(inode, attr_only=True)

    def forget_contents(self, inodes: Iterable[int]) -> None:
        """The kernel drops these files' cached pages as well as their attributes."""
        for inode in inodes:
            _invalidate(inode, attr_only=False)

    def forget_names(self, names: Iterable[tuple[int, bytes]]) -> None:
        """(parent inode, name) pairs that no longer exist. Never blocks: safe on the event loop."""
        for parent, name in names:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


def _invalidate(inode: int, *, attr_only: bool) -> None:
    try:
        pyfuse3.invalidate_inode(inode, attr_only=attr_only)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTCONN):
            log.debug("invalidate_inode(%d): %s", inode, exc)
