"""Inode numbers of the mounted tree: ``row id << 5 | kind``, computed, never allocated.

Row ids come from AUTOINCREMENT columns, so a number is never reused, needs no table, and
survives remounts. A folder that appears in several layouts gets one kind per layout (the
kernel allows a directory only one parent); an instance file shares one inode across layouts.
"""

from __future__ import annotations

import enum

import pyfuse3

KIND_BITS = 5
ROOT_INODE = pyfuse3.ROOT_INODE  # == 1: kind TOP, id 0


class Kind(enum.IntEnum):
    TOP = 1  # id 0: the root; 1 /patients, 2 /studies, 3 /dates, 4 /projects, 5 /query, 6 /orphans
    PATIENT = 2  # /patients/<patient>
    P_STUDY = 3  # /patients/<patient>/<study>
    U_STUDY = 4  # /studies/<StudyInstanceUID>
    D_STUDY = 5  # /dates/<year>/<day>/<study>
    P_SERIES = 6
    U_SERIES = 7
    D_SERIES = 8
    YEAR = 9  # id: the year, 0 for studies without a valid date
    DAY = 10  # id: YYYYMMDD
    DCM = 11  # files: id is the instance row id
    JSON = 12
    JPG = 13
    PATIENT_JSON = 14  # id is the patient, study or series row id
    STUDY_JSON = 15
    SERIES_JSON = 16
    PROJECT = 17  # /projects/<name>: id is the project row id
    J_PATIENT = 18  # /projects/<name>/<patient>/...: id packs (project id, row id), see pack_ids
    J_STUDY = 19
    J_SERIES = 20
    DERIVED = 21  # <study or series folder>/derived: id is that folder's inode (unique per path)
    DERIVED_FILE = 22  # id is the derived row id
    QUERY = 23  # /query/<query>: id is the queries row id
    Q_STUDY = 24  # /query/<query>/<study>: id packs (query id, study id)
    Q_SERIES = 25
    ORPHAN = 26  # /orphans/<origin>: derived data of a deleted study or series; id packs it, see orphan_id
    ORPHAN_JSON = 27  # /orphans/<origin>/origin.json


TOP_PATIENTS, TOP_STUDIES, TOP_DATES, TOP_PROJECTS, TOP_QUERY, TOP_ORPHANS = 1, 2, 3, 4, 5, 6
TOP_NAMES = {TOP_PATIENTS: "patients", TOP_STUDIES: "studies", TOP_DATES: "dates", TOP_PROJECTS: "projects",
             TOP_QUERY: "query", TOP_ORPHANS: "orphans"}
UNKNOWN_YEAR_NAME = "unknown"

SERIES_KIND_IN = {Kind.P_STUDY: Kind.P_SERIES, Kind.U_STUDY: Kind.U_SERIES, Kind.D_STUDY: Kind.D_SERIES}
STUDY_KINDS = frozenset(SERIES_KIND_IN)
SERIES_KINDS = frozenset(SERIES_KIND_IN.values())
PROJECT_KINDS = frozenset({Kind.PROJECT, Kind.J_PATIENT, Kind.J_STUDY, Kind.J_SERIES})
QUERY_KINDS = frozenset({Kind.QUERY, Kind.Q_STUDY, Kind.Q_SERIES})
DIR_KINDS = frozenset({Kind.TOP, Kind.PATIENT, Kind.YEAR, Kind.DAY, Kind.DERIVED, Kind.ORPHAN}) | STUDY_KINDS \
    | SERIES_KINDS | PROJECT_KINDS | QUERY_KINDS
DERIVED_NAME = "derived"
INSTANCE_VIEW_KINDS = frozenset({Kind.DCM, Kind.JSON, Kind.JPG})
SUMMARY_KINDS = frozenset({Kind.PATIENT_JSON, Kind.STUDY_JSON, Kind.SERIES_JSON})
IN_MEMORY_KINDS = SUMMARY_KINDS | {Kind.ORPHAN_JSON}  # files generated whole when opened

SUMMARY_NAMES = {Kind.PATIENT_JSON: "patient.json", Kind.STUDY_JSON: "study.json", Kind.SERIES_JSON: "series.json"}
ORPHAN_JSON_NAME = "origin.json"


def inode_of(kind: Kind, row_id: int) -> int:
    return (row_id << KIND_BITS) | kind


def pack_ids(project_id: int, row_id: int) -> int:
    """One id for a folder inside a project: the same study shows in several projects."""
    return (project_id << 32) | row_id


def unpack_ids(packed: int) -> tuple[int, int]:
    return packed >> 32, packed & 0xFFFFFFFF


def orphan_id(level: str, entity_id: int) -> int:
    """The id of an /orphans folder: the deleted study's or series' row id (never reused) and its level."""
    return entity_id << 1 | (level == "series")


def orphan_origin(orphan: int) -> tuple[str, int]:
    return ("series" if orphan & 1 else "study"), orphan >> 1


def split_inode(inode: int) -> tuple[Kind, int]:
    """Kind and id of an inode; ValueError for a number this tree never hands out."""
    return Kind(inode & ((1 << KIND_BITS) - 1)), inode >> KIND_BITS
