"""The index rows the mount shows, typed, each read with one query per folder.

Listings and summaries read the same rows through these functions and name them with the
same functions of ``naming``, so a summary always lists the names of the folders beside it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.mount.kinds import orphan_origin


class PatientRow(NamedTuple):
    id: int
    patient_name: str
    patient_id: str
    updated_at: float


class StudyRow(NamedTuple):
    id: int
    study_date: str
    study_time: str
    study_description: str
    accession_number: str
    updated_at: float
    patient_name: str
    modalities: str  # backslash-joined, sorted; '' when no series has one
    study_uid: str


class SeriesRow(NamedTuple):
    id: int
    series_uid: str
    series_number: int | None
    modality: str
    series_description: str
    updated_at: float
    num_instances: int


class InstanceRow(NamedTuple):
    id: int
    instance_number: int | None
    sop_uid: str
    file_size: int
    json_size: int
    rows: int
    columns: int
    photometric: str
    has_image: int
    received_at: float
    sop_class_uid: str
    local: int  # 0: listed from a remote PACS, not fetched yet
    transfer_syntax_uid: str
    number_of_frames: int


_PATIENTS = "SELECT id, patient_name, patient_id, updated_at FROM patients p "
_STUDIES = (
    "SELECT st.id, st.study_date, st.study_time, st.study_description, st.accession_number, "
    "st.updated_at, p.patient_name, "
    "coalesce((SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series "
    "  WHERE study_id = st.id AND modality != '' ORDER BY modality)), ''), st.study_uid "
    "FROM studies st JOIN patients p ON p.id = st.patient_id "
)
_SERIES = "SELECT id, series_uid, series_number, modality, series_description, updated_at, num_instances FROM series "
_INSTANCES = (
    "SELECT id, instance_number, sop_uid, file_size, json_size, rows, columns, photometric, has_image, "
    "received_at, sop_class_uid, file_path != '', transfer_syntax_uid, number_of_frames FROM instances "
)


def patients(db: Database, where: str = "", args: Any = ()) -> list[PatientRow]:
    """Patients in arrival order; ``where`` is SQL over ``p`` (the patients table)."""
    return [PatientRow(*r) for r in db.query(f"{_PATIENTS}{where} ORDER BY p.id", args)]


def studies(db: Database, where: str = "", args: Any = ()) -> list[StudyRow]:
    """Studies in arrival order; ``where`` is SQL over ``st`` (studies) and ``p`` (patients)."""
    return [StudyRow(*r) for r in db.query(f"{_STUDIES}{where} ORDER BY st.id", args)]


def series_of(db: Database, study_id: int, where: str = "", args: Any = ()) -> list[SeriesRow]:
    """A study's series in arrival order; ``where`` (starting with AND) narrows them."""
    return [SeriesRow(*r) for r in db.query(f"{_SERIES}WHERE study_id = :study {where} ORDER BY id",
                                           {"study": study_id, **(args or {})})]


def instances_of(db: Database, series_id: int) -> list[InstanceRow]:
    return [InstanceRow(*r) for r in db.query(f"{_INSTANCES}WHERE series_id = ? ORDER BY id", (series_id,))]


class InstanceFile(NamedTuple):
    """What opening an instance's view needs."""

    file_path: str  # relative to the store; '' while only listed from a remote PACS
    json_size: int  # the size the .json view was listed with
    sop_uid: str
    fetched: int  # 1: fetched from a remote PACS into the cache (evictable)
    series_id: int


def instance_file(db: Database, instance_id: int) -> InstanceFile:
    """NoSuchRowError when the instance is gone."""
    return InstanceFile(*db.get_row(
        "SELECT file_path, json_size, sop_uid, fetched, series_id FROM instances WHERE id = ?", (instance_id,)))


ORPHANED = "FROM derived WHERE origin_deleted_at IS NOT NULL"  # derived data whose origin was deleted


def orphan_mtime(db: Database, orphan: int) -> float:
    """When the origin of an /orphans folder was deleted (NoSuchRowError: nothing is left of it)."""
    level, entity_id = orphan_origin(orphan)
    deleted = db.get_val(f"SELECT max(origin_deleted_at) {ORPHANED} AND level = ? AND entity_id = ?",
                         (level, entity_id))
    if deleted is None:
        raise NoSuchRowError(orphan)
    return float(deleted)
