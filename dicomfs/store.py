"""Where instance files live: Part 10 files under ``<data>/store``, written atomically.

Paths are built only from UIDs that pass ``uid_component`` (digits and dots, at most 64
characters); anything else is replaced by a hash, so no received value can steer a path.
A write is temporary file + fsync + rename + fsync of the directory: a crash leaves either
the complete file or nothing at its final path. Files and folders are created no wider than
0640/0750; the process umask (``privacy.restrict``) narrows that to the archive's policy.
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import itertools
import os
import re
import threading
from pathlib import Path

from dicomfs.privacy import DIR_MODE, FILE_MODE

_counter = itertools.count()
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def uid_component(uid: str) -> str:
    """A path component for ``uid``: the UID itself when it is well-formed, else a hash."""
    if len(uid) <= 64 and _UID_RE.fullmatch(uid):
        return uid
    return "x" + hashlib.sha1(uid.encode("utf-8", "surrogateescape")).hexdigest()


class Store:
    """The directory of instance files; the index records each file's relative path."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        self._early: set[str] = set()  # relpaths placed early and not yet adopted or taken back
        self._early_lock = threading.Lock()

    @staticmethod
    def relpath_for(study_uid: str, series_uid: str, sop_uid: str) -> str:
        return "/".join(
            (uid_component(study_uid), uid_component(series_uid), uid_component(sop_uid) + ".dcm")
        )

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def write_temp(self, data: bytes, *, durable: bool = True) -> Path:
        """Write ``data`` to a temporary file in the store; returns its path.

        ``durable=False``: leave the fsync to the caller (``sync_file``), to overlap it with
        other work on the bytes.
        """
        # pid + counter: unique without mkstemp's random names; the pid tells a crash apart.
        name = str(self.tmp_dir / f"{os.getpid()}-{next(_counter)}.part")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(name)
            raise
        os.close(fd)
        return Path(name)

    @staticmethod
    def sync_file(path: Path, folder: Path | None = None) -> None:
        """Make a file written with ``durable=False`` durable, then ``folder``'s entries."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if folder is not None:
            fsync_dir(folder)

    def place_early(self, temp: Path, relpath: str) -> Path | None:
        """Give a temporary file its final name as well (a hard link), if nothing has it yet.

        For the node: done before the file's fsync, which on journaling filesystems (ext4,
        XFS) then makes the name durable too, so that the fsync of its folder after it
        (``sync_file`` with the folder) costs next to nothing. The file is not indexed
        yet: the index writer adopts it (``holds``) or moves the temporary over it.
        Returns the final path, or None when a file is there already.
        """
        final = self.root / relpath
        with self._early_lock:
            if relpath in self._early:
                return None
            self._early.add(relpath)
        try:
            self._make_folder(final.parent)
            os.link(temp, final)
        except FileExistsError:
            self.release_early(relpath)
            return None
        except BaseException:
            self.release_early(relpath)
            raise
        return final

    def release_early(self, relpath: str, *, remove: bool = False) -> None:
        """End an early placement: adopted by the index (``remove=False``), or taken back."""
        if remove:
            (self.root / relpath).unlink(missing_ok=True)  # nobody else may replace it meanwhile
        with self._early_lock:
            self._early.discard(relpath)

    def holds(self, temp: Path, relpath: str) -> bool:
        """True when the file at ``relpath`` is ``temp`` itself (placed early, and still there)."""
        try:
            return os.path.samefile(temp, self.root / relpath)
        except OSError:
            return False

    def _make_folder(self, parent: Path) -> None:
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            fsync_dir(parent.parent)
            fsync_dir(parent.parent.parent)

    def commit(self, temp: Path, relpath: str) -> Path:
        """Move a temporary file to its final place (replacing an unindexed leftover).

        Returns the folder whose entry changed: pass it to ``sync_dirs`` before recording
        the file anywhere, so that a batch costs one directory fsync, not one per file.
        """
        final = self.root / relpath
        parent = final.parent
        with self._early_lock:
            if relpath in self._early:  # the same instance, arriving on the node at this moment
                raise OSError(errno.EBUSY, f"{relpath} is being received by the node at the same time")
        self._make_folder(parent)
        os.replace(temp, final)
        return parent

    @staticmethod
    def sync_dirs(folders: set[Path]) -> None:
        """Make the renames into ``folders`` durable."""
        for folder in folders:
            fsync_dir(folder)

    def discard(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def same_content(self, relpath: str, other: Path) -> bool:
        """True when the stored file at ``relpath`` holds exactly the bytes of ``other``."""
        try:
            return filecmp.cmp(self.root / relpath, other, shallow=False)
        except OSError:
            return False

    def clean_temporaries(self) -> int:
        """Remove temporaries whose writing process has died; returns how many."""
        count = 0
        for leftover in self.tmp_dir.glob("*.part"):
            pid = leftover.name.partition("-")[0]
            if pid.isdigit() and pid_alive(int(pid)):
                continue
            leftover.unlink(missing_ok=True)
            count += 1
        return count


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
