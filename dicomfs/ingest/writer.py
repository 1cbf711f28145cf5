"""Prepared instances → store and index rows, in one transaction per batch.

Policy for a SOP Instance UID that is already indexed: the first copy is kept. Identical
bytes are a silent no-op; different bytes are counted on the instance row and logged. An
instance listed from a remote PACS (a placeholder row) becomes local when it arrives. A
derived object (SEG, RTSTRUCT, SR, ...) is linked to the series it was made from, whichever
comes first; project rules put arriving studies into projects. Every committed batch notes
the series it touched in the change log (``index.changes``), which is how a running daemon
(maybe another process) learns what to refresh in the mount.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from dicomfs.config import ProjectRule
from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.ingest import entities
from dicomfs.ingest.prepare import Batch, Prepared
from dicomfs.parse import ParsedInstance
from dicomfs.store import Store
from dicomfs.views.dicom_json import JSON_VERSION
from dicomfs.views.render import render_view
from dicomfs.volumes import facts as volume_facts
from dicomfs.volumes.facts import FACTS_VERSION

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


Submit = Callable[[Batch], list[Ingested]]  # hands a batch to the writer: directly, or through the gateway


def _compiled(rule: ProjectRule) -> Compiled | None:
    """A rule's query, compiled once (the configuration has checked it)."""
    if not rule.match:
        return None
    from dicomfs.index.query_language import compile_query

    return compile_query(rule.match, "study")


class IndexWriter:
    """Writes arriving instances to the store and the index (remote listings: ``remote.rows``)."""

    def __init__(self, db: Database, store: Store, rules: Sequence[ProjectRule] = (),
                 changes: ChangeLog | None = None) -> None:
        self.db = db
        self.store = store
        self.changes = changes or ChangeLog(db)
        self.rules = [(rule, _compiled(rule)) for rule in rules]

    def add_batch(self, batch: Iterable[Prepared]) -> list[Ingested]:
        """Store and index ``batch`` atomically; its temporary files are consumed.

        Files are moved into the store before the transaction commits: a crash in between
        leaves an unindexed file that the next arrival of the same instance overwrites. If the
        transaction fails, every temporary file is where it was (placed ones are moved back),
        so the caller may discard them, or write the batch again.
        """
        results: list[Ingested] = []
        touched: set[int] = set()
        placement = _Placement()
        now = time.time()
        try:
            self._add_in_transaction(batch, results, touched, placement, now)
        except BaseException:
            placement.undo(self.store)  # the rows were rolled back: nothing names these files
            raise
        placement.done(self.store)
        return results

    def _add_in_transaction(self, batch: Iterable[Prepared], results: list[Ingested], touched: set[int],
                            placement: _Placement, now: float) -> None:
        with self.db.transaction():
            batch_sources: dict[int, set[str]] = {}
            for prepared in batch:
                parsed = prepared.parsed
                result = self._add_one(parsed, prepared.temp, now, placement, prepared.placed)
                results.append(result)
                if result.outcome is Outcome.STORED:
                    touched.add(result.series_id)
                    source = str(parsed.instance.get("source") or "")
                    batch_sources.setdefault(result.series_id, set()).add(source.partition("@")[0])
            if self.rules and touched:
                self._apply_rules(touched, batch_sources)
            self.changes.note_series(touched, now)
            for series_id in touched:
                entities.note_remote_progress(self.db, series_id)
                self.db.execute(
                    "UPDATE series SET updated_at = :t WHERE id = :s;"
                    "UPDATE studies SET updated_at = :t WHERE id = (SELECT study_id FROM series WHERE id = :s);"
                    "UPDATE patients SET updated_at = :t WHERE id = ("
                    "  SELECT st.patient_id FROM series se JOIN studies st ON st.id = se.study_id WHERE se.id = :s)",
                    {"t": now, "s": series_id},
                )
            self.store.sync_dirs(placement)  # the files are durable before the index names them

    def _add_one(self, parsed: ParsedInstance, temp: Path, now: float, placement: _Placement,
                 placed: str = "") -> Ingested:
        sop_uid = parsed.sop_uid
        if placed:
            placement.early.append(placed)  # released once this transaction has ended
        try:
            instance_id, series_id, relpath = self.db.get_row(
                "SELECT id, series_id, file_path FROM instances WHERE sop_uid = ?", (sop_uid,)
            )
        except NoSuchRowError:
            pass
        else:
            if relpath == "":  # listed from a remote PACS, arriving now: the row becomes local
                return self._fill_placeholder(instance_id, series_id, parsed, temp, now, placement, placed)
            identical = self.store.same_content(relpath, temp)
            placement.duplicates.append(temp)  # removed once the transaction has committed
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

        patient_id = entities.upsert(self.db, "patients", "patient_key", parsed.patient, now)
        study_id = entities.upsert(self.db, "studies", "study_uid", {**parsed.study, "patient_id": patient_id}, now)
        series_id = entities.upsert(self.db, "series", "series_uid", {**parsed.series, "study_id": study_id}, now)
        relpath = self.store.relpath_for(parsed.study["study_uid"], parsed.series["series_uid"], sop_uid)
        placement.place(self.store, temp, relpath, placed)
        row = {**parsed.instance, "series_id": series_id, "file_path": relpath, "received_at": now}
        self.db.execute(
            f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        for (derived_sop_uid,) in self.db.query(
                "SELECT sop_uid FROM derived_sources WHERE ref_uid = ? AND ref_level = 'instance'", (sop_uid,)):
            entities.link_derived(self.db, derived_sop_uid, series_id, now)  # an object made from this image came first
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
            entities.link_derived(self.db, parsed.sop_uid, series_id, now)

    def _apply_rules(self, series_ids: set[int], sources: dict[int, set[str]]) -> None:
        """Put the studies these series belong to into the projects whose rules they match."""
        by_study: dict[int, set[str]] = {}
        for series_id in series_ids:
            study_id = self.db.get_int("SELECT study_id FROM series WHERE id = ?", (series_id,))
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
        self, instance_id: int, series_id: int, parsed: ParsedInstance, temp: Path, now: float, placement: _Placement,
        placed: str,
    ) -> Ingested:
        relpath = self.store.relpath_for(parsed.study["study_uid"], parsed.series["series_uid"], parsed.sop_uid)
        placement.place(self.store, temp, relpath, placed)
        row = {**parsed.instance, "file_path": relpath, "received_at": now, "fetched": 1}
        self.db.execute(
            f"UPDATE instances SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
            (*row.values(), instance_id),
        )
        return Ingested(parsed.sop_uid, Outcome.STORED, series_id)

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

    def refresh_volume_facts(self) -> int:
        """Record the volume facts of instances indexed before they were kept (or by an older version).

        Reads each file's header only (pixel data is skipped, its offset noted); one
        transaction per hundred files, so a large archive is usable while it runs.
        """
        stale = self.db.query(
            "SELECT id, file_path FROM instances WHERE facts_version != ? AND file_path != ''", (FACTS_VERSION,))
        for start in range(0, len(stale), 100):
            updates = []
            for instance_id, relpath in stale[start:start + 100]:
                try:
                    ds = pydicom.dcmread(self.store.path(relpath), defer_size=4096)
                    updates.append((volume_facts.extract(ds).to_json(), volume_facts.sidecar_json(ds), FACTS_VERSION,
                                    instance_id))
                except Exception as exc:
                    log.error("cannot read the volume facts of %s: %s", relpath, exc)
                    updates.append(("", "", FACTS_VERSION, instance_id))
            with self.db.transaction():
                for row in updates:
                    self.db.execute("UPDATE instances SET volume_facts = ?, volume_sidecar = ?, facts_version = ? "
                                    "WHERE id = ?", row)
                self.db.execute("DELETE FROM volume_plans")  # listings planned from the old facts
        return len(stale)


class _Placement(set[Path]):
    """What a batch does to the store: the folders it moved files into (to fsync), the moves,
    the files the node placed early that it adopts, and the temporaries of duplicates. If
    the transaction that names the files fails (a full disk, say), all of it is undone, so
    a refused instance leaves nothing in the store and the batch can be written again."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[Path, Path]] = []  # (temporary, final)
        self.adopted: list[tuple[Path, str]] = []  # (temporary, relpath) of files placed early
        self.early: list[str] = []  # early placements not adopted (yet): released at the end
        self.duplicates: list[Path] = []

    def place(self, store: Store, temp: Path, relpath: str, placed: str = "") -> None:
        if placed == relpath and store.holds(temp, relpath):
            self.adopted.append((temp, relpath))  # its name and folder are durable already
            return
        if placed:  # placed early under another name, or taken back since: placed as usual
            store.release_early(placed, remove=placed != relpath)
            self.early.remove(placed)
        self.add(store.commit(temp, relpath))
        self.moves.append((temp, store.path(relpath)))

    def undo(self, store: Store) -> None:
        for temp, final in reversed(self.moves):
            try:
                os.replace(final, temp)
            except OSError:
                final.unlink(missing_ok=True)
        for relpath in self.early:  # taken back: the temporary keeps the bytes
            store.release_early(relpath, remove=True)

    def done(self, store: Store) -> None:
        adopted = {relpath for _, relpath in self.adopted}
        for relpath in self.early:  # a duplicate's early copy is not kept
            store.release_early(relpath, remove=relpath not in adopted)
        for temp, _ in self.adopted:
            temp.unlink(missing_ok=True)  # the final name stays
        for temp in self.duplicates:
            temp.unlink(missing_ok=True)
