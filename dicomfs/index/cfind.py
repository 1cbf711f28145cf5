"""C-FIND identifiers → SQL: the attribute matching of PS3.4 C.2.2.2, level by level.

One function per matching type, each citing the standard. Values arrive decoded (str);
matching happens on the index's decoded text, so queries in any character set compare like
with like. Wildcards use SQLite GLOB, in which '%' and '_' are ordinary characters (the
mistake of LIKE-based matchers) and only '[' needs escaping.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dicomfs.index.db import Database


class Level(enum.Enum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class QueryError(ValueError):
    """An identifier the SCP cannot process (maps to a C-FIND failure status)."""


@dataclass(frozen=True, slots=True)
class Key:
    """A matching/return key: where it lives and how it matches."""

    level: Level
    sql: str  # column or expression
    vr: str  # drives the matching rules
    computed: bool = False  # count attributes and the like: return only, no matching


_P, _ST, _SE, _I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

_MODALITIES = ("(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series "
               "WHERE study_id = st.id AND modality != '' ORDER BY 1))")
_SOP_CLASSES = ("(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT i2.sop_class_uid AS c FROM instances i2 "
                "JOIN series s2 ON s2.id = i2.series_id WHERE s2.study_id = st.id ORDER BY 1))")

KEYS: dict[str, Key] = {
    # Patient level (PS3.4 C.6.1.1.2)
    "PatientName": Key(_P, "p.patient_name", "PN"),
    "PatientID": Key(_P, "p.patient_id", "LO"),
    "IssuerOfPatientID": Key(_P, "p.issuer_of_patient_id", "LO"),
    "PatientBirthDate": Key(_P, "p.patient_birth_date", "DA"),
    "PatientBirthTime": Key(_P, "p.patient_birth_time", "TM"),
    "PatientSex": Key(_P, "p.patient_sex", "CS"),
    "OtherPatientIDs": Key(_P, "p.other_patient_ids", "LO"),
    "EthnicGroup": Key(_P, "p.ethnic_group", "SH"),
    "PatientComments": Key(_P, "p.patient_comments", "LT"),
    "NumberOfPatientRelatedStudies": Key(_P, "p.num_studies", "IS", computed=True),
    "NumberOfPatientRelatedSeries": Key(_P, "p.num_series", "IS", computed=True),
    "NumberOfPatientRelatedInstances": Key(_P, "p.num_instances", "IS", computed=True),
    # Study level (PS3.4 C.6.1.1.3, C.6.2.1.2)
    "StudyInstanceUID": Key(_ST, "st.study_uid", "UI"),
    "StudyDate": Key(_ST, "st.study_date", "DA"),
    "StudyTime": Key(_ST, "st.study_time", "TM"),
    "AccessionNumber": Key(_ST, "st.accession_number", "SH"),
    "StudyID": Key(_ST, "st.study_id", "SH"),
    "StudyDescription": Key(_ST, "st.study_description", "LO"),
    "ReferringPhysicianName": Key(_ST, "st.referring_physician_name", "PN"),
    "NameOfPhysiciansReadingStudy": Key(_ST, "st.physicians_reading", "PN"),
    "AdmittingDiagnosesDescription": Key(_ST, "st.admitting_diagnoses", "LO"),
    "PatientAge": Key(_ST, "st.patient_age", "AS"),
    "PatientSize": Key(_ST, "st.patient_size", "DS"),
    "PatientWeight": Key(_ST, "st.patient_weight", "DS"),
    "InstitutionName": Key(_ST, "st.institution_name", "LO"),
    "ModalitiesInStudy": Key(_ST, _MODALITIES, "CS"),
    "SOPClassesInStudy": Key(_ST, _SOP_CLASSES, "UI", computed=True),
    "NumberOfStudyRelatedSeries": Key(_ST, "st.num_series", "IS", computed=True),
    "NumberOfStudyRelatedInstances": Key(_ST, "st.num_instances", "IS", computed=True),
    # Series level (PS3.4 C.6.1.1.4)
    "SeriesInstanceUID": Key(_SE, "se.series_uid", "UI"),
    "Modality": Key(_SE, "se.modality", "CS"),
    "SeriesNumber": Key(_SE, "se.series_number", "IS"),
    "SeriesDescription": Key(_SE, "se.series_description", "LO"),
    "SeriesDate": Key(_SE, "se.series_date", "DA"),
    "SeriesTime": Key(_SE, "se.series_time", "TM"),
    "BodyPartExamined": Key(_SE, "se.body_part_examined", "CS"),
    "ProtocolName": Key(_SE, "se.protocol_name", "LO"),
    "Laterality": Key(_SE, "se.laterality", "CS"),
    "PerformedProcedureStepStartDate": Key(_SE, "se.pps_start_date", "DA"),
    "PerformedProcedureStepStartTime": Key(_SE, "se.pps_start_time", "TM"),
    "NumberOfSeriesRelatedInstances": Key(_SE, "se.num_instances", "IS", computed=True),
    # Composite object instance level (PS3.4 C.6.1.1.5)
    "SOPInstanceUID": Key(_I, "i.sop_uid", "UI"),
    "SOPClassUID": Key(_I, "i.sop_class_uid", "UI"),
    "InstanceNumber": Key(_I, "i.instance_number", "IS"),
    "ContentDate": Key(_I, "i.content_date", "DA"),
    "ContentTime": Key(_I, "i.content_time", "TM"),
    "AcquisitionNumber": Key(_I, "i.acquisition_number", "IS"),
    "Rows": Key(_I, "i.rows", "US"),
    "Columns": Key(_I, "i.columns", "US"),
    "NumberOfFrames": Key(_I, "i.number_of_frames", "IS"),
}

# Person names case-folded at ingest (``fold_name``), each with the index that matching uses.
FOLDED_COLUMNS = {"p.patient_name": "p.patient_name_folded",
                  "st.referring_physician_name": "st.referring_physician_name_folded",
                  "st.physicians_reading": "st.physicians_reading_folded"}


def fold_name(text: str) -> str:
    """``text`` for case-insensitive matching in any script: 'Ödegård^Åsa' → 'ödegård^åsa',
    'STRASSE' and 'Straße' alike (Unicode full case folding of the NFC form)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]
_UNIQUE = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID",
           Level.IMAGE: "SOPInstanceUID"}
_FROM = {
    Level.PATIENT: "patients p",
    Level.STUDY: "studies st JOIN patients p ON p.id = st.patient_id",
    Level.SERIES: "series se JOIN studies st ON st.id = se.study_id JOIN patients p ON p.id = st.patient_id",
    Level.IMAGE: ("instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id "
                  "JOIN patients p ON p.id = st.patient_id"),
}
_ENTITY_ID = {Level.PATIENT: "p.id", Level.STUDY: "st.id", Level.SERIES: "se.id", Level.IMAGE: "i.id"}

# Studies listed from a remote PACS of which nothing is local: not ours to offer.
_REMOTE_ONLY_STUDIES = (
    "SELECT r.study_id FROM remote_studies r WHERE NOT EXISTS (SELECT 1 FROM series s2 "
    "JOIN instances i2 ON i2.series_id = s2.id WHERE s2.study_id = r.study_id AND i2.file_path != '')"
)
_HELD_LOCALLY = {
    Level.PATIENT: f"EXISTS (SELECT 1 FROM studies s3 WHERE s3.patient_id = p.id AND s3.id NOT IN "
                   f"({_REMOTE_ONLY_STUDIES}))",
    Level.STUDY: f"st.id NOT IN ({_REMOTE_ONLY_STUDIES})",
    Level.SERIES: "(NOT EXISTS (SELECT 1 FROM remote_series r WHERE r.series_id = se.id) OR EXISTS ("
                  "SELECT 1 FROM instances i2 WHERE i2.series_id = se.id AND i2.file_path != ''))",
    Level.IMAGE: "i.file_path != ''",
}


@dataclass(slots=True)
class Query:
    level: Level
    conditions: list[str]
    args: list[Any]
    returned: list[str]  # keywords answered, in request order


def build(level: Level, identifier: dict[str, Any], *, patient_root: bool, fold_names: bool) -> Query:
    """Translate ``identifier`` (keyword → decoded value; '' = return only) into SQL.

    Hierarchical search (PS3.4 C.4.1.3.1): below the model's top level, the unique keys of
    every level above must be given; relational queries are not supported.
    """
    top = Level.PATIENT if patient_root else Level.STUDY
    if patient_root is False and level is Level.PATIENT:
        raise QueryError("the Study Root model has no PATIENT level")
    for upper in _ORDER[_ORDER.index(top):_ORDER.index(level)]:
        if not _text(identifier.get(_UNIQUE[upper])):
            raise QueryError(f"hierarchical query at {level.value} level needs {_UNIQUE[upper]}")
    conditions: list[str] = [_HELD_LOCALLY[level]]  # what a remote PACS holds is not answered for
    args: list[Any] = []
    returned: list[str] = []
    for keyword, value in identifier.items():
        key = KEYS.get(keyword)
        if key is None or _ORDER.index(key.level) > _ORDER.index(level):
            continue  # unknown or below the query level: not answered (PS3.4 C.2.2.1.2)
        returned.append(keyword)
        text = _text(value)
        if text and not key.computed:
            sql, sql_args = match(key, text, fold_names=fold_names and key.vr == "PN")
            conditions.append(sql)
            args.extend(sql_args)
    return Query(level, conditions, args, returned)


def run(db: Database, query: Query, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """One answer per entity of the query level, ordered by arrival."""
    columns = [KEYS[k].sql for k in query.returned] or ["1"]
    sql = f"SELECT {', '.join(columns)} FROM {_FROM[query.level]}"
    if query.conditions:
        sql += " WHERE " + " AND ".join(query.conditions)
    sql += f" ORDER BY {_ENTITY_ID[query.level]}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    for row in db.query(sql, query.args):
        yield {k: ("" if v is None else v) for k, v in zip(query.returned, row, strict=False)}


def match(key: Key, value: str, *, fold_names: bool = False) -> tuple[str, list[Any]]:
    """The SQL condition for one key, by the matching type its value calls for."""
    col = key.sql
    if key.vr == "UI":
        return _uid_list(col, value)
    if key.vr in ("DA", "TM", "DT") and "-" in value:
        return _range(col, value)
    if "\\" in value:  # several values: any may match (e.g. Modalities in Study CT\PT)
        parts = [match(key, v, fold_names=fold_names) for v in value.split("\\") if v]
        return "(" + " OR ".join(p[0] for p in parts) + ")", [a for p in parts for a in p[1]]
    if key.sql == _MODALITIES:  # a multi-valued attribute: matches when any value does
        return _any_value(col, value)
    if key.vr not in ("DA", "TM", "DT", "IS", "DS", "US") and ("*" in value or "?" in value):
        return _wildcard(col, value, fold_names, person_name=key.vr == "PN")
    return _single_value(col, key.vr, value, fold_names)


def _single_value(col: str, vr: str, value: str, fold: bool) -> tuple[str, list[Any]]:
    """C.2.2.2.1 Single Value Matching: equal, case-sensitively except PN when configured."""
    if vr in ("IS", "US"):
        try:
            return f"{col} = ?", [int(value)]
        except ValueError as exc:
            raise QueryError(f"{value!r} is not an integer") from exc
    if vr == "PN":  # a name also matches the first group of 'Yamada^Tarou=山田^太郎=...'
        return _wildcard(col, value.replace("*", "").replace("?", ""), fold, person_name=True)
    if fold and col in FOLDED_COLUMNS:
        return f"{FOLDED_COLUMNS[col]} = ?", [fold_name(value)]
    return f"{col} = ?", [value]


def _wildcard(col: str, value: str, fold: bool, *, person_name: bool = False) -> tuple[str, list[Any]]:
    """C.2.2.2.4 Wild Card Matching: '*' any run, '?' one character; nothing else is special.

    For person names the pattern may also match the first component group alone.
    """
    fold = fold and col in FOLDED_COLUMNS  # the stored folded name and its index, not a function per row
    target = FOLDED_COLUMNS[col] if fold else col
    pattern = (fold_name(value) if fold else value).replace("[", "[[]")
    if person_name and "=" not in pattern:
        return f"({target} GLOB ? OR {target} GLOB ?)", [pattern, pattern + "=*"]
    return f"{target} GLOB ?", [pattern]


def _range(col: str, value: str) -> tuple[str, list[Any]]:
    """C.2.2.2.5 Range Matching: 'a-b', '-b', 'a-'; compared on the leading digits given."""
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    conditions, args = [], []
    if low:
        conditions.append(f"{col} != '' AND substr({col}, 1, {len(low)}) >= ?")
        args.append(low)
    if high:
        conditions.append(f"{col} != '' AND substr({col}, 1, {len(high)}) <= ?")
        args.append(high)
    if not conditions:
        raise QueryError(f"{value!r} is not a range")
    return "(" + " AND ".join(conditions) + ")", args


def _uid_list(col: str, value: str) -> tuple[str, list[Any]]:
    """C.2.2.2.2 List of UID Matching: any of the backslash-separated UIDs."""
    uids = [u.strip() for u in value.split("\\") if u.strip()]
    return f"{col} IN ({', '.join('?' * len(uids))})", uids


def _any_value(col: str, value: str) -> tuple[str, list[Any]]:
    """Multi-valued attributes (stored backslash-joined) match when any one value does."""
    pattern = value.replace("[", "[[]")
    return f"('\\' || {col} || '\\') GLOB ?", [f"*\\{pattern}\\*"]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_uid: str
    sop_class_uid: str
    file_path: str
    transfer_syntax_uid: str


def retrieve_set(db: Database, level: Level, identifier: dict[str, Any], *, patient_root: bool) -> list[StoredInstance]:
    """Instances a C-MOVE/C-GET identifier names (PS3.4 C.4.2.2.1: unique keys only).

    The unique key of the retrieve level is required (a list of UIDs is allowed); the unique
    keys of the levels above narrow the set when given.
    """
    top = Level.PATIENT if patient_root else Level.STUDY
    if _ORDER.index(level) < _ORDER.index(top):
        raise QueryError(f"the {'Patient' if patient_root else 'Study'} Root model has no {level.value} level")
    if not _text(identifier.get(_UNIQUE[level])):
        raise QueryError(f"a {level.value} level retrieve needs {_UNIQUE[level]}")
    conditions: list[str] = ["i.file_path != ''"]  # listed from a remote PACS but not fetched: not ours to send
    args: list[Any] = []
    for upper in _ORDER[_ORDER.index(top):_ORDER.index(level) + 1]:
        keyword = _UNIQUE[upper]
        text = _text(identifier.get(keyword))
        if text:
            sql, sql_args = _uid_list(KEYS[keyword].sql, text)
            conditions.append(sql)
            args.extend(sql_args)
    rows = db.query(
        f"SELECT i.sop_uid, i.sop_class_uid, i.file_path, i.transfer_syntax_uid FROM {_FROM[Level.IMAGE]} "
        f"WHERE {' AND '.join(conditions)} ORDER BY i.id",
        args,
    )
    return [StoredInstance(*row) for row in rows]



def stored_syntaxes(db: Database, sop_classes: list[str]) -> dict[str, set[str]]:
    """For each of these SOP classes, the transfer syntaxes its instances are stored in.

    A loose scan of instances_sop_class_syntax: one probe per distinct value, whatever the
    number of instances. Rows listed from a remote and not fetched have no syntax.
    """
    stored: dict[str, set[str]] = {}
    for sop_class in sop_classes:
        syntax = ""
        while (syntax := db.get_val_or(
            None, "SELECT transfer_syntax_uid FROM instances WHERE sop_class_uid = ? AND transfer_syntax_uid > ? "
            "ORDER BY transfer_syntax_uid LIMIT 1", (sop_class, syntax),
        )) is not None:
            stored.setdefault(sop_class, set()).add(syntax)
    return stored
