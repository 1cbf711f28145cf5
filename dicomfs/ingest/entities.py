"""Rows that both writers of the index share: the instance writer and the remote listings.

Patients, studies and series are found by key or inserted, the first values kept so tree
names stay stable. A study or series row that is new takes back what a deleted one of the
same UID left, and derived objects that named it before it arrived are linked to it.
Everything here runs inside the caller's transaction.
"""

from __future__ import annotations

from dicomfs.index.cfind import fold_name
from dicomfs.index.db import Database, NoSuchRowError


def upsert(db: Database, table: str, key: str, values: dict[str, object], now: float) -> int:
    """Row id for ``values[key]`` in ``table`` (patients, studies or series), inserted if new."""
    try:
        return db.get_int(f"SELECT id FROM {table} WHERE {key} = ?", (values[key],))
    except NoSuchRowError:
        pass
    row = {**values, **_folded(table, values), "created_at": now, "updated_at": now}
    db.execute(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )
    row_id = db.last_rowid()
    if table in ("studies", "series"):
        _welcome(db, table, row_id, str(values[key]), now)
    return row_id


# Person names kept case-folded beside them, for matching that ignores case in any script.
_FOLDED = {"patients": {"patient_name": "patient_name_folded"},
           "studies": {"referring_physician_name": "referring_physician_name_folded",
                       "physicians_reading": "physicians_reading_folded"}}


def _folded(table: str, values: dict[str, object]) -> dict[str, str]:
    return {folded: fold_name(str(values.get(column) or "")) for column, folded in _FOLDED.get(table, {}).items()}


def link_derived(db: Database, derived_sop_uid: str, series_id: int, now: float) -> None:
    """Show a derived DICOM object in the derived/ folder of a series it was made from."""
    own_series, modality, size = db.get_row(
        "SELECT i.series_id, se.modality, i.file_size FROM instances i JOIN series se ON se.id = i.series_id "
        "WHERE i.sop_uid = ?", (derived_sop_uid,))
    if series_id == own_series:
        return
    db.execute(
        "INSERT INTO derived (level, entity_id, origin_uid, name, kind, file_path, sop_uid, size, created_at, "
        "updated_at) SELECT 'series', id, series_uid, ?, 'dicom', '', ?, ?, ?, ? FROM series WHERE id = ? "
        "ON CONFLICT DO NOTHING",
        (f"{modality or 'DICOM'}_{derived_sop_uid}.dcm", derived_sop_uid, size, now, now, series_id))


def note_remote_progress(db: Database, series_id: int) -> None:
    """A remote series is complete once it was listed and no listed instance is missing."""
    db.execute(
        "UPDATE remote_series SET complete = (instances_listed_at IS NOT NULL AND NOT EXISTS ("
        "  SELECT 1 FROM instances WHERE series_id = :s AND file_path = '')) WHERE series_id = :s",
        {"s": series_id},
    )


def _welcome(db: Database, table: str, row_id: int, uid: str, now: float) -> None:
    """A new study or series row: take back derived data left by a deleted one of that UID (a
    name taken meanwhile leaves that item orphaned rather than failing the write), and link
    derived objects that named this series before it arrived."""
    level = "study" if table == "studies" else "series"
    db.execute(
        "UPDATE OR IGNORE derived SET entity_id = ?, origin_deleted_at = NULL, origin_description = '' "
        "WHERE level = ? AND origin_uid = ? AND origin_deleted_at IS NOT NULL", (row_id, level, uid))
    if level == "series":
        for (derived_sop_uid,) in db.query(
                "SELECT sop_uid FROM derived_sources WHERE ref_uid = ? AND ref_level = 'series'", (uid,)):
            link_derived(db, derived_sop_uid, row_id, now)
