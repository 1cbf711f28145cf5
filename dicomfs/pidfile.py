"""The running daemon's pid file: ``<data>/daemon.pid``, locked (flock) for as long as it runs.

The lock, not the file, says whether a daemon runs: the kernel drops it when the process
dies however it dies (SIGKILL, power loss), so a stale file never blocks a start. The file
tells who holds the lock (pid), where it mounts and its DICOM address, for ``status`` and
for the refusal a second daemon gets. A pid can be reused after a crash: whoever reads it
also checks ``/proc/PID/cmdline``.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from dicomfs.errors import UserError
from dicomfs.privacy import FILE_MODE

NAME = "daemon.pid"


class DaemonRunningError(UserError):
    """Another daemon serves this archive or this mount point."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a pid file says."""

    pid: int
    mount: str  # the mount point, or "off"
    dicom: str  # AE@host:port, or "off"


class PidFile:
    """Held by ``serve`` from start to exit; ``previous`` is what a crashed daemon left."""

    def __init__(self, path: Path, fd: int, previous: Recorded | None) -> None:
        self.path, self._fd, self.previous = path, fd, previous

    def release(self) -> None:
        """Remove the file, then drop the lock (in this order: a waiting start finds no file to lock)."""
        if self._fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def acquire(path: Path, mount: str, dicom: str) -> PidFile:
    """Lock the pid file of an archive and record this process, or refuse naming the live daemon."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            recorded = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            who = f"dicomfs pid {recorded.pid}" if recorded else "another dicomfs"
            raise DaemonRunningError(
                f"the archive {path.parent} is already served by {who}: stop it first"
                + (f" (kill {recorded.pid})" if recorded else "") + ", or give another --data-dir") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file that the daemon before us removed between our open and our lock
            break
        os.close(fd)
    previous = _parse(os.pread(fd, 4096, 0))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\nmount={mount}\ndicom={dicom}\n".encode(), 0)
    return PidFile(path, fd, previous)


def read(path: Path) -> Recorded | None:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return None


def running(path: Path) -> tuple[Recorded | None, bool]:
    """What the pid file records, and whether that daemon is alive (lock held, pid a dicomfs daemon)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, False
    try:
        recorded = _parse(os.pread(fd, 4096, 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            locked = True
        else:
            locked = False  # nobody holds it: the daemon that wrote it is gone
    finally:
        os.close(fd)
    alive = locked and recorded is not None and is_dicomfs_daemon(recorded.pid)
    return recorded, alive


def is_dicomfs_daemon(pid: int) -> bool:
    """``pid`` runs ``dicomfs serve`` (a pid reused by another program after a crash does not)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    named = any(a == b"dicomfs" or a.endswith(b"/dicomfs") for a in args)
    return named and b"serve" in args


def serving(mount_point: Path) -> int | None:
    """The pid of a live dicomfs daemon whose pid file records ``mount_point``, if any.

    A daemon holds its pid file open, so its descriptors lead to the file and the file to
    the mount point.
    """
    wanted = str(mount_point)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not is_dicomfs_daemon(int(entry.name)):
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.endswith("/" + NAME):
                recorded = read(Path(link))
                if recorded and recorded.pid == int(entry.name) and recorded.mount == wanted:
                    return recorded.pid
    return None


def _parse(data: bytes) -> Recorded | None:
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].strip().isdigit():
        return None
    values = dict(line.partition("=")[::2] for line in lines[1:])
    return Recorded(int(lines[0]), values.get("mount", "off"), values.get("dicom", "off"))
