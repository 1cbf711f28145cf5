"""Parsed instances → index rows, with the duplicate policy, in one transaction per batch.

Policy for a SOP Instance UID that is already indexed: the first copy is kept. Identical
bytes are a silent no-op; different bytes are counted on the instance row and logged.
Every committed batch adds one ``changes`` row per series it touched, which is how a
running daemon (maybe another process) learns what to refresh in the mount.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.parse import ParsedInstance
from dicomfs.store import Store
from dicomfs.views import render_view
from dicomfs.views.dicom_json import JSON_VERSION

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    STORED = "stored"
    IDENTICAL = "identical duplicate"
    CONFLICT = "duplicate with different content (first copy kept)"


@dataclass(frozen=True, slots=True)
class Ingested:
    sop_uid: str
    outcome: Outcome
    series_id: int


class Indexer:
    """Writes to the index; the only module that inserts patients, studies, series, instances."""

    def __init__(self, db: Database, store: Store) -> None:
        self.db = db
        self.store = store

    def add_batch(self, batch: Iterable[tuple[ParsedInstance, Path]]) -> list[Ingested]:
        """Store and index ``(parsed, temp_path)`` pairs atomically; temp files are consumed.

        Files are moved into the store before the transaction commits: a crash in between
        leaves an unindexed file that the next arrival of the same instance overwrites.
        """
        results: list[Ingested] = []
        touched: set[int] = set()
        folders: set[Path] = set()
        now = time.time()
        with self.db.transaction():
            for parsed, temp in batch:
                result = self._add_one(parsed, temp, now, folders)
                results.append(result)
                if result.outcome is Outcome.STORED:
                    touched.add(result.series_id)
            for series_id in touched:
                self.db.execute("INSERT INTO changes (series_id, at) VALUES (?, ?)", (series_id, now))
                self.db.execute(
                    "UPDATE series SET updated_at = :t WHERE id = :s;"
                    "UPDATE studies SET updated_at = :t WHERE id = (SELECT study_id FROM series WHERE id = :s);"
                    "UPDATE patients SET updated_at = :t WHERE id = ("
                    "  SELECT st.patient_id FROM series se JOIN studies st ON st.id = se.study_id WHERE se.id = :s)",
                    {"t": now, "s": series_id},
                )
            self.store.sync_dirs(folders)  # the files are durable before the index names them
        return results

    def _add_one(self, parsed: ParsedInstance, temp: Path, now: float, folders: set[Path]) -> Ingested:
        sop_uid = parsed.sop_uid
        try:
            instance_id, series_id, relpath = self.db.get_row(
                "SELECT id, series_id, file_path FROM instances WHERE sop_uid = ?", (sop_uid,)
            )
        except NoSuchRowError:
            pass
        else:
            identical = self.store.same_content(relpath, temp)
            self.store.discard(temp)
            if identical:
                return Ingested(sop_uid, Outcome.IDENTICAL, series_id)
            self.db.execute(
                "UPDATE instances SET duplicates_seen = duplicates_seen + 1 WHERE id = ?",
                (instance_id,),
            )
            log.warning(
                "duplicate SOP Instance UID %s from %s with different content: kept the first copy",
                sop_uid, parsed.instance.get("source") or "unknown source",
            )
            return Ingested(sop_uid, Outcome.CONFLICT, series_id)

        patient_id = self._upsert("patients", "patient_key", parsed.patient, now)
        study_id = self._upsert("studies", "study_uid", {**parsed.study, "patient_id": patient_id}, now)
        series_id = self._upsert("series", "series_uid", {**parsed.series, "study_id": study_id}, now)
        relpath = self.store.relpath_for(parsed.study["study_uid"], parsed.series["series_uid"], sop_uid)
        folders.add(self.store.commit(temp, relpath))
        row = {**parsed.instance, "series_id": series_id, "file_path": relpath, "received_at": now}
        self.db.execute(
            f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        return Ingested(sop_uid, Outcome.STORED, series_id)

    def refresh_json_sizes(self) -> int:
        """Re-measure ``.json`` views measured by another JSON_VERSION (after an upgrade).

        The mount lists the stored size, so it must match what the current code generates.
        """
        stale = self.db.query(
            "SELECT id, file_path FROM instances WHERE json_version != ?", (JSON_VERSION,)
        )
        for instance_id, relpath in stale:
            try:
                size = len(render_view("json", self.store.path(relpath)))
            except Exception as exc:
                log.error("cannot re-measure the json view of %s: %s", relpath, exc)
                continue
            with self.db.transaction():
                self.db.execute(
                    "UPDATE instances SET json_size = ?, json_version = ? WHERE id = ?",
                    (size, JSON_VERSION, instance_id),
                )
        return len(stale)

    def _upsert(self, table: str, key: str, values: dict[str, object], now: float) -> int:
        """Row id for ``values[key]``; the first values seen are kept so tree names stay stable."""
        try:
            return int(self.db.get_val(f"SELECT id FROM {table} WHERE {key} = ?", (values[key],)))
        except NoSuchRowError:
            pass
        row = {**values, "created_at": now, "updated_at": now}
        self.db.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        return self.db.last_rowid()
