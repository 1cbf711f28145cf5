"""``dicomfs find``: structured queries over the index, printed as a table, JSON lines or mount paths.

Paths are the ones the mount shows under ``/patients`` (built by the mount's own layout model,
so names with collision suffixes match exactly), ready for ``xargs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from dicomfs.commands.output import print_table
from dicomfs.errors import UserError
from dicomfs.index import organise, query_language
from dicomfs.index.db import Database
from dicomfs.index.schema import SCHEMA_VERSION

_PARENT = {
    "study": ("SELECT patient_id FROM studies WHERE id = ?", "patient"),
    "series": ("SELECT study_id FROM series WHERE id = ?", "study"),
    "instance": ("SELECT series_id FROM instances WHERE id = ?", "series"),
}
_DESCRIBE = {
    "patient": ("SELECT patient_name, patient_id, num_studies, num_instances FROM patients WHERE id = ?",
                ("PatientName", "PatientID", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")),
    "study": ("SELECT p.patient_name, p.patient_id, st.study_date, st.study_description, st.num_series, "
              "st.num_instances, st.study_uid FROM studies st JOIN patients p ON p.id = st.patient_id WHERE st.id = ?",
              ("PatientName", "PatientID", "StudyDate", "StudyDescription", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances", "StudyInstanceUID")),
    "series": ("SELECT p.patient_id, st.study_date, se.series_number, se.modality, se.series_description, "
               "se.num_instances, se.series_uid FROM series se JOIN studies st ON st.id = se.study_id "
               "JOIN patients p ON p.id = st.patient_id WHERE se.id = ?",
               ("PatientID", "StudyDate", "SeriesNumber", "Modality", "SeriesDescription",
                "NumberOfSeriesRelatedInstances", "SeriesInstanceUID")),
    "instance": ("SELECT se.series_uid, i.instance_number, i.sop_class_uid, i.sop_uid FROM instances i "
                 "JOIN series se ON se.id = i.series_id WHERE i.id = ?",
                 ("SeriesInstanceUID", "InstanceNumber", "SOPClassUID", "SOPInstanceUID")),
}


class MountPaths:
    """Mount paths of entities, through the mount's own layout model (listings cached per folder)."""

    def __init__(self, db: Database, mount: Path) -> None:
        from dicomfs.mount.model import Model  # no pyfuse3, trio or image libraries: only names

        self.db = db
        self.mount = mount
        self.model = Model(db)
        self._names: dict[int, dict[int, str]] = {}

    def path(self, level: str, row_id: int) -> Path:
        from dicomfs.mount.kinds import Kind, Top, inode_of

        if level == "patient":
            top = inode_of(Kind.TOP_FOLDER, Top.PATIENTS)
            return self.mount / "patients" / self._name(top, inode_of(Kind.PATIENT, row_id))
        sql, parent_level = _PARENT[level]
        parent_id = self.db.get_int(sql, (row_id,))
        kinds = {"patient": Kind.PATIENT, "study": Kind.PATIENT_STUDY, "series": Kind.PATIENT_SERIES,
                 "instance": Kind.INSTANCE_DCM}
        name = self._name(inode_of(kinds[parent_level], parent_id), inode_of(kinds[level], row_id))
        return self.path(parent_level, parent_id) / name

    def _name(self, folder: int, inode: int) -> str:
        names = self._names.get(folder)
        if names is None:
            names = self._names[folder] = {node.inode: node.name for node in self.model.children(folder)}
        return names[inode]


def find(db: Database, text: str, level: str, output: str, mount: Path, out: TextIO, limit: int | None) -> int:
    """Print the matches of ``text`` at ``level``; returns how many matched."""
    query_language.compile_query(text, level)  # a bad query is the first thing to say
    _check_schema(db)
    ids = query_language.run(db, text, level, limit=limit)
    if output == "count":
        out.write(f"{len(ids)}\n")
        return len(ids)
    paths = MountPaths(db, mount) if output in ("paths", "json") else None
    sql, columns = _DESCRIBE[level]
    rows = []
    for row_id in ids:
        values = dict(zip(columns, db.get_row(sql, (row_id,)), strict=True))
        if output == "paths":
            assert paths is not None
            out.write(f"{paths.path(level, row_id)}\n")
            continue
        if output == "json":
            assert paths is not None
            values["path"] = str(paths.path(level, row_id))
            if level != "instance":
                values["Tags"] = organise.tags_of(db, level, row_id)
                values["Projects"] = organise.projects_of(db, level, row_id)
            out.write(json.dumps(values, ensure_ascii=False, default=str) + "\n")
            continue
        rows.append(values)
    if output == "table":
        print_table(rows, columns, out)
    return len(ids)


def _check_schema(db: Database) -> None:
    """``find`` reads the index without writing: an index of an older dicomfs is not upgraded here."""
    version = db.get_int("PRAGMA user_version")
    if version < SCHEMA_VERSION:
        raise UserError(f"the index {db.path} is of an older dicomfs (schema {version}, this one reads "
                        f"{SCHEMA_VERSION}): start 'dicomfs serve' once, which upgrades it")
