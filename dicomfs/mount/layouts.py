"""The families of folders in the mount, one class each, and ``LAYOUTS``: the registry of them.

Every folder lists in inode order (the inode is the readdir cookie, see ``tree``); names come
from ``naming``. The study and series folders of all layouts share their contents
(``study_contents``, ``series_contents``), so a study looks the same wherever it is reached.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar

from dicomfs.mount import naming, rows, summaries
from dicomfs.mount.kinds import (
    KIND_BITS,
    MAX_FRAMES,
    Kind,
    Top,
    VolumePart,
    entity_of,
    frame_id,
    inode_of,
    orphan_id,
    orphan_origin,
    scoped_id,
    unframed,
    unscoped,
    volume_id,
    volume_of,
)
from dicomfs.mount.model import (
    ENTRY_TIMEOUT,
    ORPHAN_TIMEOUT,
    REMOTE_TIMEOUT,
    SUMMARY_TIMEOUT,
    Layout,
    Model,
    Node,
    NotFoundError,
    SeriesFile,
)
from dicomfs.mount.rows import InstanceRow
from dicomfs.views.jpeg_size import is_color, jpeg_size

log = logging.getLogger(__name__)


def folder(name: str, kind: Kind, row_id: int, mtime: float, timeout: float = ENTRY_TIMEOUT) -> Node:
    return Node(name, inode_of(kind, row_id), mtime, timeout=timeout)


# ---------------------------------------------------------------- contents shared by layouts

def study_contents(model: Model, folder_inode: int, study_id: int, series_kind: Kind, *, scope: int | None = None,
                   by_uid: bool = False, members: str = "") -> list[Node]:
    """A study folder: its series folders (of ``series_kind``), study.json and derived/.

    ``scope``: the project or query the folder is in (packed into the series' inodes);
    ``members``: an SQL condition (starting with AND) that keeps only a project's series.
    """
    found = rows.series_of(model.db, study_id, members, {"p": scope} if members else None)
    if not found and not model.db.query("SELECT 1 FROM studies WHERE id = ?", (study_id,)):
        raise NotFoundError(study_id)
    return [
        *(folder(name, series_kind, r.id if scope is None else scoped_id(scope, r.id), r.updated_at)
          for name, r in naming.named_series(found, by_uid=by_uid)),
        model.summary_node(Kind.STUDY_JSON, study_id),
        model.derived_entry(folder_inode),
    ]


def series_contents(model: Model, folder_inode: int, series_id: int, *, by_uid: bool = False) -> list[Node]:
    """A series folder: three views per instance, the per-series files, and derived/.

    The hot path of a first walk: built in one pass over one query.
    """
    named = naming.named_instances(rows.instances_of(model.db, series_id), by_uid=by_uid)
    nodes = InstanceFiles.entries(named)
    for series_file in model.series_files:
        nodes.extend(series_file.entries(series_id, None if by_uid else named))
    nodes.append(model.derived_entry(folder_inode))
    return nodes


class EntityFolders(Layout):
    """Folders that show one patient, study or series: their mtime is that entity's."""

    def node(self, kind: Kind, row_id: int) -> Node:
        assert kind.level is not None
        return Node("", inode_of(kind, row_id), self.model.level_mtime(kind.level, entity_of(kind, row_id)))


# ---------------------------------------------------------------- the root

class TopLayout(Layout):
    """A layout that owns one of the root's folders."""

    top: ClassVar[Top]
    top_name: ClassVar[str]

    def top_children(self) -> list[Node]:
        raise NotImplementedError


class Root(Layout):
    """``/`` and its folders; each top folder's entries come from the layout that owns it."""

    kinds = frozenset({Kind.TOP_FOLDER})

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self._owners: dict[int, TopLayout] | None = None

    def owners(self) -> dict[int, TopLayout]:
        if self._owners is None:  # the other layouts exist only once the model has made them all
            self._owners = {layout.top: layout for layout in self.model.layouts if isinstance(layout, TopLayout)}
        return self._owners

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        if row_id == Top.ROOT:
            return [folder(owner.top_name, Kind.TOP_FOLDER, top, self.model.mounted_at)
                    for top, owner in sorted(self.owners().items())]
        owner = self.owners().get(row_id)
        if owner is None:
            raise NotFoundError(row_id)
        return owner.top_children()

    def node(self, kind: Kind, row_id: int) -> Node:
        if row_id != Top.ROOT and row_id not in self.owners():
            raise NotFoundError(row_id)
        return folder("", Kind.TOP_FOLDER, row_id, self.model.mounted_at)


# ---------------------------------------------------------------- /patients

class Patients(EntityFolders, TopLayout):
    """``/patients/<patient>/<study>/<series>/``: the tree people browse."""

    top, top_name = Top.PATIENTS, "patients"
    kinds = frozenset({Kind.PATIENT, Kind.PATIENT_STUDY, Kind.PATIENT_SERIES})

    def top_children(self) -> list[Node]:
        return [folder(name, Kind.PATIENT, r.id, r.updated_at)
                for name, r in naming.named_patients(rows.patients(self.db))]

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        inode = inode_of(kind, row_id)
        if kind is Kind.PATIENT:
            studies = rows.studies(self.db, "WHERE st.patient_id = ?", (row_id,))
            return [*(folder(name, Kind.PATIENT_STUDY, r.id, r.updated_at)
                      for name, r in naming.named_studies(studies)),
                    self.model.summary_node(Kind.PATIENT_JSON, row_id)]
        if kind is Kind.PATIENT_STUDY:
            return study_contents(self.model, inode, row_id, Kind.PATIENT_SERIES)
        return series_contents(self.model, inode, row_id)


# ---------------------------------------------------------------- /studies

class StudiesByUid(EntityFolders, TopLayout):
    """``/studies/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: for scripts."""

    top, top_name = Top.STUDIES, "studies"
    kinds = frozenset({Kind.UID_STUDY, Kind.UID_SERIES})

    def top_children(self) -> list[Node]:
        found = self.db.query("SELECT id, study_uid, updated_at FROM studies ORDER BY id")
        named = naming.unique_names(found, lambda r: naming.uid_name(r[1]))
        return [folder(name, Kind.UID_STUDY, r[0], r[2]) for name, r in named]

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        inode = inode_of(kind, row_id)
        if kind is Kind.UID_STUDY:
            return study_contents(self.model, inode, row_id, Kind.UID_SERIES, by_uid=True)
        return series_contents(self.model, inode, row_id, by_uid=True)


# ---------------------------------------------------------------- /dates

def date_ids(study_date: str) -> tuple[int, int]:
    """(year, YYYYMMDD) of a DA value, (0, 0) when it is not a usable date."""
    iso = naming.iso_date(study_date)
    if not iso:
        return 0, 0
    return int(iso[:4]), int(iso.replace("-", ""))


class Dates(EntityFolders, TopLayout):
    """``/dates/<year>/<day>/<time patient study>/<series>/``; ``/dates/unknown`` for the rest."""

    top, top_name = Top.DATES, "dates"
    kinds = frozenset({Kind.YEAR, Kind.DAY, Kind.DATED_STUDY, Kind.DATED_SERIES})

    def top_children(self) -> list[Node]:
        years: dict[int, float] = {}
        for study_date, updated in self.db.query("SELECT study_date, updated_at FROM studies"):
            year = date_ids(study_date)[0]
            years[year] = max(years.get(year, 0.0), updated)
        return [folder(str(y) if y else naming.UNKNOWN_YEAR_NAME, Kind.YEAR, y, t) for y, t in years.items()]

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        if kind is Kind.YEAR:
            return self._year(row_id)
        if kind is Kind.DAY:
            day = str(row_id)
            acr_nema = f"{day[:4]}.{day[4:6]}.{day[6:]}"
            return self._studies(rows.studies(self.db, "WHERE st.study_date IN (?, ?)", (day, acr_nema)))
        inode = inode_of(kind, row_id)
        if kind is Kind.DATED_STUDY:
            return study_contents(self.model, inode, row_id, Kind.DATED_SERIES)
        return series_contents(self.model, inode, row_id)

    def node(self, kind: Kind, row_id: int) -> Node:
        if kind in (Kind.YEAR, Kind.DAY):
            newest = self.db.get_val_or(None, "SELECT max(updated_at) FROM studies")
            return folder("", kind, row_id, float(newest or self.model.mounted_at))
        return super().node(kind, row_id)

    def _year(self, year: int) -> list[Node]:
        if year == 0:  # studies without a usable date sit directly in /dates/unknown
            return self._studies([r for r in rows.studies(self.db) if date_ids(r.study_date)[0] == 0])
        days: dict[int, float] = {}
        for study_date, updated in self.db.query(
                "SELECT study_date, updated_at FROM studies WHERE study_date >= ? AND study_date < ?",
                (str(year), str(year + 1))):
            y, day = date_ids(study_date)
            if y == year:
                days[day] = max(days.get(day, 0.0), updated)
        return [folder(naming.iso_date(str(d)), Kind.DAY, d, t) for d, t in days.items()]

    @staticmethod
    def _studies(found: list[rows.StudyRow]) -> list[Node]:
        return [folder(name, Kind.DATED_STUDY, r.id, r.updated_at)
                for name, r in naming.named_studies(found, "dated")]


# ---------------------------------------------------------------- /projects

# A project's members: a patient brings all its studies, a study all its series; a series only itself.
_MEMBER_SERIES = (
    "SELECT se.id FROM series se JOIN studies st ON st.id = se.study_id JOIN project_members m "
    "ON m.project_id = :p AND ((m.level = 'series' AND m.entity_id = se.id) OR (m.level = 'study' AND "
    "m.entity_id = st.id) OR (m.level = 'patient' AND m.entity_id = st.patient_id))"
)


class ScopeFolders(EntityFolders, TopLayout):
    """A top folder of scopes (projects, queries), each a folder of entities of the archive."""

    scope: ClassVar[Kind]
    table: ClassVar[str]  # where the scopes are, with their created_at

    def node(self, kind: Kind, row_id: int) -> Node:
        if kind is self.scope:
            return folder("", kind, row_id, self.db.get_float(f"SELECT created_at FROM {self.table} WHERE id = ?",
                                                               (row_id,)))
        return super().node(kind, row_id)


class Projects(ScopeFolders):
    """``/projects/<name>/<patient>/<study>/<series>/``: a project's members, as in /patients."""

    top, top_name = Top.PROJECTS, "projects"
    scope, table = Kind.PROJECT, "projects"
    kinds = frozenset({Kind.PROJECT, Kind.PROJECT_PATIENT, Kind.PROJECT_STUDY, Kind.PROJECT_SERIES})

    def top_children(self) -> list[Node]:
        # Project names are validated when created: safe as they are.
        return [folder(name, Kind.PROJECT, project_id, created)
                for project_id, name, created in self.db.query("SELECT id, name, created_at FROM projects ORDER BY id")]

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        inode = inode_of(kind, row_id)
        if kind is Kind.PROJECT:
            patients = rows.patients(
                self.db, f"WHERE p.id IN (SELECT st.patient_id FROM studies st JOIN series se ON se.study_id = st.id "
                f"WHERE se.id IN ({_MEMBER_SERIES})) OR p.id IN (SELECT entity_id FROM project_members "
                "WHERE project_id = :p AND level = 'patient')", {"p": row_id})
            return [folder(name, Kind.PROJECT_PATIENT, scoped_id(row_id, r.id), r.updated_at)
                    for name, r in naming.named_patients(patients)]
        project_id, entity_id = unscoped(row_id)
        if kind is Kind.PROJECT_PATIENT:
            studies = rows.studies(
                self.db, "WHERE st.patient_id = :e AND (EXISTS (SELECT 1 FROM project_members m WHERE "
                "m.project_id = :p AND ((m.level = 'patient' AND m.entity_id = :e) OR (m.level = 'study' AND "
                "m.entity_id = st.id))) OR EXISTS (SELECT 1 FROM series se2 JOIN project_members m ON "
                "m.project_id = :p AND m.level = 'series' AND m.entity_id = se2.id WHERE se2.study_id = st.id))",
                {"p": project_id, "e": entity_id})
            return [*(folder(name, Kind.PROJECT_STUDY, scoped_id(project_id, r.id), r.updated_at)
                      for name, r in naming.named_studies(studies)),
                    self.model.summary_node(Kind.PATIENT_JSON, entity_id)]
        if kind is Kind.PROJECT_STUDY:
            return study_contents(self.model, inode, entity_id, Kind.PROJECT_SERIES, scope=project_id,
                                  members=f"AND id IN ({_MEMBER_SERIES})")
        return series_contents(self.model, inode, entity_id)  # a series shows all its instances


# ---------------------------------------------------------------- /query

class Queries(ScopeFolders):
    """``/query/<query>/<study>/<series>/``: any valid query is a folder of its matching studies.

    A query used once is saved: listed in /query from then on, across remounts, until rmdir.
    (mkdir cannot be the way to save: the kernel looks the name up first, and every valid
    query already exists.)
    """

    top, top_name = Top.QUERY, "query"
    scope, table = Kind.QUERY, "queries"
    kinds = frozenset({Kind.QUERY, Kind.QUERY_STUDY, Kind.QUERY_SERIES})

    def top_children(self) -> list[Node]:  # saved queries; any other valid query is found by lookup
        return [folder(text, Kind.QUERY, query_id, created) for query_id, text, created in self.db.query(
            "SELECT id, text, created_at FROM queries WHERE saved = 1 ORDER BY id")]

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        inode = inode_of(kind, row_id)
        if kind is Kind.QUERY:
            from dicomfs.index import query_language

            text = self.db.get_str("SELECT text FROM queries WHERE id = ?", (row_id,))
            found = [r for study_id in query_language.run(self.db, text, "study")
                     for r in rows.studies(self.db, "WHERE st.id = ?", (study_id,))]
            return [folder(name, Kind.QUERY_STUDY, scoped_id(row_id, r.id), r.updated_at)
                    for name, r in naming.named_studies(found, "query")]
        query_id, entity_id = unscoped(row_id)
        if kind is Kind.QUERY_STUDY:
            return study_contents(self.model, inode, entity_id, Kind.QUERY_SERIES, scope=query_id)
        return series_contents(self.model, inode, entity_id)

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self._refused: set[str] = set()  # invalid queries already logged

    def save(self, text: str) -> tuple[Node, bool]:
        """The folder of query ``text`` (QuerySyntaxError, a ValueError, if it is not one), and
        whether it was newly saved."""
        from dicomfs.index import query_language

        try:
            query_language.compile_query(text, "study")
        except ValueError as exc:
            self._refuse(text, exc)
            raise
        new = bool(self.db.execute(
            "INSERT INTO queries (text, saved, created_at) VALUES (?, 1, ?) "
            "ON CONFLICT (text) DO UPDATE SET saved = 1 WHERE saved = 0", (text, time.time())))
        query_id, created = self.db.get_row("SELECT id, created_at FROM queries WHERE text = ?", (text,))
        return folder(text, Kind.QUERY, query_id, created), new

    def unsave(self, text: str) -> None:
        """rmdir in /query: no longer listed (the folder still answers if used again)."""
        self.db.execute("UPDATE queries SET saved = 0 WHERE text = ?", (text,))

    def _refuse(self, text: str, exc: ValueError) -> None:
        """One warning per distinct invalid query, naming it and what is wrong (the errno alone
        says nothing); names beginning with "." are what file managers probe for, not queries."""
        if text in self._refused:
            return
        if len(self._refused) >= _REFUSED_KEPT:
            self._refused.clear()
        self._refused.add(text)
        one_line = getattr(exc, "one_line", None)
        reason = one_line() if callable(one_line) else str(exc).splitlines()[0]
        if text.startswith("."):
            log.debug("/query/%s is not a query: %s", text, reason)
        else:
            log.warning("/query/%s is not a query: %s", text, reason)


_REFUSED_KEPT = 1000  # distinct invalid queries remembered (so each is logged once)


# ---------------------------------------------------------------- /orphans



class Orphans(TopLayout):
    """``/orphans/<level>-<UID>/``: derived data whose study or series was deleted, read-only."""

    top, top_name = Top.ORPHANS, "orphans"
    kinds = frozenset({Kind.ORPHAN, Kind.ORPHAN_JSON})

    def top_children(self) -> list[Node]:
        found = self.db.query(f"SELECT level, entity_id, origin_uid, max(origin_deleted_at) {rows.ORPHANED} "
                              "GROUP BY level, entity_id ORDER BY min(id)")
        named = naming.unique_names(found, lambda r: naming.safe_component(f"{r[0]}-{r[2]}", fallback=r[0]))
        return [folder(name, Kind.ORPHAN, orphan_id(r[0], r[1]), r[3], ORPHAN_TIMEOUT) for name, r in named]

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        level, entity_id = orphan_origin(row_id)
        found = self.db.query(f"SELECT id, name, size, updated_at {rows.ORPHANED} AND level = ? AND entity_id = ? "
                              "ORDER BY id", (level, entity_id))
        if not found:
            raise NotFoundError(row_id)
        files = [Derived.file(derived_id, name, size, mtime, writable=False)
                 for derived_id, name, size, mtime in found if name != naming.ORIGIN_JSON_NAME]
        return [*files, self.model.summary_node(Kind.ORPHAN_JSON, row_id)]

    def node(self, kind: Kind, row_id: int) -> Node:
        if kind is Kind.ORPHAN_JSON:
            return self.model.summary_node(kind, row_id)
        return folder("", kind, row_id, rows.orphan_mtime(self.db, row_id), ORPHAN_TIMEOUT)


# ---------------------------------------------------------------- derived/

class Derived(Layout):
    """``derived/`` in every study and series folder: files made from it, writable."""

    kinds = frozenset({Kind.DERIVED_FOLDER, Kind.DERIVED_FILE})

    @staticmethod
    def file(derived_id: int, name: str, size: int, mtime: float, *, writable: bool = True) -> Node:
        return Node(name, inode_of(Kind.DERIVED_FILE, derived_id), mtime, size, SUMMARY_TIMEOUT, writable)

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        level, entity_id = self.model.derived_origin(inode_of(kind, row_id))
        found = self.db.query("SELECT id, name, size, updated_at FROM derived WHERE level = ? AND entity_id = ? "
                              "ORDER BY id", (level, entity_id))
        return [self.file(*r) for r in found]

    def node(self, kind: Kind, row_id: int) -> Node:
        if kind is Kind.DERIVED_FOLDER:
            return self.model.derived_entry(row_id)
        size, mtime, deleted = self.db.get_row(
            "SELECT size, updated_at, origin_deleted_at FROM derived WHERE id = ?", (row_id,))
        return self.file(row_id, "", size, mtime, writable=deleted is None)


# ---------------------------------------------------------------- files

class InstanceFiles(Layout):
    """``NNN.dcm``, ``NNN.json`` and ``NNN.jpg``: one inode each per instance, in every layout."""

    kinds = frozenset({Kind.INSTANCE_DCM, Kind.INSTANCE_JSON, Kind.INSTANCE_JPG})

    @staticmethod
    def entries(named: list[tuple[str, InstanceRow]]) -> list[Node]:
        nodes: list[Node] = []
        add = nodes.append
        for stem, r in named:
            base = r.id << KIND_BITS
            # Not yet fetched from a remote PACS: size unknown (0) until then, so the kernel
            # must not keep these attributes long.
            timeout = ENTRY_TIMEOUT if r.local else REMOTE_TIMEOUT
            add(Node(f"{stem}.dcm", base | Kind.INSTANCE_DCM, r.received_at, r.file_size, timeout))
            add(Node(f"{stem}.json", base | Kind.INSTANCE_JSON, r.received_at, r.json_size, timeout))
            if r.has_image:
                add(Node(f"{stem}.jpg", base | Kind.INSTANCE_JPG, r.received_at,
                         jpeg_size(r.rows, r.columns, is_color(r.photometric))))
                if r.number_of_frames > 1:
                    add(Node(f"{stem}{naming.FRAMES_SUFFIX}", base | Kind.FRAME_FOLDER, r.received_at))
        return nodes

    def node(self, kind: Kind, row_id: int) -> Node:
        file_size, json_size, rows_, columns, photometric, has_image, received_at, local = self.db.get_row(
            "SELECT file_size, json_size, rows, columns, photometric, has_image, received_at, file_path != '' "
            "FROM instances WHERE id = ?", (row_id,))
        if kind is Kind.INSTANCE_DCM:
            size = file_size
        elif kind is Kind.INSTANCE_JSON:
            size = json_size
        elif has_image:
            size = jpeg_size(rows_, columns, is_color(photometric))
        else:
            raise NotFoundError(row_id)
        return Node("", inode_of(kind, row_id), received_at, size, ENTRY_TIMEOUT if local else REMOTE_TIMEOUT)


class Frames(Layout):
    """``NNN.frames/`` beside a multi-frame instance: ``0001.jpg`` … one view per frame.

    Each is rendered like ``NNN.jpg`` (same size, same fixed first and last bytes), from its
    own frame, on its first read past them.
    """

    kinds = frozenset({Kind.FRAME_FOLDER, Kind.FRAME_JPG})

    def _instance(self, instance_id: int) -> tuple[int, int, int, float]:
        """(frames, size of each view, has_image, received_at); NoSuchRowError if gone."""
        rows_, columns, photometric, frames, has_image, received_at = self.db.get_row(
            "SELECT rows, columns, photometric, number_of_frames, has_image, received_at FROM instances WHERE id = ?",
            (instance_id,))
        if not has_image or frames < 2:
            raise NotFoundError(instance_id)
        return min(frames, MAX_FRAMES), jpeg_size(rows_, columns, is_color(photometric)), has_image, received_at

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        frames, size, _, received_at = self._instance(row_id)
        width = max(4, len(str(frames)))
        return [Node(f"{n:0{width}d}.jpg", inode_of(Kind.FRAME_JPG, frame_id(row_id, n)), received_at, size)
                for n in range(1, frames + 1)]

    def node(self, kind: Kind, row_id: int) -> Node:
        if kind is Kind.FRAME_FOLDER:
            return Node("", inode_of(kind, row_id), self._instance(row_id)[3])
        instance_id, frame = unframed(row_id)
        frames, size, _, received_at = self._instance(instance_id)
        if not 1 <= frame <= frames:
            raise NotFoundError(row_id)
        return Node("", inode_of(kind, row_id), received_at, size)


class FolderSummaries(Layout):
    """``patient.json`` and ``study.json`` (generated with ``summaries``)."""

    kinds = frozenset({Kind.PATIENT_JSON, Kind.STUDY_JSON})

    def node(self, kind: Kind, row_id: int) -> Node:
        return self.model.summary_node(kind, row_id)


class SeriesSummary(SeriesFile):
    """``series.json`` in every series folder: built with the listing, from the same names."""

    kinds = frozenset({Kind.SERIES_JSON})

    def entries(self, series_id: int, instances: list[tuple[str, InstanceRow]] | None) -> list[Node]:
        if instances is not None:  # the summary lists these same names: build it now, once
            self.model.summaries[inode_of(Kind.SERIES_JSON, series_id)] = summaries.series_summary(
                self.db, series_id, instances, self.model.volume_files(series_id).summary)
        return [self.model.summary_node(Kind.SERIES_JSON, series_id)]

    def node(self, kind: Kind, row_id: int) -> Node:
        return self.model.summary_node(kind, row_id)


class SeriesVolumeFiles(SeriesFile):
    """``volume*.nii`` with its ``.json`` sidecar (and ``.bval``/``.bvec``) in every series folder.

    Names and sizes come from ``Model.volume_files``, which plans the series only when it
    changed; the mtime is the series'. Short timeouts: a volume changes as its series does.
    """

    kinds = frozenset({Kind.VOLUME_NII, Kind.VOLUME_TEXT})

    def entries(self, series_id: int, instances: list[tuple[str, InstanceRow]] | None) -> list[Node]:
        listing = self.model.volume_files(series_id)
        if not listing.volumes:
            return []
        mtime = self.model.level_mtime("series", series_id)
        return [Node(name, self._inode(series_id, number, part), mtime, size, SUMMARY_TIMEOUT)
                for number, files in enumerate(listing.volumes) for part, name, size in files]

    def node(self, kind: Kind, row_id: int) -> Node:
        series_id, number, part = volume_of(row_id)
        volumes = self.model.volume_files(series_id).volumes
        found = [size for p, _, size in volumes[number] if p == part] if number < len(volumes) else []
        if not found:
            raise NotFoundError(inode_of(kind, row_id))
        return Node("", inode_of(kind, row_id), self.model.level_mtime("series", series_id), found[0],
                    SUMMARY_TIMEOUT)

    @staticmethod
    def _inode(series_id: int, number: int, part: int) -> int:
        kind = Kind.VOLUME_NII if part == VolumePart.NII else Kind.VOLUME_TEXT
        return inode_of(kind, volume_id(series_id, number, VolumePart(part)))


LAYOUTS: tuple[type[Layout], ...] = (
    Root, Patients, StudiesByUid, Dates, Projects, Queries, Orphans, Derived,
    InstanceFiles, Frames, FolderSummaries, SeriesSummary, SeriesVolumeFiles,
)
"""The registry: every kind of entry is answered by exactly one of these."""
