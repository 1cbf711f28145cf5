"""Every kind of entry in the mounted tree, and inode numbers: ``row id << 5 | kind``.

Inode numbers are computed, never allocated. Row ids come from AUTOINCREMENT columns, so a
number is never reused, needs no table, and survives remounts. A folder that appears in
several layouts gets one kind per layout (the kernel allows a directory only one parent);
an instance file shares one inode across layouts. Each kind carries what the rest of the
mount needs to know about it: folder or file, which level of entity it shows, how its ids
are packed, and where a file's bytes come from.
"""

from __future__ import annotations

import enum

KIND_BITS = 5  # every value 1-31 is taken: the next kind needs 6 bits (inode numbers then all change,
# which is safe between mounts: they are computed, never stored)


class Content(enum.Enum):
    """Where the bytes of a file come from when it is opened."""

    STORED = "stored"  # the instance's stored Part 10 file, read with pread
    RENDERED = "rendered"  # a view rendered from the stored file on first read (.json, .jpg)
    GENERATED = "generated"  # made whole from the index when opened (summaries, origin.json)
    DERIVED = "derived"  # a derived file: readable, and writable in derived/ folders
    VOLUME = "volume"  # a series volume: a NIfTI header, then slices read from the stored files


class Ids(enum.Enum):
    """What the id half of an inode number is."""

    ROW = "row"  # a row id of the kind's level (or a year, a day, a top folder number)
    SCOPED = "scoped"  # (project or query id, row id), see ``scoped_id``
    ORPHAN = "orphan"  # (level, row id) of a deleted origin, see ``orphan_id``
    FOLDER = "folder"  # the inode of the study or series folder a derived/ folder belongs to
    VOLUME = "volume"  # (series row id, volume number, file part), see ``volume_id``
    FRAME = "frame"  # (instance row id, frame number), see ``frame_id``


class Kind(enum.IntEnum):
    """Entry kinds. Values are part of every inode number: never renumber them."""

    folder: bool
    level: str | None  # the entity whose row the id names: patient, study, series or instance
    ids: Ids
    content: Content | None  # files only

    def __new__(cls, value: int, folder: bool, level: str | None = None, ids: Ids = Ids.ROW,
                content: Content | None = None) -> Kind:
        member = int.__new__(cls, value)
        member._value_ = value
        member.folder, member.level, member.ids, member.content = folder, level, ids, content
        return member

    TOP_FOLDER = 1, True  # id 0: the root; 1 /patients, 2 /studies, 3 /dates, 4 /projects, 5 /query, 6 /orphans
    PATIENT = 2, True, "patient"  # /patients/<patient>
    PATIENT_STUDY = 3, True, "study"  # /patients/<patient>/<study>
    UID_STUDY = 4, True, "study"  # /studies/<StudyInstanceUID>
    DATED_STUDY = 5, True, "study"  # /dates/<year>/<day>/<study>
    PATIENT_SERIES = 6, True, "series"  # /patients/<patient>/<study>/<series>
    UID_SERIES = 7, True, "series"  # /studies/<StudyInstanceUID>/<SeriesInstanceUID>
    DATED_SERIES = 8, True, "series"
    YEAR = 9, True  # /dates/<year>: id is the year, 0 for studies without a valid date
    DAY = 10, True  # /dates/<year>/<day>: id is YYYYMMDD
    INSTANCE_DCM = 11, False, "instance", Ids.ROW, Content.STORED  # NNN.dcm
    INSTANCE_JSON = 12, False, "instance", Ids.ROW, Content.RENDERED  # NNN.json
    INSTANCE_JPG = 13, False, "instance", Ids.ROW, Content.RENDERED  # NNN.jpg
    PATIENT_JSON = 14, False, "patient", Ids.ROW, Content.GENERATED
    STUDY_JSON = 15, False, "study", Ids.ROW, Content.GENERATED
    SERIES_JSON = 16, False, "series", Ids.ROW, Content.GENERATED
    PROJECT = 17, True  # /projects/<name>: id is the project row id
    PROJECT_PATIENT = 18, True, "patient", Ids.SCOPED  # /projects/<name>/<patient>
    PROJECT_STUDY = 19, True, "study", Ids.SCOPED
    PROJECT_SERIES = 20, True, "series", Ids.SCOPED
    DERIVED_FOLDER = 21, True, None, Ids.FOLDER  # <study or series folder>/derived
    DERIVED_FILE = 22, False, None, Ids.ROW, Content.DERIVED  # id is the derived row id
    QUERY = 23, True  # /query/<query>: id is the queries row id
    QUERY_STUDY = 24, True, "study", Ids.SCOPED  # /query/<query>/<study>
    QUERY_SERIES = 25, True, "series", Ids.SCOPED
    ORPHAN = 26, True, None, Ids.ORPHAN  # /orphans/<level>-<UID>: derived data of a deleted origin
    ORPHAN_JSON = 27, False, None, Ids.ORPHAN, Content.GENERATED  # /orphans/<origin>/origin.json
    VOLUME_NII = 28, False, "series", Ids.VOLUME, Content.VOLUME  # <series>/volume*.nii
    VOLUME_TEXT = 29, False, "series", Ids.VOLUME, Content.GENERATED  # its .json sidecar, .bval, .bvec
    FRAME_FOLDER = 30, True, "instance"  # NNN.frames/ beside a multi-frame instance: id is its row id
    FRAME_JPG = 31, False, "instance", Ids.FRAME, Content.RENDERED  # NNN.frames/0001.jpg: one frame


class Top(enum.IntEnum):
    """The folders at the root: the id of their TOP_FOLDER inode."""

    ROOT = 0
    PATIENTS = 1
    STUDIES = 2
    DATES = 3
    PROJECTS = 4
    QUERY = 5
    ORPHANS = 6


def inode_of(kind: Kind, row_id: int) -> int:
    return (row_id << KIND_BITS) | kind


def split_inode(inode: int) -> tuple[Kind, int]:
    """Kind and id of an inode; ValueError for a number this tree never hands out."""
    return Kind(inode & ((1 << KIND_BITS) - 1)), inode >> KIND_BITS


def scoped_id(scope_id: int, row_id: int) -> int:
    """One id for a folder inside a project or query: the same study shows in several."""
    return (scope_id << 32) | row_id


def unscoped(packed: int) -> tuple[int, int]:
    """(scope id, row id) of a ``scoped_id``."""
    return packed >> 32, packed & 0xFFFFFFFF


def orphan_id(level: str, entity_id: int) -> int:
    """The id of an /orphans folder: the deleted study's or series' row id (never reused) and its level."""
    return entity_id << 1 | (level == "series")


def orphan_origin(orphan: int) -> tuple[str, int]:
    return ("series" if orphan & 1 else "study"), orphan >> 1


class VolumePart(enum.IntEnum):
    """The files of one series volume (the part of a ``volume_id``)."""

    NII = 0
    JSON = 1
    BVAL = 2
    BVEC = 3


VOLUME_BITS = 4  # up to 16 volumes per series (volumes.plan.MAX_VOLUMES)


def volume_id(series_id: int, number: int, part: VolumePart = VolumePart.NII) -> int:
    """One id for each file of each volume of a series: shared by every layout, like instances."""
    return ((series_id << VOLUME_BITS | number) << 2) | part


def volume_of(packed: int) -> tuple[int, int, VolumePart]:
    """(series row id, volume number, part) of a ``volume_id``."""
    return packed >> (VOLUME_BITS + 2), (packed >> 2) & ((1 << VOLUME_BITS) - 1), VolumePart(packed & 3)


FRAME_BITS = 16
MAX_FRAMES = (1 << FRAME_BITS) - 1
"""Frames a frames folder lists (numbered from 1); an object with more shows its first ones."""


def frame_id(instance_id: int, frame: int) -> int:
    """The id of one frame's view: the instance's row id and the frame number (1-based)."""
    return instance_id << FRAME_BITS | frame


def unframed(packed: int) -> tuple[int, int]:
    """(instance row id, frame number) of a ``frame_id``."""
    return packed >> FRAME_BITS, packed & MAX_FRAMES


def entity_of(kind: Kind, row_id: int) -> int:
    """The row id of the entity (at ``kind.level``) that an inode of ``kind`` shows."""
    if kind.ids is Ids.SCOPED:
        return unscoped(row_id)[1]
    if kind.ids is Ids.FRAME:
        return unframed(row_id)[0]
    if kind.ids is Ids.VOLUME:
        return volume_of(row_id)[0]
    return row_id
