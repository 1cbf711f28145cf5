"""Deleting patients, studies and series from the archive, without losing what was made from them.

Everything below the deleted entities goes: instance rows and files, tags, project
memberships, what a remote PACS was known to have. Derived data made from them stays, file
and row, marked with the time of the deletion and a description of what its origin was: it
is listed under the mount's ``/orphans`` and by ``dicomfs derive list --orphaned``, and a
study or series of the same UID arriving again takes it back. Derived DICOM objects that are
themselves deleted leave every derived/ folder they were shown in.

The index commits first and the files are deleted after, as with cache eviction: a crash in
between leaves unindexed files, never rows that name missing files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database
from dicomfs.store import Store

log = logging.getLogger(__name__)

LEVELS = ("patient", "study", "series")

# What a deleted origin was, kept as JSON on its orphaned derived rows.
_DESCRIPTION = {
    "study": (
        "SELECT st.id, json_object('level', 'study', 'StudyInstanceUID', st.study_uid, 'PatientName', "
        "p.patient_name, 'PatientID', p.patient_id, 'StudyDate', st.study_date, 'StudyDescription', "
        "st.study_description, 'AccessionNumber', st.accession_number) FROM studies st "
        "JOIN patients p ON p.id = st.patient_id WHERE st.id IN (SELECT id FROM temp.doomed_studies)"
    ),
    "series": (
        "SELECT se.id, json_object('level', 'series', 'SeriesInstanceUID', se.series_uid, 'Modality', se.modality, "
        "'SeriesNumber', se.series_number, 'SeriesDescription', se.series_description, 'StudyInstanceUID', "
        "st.study_uid, 'PatientName', p.patient_name, 'PatientID', p.patient_id, 'StudyDate', st.study_date) "
        "FROM series se JOIN studies st ON st.id = se.study_id JOIN patients p ON p.id = st.patient_id "
        "WHERE se.id IN (SELECT id FROM temp.doomed_series)"
    ),
}


@dataclass(frozen=True, slots=True)
class Deletion:
    patients: int
    studies: int
    series: int
    instances: int
    orphaned: int  # derived items whose origin is now gone
    files: list[str]  # instance files (relative to the store) to delete once committed


def plan(db: Database, level: str, ids: Iterable[int]) -> Deletion:
    """What ``delete`` would remove, without removing anything."""
    with db.transaction():  # only temp tables are written
        return _mark(db, level, ids, files=False)


def delete(db: Database, store: Store, level: str, ids: Iterable[int]) -> Deletion:
    """Delete the entities ``ids`` of ``level`` and everything below them; see the module docstring."""
    now = time.time()
    with db.transaction():
        deletion = _mark(db, level, ids, files=True)
        _orphan_derived(db, now)
        _remove_rows(db, now)
    missing = 0
    for relpath in deletion.files:
        try:
            store.path(relpath).unlink()
        except FileNotFoundError:
            missing += 1
    if missing:
        log.warning("%d deleted instance files were already missing from the store", missing)
    log.info("deleted %d patients, %d studies, %d series, %d instances; %d derived items kept as orphans",
             deletion.patients, deletion.studies, deletion.series, deletion.instances, deletion.orphaned)
    return deletion


def _mark(db: Database, level: str, ids: Iterable[int], *, files: bool) -> Deletion:
    """Fill temp tables with the doomed series, studies and patients (inside the caller's transaction).

    A study left without series goes with them, and a patient left without studies.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    for table in ("doomed_series", "doomed_studies", "doomed_patients", "doomed_picked"):
        db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY)")
        db.execute(f"DELETE FROM temp.{table}")
    for entity_id in ids:
        db.execute("INSERT OR IGNORE INTO temp.doomed_picked (id) VALUES (?)", (entity_id,))
    picked = "SELECT id FROM temp.doomed_picked"
    if level == "patient":
        db.execute(f"INSERT INTO temp.doomed_patients SELECT id FROM patients WHERE id IN ({picked})")
        db.execute("INSERT INTO temp.doomed_studies SELECT id FROM studies "
                   "WHERE patient_id IN (SELECT id FROM temp.doomed_patients)")
    elif level == "study":
        db.execute(f"INSERT INTO temp.doomed_studies SELECT id FROM studies WHERE id IN ({picked})")
    if level == "series":
        db.execute(f"INSERT INTO temp.doomed_series SELECT id FROM series WHERE id IN ({picked})")
        db.execute(
            "INSERT INTO temp.doomed_studies SELECT DISTINCT se.study_id FROM series se "
            "WHERE se.id IN (SELECT id FROM temp.doomed_series) AND NOT EXISTS (SELECT 1 FROM series other "
            "WHERE other.study_id = se.study_id AND other.id NOT IN (SELECT id FROM temp.doomed_series))")
    else:
        db.execute("INSERT INTO temp.doomed_series SELECT id FROM series "
                   "WHERE study_id IN (SELECT id FROM temp.doomed_studies)")
    if level != "patient":
        db.execute(
            "INSERT INTO temp.doomed_patients SELECT DISTINCT st.patient_id FROM studies st "
            "WHERE st.id IN (SELECT id FROM temp.doomed_studies) AND NOT EXISTS (SELECT 1 FROM studies other "
            "WHERE other.patient_id = st.patient_id AND other.id NOT IN (SELECT id FROM temp.doomed_studies))")
    below = "series_id IN (SELECT id FROM temp.doomed_series)"
    counted = {table: db.get_int(f"SELECT count(*) FROM temp.{table}")
               for table in ("doomed_patients", "doomed_studies", "doomed_series")}
    orphaned = db.get_int(
        "SELECT count(*) FROM derived WHERE origin_deleted_at IS NULL AND ("
        "(level = 'study' AND entity_id IN (SELECT id FROM temp.doomed_studies)) OR "
        "(level = 'series' AND entity_id IN (SELECT id FROM temp.doomed_series))) AND (sop_uid IS NULL OR "
        f"sop_uid NOT IN (SELECT sop_uid FROM instances WHERE {below}))")
    return Deletion(
        patients=counted["doomed_patients"], studies=counted["doomed_studies"], series=counted["doomed_series"],
        instances=db.get_int(f"SELECT count(*) FROM instances WHERE {below}"),
        orphaned=orphaned,
        files=[r[0] for r in db.query(f"SELECT file_path FROM instances WHERE {below} AND file_path != ''")]
        if files else [],
    )


def _orphan_derived(db: Database, now: float) -> None:
    """Derived items of deleted origins stay, saying what the origin was; deleted objects leave."""
    doomed_objects = "SELECT sop_uid FROM instances WHERE series_id IN (SELECT id FROM temp.doomed_series)"
    db.execute(f"DELETE FROM derived WHERE sop_uid IN ({doomed_objects})")
    db.execute(f"DELETE FROM derived_sources WHERE sop_uid IN ({doomed_objects})")
    for level, described in _DESCRIPTION.items():
        for entity_id, description in db.query(described):
            db.execute(
                "UPDATE derived SET origin_deleted_at = ?, origin_description = ? "
                "WHERE level = ? AND entity_id = ? AND origin_deleted_at IS NULL",
                (now, description, level, entity_id))


def _remove_rows(db: Database, now: float) -> None:
    """The rows themselves, then the removals a running mount acts on (in the change log)."""
    doomed = {"patient": "temp.doomed_patients", "study": "temp.doomed_studies", "series": "temp.doomed_series"}
    instances = "SELECT id FROM instances WHERE series_id IN (SELECT id FROM temp.doomed_series)"
    removed = [(level, row[0]) for level, table in doomed.items() for row in db.query(f"SELECT id FROM {table}")]
    db.execute(f"DELETE FROM tags WHERE level = 'instance' AND entity_id IN ({instances})")
    for level, table in doomed.items():
        db.execute(f"DELETE FROM tags WHERE level = ? AND entity_id IN (SELECT id FROM {table})", (level,))
        db.execute(f"DELETE FROM project_members WHERE level = ? AND entity_id IN (SELECT id FROM {table})",
                   (level,))
    db.execute("DELETE FROM remote_series WHERE series_id IN (SELECT id FROM temp.doomed_series)")
    db.execute("DELETE FROM remote_studies WHERE study_id IN (SELECT id FROM temp.doomed_studies)")
    db.execute("DELETE FROM instances WHERE series_id IN (SELECT id FROM temp.doomed_series)")
    db.execute("DELETE FROM series WHERE id IN (SELECT id FROM temp.doomed_series)")
    db.execute("DELETE FROM studies WHERE id IN (SELECT id FROM temp.doomed_studies)")
    db.execute("DELETE FROM patients WHERE id IN (SELECT id FROM temp.doomed_patients)")
    ChangeLog(db).note_removal(removed, now)
