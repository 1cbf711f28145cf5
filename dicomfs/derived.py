"""Derived data: files made from a study or series, stored with a link to their origin.

A file written into a ``derived/`` folder of the mount (or added with ``dicomfs derive add``)
goes to a temporary file first; closing it makes it durable and atomically replaces the
previous version, then the index records name, origin, size and times. Two writers of one
name each write their own temporary: the last to close wins, and readers only ever see a
whole file. The files live under ``<data>/derived/<origin UID>/``.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.mount import naming
from dicomfs.privacy import DIR_MODE
from dicomfs.store import fsync_dir, uid_component

KINDS = ("voi", "stats", "fit", "map", "dicom", "other")
_counter = itertools.count()
_UID_COLUMN = {"study": ("studies", "study_uid"), "series": ("series", "series_uid")}


class DerivedError(OSError):
    """A derived-data request that cannot be done; errno says what to tell the kernel."""


@dataclass(frozen=True, slots=True)
class DerivedFile:
    id: int
    level: str
    entity_id: int
    origin_uid: str
    name: str
    kind: str
    file_path: str
    size: int
    created_at: float
    updated_at: float
    sop_uid: str | None  # a derived DICOM object, stored in the archive's store, not here
    origin_deleted_at: float | None  # the origin was deleted then: read-only, listed under /orphans


def check_name(name: str) -> str:
    """Names in derived/ follow the rules of every name in the tree (portable, no separators)."""
    if not name or len(name.encode("utf-8", "surrogateescape")) > 255 or \
            naming.safe_component(name, fallback="") != name:
        raise DerivedError(errno.EINVAL, f"{name!r} is not a portable file name")
    return name


class DerivedStore:
    """Writes derived files and their index rows (on the thread that owns ``db``)."""

    def __init__(self, root: Path, db: Database, instance_root: Path | None = None,
                 changes: ChangeLog | None = None) -> None:
        self.root = root
        self.instance_root = instance_root  # the store of instances, for derived DICOM objects
        self.tmp_dir = root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        self.db = db
        self.changes = changes or ChangeLog(db)

    def origin_uid(self, level: str, entity_id: int) -> str:
        table, column = _UID_COLUMN[level]
        return self.db.get_str(f"SELECT {column} FROM {table} WHERE id = ?", (entity_id,))

    def temp_path(self) -> Path:
        return self.tmp_dir / f"{os.getpid()}-{next(_counter)}.part"

    def commit(self, level: str, entity_id: int, name: str, temp: Path, kind: str = "other") -> DerivedFile:
        """Make ``temp`` the file ``name`` of the origin's derived/ folder (replacing one of that name)."""
        placed = self.place(level, entity_id, name, temp)
        return self.record(level, entity_id, name, placed, kind)

    def place(self, level: str, entity_id: int, name: str, temp: Path) -> tuple[str, str, int]:
        """The file-system half of ``commit`` (fsync, rename, directory fsync): may run in a thread.

        Returns (origin UID, relative path, size) for ``record``.
        """
        check_name(name)
        origin = self.origin_uid(level, entity_id)
        folder = self.root / uid_component(origin)
        folder.mkdir(exist_ok=True, mode=DIR_MODE)
        relpath = f"{uid_component(origin)}/{name}"
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(temp, self.root / relpath)
        fsync_dir(folder)
        return origin, relpath, size

    def record(self, level: str, entity_id: int, name: str, placed: tuple[str, str, int],
               kind: str = "other") -> DerivedFile:
        """The index half of ``commit``, on the thread that owns the database."""
        origin, relpath, size = placed
        now = time.time()
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO derived (level, entity_id, origin_uid, name, kind, file_path, size, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (level, entity_id, name) DO UPDATE "
                "SET size = excluded.size, updated_at = excluded.updated_at, file_path = excluded.file_path",
                (level, entity_id, origin, name, kind, relpath, size, now, now))
            self._changed(level, entity_id, now)
        return self.get_by_name(level, entity_id, name)

    def delete(self, derived_id: int) -> None:
        item = self.get(derived_id)
        with self.db.transaction():
            self.db.execute("DELETE FROM derived WHERE id = ?", (derived_id,))
            self._changed(item.level, item.entity_id, time.time())
        if item.file_path:
            (self.root / item.file_path).unlink(missing_ok=True)

    def rename(self, derived_id: int, new_name: str) -> None:
        """Rename within the same derived/ folder, replacing a file of the new name."""
        check_name(new_name)
        item = self.get(derived_id)
        replaced = self.db.query("SELECT id, file_path FROM derived WHERE level = ? AND entity_id = ? AND name = ?",
                                 (item.level, item.entity_id, new_name))
        new_relpath = ""  # a derived DICOM object: only its name here changes
        if item.file_path:
            new_relpath = f"{uid_component(item.origin_uid)}/{new_name}"
            os.replace(self.root / item.file_path, self.root / new_relpath)
            fsync_dir((self.root / new_relpath).parent)
        with self.db.transaction():
            for other_id, _ in replaced:
                if other_id != derived_id:
                    self.db.execute("DELETE FROM derived WHERE id = ?", (other_id,))
            self.db.execute("UPDATE derived SET name = ?, file_path = ?, updated_at = ? WHERE id = ?",
                            (new_name, new_relpath, time.time(), derived_id))
            self._changed(item.level, item.entity_id, time.time())

    def path_of(self, item: DerivedFile) -> Path:
        """Where the bytes are: our derived folder, or the store file of a derived DICOM object."""
        if item.file_path or not item.sop_uid:
            return self.root / item.file_path
        try:
            relpath = self.db.get_val("SELECT file_path FROM instances WHERE sop_uid = ?", (item.sop_uid,))
        except NoSuchRowError:
            raise DerivedError(errno.ENOENT, f"the DICOM object {item.sop_uid} is gone") from None
        if not relpath or self.instance_root is None:
            raise DerivedError(errno.EIO, f"the DICOM object {item.sop_uid} is not local")
        return self.instance_root / str(relpath)

    def get(self, derived_id: int) -> DerivedFile:
        try:
            row = self.db.get_row(f"SELECT {_COLUMNS} FROM derived WHERE id = ?", (derived_id,))
        except NoSuchRowError:
            raise DerivedError(errno.ENOENT, "no such derived file") from None
        return DerivedFile(*row)

    def get_by_name(self, level: str, entity_id: int, name: str) -> DerivedFile:
        try:
            row = self.db.get_row(f"SELECT {_COLUMNS} FROM derived WHERE level = ? AND entity_id = ? AND name = ?",
                                  (level, entity_id, name))
        except NoSuchRowError:
            raise DerivedError(errno.ENOENT, f"no derived file {name!r}") from None
        return DerivedFile(*row)

    def _changed(self, level: str, entity_id: int, now: float) -> None:
        """Note the change, so that a running mount (maybe another process) lists it."""
        if level == "series":
            rows = self.db.query("SELECT id FROM series WHERE id = ?", (entity_id,))
        else:  # any series of the study leads the mount to the study
            rows = self.db.query("SELECT id FROM series WHERE study_id = ? LIMIT 1", (entity_id,))
        if rows:
            self.changes.note_series([rows[0][0]], now)
        else:  # a deleted origin (its items are under /orphans), or a study without series
            self.changes.note_everything(now)


_COLUMNS = ("id, level, entity_id, origin_uid, name, kind, file_path, size, created_at, updated_at, sop_uid, "
            "origin_deleted_at")
