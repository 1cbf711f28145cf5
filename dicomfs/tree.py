"""The mounted tree as data: which entries each folder has, and what the kernel sees of them.

Inode numbers are computed, not allocated: ``row id << 5 | kind``. Row ids come from
AUTOINCREMENT columns, so a number is never reused, needs no table, and survives remounts.
A folder that appears in several layouts gets one kind per layout (the kernel allows a
directory only one parent); an instance file shares one inode across layouts.

Listings are built with one query per folder, cached in memory (most recently used kept),
and dropped when the index reports a change below them. Sizes are known without rendering:
``.dcm`` is the stored file, ``.json`` was measured at ingest, ``.jpg`` has a size fixed by
the image geometry (see ``views.jpeg``), summaries are generated with the listing.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

from dicomfs.index import naming, organise
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.views.jpeg import is_color, jpeg_size
from dicomfs.views.summary import summary_json

log = logging.getLogger(__name__)

KIND_BITS = 5
ROOT_INODE = pyfuse3.ROOT_INODE  # == 1: kind TOP, id 0


class Kind(enum.IntEnum):
    TOP = 1  # id 0: the root; 1 /patients, 2 /studies, 3 /dates
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


TOP_PATIENTS, TOP_STUDIES, TOP_DATES, TOP_PROJECTS, TOP_QUERY = 1, 2, 3, 4, 5
_TOP_NAMES = {TOP_PATIENTS: "patients", TOP_STUDIES: "studies", TOP_DATES: "dates", TOP_PROJECTS: "projects",
              TOP_QUERY: "query"}
UNKNOWN_YEAR_NAME = "unknown"

_STUDY_KIND = {Kind.PATIENT: Kind.P_STUDY, Kind.TOP: Kind.U_STUDY, Kind.DAY: Kind.D_STUDY, Kind.YEAR: Kind.D_STUDY}
_SERIES_KIND = {Kind.P_STUDY: Kind.P_SERIES, Kind.U_STUDY: Kind.U_SERIES, Kind.D_STUDY: Kind.D_SERIES}
STUDY_KINDS = frozenset(_SERIES_KIND)
SERIES_KINDS = frozenset(_SERIES_KIND.values())
PROJECT_KINDS = frozenset({Kind.PROJECT, Kind.J_PATIENT, Kind.J_STUDY, Kind.J_SERIES})
QUERY_KINDS = frozenset({Kind.QUERY, Kind.Q_STUDY, Kind.Q_SERIES})
DIR_KINDS = frozenset({Kind.TOP, Kind.PATIENT, Kind.YEAR, Kind.DAY, Kind.DERIVED}) | STUDY_KINDS | SERIES_KINDS \
    | PROJECT_KINDS | QUERY_KINDS
DERIVED_NAME = "derived"
INSTANCE_VIEW_KINDS = frozenset({Kind.DCM, Kind.JSON, Kind.JPG})
SUMMARY_KINDS = frozenset({Kind.PATIENT_JSON, Kind.STUDY_JSON, Kind.SERIES_JSON})

SUMMARY_NAMES = {Kind.PATIENT_JSON: "patient.json", Kind.STUDY_JSON: "study.json", Kind.SERIES_JSON: "series.json"}

# The level table whose updated_at is the mtime of a folder or summary of that kind.
_LEVEL_TABLE = {
    Kind.PATIENT: "patients", Kind.PATIENT_JSON: "patients", Kind.J_PATIENT: "patients",
    Kind.J_STUDY: "studies", Kind.J_SERIES: "series", Kind.Q_STUDY: "studies", Kind.Q_SERIES: "series",
    **{k: "studies" for k in (Kind.P_STUDY, Kind.U_STUDY, Kind.D_STUDY, Kind.STUDY_JSON)},
    **{k: "series" for k in (Kind.P_SERIES, Kind.U_SERIES, Kind.D_SERIES, Kind.SERIES_JSON)},
}

_DIR_MODE = stat.S_IFDIR | 0o555
_FILE_MODE = stat.S_IFREG | 0o444
_WRITABLE_DIR_MODE = stat.S_IFDIR | 0o755  # derived/ folders only
_WRITABLE_FILE_MODE = stat.S_IFREG | 0o644
_BLKSIZE = 131072

ENTRY_TIMEOUT = 300.0  # names and most attributes never change; changes are invalidated explicitly
SUMMARY_ATTR_TIMEOUT = 1.0  # summaries change size as instances arrive
REMOTE_ATTR_TIMEOUT = 1.0  # files not yet fetched from a remote PACS: their size becomes known on open


def inode_of(kind: Kind, row_id: int) -> int:
    return (row_id << KIND_BITS) | kind


def pack_ids(project_id: int, row_id: int) -> int:
    """One id for a folder inside a project: the same study shows in several projects."""
    return (project_id << 32) | row_id


def unpack_ids(packed: int) -> tuple[int, int]:
    return packed >> 32, packed & 0xFFFFFFFF


def split_inode(inode: int) -> tuple[Kind, int]:
    """Kind and id of an inode; ValueError for a number this tree never hands out."""
    return Kind(inode & ((1 << KIND_BITS) - 1)), inode >> KIND_BITS


class NotFoundError(LookupError):
    """No such entry (maps to ENOENT)."""


@dataclass(slots=True)
class Entry:
    name: bytes
    attr: pyfuse3.EntryAttributes

    @property
    def inode(self) -> int:
        return self.attr.st_ino


@dataclass(slots=True)
class Listing:
    """A folder's entries, sorted by inode: the inode is the stable readdir cookie."""

    entries: list[Entry]
    by_name: dict[bytes, Entry] = field(default_factory=dict)
    inodes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entries.sort(key=lambda e: e.inode)
        self.by_name = {e.name: e for e in self.entries}
        self.inodes = [e.inode for e in self.entries]


class Tree:
    """Answers "what is in this folder" and "what is this inode" from the index."""

    def __init__(self, db: Database, *, max_listings: int = 20_000) -> None:
        self.db = db
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.mounted_at_ns = time.time_ns()
        self.max_listings = max_listings
        self._listings: OrderedDict[int, Listing] = OrderedDict()
        self._summaries: dict[int, bytes] = {}

    # ----------------------------------------------------------------- queries from fs.py

    def listing(self, inode: int) -> Listing:
        cached = self._listings.get(inode)
        if cached is not None:
            self._listings.move_to_end(inode)
            return cached
        kind, row_id = self._split(inode)
        if kind not in DIR_KINDS:
            raise NotADirectoryError(inode)
        listing = Listing(self._build(kind, row_id))
        self._listings[inode] = listing
        if len(self._listings) > self.max_listings:
            self._listings.popitem(last=False)
        return listing

    def lookup(self, parent: int, name: bytes) -> Entry:
        entry = self.listing(parent).by_name.get(name)
        if entry is None:
            raise NotFoundError(name)
        return entry

    def attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        """Attributes of any inode, without knowing its parent (getattr after a timeout)."""
        kind, row_id = self._split(inode)
        try:
            if kind is Kind.TOP:
                return self._dir_attr(inode, self.mounted_at_ns / 1e9)
            if kind in (Kind.YEAR, Kind.DAY):
                return self._dir_attr(inode, self._dates_mtime())
            if kind is Kind.DERIVED:
                return self._derived_dir_attr(inode)
            if kind is Kind.DERIVED_FILE:
                return self._derived_file_attr(row_id)
            if kind is Kind.PROJECT:
                return self._dir_attr(inode, float(self.db.get_val(
                    "SELECT created_at FROM projects WHERE id = ?", (row_id,))))
            if kind is Kind.QUERY:
                return self._dir_attr(inode, float(self.db.get_val(
                    "SELECT created_at FROM queries WHERE id = ?", (row_id,))))
            if kind in PROJECT_KINDS | QUERY_KINDS:
                return self._dir_attr(inode, self._level_mtime(kind, unpack_ids(row_id)[1]))
            if kind in DIR_KINDS:  # patient, study and series folders
                return self._dir_attr(inode, self._level_mtime(kind, row_id))
            if kind in INSTANCE_VIEW_KINDS:
                row = self.db.get_row(
                    "SELECT file_size, json_size, rows, columns, photometric, has_image, received_at, "
                    "file_path != '' FROM instances WHERE id = ?",
                    (row_id,),
                )
                return self._instance_attr(kind, row_id, *row)
            if kind in SUMMARY_KINDS:
                return self._summary_attr(kind, row_id)
        except NoSuchRowError:
            pass
        raise NotFoundError(inode)

    def instance_row(self, inode: int) -> tuple[Kind, dict[str, Any]]:
        """For opening an instance view: its kind and the instance's index row."""
        kind, row_id = self._split(inode)
        if kind not in INSTANCE_VIEW_KINDS:
            raise NotFoundError(inode)
        try:
            row = self.db.get_row(
                "SELECT file_path, file_size, json_size, json_version, rows, columns, photometric, "
                "has_image, sop_uid, fetched, series_id FROM instances WHERE id = ?",
                (row_id,),
            )
        except NoSuchRowError:
            raise NotFoundError(inode) from None
        keys = ("file_path", "file_size", "json_size", "json_version", "rows", "columns", "photometric",
                "has_image", "sop_uid", "fetched", "series_id")
        return kind, dict(zip(keys, row, strict=True))

    def summary(self, inode: int) -> bytes:
        """Bytes of a patient/study/series summary, generated once per change."""
        data = self._summaries.get(inode)
        if data is None:
            kind, row_id = self._split(inode)
            data = self._make_summary(kind, row_id)
            self._summaries[inode] = data
        return data

    # ----------------------------------------------------------------- change handling

    def changed_series(self, series_ids: Iterable[int]) -> list[int]:
        """Forget what depends on these series; returns the inodes the kernel should refresh.

        Series id 0 stands for changes above any series (remote studies listed): everything
        cached is forgotten.
        """
        stale: set[int] = {inode_of(Kind.TOP, t) for t in (0, TOP_PATIENTS, TOP_STUDIES, TOP_DATES)}
        series_ids = set(series_ids)
        if 0 in series_ids:
            stale.update(self._listings)
            stale.update(self._summaries)
            series_ids.discard(0)
        for series_id in series_ids:
            try:
                study_id, patient_id, study_date = self.db.get_row(
                    "SELECT st.id, st.patient_id, st.study_date FROM series se "
                    "JOIN studies st ON st.id = se.study_id WHERE se.id = ?",
                    (series_id,),
                )
            except NoSuchRowError:
                continue
            stale.update(inode_of(k, series_id) for k in (*SERIES_KINDS, Kind.SERIES_JSON))
            if self.db.query("SELECT 1 FROM remote_series WHERE series_id = ?", (series_id,)):
                # Fetched or evicted: the sizes of its instances' files changed.
                for (instance_id,) in self.db.query("SELECT id FROM instances WHERE series_id = ?", (series_id,)):
                    stale.update(inode_of(k, instance_id) for k in INSTANCE_VIEW_KINDS)
            stale.update(inode_of(k, study_id) for k in (*STUDY_KINDS, Kind.STUDY_JSON))
            stale.update(inode_of(k, patient_id) for k in (Kind.PATIENT, Kind.PATIENT_JSON))
            year, day = _date_ids(study_date)
            stale.add(inode_of(Kind.YEAR, year))
            if day:
                stale.add(inode_of(Kind.DAY, day))
        if series_ids:  # project and derived/ folders depend on these too; they are few: drop them all
            scoped = PROJECT_KINDS | QUERY_KINDS | {Kind.DERIVED}
            stale.update(i for i in self._listings if split_inode(i)[0] in scoped)
        for inode in stale:
            self._listings.pop(inode, None)
            self._summaries.pop(inode, None)
        return sorted(stale)

    def forget_all(self) -> None:
        self._listings.clear()
        self._summaries.clear()

    # ----------------------------------------------------------------- building listings

    def level_folder(self, inode: int) -> tuple[str, int] | None:
        """("study", id) or ("series", id) for a study or series folder in any layout, else None."""
        kind, row_id = self._split(inode)
        if kind is Kind.DERIVED:
            return None
        if kind in STUDY_KINDS or kind in (Kind.J_STUDY, Kind.Q_STUDY):
            return "study", unpack_ids(row_id)[1] if kind in (Kind.J_STUDY, Kind.Q_STUDY) else row_id
        if kind in SERIES_KINDS or kind in (Kind.J_SERIES, Kind.Q_SERIES):
            return "series", unpack_ids(row_id)[1] if kind in (Kind.J_SERIES, Kind.Q_SERIES) else row_id
        return None

    def derived_origin(self, inode: int) -> tuple[str, int]:
        """(level, row id) whose derived/ folder ``inode`` is; NotFoundError for any other inode."""
        kind, parent = self._split(inode)
        origin = self.level_folder(parent) if kind is Kind.DERIVED else None
        if origin is None:
            raise NotFoundError(inode)
        return origin

    def is_cached(self, inode: int) -> bool:
        return inode in self._listings

    def forget(self, inode: int) -> None:
        self._listings.pop(inode, None)
        self._summaries.pop(inode, None)

    def kind(self, inode: int) -> Kind:
        """The kind of an inode; NotFoundError for a number this tree never hands out."""
        return self._split(inode)[0]

    def _split(self, inode: int) -> tuple[Kind, int]:
        try:
            return split_inode(inode)
        except ValueError:
            raise NotFoundError(inode) from None

    def _build(self, kind: Kind, row_id: int) -> list[Entry]:
        if kind is Kind.TOP:
            return self._build_top(row_id)
        if kind is Kind.PATIENT:
            rows = self.db.query(_STUDY_ROWS + "WHERE st.patient_id = ? ORDER BY st.id", (row_id,))
            entries = self._study_entries(Kind.P_STUDY, rows, reserved=["patient.json"])
            return [*entries, self._summary_entry(Kind.PATIENT_JSON, row_id)]
        if kind is Kind.YEAR:
            return self._build_year(row_id)
        if kind is Kind.DAY:
            day = str(row_id)
            acr_nema = f"{day[:4]}.{day[4:6]}.{day[6:]}"
            rows = self.db.query(_STUDY_ROWS + "WHERE st.study_date IN (?, ?) ORDER BY st.id", (day, acr_nema))
            return self._study_entries(Kind.D_STUDY, rows)
        if kind in STUDY_KINDS:
            return self._build_study(kind, row_id)
        if kind in PROJECT_KINDS:
            return self._build_project(kind, row_id)
        if kind is Kind.DERIVED:
            return self._build_derived(row_id)
        if kind in QUERY_KINDS:
            return self._build_query(kind, row_id)
        return self._build_series(kind, row_id)

    def _build_top(self, top: int) -> list[Entry]:
        if top == 0:
            now = self.mounted_at_ns / 1e9
            return [self._dir_entry(name, inode_of(Kind.TOP, t), now) for t, name in _TOP_NAMES.items()]
        if top == TOP_PATIENTS:
            rows = self.db.query("SELECT id, patient_name, patient_id, updated_at FROM patients ORDER BY id")
            named = naming.unique_names(rows, lambda r: naming.patient_name(r[1], r[2]))
            return [self._dir_entry(n, inode_of(Kind.PATIENT, r[0]), r[3]) for n, r in named]
        if top == TOP_STUDIES:
            rows = self.db.query("SELECT id, study_uid, updated_at FROM studies ORDER BY id")
            named = naming.unique_names(rows, lambda r: naming.uid_name(r[1]))
            return [self._dir_entry(n, inode_of(Kind.U_STUDY, r[0]), r[2]) for n, r in named]
        if top == TOP_PROJECTS:
            rows = self.db.query("SELECT id, name, created_at FROM projects ORDER BY id")
            # Project names are validated when created: safe as they are.
            return [self._dir_entry(r[1], inode_of(Kind.PROJECT, r[0]), r[2]) for r in rows]
        if top == TOP_QUERY:  # saved queries; any other valid query is found by lookup (fs.py)
            rows = self.db.query("SELECT id, text, created_at FROM queries WHERE saved = 1 ORDER BY id")
            return [self._dir_entry(r[1], inode_of(Kind.QUERY, r[0]), r[2]) for r in rows]
        if top == TOP_DATES:
            years: dict[int, float] = {}
            for study_date, updated in self.db.query("SELECT study_date, updated_at FROM studies"):
                year = _date_ids(study_date)[0]
                years[year] = max(years.get(year, 0.0), updated)
            return [
                self._dir_entry(str(y) if y else UNKNOWN_YEAR_NAME, inode_of(Kind.YEAR, y), t)
                for y, t in years.items()
            ]
        raise NotFoundError(top)

    def _build_year(self, year: int) -> list[Entry]:
        if year == 0:  # studies without a usable date sit directly in /dates/unknown
            rows = [r for r in self.db.query(_STUDY_ROWS + "ORDER BY st.id") if _date_ids(r[1])[0] == 0]
            return self._study_entries(Kind.D_STUDY, rows)
        days: dict[int, float] = {}
        for study_date, updated in self.db.query(
            "SELECT study_date, updated_at FROM studies WHERE study_date >= ? AND study_date < ?",
            (str(year), str(year + 1)),
        ):
            y, day = _date_ids(study_date)
            if y == year:
                days[day] = max(days.get(day, 0.0), updated)
        return [
            self._dir_entry(naming.iso_date(str(d)), inode_of(Kind.DAY, d), t) for d, t in days.items()
        ]

    # ----------------------------------------------------------------- /query

    def forget_query(self, text: str) -> None:
        """rmdir in /query: no longer listed (the folder still answers if used again)."""
        self.db.execute("UPDATE queries SET saved = 0 WHERE text = ?", (text,))
        self.forget(inode_of(Kind.TOP, TOP_QUERY))

    def query_entry(self, text: str) -> Entry:
        """The folder of any valid query (ValueError otherwise).

        A query used once is saved: listed in /query from then on, across remounts, until
        rmdir. (mkdir cannot be the way to save: the kernel looks the name up first, and
        every valid query already exists.)
        """
        from dicomfs.index import language

        language.compile_query(text, "study")  # raises QuerySyntaxError, a ValueError
        if self.db.execute("INSERT INTO queries (text, saved, created_at) VALUES (?, 1, ?) "
                           "ON CONFLICT (text) DO UPDATE SET saved = 1 WHERE saved = 0", (text, time.time())):
            self.forget(inode_of(Kind.TOP, TOP_QUERY))
        query_id, created = self.db.get_row("SELECT id, created_at FROM queries WHERE text = ?", (text,))
        return self._dir_entry(text, inode_of(Kind.QUERY, query_id), created)

    def _build_query(self, kind: Kind, row_id: int) -> list[Entry]:
        if kind is Kind.QUERY:
            from dicomfs.index import language

            text = str(self.db.get_val("SELECT text FROM queries WHERE id = ?", (row_id,)))
            ids = language.run(self.db, text, "study")
            rows = [(pack_ids(row_id, r[0]), *r[1:]) for study_id in ids
                    for r in self.db.query(_STUDY_ROWS + "WHERE st.id = ?", (study_id,))]
            named = naming.unique_names(rows, lambda r: naming.safe_component(
                f"{naming.person_name(r[6]) or '(no name)'} {_study_base(r)}", fallback="(study)"))
            return [self._dir_entry(n, inode_of(Kind.Q_STUDY, r[0]), r[5]) for n, r in named]
        query_id, entity_id = unpack_ids(row_id)
        if kind is Kind.Q_STUDY:
            entries = self._build_study(Kind.P_STUDY, entity_id)
            return [self._rescoped(e, Kind.Q_SERIES, query_id) for e in entries[:-1]] + \
                [self._derived_entry(inode_of(kind, row_id))]
        entries = self._build_series(Kind.P_SERIES, entity_id)
        return [*entries[:-1], self._derived_entry(inode_of(kind, row_id))]

    def _rescoped(self, entry: Entry, kind: Kind, scope_id: int) -> Entry:
        """A series folder entry of a study listing, moved into a /query or /projects scope."""
        entry_kind, row_id = split_inode(entry.inode)
        if entry_kind not in SERIES_KINDS:
            return entry  # study.json
        inode = inode_of(kind, pack_ids(scope_id, row_id))
        return Entry(entry.name, self._dir_attr(inode, entry.attr.st_mtime_ns / 1e9))

    # ----------------------------------------------------------------- derived/

    def _derived_entry(self, parent_inode: int) -> Entry:
        inode = inode_of(Kind.DERIVED, parent_inode)
        return Entry(DERIVED_NAME.encode(), self._derived_dir_attr(inode))

    def _derived_dir_attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = self._base_attr(inode, self.mounted_at_ns / 1e9, SUMMARY_ATTR_TIMEOUT)
        attr.st_mode = _WRITABLE_DIR_MODE
        return attr

    def _build_derived(self, parent_inode: int) -> list[Entry]:
        origin = self.level_folder(parent_inode)
        if origin is None:
            raise NotFoundError(parent_inode)
        rows = self.db.query("SELECT id, name, size, updated_at FROM derived WHERE level = ? AND entity_id = ? "
                             "ORDER BY id", origin)
        return [Entry(name.encode(), self._derived_attr(derived_id, size, mtime))
                for derived_id, name, size, mtime in rows]

    def _derived_file_attr(self, derived_id: int) -> pyfuse3.EntryAttributes:
        size, mtime = self.db.get_row("SELECT size, updated_at FROM derived WHERE id = ?", (derived_id,))
        return self._derived_attr(derived_id, size, mtime)

    def _derived_attr(self, derived_id: int, size: int, mtime: float) -> pyfuse3.EntryAttributes:
        attr = self._file_attr(inode_of(Kind.DERIVED_FILE, derived_id), size, mtime, SUMMARY_ATTR_TIMEOUT)
        attr.st_mode = _WRITABLE_FILE_MODE
        return attr

    # ----------------------------------------------------------------- /projects

    # Members: a patient brings all its studies, a study all its series; a series only itself.
    _MEMBER_SERIES = (
        "SELECT se.id FROM series se JOIN studies st ON st.id = se.study_id JOIN project_members m "
        "ON m.project_id = :p AND ((m.level = 'series' AND m.entity_id = se.id) OR (m.level = 'study' AND "
        "m.entity_id = st.id) OR (m.level = 'patient' AND m.entity_id = st.patient_id))"
    )

    def _build_project(self, kind: Kind, row_id: int) -> list[Entry]:
        if kind is Kind.PROJECT:
            project_id, rows = row_id, self.db.query(
                "SELECT DISTINCT p.id, p.patient_name, p.patient_id, p.updated_at FROM patients p "
                "JOIN studies st ON st.patient_id = p.id JOIN series se ON se.study_id = st.id "
                f"WHERE se.id IN ({self._MEMBER_SERIES}) UNION SELECT p.id, p.patient_name, p.patient_id, "
                "p.updated_at FROM patients p JOIN project_members m ON m.project_id = :p "
                "AND m.level = 'patient' AND m.entity_id = p.id ORDER BY 1", {"p": row_id})
            named = naming.unique_names(rows, lambda r: naming.patient_name(r[1], r[2]))
            return [self._dir_entry(n, inode_of(Kind.J_PATIENT, pack_ids(project_id, r[0])), r[3]) for n, r in named]
        project_id, entity_id = unpack_ids(row_id)
        if kind is Kind.J_PATIENT:
            rows = self.db.query(
                _STUDY_ROWS + "WHERE st.patient_id = :e AND (EXISTS (SELECT 1 FROM project_members m WHERE "
                "m.project_id = :p AND ((m.level = 'patient' AND m.entity_id = :e) OR (m.level = 'study' AND "
                "m.entity_id = st.id))) OR EXISTS (SELECT 1 FROM series se2 JOIN project_members m ON "
                "m.project_id = :p AND m.level = 'series' AND m.entity_id = se2.id WHERE se2.study_id = st.id)) "
                "ORDER BY st.id", {"p": project_id, "e": entity_id})
            rows = [(pack_ids(project_id, r[0]), *r[1:]) for r in rows]
            return [*self._study_entries(Kind.J_STUDY, rows, reserved=["patient.json"]),
                    self._summary_entry(Kind.PATIENT_JSON, entity_id)]
        if kind is Kind.J_STUDY:
            rows = self.db.query(
                "SELECT id, series_uid, series_number, modality, series_description, updated_at FROM series "
                f"WHERE study_id = :e AND id IN ({self._MEMBER_SERIES}) ORDER BY id",
                {"p": project_id, "e": entity_id})
            named = naming.unique_names(
                rows, lambda r: naming.series_name(r[2], r[3], r[4]), reserved=["study.json", DERIVED_NAME])
            entries = [self._dir_entry(n, inode_of(Kind.J_SERIES, pack_ids(project_id, r[0])), r[5])
                       for n, r in named]
            return [*entries, self._summary_entry(Kind.STUDY_JSON, entity_id),
                    self._derived_entry(inode_of(kind, row_id))]
        entries = self._build_series(Kind.P_SERIES, entity_id)  # a series shows all its instances
        return [*entries[:-1], self._derived_entry(inode_of(kind, row_id))]

    def _study_entries(self, kind: Kind, rows: list[Any], reserved: Iterable[str] = ()) -> list[Entry]:
        if kind is Kind.D_STUDY:
            def base(r: Any) -> str:
                return naming.dated_study_name(r[2], r[6], r[3], r[4])
        else:
            base = _study_base
        named = naming.unique_names(rows, base, reserved=reserved)
        return [self._dir_entry(n, inode_of(kind, r[0]), r[5]) for n, r in named]

    def _build_study(self, kind: Kind, study_id: int) -> list[Entry]:
        rows = self.db.query(
            "SELECT id, series_uid, series_number, modality, series_description, updated_at "
            "FROM series WHERE study_id = ? ORDER BY id",
            (study_id,),
        )
        if not rows and not self.db.query("SELECT 1 FROM studies WHERE id = ?", (study_id,)):
            raise NotFoundError(study_id)
        series_kind = _SERIES_KIND[kind]
        if kind is Kind.U_STUDY:
            named = naming.unique_names(rows, lambda r: naming.uid_name(r[1]), reserved=["study.json", DERIVED_NAME])
        else:
            named = naming.unique_names(
                rows, lambda r: naming.series_name(r[2], r[3], r[4]), reserved=["study.json", DERIVED_NAME]
            )
        entries = [self._dir_entry(n, inode_of(series_kind, r[0]), r[5]) for n, r in named]
        return [*entries, self._summary_entry(Kind.STUDY_JSON, study_id), self._derived_entry(inode_of(kind, study_id))]

    def _build_series(self, kind: Kind, series_id: int) -> list[Entry]:
        """The hot path of a first walk: three files per instance, built in one pass."""
        rows = self._instance_rows(series_id)
        named = self._instance_names(kind, rows)
        if kind is not Kind.U_SERIES:  # the summary lists these same names: build it now, once
            self._summaries[inode_of(Kind.SERIES_JSON, series_id)] = self._series_summary(series_id, named)
        entries = [self._summary_entry(Kind.SERIES_JSON, series_id)]
        file_attr = self._file_attr
        for stem, (instance_id, _, _, file_size, json_size, rows_, columns, photometric, has_image, mtime, _,
                   local) in named:
            base = instance_id << KIND_BITS
            # Not yet fetched from a remote PACS: size unknown (0) until then, so the kernel
            # must not keep these attributes long.
            timeout = ENTRY_TIMEOUT if local else REMOTE_ATTR_TIMEOUT
            entries.append(Entry(f"{stem}.dcm".encode(), file_attr(base | Kind.DCM, file_size, mtime, timeout)))
            entries.append(Entry(f"{stem}.json".encode(), file_attr(base | Kind.JSON, json_size, mtime, timeout)))
            if has_image:
                size = jpeg_size(rows_, columns, is_color(photometric))
                entries.append(Entry(f"{stem}.jpg".encode(), file_attr(base | Kind.JPG, size, mtime)))
        entries.append(self._derived_entry(inode_of(kind, series_id)))
        return entries

    def _instance_rows(self, series_id: int) -> list[Any]:
        return self.db.query(
            "SELECT id, instance_number, sop_uid, file_size, json_size, rows, columns, photometric, "
            "has_image, received_at, sop_class_uid, file_path != '' FROM instances WHERE series_id = ? ORDER BY id",
            (series_id,),
        )

    @staticmethod
    def _instance_names(kind: Kind, rows: list[Any]) -> list[tuple[str, Any]]:
        """Instances of a series with their file stems ('007', '007_2', or the SOP UID)."""
        if kind is Kind.U_SERIES:
            return naming.unique_names(rows, lambda r: naming.uid_name(r[2]))
        return naming.unique_names(rows, lambda r: naming.instance_stem(r[1]), suffix=lambda n, i: f"{n}_{i}")

    # ----------------------------------------------------------------- summaries

    def _summary_entry(self, kind: Kind, row_id: int) -> Entry:
        return Entry(SUMMARY_NAMES[kind].encode(), self._summary_attr(kind, row_id))

    def _summary_attr(self, kind: Kind, row_id: int) -> pyfuse3.EntryAttributes:
        """A summary changes exactly when its level does: its mtime is the level's."""
        inode = inode_of(kind, row_id)
        return self._file_attr(inode, len(self.summary(inode)), self._level_mtime(kind, row_id), SUMMARY_ATTR_TIMEOUT)

    def _level_mtime(self, kind: Kind, row_id: int) -> float:
        return float(self.db.get_val(f"SELECT updated_at FROM {_LEVEL_TABLE[kind]} WHERE id = ?", (row_id,)))

    def _make_summary(self, kind: Kind, row_id: int) -> bytes:
        try:
            if kind is Kind.PATIENT_JSON:
                return self._patient_summary(row_id)
            if kind is Kind.STUDY_JSON:
                return self._study_summary(row_id)
            if kind is Kind.SERIES_JSON:
                return self._series_summary(row_id, self._instance_names(Kind.P_SERIES, self._instance_rows(row_id)))
        except NoSuchRowError:
            pass
        raise NotFoundError(row_id)

    def _patient_summary(self, patient_id: int) -> bytes:
        p = self._row_dict("patients", patient_id)
        studies = self.db.query(_STUDY_ROWS + "WHERE st.patient_id = ? ORDER BY st.id", (patient_id,))
        named = naming.unique_names(studies, _study_base, reserved=["patient.json"])
        children = [
            {"name": n, "StudyInstanceUID": r[8], "StudyDate": r[1], "StudyDescription": r[3],
             "AccessionNumber": r[4], "ModalitiesInStudy": (r[7] or "").split("\\") if r[7] else []}
            for n, r in named
        ]
        return summary_json("PATIENT", {**_patient_attributes(p), **self._organisation("patient", patient_id)},
                            "Studies", children)

    def _study_summary(self, study_id: int) -> bytes:
        s = self._row_dict("studies", study_id)
        p = self._row_dict("patients", s["patient_id"])
        series = self.db.query(
            "SELECT id, series_uid, series_number, modality, series_description, num_instances "
            "FROM series WHERE study_id = ? ORDER BY id",
            (study_id,),
        )
        named = naming.unique_names(series, lambda r: naming.series_name(r[2], r[3], r[4]),
                                    reserved=["study.json", DERIVED_NAME])
        children = [
            {"name": n, "SeriesInstanceUID": r[1], "SeriesNumber": r[2], "Modality": r[3],
             "SeriesDescription": r[4], "NumberOfSeriesRelatedInstances": r[5]}
            for n, r in named
        ]
        modalities = sorted({r[3] for r in series if r[3]})
        sop_classes = [r[0] for r in self.db.query(
            "SELECT DISTINCT i.sop_class_uid FROM instances i JOIN series se ON se.id = i.series_id "
            "WHERE se.study_id = ? ORDER BY 1", (study_id,))]
        attributes = {
            **_patient_attributes(p),
            **_study_attributes(s),
            "ModalitiesInStudy": modalities,
            "SOPClassesInStudy": sop_classes,
            **self._organisation("study", study_id),
        }
        remote = self.db.query(
            "SELECT r.remote, r.num_series, r.num_instances, r.series_listed_at, "
            "  (SELECT count(*) FROM instances i JOIN series se ON se.id = i.series_id "
            "   WHERE se.study_id = r.study_id AND i.file_path != '') "
            "FROM remote_studies r WHERE r.study_id = ?",
            (study_id,),
        )
        if remote:
            name, num_series, num_instances, listed, local = remote[0]
            attributes["Remote"] = {"name": name, "NumberOfSeriesThere": num_series,
                                    "NumberOfInstancesThere": num_instances, "LocalInstances": local,
                                    "Complete": num_instances is not None and local >= num_instances,
                                    "SeriesListed": listed is not None}
        return summary_json("STUDY", attributes, "Series", children)

    def _series_summary(self, series_id: int, named: list[tuple[str, Any]]) -> bytes:
        se = self._row_dict("series", series_id)
        s = self._row_dict("studies", se["study_id"])
        children = [
            {"name": f"{stem}.dcm", "SOPInstanceUID": r[2], "SOPClassUID": r[10],
             "InstanceNumber": r[1], "size": r[3], "jpg": f"{stem}.jpg" if r[8] else None, "local": bool(r[11])}
            for stem, r in named
        ]
        attributes = {
            "PatientID": self.db.get_val("SELECT patient_id FROM patients WHERE id = ?", (s["patient_id"],)),
            "StudyInstanceUID": s["study_uid"],
            "SeriesInstanceUID": se["series_uid"],
            "Modality": se["modality"],
            "SeriesNumber": se["series_number"],
            "SeriesDescription": se["series_description"],
            "SeriesDate": se["series_date"],
            "SeriesTime": se["series_time"],
            "BodyPartExamined": se["body_part_examined"],
            "ProtocolName": se["protocol_name"],
            "Laterality": se["laterality"],
            "StationName": se["station_name"],
            "Manufacturer": se["manufacturer"],
            "FrameOfReferenceUID": se["frame_of_reference_uid"],
            "NumberOfSeriesRelatedInstances": se["num_instances"],
            **self._organisation("series", series_id),
        }
        remote = self.db.query(
            "SELECT remote, num_instances, complete, instances_listed_at FROM remote_series WHERE series_id = ?",
            (series_id,),
        )
        if remote:
            name, count, complete, listed = remote[0]
            local = sum(1 for _, r in named if r[11])
            attributes["Remote"] = {"name": name, "NumberOfInstancesThere": count, "LocalInstances": local,
                                    "Complete": bool(complete), "InstancesListed": listed is not None}
        return summary_json("SERIES", attributes, "Instances", children)

    def _organisation(self, level: str, row_id: int) -> dict[str, Any]:
        """Tags, projects and derived data of this level's entity (each level shows its own)."""
        found: dict[str, Any] = {"Tags": organise.tags_of(self.db, level, row_id),
                                 "Projects": organise.projects_of(self.db, level, row_id)}
        if level in ("study", "series"):
            found["Derived"] = [
                {"name": f"{DERIVED_NAME}/{name}", "kind": kind, "size": size, "origin": {"level": level, "uid": uid},
                 "created": created, "updated": updated, "SOPInstanceUID": sop_uid}
                for name, kind, size, uid, created, updated, sop_uid in self.db.query(
                    "SELECT name, kind, size, origin_uid, created_at, updated_at, sop_uid FROM derived "
                    "WHERE level = ? AND entity_id = ? ORDER BY name", (level, row_id))]
        return found

    def _row_dict(self, table: str, row_id: int) -> dict[str, Any]:
        cursor = self.db.conn.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,))
        names = [d[0] for d in cursor.getdescription()]
        for row in cursor:
            return dict(zip(names, row, strict=True))
        raise NoSuchRowError(table)

    # ----------------------------------------------------------------- attributes

    def _dates_mtime(self) -> float:
        return float(self.db.get_val_or(None, "SELECT max(updated_at) FROM studies") or self.mounted_at_ns / 1e9)

    def _dir_entry(self, name: str, inode: int, mtime: float) -> Entry:
        return Entry(name.encode("utf-8"), self._dir_attr(inode, mtime))

    def _dir_attr(self, inode: int, mtime: float) -> pyfuse3.EntryAttributes:
        attr = self._base_attr(inode, mtime, ENTRY_TIMEOUT)
        attr.st_mode = _DIR_MODE
        return attr

    def _file_attr(
        self, inode: int, size: int, mtime: float, timeout: float = ENTRY_TIMEOUT
    ) -> pyfuse3.EntryAttributes:
        """Attributes of a file; written out flat because a first walk builds millions."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = _FILE_MODE
        attr.st_size = size
        attr.st_blocks = (size + 511) >> 9
        attr.st_blksize = _BLKSIZE
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = int(mtime * 1e9)
        if timeout != ENTRY_TIMEOUT:
            attr.entry_timeout = attr.attr_timeout = timeout
        return attr

    def _instance_attr(
        self, kind: Kind, instance_id: int, file_size: int, json_size: int, rows: int, columns: int,
        photometric: str, has_image: int, received_at: float, local: int = 1,
    ) -> pyfuse3.EntryAttributes:
        if kind is Kind.DCM:
            size = file_size
        elif kind is Kind.JSON:
            size = json_size
        elif has_image:
            size = jpeg_size(rows, columns, is_color(photometric))
        else:
            raise NotFoundError(instance_id)
        timeout = ENTRY_TIMEOUT if local else REMOTE_ATTR_TIMEOUT
        return self._file_attr(inode_of(kind, instance_id), size, received_at, timeout)

    def _base_attr(self, inode: int, mtime: float, timeout: float) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()  # defaults: nlink 1, generation 0, timeouts 300 s
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = timeout
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_blksize = _BLKSIZE
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = int(mtime * 1e9)
        return attr


# Columns: id, study_date, study_time, study_description, accession_number, updated_at,
# patient name, modalities (backslash-joined), study_uid.
_STUDY_ROWS = (
    "SELECT st.id, st.study_date, st.study_time, st.study_description, st.accession_number, "
    "st.updated_at, p.patient_name, "
    "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series "
    "  WHERE study_id = st.id AND modality != '' ORDER BY modality)), st.study_uid "
    "FROM studies st JOIN patients p ON p.id = st.patient_id "
)


def _study_base(row: Any) -> str:
    """A study's folder name from a _STUDY_ROWS row (shared by listings and patient.json)."""
    return naming.study_name(row[1], row[3], row[4], row[7] or "")


def _date_ids(study_date: str) -> tuple[int, int]:
    """(year, YYYYMMDD) of a DA value, (0, 0) when it is not a usable date."""
    iso = naming.iso_date(study_date)
    if not iso:
        return 0, 0
    return int(iso[:4]), int(iso.replace("-", ""))


def _patient_attributes(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "PatientName": p["patient_name"],
        "PatientID": p["patient_id"],
        "IssuerOfPatientID": p["issuer_of_patient_id"],
        "PatientBirthDate": p["patient_birth_date"],
        "PatientSex": p["patient_sex"],
        "OtherPatientIDs": p["other_patient_ids"],
        "NumberOfPatientRelatedStudies": p["num_studies"],
        "NumberOfPatientRelatedSeries": p["num_series"],
        "NumberOfPatientRelatedInstances": p["num_instances"],
    }


def _study_attributes(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "StudyInstanceUID": s["study_uid"],
        "StudyDate": s["study_date"],
        "StudyTime": s["study_time"],
        "AccessionNumber": s["accession_number"],
        "StudyID": s["study_id"],
        "StudyDescription": s["study_description"],
        "ReferringPhysicianName": s["referring_physician_name"],
        "InstitutionName": s["institution_name"],
        "PatientAge": s["patient_age"],
        "NumberOfStudyRelatedSeries": s["num_series"],
        "NumberOfStudyRelatedInstances": s["num_instances"],
    }
