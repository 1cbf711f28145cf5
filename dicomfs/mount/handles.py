"""Open files of the mount: one handle type per way of serving bytes.

Every handle answers ``read``; ``flush`` and ``release`` do nothing unless the handle writes
(see ``derived_writes``). Handles live in ``Operations`` under the file handle number the
kernel was given.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import trio

from dicomfs.volumes.source import VolumeSource


class Handle:
    """An open file; subclasses say where its bytes come from."""

    __slots__ = ()

    async def read(self, off: int, size: int) -> bytes:
        raise NotImplementedError

    async def write(self, off: int, data: bytes) -> int:
        raise OSError(errno.EBADF, "not open for writing")

    async def flush(self) -> None:
        return None

    async def release(self) -> None:
        return None


class StoredFile(Handle):
    """A file on disk (a stored ``.dcm``, a derived file opened to read), read with ``pread``.

    A plain blocking ``pread``: page-cache reads are faster in the handler than in a thread.
    """

    __slots__ = ("fd",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    async def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    async def release(self) -> None:
        os.close(self.fd)


class GeneratedFile(Handle):
    """Bytes made whole when the file was opened (summaries, origin.json)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, off: int, size: int) -> bytes:
        return self.data[off:off + size]


class RenderedView(Handle):
    """A view rendered on the first read that needs it: an open whose pages the kernel still
    caches (``keep_cache``) never reads, so it costs no rendering at all, and reads that stay
    inside the view's fixed ``head`` or ``tail`` (bytes known from the geometry alone: what a
    format probe reads, see ``views.jpeg_size``) are answered without rendering."""

    __slots__ = ("_data", "_head", "_lock", "_render", "_tail", "_tail_start")

    def __init__(self, render: Callable[[], Awaitable[bytes]], *, size: int = 0, head: bytes = b"",
                 tail: bytes = b"") -> None:
        self._render = render
        self._data: bytes | None = None
        self._lock = trio.Lock()
        self._head, self._tail = head, tail
        self._tail_start = size - len(tail)

    async def read(self, off: int, size: int) -> bytes:
        if self._data is None:
            if off + size <= len(self._head):
                return self._head[off:off + size]
            if self._tail and off >= self._tail_start:
                return self._tail[off - self._tail_start:off - self._tail_start + size]
            async with self._lock:  # concurrent reads of one handle render once
                if self._data is None:
                    self._data = await self._render()
        return self._data[off:off + size]


class VolumeFile(Handle):
    """A series volume mapped onto the stored files (``volumes.source``): blocking preads, like
    ``StoredFile``, since they are page-cache reads."""

    __slots__ = ("source",)

    def __init__(self, source: VolumeSource) -> None:
        self.source = source

    async def read(self, off: int, size: int) -> bytes:
        return self.source.read(off, size)

    async def release(self) -> None:
        self.source.close()
