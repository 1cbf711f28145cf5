"""The mounted tree as the kernel sees it: cached listings and summaries, and their invalidation.

What a folder holds comes from the layout model (``model``, ``layouts``); the tree keeps the
most recently used listings with their kernel attributes, the summaries generated with them,
and where each folder name was handed out, and drops what the change log says is stale.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

import pyfuse3

from dicomfs.index.changes import Changes
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.mount import rows
from dicomfs.mount.attributes import KernelAttributes
from dicomfs.mount.kinds import (
    KIND_BITS,
    Content,
    Ids,
    Kind,
    Top,
    VolumePart,
    entity_of,
    inode_of,
    split_inode,
    volume_id,
    volume_of,
)
from dicomfs.mount.layouts import Queries, date_ids
from dicomfs.mount.model import Model, NotFoundError, split
from dicomfs.mount.rows import InstanceFile
from dicomfs.volumes.plan import VolumePlan
from dicomfs.volumes.series import SeriesVolumes, VolumeFiles, load_layouts, stored_files
from dicomfs.volumes.source import VolumeLayout

__all__ = ["Entry", "Listing", "NotFoundError", "Refresh", "Tree"]


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


@dataclass(frozen=True, slots=True)
class Refresh:
    """What the kernel must forget after a change."""

    attributes: list[int]  # folders (and so their listings), and files whose size changed
    contents: list[int]  # files whose bytes changed: summaries
    gone: list[tuple[int, bytes]]  # (parent inode, name) of deleted folders


def _kinds(level: str) -> tuple[Kind, ...]:
    """The folder kinds that show one entity of ``level`` by its own row id."""
    return tuple(k for k in Kind if k.folder and k.level == level and k.ids is Ids.ROW)


_SERIES_FOLDERS, _STUDY_FOLDERS = _kinds("series"), _kinds("study")
_INSTANCE_FILES = tuple(k for k in Kind if k.level == "instance" and k.ids is Ids.ROW)
# Folders that depend on many series at once; they are few, so any series change drops them all.
_SCOPED = frozenset(k for k in Kind if k.ids is Ids.SCOPED) | {Kind.PROJECT, Kind.QUERY, Kind.DERIVED_FOLDER}
_TOPS = [inode_of(Kind.TOP_FOLDER, t) for t in (Top.ROOT, Top.PATIENTS, Top.STUDIES, Top.DATES, Top.ORPHANS)]
_QUERY_TOP = inode_of(Kind.TOP_FOLDER, Top.QUERY)
_GENERATED = frozenset(k.value for k in Kind if k.content is Content.GENERATED)
_NEW_BYTES = (Content.GENERATED, Content.VOLUME)  # files whose bytes change with their series: drop pages
_KIND_MASK = (1 << KIND_BITS) - 1


class Tree:
    """Answers "what is in this folder" and "what is this inode", cached, for ``Operations``."""

    def __init__(self, db: Database, *, max_listings: int = 20_000) -> None:
        self.db = db
        self.max_listings = max_listings
        self._listings: OrderedDict[int, Listing] = OrderedDict()
        self._summaries: dict[int, bytes] = {}
        self._volumes: dict[int, SeriesVolumes] = {}  # series id → its planned volumes
        self._volume_files: dict[int, VolumeFiles] = {}  # series id → what its folder lists of them
        self.model = Model(db, self._summaries, volumes=self._volumes, volume_listings=self._volume_files)
        # How many volumes each series was listed with: a change must make the kernel forget them all.
        self._volume_counts: dict[int, int] = {}
        self.attributes_of = KernelAttributes()
        self.filling: Container[int] = ()  # series ids being fetched (the fetcher's retrieves)
        # Where each folder was listed (folder inode → parent inode, name): the kernel may hold
        # these names long after the listing left the cache, and a deletion must drop them.
        self._folder_names: dict[int, tuple[int, bytes]] = {}
        # The size last handed to the kernel for each generated file (they change as data arrives).
        self._told_sizes: dict[int, int] = {}

    # ----------------------------------------------------------------- what Operations asks

    def listing(self, inode: int) -> Listing:
        cached = self._listings.get(inode)
        if cached is not None:
            self._listings.move_to_end(inode)
            return cached
        make = self.attributes_of
        nodes = self.model.children(inode)
        listing = Listing([Entry(node.name.encode("utf-8"), make(node)) for node in nodes])
        self._told_sizes.update((node.inode, node.size) for node in nodes if node.inode & _KIND_MASK in _GENERATED)
        for node in nodes:
            if node.inode & _KIND_MASK == Kind.VOLUME_NII:
                series_id, number, _ = volume_of(node.inode >> KIND_BITS)
                self._volume_counts[series_id] = max(self._volume_counts.get(series_id, 0), number + 1)
        if split_inode(inode)[0].level != "series":  # series folders hold files (and derived/) only
            for entry in listing.entries:
                kind = split_inode(entry.inode)[0]
                if kind.folder and kind is not Kind.DERIVED_FOLDER:
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
        node = self.model.node(inode)
        if inode & _KIND_MASK in _GENERATED:
            self._told_sizes[inode] = node.size
        return self.attributes_of(node)

    def size(self, inode: int) -> int:
        """The size a file is listed with."""
        return self.model.node(inode).size

    def told_other_size(self, inode: int, size: int) -> bool:
        """True when the kernel was last given another size for this generated file; from now
        on it is taken to know ``size`` (the caller makes it forget the old one)."""
        told = self._told_sizes.get(inode)
        self._told_sizes[inode] = size
        return told is not None and told != size

    def kind(self, inode: int) -> Kind:
        """The kind of an inode; NotFoundError for a number this tree never hands out."""
        return split(inode)[0]

    def instance_file(self, inode: int) -> InstanceFile:
        """For opening an instance view: where its file is."""
        kind, row_id = split(inode)
        if kind.level != "instance" or kind.folder:
            raise NotFoundError(inode)
        try:
            return rows.instance_file(self.db, entity_of(kind, row_id))
        except NoSuchRowError:
            raise NotFoundError(inode) from None

    def summary(self, inode: int) -> bytes:
        return self.model.summary(inode)

    def volume(self, inode: int) -> VolumeLayout | VolumePlan:
        """For opening a volume: where its bytes are now (a raw one), or its plan (one to decode)."""
        kind, packed = split(inode)
        if kind is not Kind.VOLUME_NII:
            raise NotFoundError(inode)
        series_id, number, _ = volume_of(packed)
        try:
            listing = self.model.volume_files(series_id)
            if number >= len(listing.volumes):
                raise NotFoundError(inode)
            if load_layouts(self.db, series_id, listing):
                assert listing.layouts is not None
                layout = listing.layouts[number]
                if layout is not None:
                    return layout
            volumes = self.model.volumes(series_id).plan.volumes
        except NoSuchRowError:
            raise NotFoundError(inode) from None
        if number >= len(volumes):
            raise NotFoundError(inode)
        plan = volumes[number]
        return VolumeLayout.of(plan) if plan.raw else plan

    def stored_files(self, series_id: int) -> dict[int, str]:
        return stored_files(self.db, series_id)

    def origin(self, inode: int) -> tuple[str, int] | None:
        return self.model.origin(inode)

    def derived_origin(self, inode: int) -> tuple[str, int]:
        return self.model.derived_origin(inode)

    def is_cached(self, inode: int) -> bool:
        return inode in self._listings

    def forget(self, inode: int) -> None:
        self._drop([inode])

    # ----------------------------------------------------------------- /query

    def query_folder(self, text: str) -> Entry:
        """The folder of any valid query (ValueError otherwise); saves it, so /query lists it."""
        queries = self.model.layout(Kind.QUERY)
        assert isinstance(queries, Queries)
        node, new = queries.save(text)
        if new:
            self.forget(_QUERY_TOP)
        return Entry(node.name.encode("utf-8"), self.attributes_of(node))

    def unsave_query(self, text: str) -> None:
        queries = self.model.layout(Kind.QUERY)
        assert isinstance(queries, Queries)
        queries.unsave(text)
        self.forget(_QUERY_TOP)

    # ----------------------------------------------------------------- change handling

    def refresh(self, changes: Changes) -> Refresh:
        """Forget what these changes touched; returns what the kernel must forget too."""
        gone = self._removed_names(changes.removed) if changes.removed else []
        # A series being fetched changes with every instance: its files' sizes are kept right by
        # ``refill``, the rest waits for the note the fetcher makes once the retrieve has ended.
        series = [s for s in changes.series if s not in self.filling]
        stale = self._stale(series, everything=changes.everything)
        self._drop(stale)
        # An instance's views are the same bytes whether fetched, evicted or fetched again: only
        # their sizes change. Dropping their pages would race with readers of a fetch under way.
        if changes.everything:
            self._volumes.clear()
            self._volume_files.clear()
        attributes = [inode for inode in stale if split_inode(inode)[0].content not in _NEW_BYTES]
        contents = [inode for inode in stale if split_inode(inode)[0].content in _NEW_BYTES]
        return Refresh(attributes, contents, gone)

    def instance_ids(self, sop_uids: Iterable[str]) -> list[tuple[int, int]]:
        """(series id, instance id) of the instances with these SOP Instance UIDs."""
        found = []
        for sop_uid in sop_uids:
            try:
                series_id, instance_id = self.db.get_row(
                    "SELECT series_id, id FROM instances WHERE sop_uid = ?", (sop_uid,))
            except NoSuchRowError:
                continue
            found.append((int(series_id), int(instance_id)))
        return found

    def refill(self, instances: Iterable[tuple[int, int]]) -> None:
        """Fetched just now, (series id, instance id): their files' sizes in the cached series listings.

        Cheaper than ``forget_series`` (a series listing is rebuilt from the index), as often as
        a fetch indexes; what else the instances change (summaries, new ``.jpg`` entries) the
        change watcher drops a moment later.
        """
        for series_id, instance_id in instances:
            targets = [inode_of(k, instance_id) for k in _INSTANCE_FILES]
            for folder in (inode_of(k, series_id) for k in _SERIES_FOLDERS):
                listing = self._listings.get(folder)
                if listing is None:
                    continue
                for target in targets:
                    at = bisect.bisect_left(listing.inodes, target)
                    if at == len(listing.inodes) or listing.inodes[at] != target:
                        continue
                    entry = listing.entries[at]
                    try:
                        node = self.model.node(target)
                    except NotFoundError:
                        continue
                    listing.entries[at] = listing.by_name[entry.name] = Entry(entry.name, self.attributes_of(node))

    def forget_series(self, series_ids: Iterable[int]) -> None:
        """Drop what shows these series from the caches now (the kernel is told by the watcher)."""
        self._drop(self._stale(series_ids, everything=False))

    def _drop(self, inodes: Iterable[int]) -> None:
        for inode in inodes:
            self._listings.pop(inode, None)
            self._summaries.pop(inode, None)
            if inode & _KIND_MASK == Kind.SERIES_JSON:  # the series changed: so may its volumes
                self._volumes.pop(inode >> KIND_BITS, None)
                self._volume_files.pop(inode >> KIND_BITS, None)

    def _stale(self, series_ids: Iterable[int], *, everything: bool) -> list[int]:
        """What depends on these series (everything cached, for a change above any series)."""
        stale: set[int] = set(_TOPS)
        if everything:
            stale.update(self._listings)
            stale.update(self._summaries)
        series_ids = set(series_ids)
        for series_id in series_ids:
            try:
                study_id, patient_id, study_date = self.db.get_row(
                    "SELECT st.id, st.patient_id, st.study_date FROM series se "
                    "JOIN studies st ON st.id = se.study_id WHERE se.id = ?", (series_id,))
            except NoSuchRowError:
                continue
            stale.update(inode_of(k, series_id) for k in (*_SERIES_FOLDERS, Kind.SERIES_JSON))
            for number in range(self._volume_counts.get(series_id, 0)):
                stale.add(inode_of(Kind.VOLUME_NII, volume_id(series_id, number)))
                stale.update(inode_of(Kind.VOLUME_TEXT, volume_id(series_id, number, part))
                             for part in (VolumePart.JSON, VolumePart.BVAL, VolumePart.BVEC))
            # Evicted from the cache of fetched data: those files' sizes are 0 again. (Fetched
            # ones are refreshed by their next open, which knows them from the fetcher; doing it
            # here too would race with the readers of a fetch under way.)
            for (instance_id,) in self.db.query(
                    "SELECT id FROM instances WHERE series_id = ? AND file_path = '' AND series_id IN "
                    "(SELECT series_id FROM remote_series)", (series_id,)):
                stale.update(inode_of(k, instance_id) for k in _INSTANCE_FILES)
            stale.update(inode_of(k, study_id) for k in (*_STUDY_FOLDERS, Kind.STUDY_JSON))
            stale.update(inode_of(k, patient_id) for k in (Kind.PATIENT, Kind.PATIENT_JSON))
            year, day = date_ids(study_date)
            stale.add(inode_of(Kind.YEAR, year))
            if day:
                stale.add(inode_of(Kind.DAY, day))
        if series_ids:
            stale.update(i for i in self._listings if split_inode(i)[0] in _SCOPED)
        return sorted(stale)

    def _removed_names(self, removed: frozenset[tuple[str, int]]) -> list[tuple[int, bytes]]:
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
            elif kind.level is not None and (kind.level, entity_of(kind, row_id)) in removed:
                gone.append((parent, name))
                del self._folder_names[inode]
        for parent in dates:
            try:
                still = {split_inode(node.inode)[1] for node in self.model.children(parent)}
            except NotFoundError:
                still = set()
            for inode, (listed_in, name) in list(self._folder_names.items()):
                if listed_in == parent and split_inode(inode)[1] not in still:
                    gone.append((parent, name))
                    del self._folder_names[inode]
        return gone
