"""Opening the archive: the data directory, its index (migrated) and its store.

A path that does not exist becomes an archive only when asked (``dicomfs init``, ``--create``,
or the embedded default in the user's home): a mistyped ``--data-dir`` must never quietly
start an empty archive. An existing empty folder may become one; anything else that has no
index is not an archive, and the error says so.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomfs import privacy
from dicomfs.config import ProjectRule
from dicomfs.errors import UserError
from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database
from dicomfs.index.schema import migrate
from dicomfs.ingest.writer import IndexWriter
from dicomfs.remote.rows import RemoteRows
from dicomfs.store import Store

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"


class NotAnArchiveError(UserError):
    """The data directory is missing, is not a folder, or holds something other than an archive."""


@dataclass(slots=True)
class Archive:
    db: Database
    store: Store
    writer: IndexWriter  # arriving instances
    remote: RemoteRows  # what remote PACS have, and the cache of what was fetched from them
    changes: ChangeLog  # the one change log of this connection: the daemon's mount subscribes to it

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True, slots=True)
class Holdings:
    """How much an archive holds: what ``serve`` logs and ``status`` prints first."""

    patients: int
    studies: int
    series: int
    instances: int  # local ones (with a file in the store)
    bytes: int
    listed: int  # instances known from remote listings only

    def __str__(self) -> str:
        remote = f", {self.listed} more listed on remotes" if self.listed else ""
        return (f"{self.patients} patients, {self.studies} studies, {self.series} series, "
                f"{self.instances} local instances ({_size(self.bytes)}){remote}")


def holdings(db: Database) -> Holdings:
    patients, studies, series = (db.get_int(f"SELECT count(*) FROM {t}") for t in ("patients", "studies", "series"))
    local, listed, stored = db.get_row(
        "SELECT count(*) FILTER (WHERE file_path != ''), count(*) FILTER (WHERE file_path = ''), "
        "coalesce(sum(file_size) FILTER (WHERE file_path != ''), 0) FROM instances")
    return Holdings(patients, studies, series, local, stored, listed)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


_FIX = "give --data-dir the archive's folder, or a new or empty one"


def archive_state(data_dir: Path) -> str:
    """``"archive"``, ``"empty"`` (a folder that may become one) or ``"missing"``.

    Raises ``NotAnArchiveError`` for what can never be opened as an archive: a file, a folder
    that holds files but no index, a folder this user cannot read.
    """
    try:
        info = os.stat(data_dir)
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        raise NotAnArchiveError(f"{data_dir} is not a dicomfs archive (a part of the path is a file): {_FIX}") from None
    except PermissionError:
        raise NotAnArchiveError(f"cannot reach the archive {data_dir} (permission denied on a folder above it): run "
                                "dicomfs as the archive's owner, or give --data-dir your own") from None
    if not stat.S_ISDIR(info.st_mode):
        raise NotAnArchiveError(f"{data_dir} is not a dicomfs archive (not a folder): {_FIX}")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise NotAnArchiveError(f"the archive {data_dir} cannot be read by this user (permission denied): run "
                                "dicomfs as the archive's owner, or give --data-dir your own")
    if (data_dir / INDEX_NAME).is_file():
        return "archive"
    # A pid file alone: a daemon stopped before it made its index.
    if all(name == "daemon.pid" for name in os.listdir(data_dir)):
        return "empty"
    raise NotAnArchiveError(f"{data_dir} is not a dicomfs archive (it holds files but no {INDEX_NAME}): {_FIX}")


def check_data_dir(data_dir: Path, *, create: bool, group: str | None = None) -> bool:
    """Make sure ``data_dir`` is (or may now become) an archive; True when it is new.

    A missing path is created only when ``create`` is true; see ``archive_state`` for the rest.
    """
    state = archive_state(data_dir)
    if state == "archive":
        return False
    if state == "empty":  # made by hand (mkdir) or by systemd: it gets the archive's modes
        log.info("%s is an empty folder: making it a new archive", data_dir)
    elif not create:
        raise NotAnArchiveError(f"no archive at {data_dir}: check --data-dir, or create one with "
                                f"'dicomfs init {data_dir}' (or add --create)")
    try:
        privacy.make_data_dir(data_dir, group)
    except OSError as exc:
        raise NotAnArchiveError(f"cannot create the archive {data_dir}: {exc.strerror}") from None
    if state != "empty":
        log.info("created a new archive at %s", data_dir)
    return True


def check_writable(data_dir: Path) -> None:
    """One clear failure up front instead of one "Permission denied" per file later."""
    for path in (data_dir, data_dir / INDEX_NAME, data_dir / "store", data_dir / "store" / ".tmp"):
        if not path.exists():
            continue
        if os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            continue
        if _read_only_fs(path):
            raise NotAnArchiveError(f"the archive {data_dir} is on a read-only file system: remount it "
                                    "read-write, or give --data-dir a writable archive")
        raise NotAnArchiveError(f"the archive {data_dir} cannot be written by this user ({path}: permission "
                                "denied): run dicomfs as the archive's owner, or give --data-dir your own")


def _read_only_fs(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def open_archive(data_dir: Path, rules: Sequence[ProjectRule] = (), *, create: bool = True,
                 group: str | None = None, checked: bool = False) -> Archive:
    """Open (or, when allowed, create) the archive for writing; ``checked``: the caller ran
    ``check_data_dir`` and ``check_writable`` already."""
    if not checked:
        check_data_dir(data_dir, create=create, group=group)
        check_writable(data_dir)
    privacy.warn_if_wide(data_dir, group)
    db = Database(data_dir / INDEX_NAME)
    migrate(db)
    store = Store(data_dir / "store")
    changes = ChangeLog(db)
    return Archive(db, store, IndexWriter(db, store, rules, changes), RemoteRows(db, changes), changes)
