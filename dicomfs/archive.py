"""Opening the archive: the data directory, its index (migrated) and its store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomfs.config import ProjectRule
from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database
from dicomfs.index.schema import migrate
from dicomfs.ingest.writer import IndexWriter
from dicomfs.remote.rows import RemoteRows
from dicomfs.store import Store


@dataclass(slots=True)
class Archive:
    db: Database
    store: Store
    writer: IndexWriter  # arriving instances
    remote: RemoteRows  # what remote PACS have, and the cache of what was fetched from them
    changes: ChangeLog  # the one change log of this connection: the daemon's mount subscribes to it

    def close(self) -> None:
        self.db.close()


def open_archive(data_dir: Path, rules: Sequence[ProjectRule] = ()) -> Archive:
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(data_dir / "index.sqlite")
    migrate(db)
    store = Store(data_dir / "store")
    changes = ChangeLog(db)
    return Archive(db, store, IndexWriter(db, store, rules, changes), RemoteRows(db, changes), changes)
