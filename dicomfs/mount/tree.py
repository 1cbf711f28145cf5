"""The mounted tree as data: which entries each folder has, and what the kernel sees of them.

Inode numbers are computed from index rows (see ``inodes``).

Listings are built with one query per folder, cached in memory (most recently used kept),
and dropped when the index reports a change below them. Sizes are known without rendering:
``.dcm`` is the stored file, ``.json`` was measured at ingest, ``.jpg`` has a size fixed by
the image geometry (see ``views.jpeg``), summaries are generated with the listing.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

from dicomfs.index.changes import Changes
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.mount import naming, summaries
from dicomfs.mount.inodes import (
    DERIVED_NAME,
    DIR_KINDS,
    INSTANCE_VIEW_KINDS,
    KIND_BITS,
    ORPHAN_JSON_NAME,
    PROJECT_KINDS,
    QUERY_KINDS,
    SERIES_KIND_IN,
    SERIES_KINDS,
    STUDY_KINDS,
    SUMMARY_KINDS,
    SUMMARY_NAMES,
    TOP_DATES,
    TOP_NAMES,
    TOP_ORPHANS,
    TOP_PATIENTS,
    TOP_PROJECTS,
    TOP_QUERY,
    TOP_STUDIES,
    UNKNOWN_YEAR_NAME,
    Kind,
    inode_of,
    orphan_id,
    orphan_origin,
    pack_ids,
    split_inode,
    unpack_ids,
)
from dicomfs.mount.summaries import STUDY_ROWS, study_base
from dicomfs.views.jpeg import is_color, jpeg_size

log = logging.getLogger(__name__)

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
ORPHAN_TIMEOUT = 1.0  # an orphan folder leaves when its origin comes back: not tracked, so kept briefly
REMOTE_ATTR_TIMEOUT = 1.0  # files not yet fetched from a remote PACS: their size becomes known on open


@dataclass(frozen=True, slots=True)
class Refresh:
    """What the kernel must forget after a change."""

    folders: list[int]  # attributes (and so listings) only
    files: list[int]  # contents too: summaries, views of fetched or evicted instances
    gone: list[tuple[int, bytes]]  # (parent inode, name) of deleted folders


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
        # Where each folder was listed (folder inode → parent inode, name): the kernel may hold
        # these names long after the listing left the cache, and a deletion must drop them.
        self._folder_names: dict[int, tuple[int, bytes]] = {}

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
        if kind not in _FILE_FOLDER_KINDS:
            for entry in listing.entries:
                self._folder_names[entry.inode] = (inode, entry.name)
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
            if kind is Kind.ORPHAN:
                return self._dir_attr(inode, self._orphan_mtime(row_id), ORPHAN_TIMEOUT)
            if kind is Kind.ORPHAN_JSON:
                return self._file_attr(inode, len(self.summary(inode)), self._orphan_mtime(row_id),
                                       SUMMARY_ATTR_TIMEOUT)
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

    def refresh(self, changes: Changes) -> Refresh:
        """Forget what these changes touched; returns what the kernel must forget too."""
        gone = self.removed_entries(set(changes.removed)) if changes.removed else []
        stale = self.changed_series(changes.series, everything=changes.everything)
        folders = [inode for inode in stale if split_inode(inode)[0] in DIR_KINDS]
        files = [inode for inode in stale if split_inode(inode)[0] not in DIR_KINDS]
        return Refresh(folders, files, gone)

    def changed_series(self, series_ids: Iterable[int], *, everything: bool = False) -> list[int]:
        """Forget what depends on these series; returns the inodes the kernel should refresh.

        ``everything``: a change above any series (remote studies listed, projects, tags,
        deletions): everything cached is forgotten.
        """
        stale: set[int] = {inode_of(Kind.TOP, t) for t in (0, TOP_PATIENTS, TOP_STUDIES, TOP_DATES, TOP_ORPHANS)}
        series_ids = set(series_ids)
        if everything:
            stale.update(self._listings)
            stale.update(self._summaries)
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

    def removed_entries(self, removed: set[tuple[str, int]]) -> list[tuple[int, bytes]]:
        """(parent inode, name) of every folder name handed out that a deletion took away.

        ``removed`` holds (level, row id) pairs of deleted patients, studies and series. Date
        folders left empty are found by listing the dates anew.
        """
        gone: list[tuple[int, bytes]] = []
        dates: set[int] = set()
        for inode, (parent, name) in list(self._folder_names.items()):
            kind, row_id = split_inode(inode)
            if kind in (Kind.YEAR, Kind.DAY):
                dates.add(parent)
                continue
            level = _ENTITY_LEVEL.get(kind)
            if level is None:
                continue
            if kind in _PACKED_KINDS:
                row_id = unpack_ids(row_id)[1]
            if (level, row_id) in removed:
                gone.append((parent, name))
                del self._folder_names[inode]
        for parent in dates:
            try:
                still = {split_inode(entry.inode)[1] for entry in self._build(*split_inode(parent))}
            except (NotFoundError, NoSuchRowError):
                still = set()
            for inode, (listed_in, name) in list(self._folder_names.items()):
                if listed_in == parent and split_inode(inode)[1] not in still:
                    gone.append((parent, name))
                    del self._folder_names[inode]
        return gone

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
            rows = self.db.query(STUDY_ROWS + "WHERE st.patient_id = ? ORDER BY st.id", (row_id,))
            entries = self._study_entries(Kind.P_STUDY, rows, reserved=["patient.json"])
            return [*entries, self._summary_entry(Kind.PATIENT_JSON, row_id)]
        if kind is Kind.YEAR:
            return self._build_year(row_id)
        if kind is Kind.DAY:
            day = str(row_id)
            acr_nema = f"{day[:4]}.{day[4:6]}.{day[6:]}"
            rows = self.db.query(STUDY_ROWS + "WHERE st.study_date IN (?, ?) ORDER BY st.id", (day, acr_nema))
            return self._study_entries(Kind.D_STUDY, rows)
        if kind in STUDY_KINDS:
            return self._build_study(kind, row_id)
        if kind in PROJECT_KINDS:
            return self._build_project(kind, row_id)
        if kind is Kind.DERIVED:
            return self._build_derived(row_id)
        if kind is Kind.ORPHAN:
            return self._build_orphan(row_id)
        if kind in QUERY_KINDS:
            return self._build_query(kind, row_id)
        return self._build_series(kind, row_id)

    def _build_top(self, top: int) -> list[Entry]:
        if top == 0:
            now = self.mounted_at_ns / 1e9
            return [self._dir_entry(name, inode_of(Kind.TOP, t), now) for t, name in TOP_NAMES.items()]
        if top == TOP_ORPHANS:
            return self._build_orphans()
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
            rows = [r for r in self.db.query(STUDY_ROWS + "ORDER BY st.id") if _date_ids(r[1])[0] == 0]
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
        from dicomfs.index import query_language

        query_language.compile_query(text, "study")  # raises QuerySyntaxError, a ValueError
        if self.db.execute("INSERT INTO queries (text, saved, created_at) VALUES (?, 1, ?) "
                           "ON CONFLICT (text) DO UPDATE SET saved = 1 WHERE saved = 0", (text, time.time())):
            self.forget(inode_of(Kind.TOP, TOP_QUERY))
        query_id, created = self.db.get_row("SELECT id, created_at FROM queries WHERE text = ?", (text,))
        return self._dir_entry(text, inode_of(Kind.QUERY, query_id), created)

    def _build_query(self, kind: Kind, row_id: int) -> list[Entry]:
        if kind is Kind.QUERY:
            from dicomfs.index import query_language

            text = str(self.db.get_val("SELECT text FROM queries WHERE id = ?", (row_id,)))
            ids = query_language.run(self.db, text, "study")
            rows = [(pack_ids(row_id, r[0]), *r[1:]) for study_id in ids
                    for r in self.db.query(STUDY_ROWS + "WHERE st.id = ?", (study_id,))]
            named = naming.unique_names(rows, lambda r: naming.safe_component(
                f"{naming.person_name(r[6]) or '(no name)'} {study_base(r)}", fallback="(study)"))
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
        size, mtime, deleted = self.db.get_row(
            "SELECT size, updated_at, origin_deleted_at FROM derived WHERE id = ?", (derived_id,))
        return self._derived_attr(derived_id, size, mtime, writable=deleted is None)

    def _derived_attr(self, derived_id: int, size: int, mtime: float, *, writable: bool = True
                      ) -> pyfuse3.EntryAttributes:
        attr = self._file_attr(inode_of(Kind.DERIVED_FILE, derived_id), size, mtime, SUMMARY_ATTR_TIMEOUT)
        if writable:
            attr.st_mode = _WRITABLE_FILE_MODE
        return attr

    # ----------------------------------------------------------------- /orphans

    _ORPHANED = "FROM derived WHERE origin_deleted_at IS NOT NULL"

    def _build_orphans(self) -> list[Entry]:
        """One folder per deleted study or series that left derived data, named by level and UID."""
        rows = self.db.query(f"SELECT level, entity_id, origin_uid, max(origin_deleted_at) {self._ORPHANED} "
                             "GROUP BY level, entity_id ORDER BY min(id)")
        named = naming.unique_names(rows, lambda r: naming.safe_component(f"{r[0]}-{r[2]}", fallback=r[0]))
        return [self._dir_entry(n, inode_of(Kind.ORPHAN, orphan_id(r[0], r[1])), r[3], ORPHAN_TIMEOUT)
                for n, r in named]

    def _build_orphan(self, orphan: int) -> list[Entry]:
        level, entity_id = orphan_origin(orphan)
        rows = self.db.query(f"SELECT id, name, size, updated_at {self._ORPHANED} AND level = ? AND entity_id = ? "
                             "ORDER BY id", (level, entity_id))
        if not rows:
            raise NotFoundError(orphan)
        files = [Entry(name.encode(), self._derived_attr(derived_id, size, mtime, writable=False))
                 for derived_id, name, size, mtime in rows if name != ORPHAN_JSON_NAME]
        json_inode = inode_of(Kind.ORPHAN_JSON, orphan)
        return [*files, Entry(ORPHAN_JSON_NAME.encode(), self.attributes(json_inode))]

    def _orphan_mtime(self, orphan: int) -> float:
        level, entity_id = orphan_origin(orphan)
        deleted = self.db.get_val(f"SELECT max(origin_deleted_at) {self._ORPHANED} AND level = ? AND entity_id = ?",
                                  (level, entity_id))
        if deleted is None:
            raise NoSuchRowError(orphan)
        return float(deleted)

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
                STUDY_ROWS + "WHERE st.patient_id = :e AND (EXISTS (SELECT 1 FROM project_members m WHERE "
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
            base = study_base
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
        series_kind = SERIES_KIND_IN[kind]
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
            self._summaries[inode_of(Kind.SERIES_JSON, series_id)] = summaries.series_summary(self.db, series_id, named)
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
            if kind is Kind.ORPHAN_JSON:
                return summaries.orphan_summary(self.db, *orphan_origin(row_id))
            if kind is Kind.PATIENT_JSON:
                return summaries.patient_summary(self.db, row_id)
            if kind is Kind.STUDY_JSON:
                return summaries.study_summary(self.db, row_id)
            if kind is Kind.SERIES_JSON:
                named = self._instance_names(Kind.P_SERIES, self._instance_rows(row_id))
                return summaries.series_summary(self.db, row_id, named)
        except NoSuchRowError:
            pass
        raise NotFoundError(row_id)

    # ----------------------------------------------------------------- attributes

    def _dates_mtime(self) -> float:
        return float(self.db.get_val_or(None, "SELECT max(updated_at) FROM studies") or self.mounted_at_ns / 1e9)

    def _dir_entry(self, name: str, inode: int, mtime: float, timeout: float = ENTRY_TIMEOUT) -> Entry:
        return Entry(name.encode("utf-8"), self._dir_attr(inode, mtime, timeout))

    def _dir_attr(self, inode: int, mtime: float, timeout: float = ENTRY_TIMEOUT) -> pyfuse3.EntryAttributes:
        attr = self._base_attr(inode, mtime, timeout)
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


# The level of the entity a folder of each kind shows, for finding the folders a deletion removed.
_ENTITY_LEVEL = {
    Kind.PATIENT: "patient", Kind.J_PATIENT: "patient",
    **{k: "study" for k in (*STUDY_KINDS, Kind.J_STUDY, Kind.Q_STUDY)},
    **{k: "series" for k in (*SERIES_KINDS, Kind.J_SERIES, Kind.Q_SERIES)},
}
_PACKED_KINDS = frozenset({Kind.J_PATIENT, Kind.J_STUDY, Kind.J_SERIES, Kind.Q_STUDY, Kind.Q_SERIES})
# Folders whose entries are files (and derived/, which goes with its folder): not remembered.
_FILE_FOLDER_KINDS = SERIES_KINDS | {Kind.J_SERIES, Kind.Q_SERIES, Kind.DERIVED, Kind.ORPHAN}


def _date_ids(study_date: str) -> tuple[int, int]:
    """(year, YYYYMMDD) of a DA value, (0, 0) when it is not a usable date."""
    iso = naming.iso_date(study_date)
    if not iso:
        return 0, 0
    return int(iso[:4]), int(iso.replace("-", ""))
