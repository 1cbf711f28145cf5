"""Parsed instances → index rows, with the duplicate policy, in one transaction per batch.

Policy for a SOP Instance UID that is already indexed: the first copy is kept. Identical
bytes are a silent no-op; different bytes are counted on the instance row and logged.
Every committed batch notes the series it touched in the change log (``index.changes``),
which is how a running daemon (maybe another process) learns what to refresh in the mount.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomfs.config import ProjectRule
from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.parse import ParsedInstance
from dicomfs.store import Store
from dicomfs.views.dicom_json import JSON_VERSION
from dicomfs.views.render import render_view

if TYPE_CHECKING:
    from dicomfs.index.query_language import Compiled

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


@dataclass(frozen=True, slots=True)
class RemoteStudy:
    """A study as a remote PACS answered a STUDY-level C-FIND: index columns and its counts."""

    patient: dict[str, Any]
    study: dict[str, Any]
    num_series: int | None
    num_instances: int | None


@dataclass(frozen=True, slots=True)
class RemoteSeries:
    series: dict[str, Any]
    num_instances: int | None


# Columns of an instance that is listed but not local; what a C-FIND answer gives overrides them.
_PLACEHOLDER: dict[str, Any] = {
    "sop_class_uid": "", "transfer_syntax_uid": "", "specific_character_set": "", "content_date": "",
    "content_time": "", "acquisition_number": "", "image_type": "", "rows": 0, "columns": 0, "number_of_frames": 1,
    "photometric": "", "has_image": 0, "file_path": "", "file_size": 0, "json_size": 0, "json_version": 0,
    "added_part10_header": 0,
}


def _compiled(rule: ProjectRule) -> Compiled | None:
    """A rule's query, compiled once (the configuration has checked it)."""
    if not rule.match:
        return None
    from dicomfs.index.query_language import compile_query

    return compile_query(rule.match, "study")


class Indexer:
    """Writes to the index; the only module that inserts patients, studies, series, instances."""

    def __init__(self, db: Database, store: Store, rules: Sequence[ProjectRule] = (),
                 changes: ChangeLog | None = None) -> None:
        self.db = db
        self.store = store
        self.changes = changes or ChangeLog(db)
        self.rules = [(rule, _compiled(rule)) for rule in rules]

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
            batch_sources: dict[int, set[str]] = {}
            for parsed, temp in batch:
                result = self._add_one(parsed, temp, now, folders)
                results.append(result)
                if result.outcome is Outcome.STORED:
                    touched.add(result.series_id)
                    source = str(parsed.instance.get("source") or "")
                    batch_sources.setdefault(result.series_id, set()).add(source.partition("@")[0])
            if self.rules and touched:
                self._apply_rules(touched, batch_sources)
            self.changes.note_series(touched, now)
            for series_id in touched:
                self._note_remote_progress(series_id)
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
            if relpath == "":  # listed from a remote PACS, arriving now: the row becomes local
                return self._fill_placeholder(instance_id, series_id, parsed, temp, now, folders)
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
        for (derived_sop_uid,) in self.db.query(
                "SELECT sop_uid FROM derived_sources WHERE ref_uid = ? AND ref_level = 'instance'", (sop_uid,)):
            self._link_derived(derived_sop_uid, series_id, now)  # an object made from this image came first
        if parsed.referenced_series or parsed.referenced_instances:
            self._record_sources(parsed, now)
        return Ingested(sop_uid, Outcome.STORED, series_id)

    def _record_sources(self, parsed: ParsedInstance, now: float) -> None:
        """Remember what a derived DICOM object was made from, and link it to what is here already."""
        refs = [("series", uid) for uid in parsed.referenced_series]
        refs += [("instance", uid) for uid in parsed.referenced_instances]
        for level, uid in refs:
            self.db.execute("INSERT OR IGNORE INTO derived_sources (sop_uid, ref_level, ref_uid) VALUES (?, ?, ?)",
                            (parsed.sop_uid, level, uid))
        marks = ", ".join("?" * len(parsed.referenced_series))
        found = self.db.query(
            f"SELECT id FROM series WHERE series_uid IN ({marks})", parsed.referenced_series
        ) if parsed.referenced_series else []
        if parsed.referenced_instances:
            marks = ", ".join("?" * len(parsed.referenced_instances))
            found += self.db.query(
                f"SELECT DISTINCT series_id FROM instances WHERE sop_uid IN ({marks})", parsed.referenced_instances)
        for series_id in {row[0] for row in found}:
            self._link_derived(parsed.sop_uid, series_id, now)

    def _link_derived(self, derived_sop_uid: str, series_id: int, now: float) -> None:
        """Show a derived DICOM object in the derived/ folder of a series it was made from."""
        own_series, modality, size = self.db.get_row(
            "SELECT i.series_id, se.modality, i.file_size FROM instances i JOIN series se ON se.id = i.series_id "
            "WHERE i.sop_uid = ?", (derived_sop_uid,))
        if series_id == own_series:
            return
        self.db.execute(
            "INSERT INTO derived (level, entity_id, origin_uid, name, kind, file_path, sop_uid, size, created_at, "
            "updated_at) SELECT 'series', id, series_uid, ?, 'dicom', '', ?, ?, ?, ? FROM series WHERE id = ? "
            "ON CONFLICT DO NOTHING",
            (f"{modality or 'DICOM'}_{derived_sop_uid}.dcm", derived_sop_uid, size, now, now, series_id))

    def _welcome(self, table: str, row_id: int, uid: str, now: float) -> None:
        """A study or series row is new: take back derived data left by a deleted one of that UID (a
        name taken meanwhile leaves that item orphaned rather than failing the ingest),
        and link derived objects that named this series before it arrived."""
        level = "study" if table == "studies" else "series"
        self.db.execute(
            "UPDATE OR IGNORE derived SET entity_id = ?, origin_deleted_at = NULL, origin_description = '' "
            "WHERE level = ? AND origin_uid = ? AND origin_deleted_at IS NOT NULL", (row_id, level, uid))
        if level == "series":
            for (derived_sop_uid,) in self.db.query(
                    "SELECT sop_uid FROM derived_sources WHERE ref_uid = ? AND ref_level = 'series'", (uid,)):
                self._link_derived(derived_sop_uid, row_id, now)

    def _apply_rules(self, series_ids: set[int], sources: dict[int, set[str]]) -> None:
        """Put the studies these series belong to into the projects whose rules they match."""
        by_study: dict[int, set[str]] = {}
        for series_id in series_ids:
            study_id = int(self.db.get_val("SELECT study_id FROM series WHERE id = ?", (series_id,)))
            by_study.setdefault(study_id, set()).update(sources.get(series_id, set()))
        now = time.time()
        for rule, compiled in self.rules:
            for study_id, callers in by_study.items():
                if rule.calling_ae and rule.calling_ae not in callers:
                    continue
                if compiled is not None and not self.db.query(
                        f"SELECT 1 FROM {compiled.from_sql} WHERE {compiled.id_column} = ? AND ({compiled.where})",
                        [study_id, *compiled.args]):
                    continue
                self.db.execute("INSERT INTO projects (name, description, created_at) VALUES (?, ?, ?) "
                                "ON CONFLICT (name) DO NOTHING", (rule.project, "created by a rule", now))
                if self.db.execute(
                        "INSERT OR IGNORE INTO project_members (project_id, level, entity_id, added_at) "
                        "SELECT id, 'study', ?, ? FROM projects WHERE name = ?", (study_id, now, rule.project)):
                    log.info("study %d assigned to project %s by a rule", study_id, rule.project)

    def _fill_placeholder(
        self, instance_id: int, series_id: int, parsed: ParsedInstance, temp: Path, now: float, folders: set[Path]
    ) -> Ingested:
        relpath = self.store.relpath_for(parsed.study["study_uid"], parsed.series["series_uid"], parsed.sop_uid)
        folders.add(self.store.commit(temp, relpath))
        row = {**parsed.instance, "file_path": relpath, "received_at": now, "fetched": 1}
        self.db.execute(
            f"UPDATE instances SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
            (*row.values(), instance_id),
        )
        return Ingested(parsed.sop_uid, Outcome.STORED, series_id)

    def _note_remote_progress(self, series_id: int) -> None:
        """A remote series is complete once it was listed and no listed instance is missing."""
        self.db.execute(
            "UPDATE remote_series SET complete = (instances_listed_at IS NOT NULL AND NOT EXISTS ("
            "  SELECT 1 FROM instances WHERE series_id = :s AND file_path = '')) WHERE series_id = :s",
            {"s": series_id},
        )

    # ------------------------------------------------------------ what a remote PACS has

    def add_remote_studies(self, remote: str, studies: Iterable[RemoteStudy]) -> int:
        """Record studies a saved query found on ``remote``; returns how many were new."""
        now = time.time()
        new = 0
        with self.db.transaction():
            for found in studies:
                patient_id = self._upsert("patients", "patient_key", found.patient, now)
                before = self.db.query("SELECT 1 FROM studies WHERE study_uid = ?", (found.study["study_uid"],))
                study_id = self._upsert("studies", "study_uid", {**found.study, "patient_id": patient_id}, now)
                new += not before
                self.db.execute(
                    "INSERT INTO remote_studies (study_id, remote, num_series, num_instances, listed_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (study_id) DO UPDATE SET remote = excluded.remote, "
                    "num_series = excluded.num_series, num_instances = excluded.num_instances, "
                    "listed_at = excluded.listed_at",
                    (study_id, remote, found.num_series, found.num_instances, now),
                )
            if new:
                self.changes.note_everything(now)  # above any series: the mount rebuilds all
        return new

    def add_remote_series(self, remote: str, study_id: int, series: Iterable[RemoteSeries]) -> None:
        now = time.time()
        with self.db.transaction():
            for found in series:
                series_id = self._upsert("series", "series_uid", {**found.series, "study_id": study_id}, now)
                self.db.execute(
                    "INSERT INTO remote_series (series_id, remote, num_instances) VALUES (?, ?, ?) "
                    "ON CONFLICT (series_id) DO UPDATE SET num_instances = excluded.num_instances",
                    (series_id, remote, found.num_instances),
                )
                self.changes.note_series([series_id], now)
            self.db.execute("UPDATE remote_studies SET series_listed_at = ? WHERE study_id = ?", (now, study_id))

    def add_remote_instances(self, remote: str, series_id: int, instances: Iterable[dict[str, Any]]) -> None:
        """Rows for a remote series' instances; file_path '' until each is fetched."""
        now = time.time()
        with self.db.transaction():
            for values in instances:
                row = {**_PLACEHOLDER, **values, "series_id": series_id, "source": f"remote {remote}",
                       "received_at": now}
                self.db.execute(
                    f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                    "ON CONFLICT (sop_uid) DO NOTHING",
                    tuple(row.values()),
                )
            self.db.execute("UPDATE remote_series SET instances_listed_at = ? WHERE series_id = ?", (now, series_id))
            self._note_remote_progress(series_id)
            self.changes.note_series([series_id], now)

    def keep_study(self, study_uid: str) -> None:
        """Pulled on purpose: its fetched files are no longer cache, never evicted."""
        with self.db.transaction():
            self.db.execute(
                "UPDATE instances SET fetched = 0 WHERE fetched = 1 AND series_id IN ("
                "  SELECT se.id FROM series se JOIN studies st ON st.id = se.study_id WHERE st.study_uid = ?)",
                (study_uid,),
            )

    def evict_series(self, series_id: int) -> list[str]:
        """Return a fetched series to the not-yet-local state; returns the files to delete.

        Only fetched files go: anything received or imported stays. The caller deletes the
        files after this commits, so a crash in between leaves unindexed files, never rows
        that name missing files.
        """
        now = time.time()
        with self.db.transaction():
            paths = [r[0] for r in self.db.query(
                "SELECT file_path FROM instances WHERE series_id = ? AND fetched = 1 AND file_path != ''",
                (series_id,))]
            self.db.execute(
                "UPDATE instances SET file_path = '', file_size = 0, json_size = 0, json_version = 0, "
                "has_image = 0, fetched = 0 WHERE series_id = ? AND fetched = 1", (series_id,))
            self._note_remote_progress(series_id)
            self.changes.note_series([series_id], now)
        return paths

    def refresh_json_sizes(self) -> int:
        """Re-measure ``.json`` views measured by another JSON_VERSION (after an upgrade).

        The mount lists the stored size, so it must match what the current code generates.
        """
        stale = self.db.query(
            "SELECT id, file_path FROM instances WHERE json_version != ? AND file_path != ''", (JSON_VERSION,)
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
        row_id = self.db.last_rowid()
        if table in ("studies", "series"):
            self._welcome(table, row_id, str(values[key]), now)
        return row_id
