"""The layout model: what each folder of the mount holds, read from the index, without pyfuse3.

An entry is a ``Node`` (name, inode, size, mtime, how long the kernel may keep it). Each
family of folders is one ``Layout`` class that answers for the kinds it declares: their
children, an entry known only by its inode (``getattr`` after a timeout), and the entity a
folder shows. ``LAYOUTS`` in ``layouts`` is the one registry: adding a layout, or a file that
every series folder shows, is one class there and one entry in it.

``dicomfs find --paths`` names entities through this model too, so it needs no kernel and
no pyfuse3, and its paths are the mount's exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import ClassVar

from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.mount import naming, rows, summaries
from dicomfs.mount.kinds import Kind, entity_of, inode_of, split_inode
from dicomfs.mount.rows import InstanceRow
from dicomfs.volumes.series import FactsCache, SeriesVolumes, VolumeFiles, series_volumes, volume_files

ENTRY_TIMEOUT = 300.0  # names and most attributes never change; changes are invalidated explicitly
SUMMARY_TIMEOUT = 1.0  # summaries and derived/ change size as data arrives
ORPHAN_TIMEOUT = 1.0  # an orphan folder leaves when its origin comes back: not tracked, so kept briefly
REMOTE_TIMEOUT = 1.0  # files not yet fetched from a remote PACS: their size becomes known on open


class NotFoundError(LookupError):
    """No such entry (the mount answers ENOENT)."""


@dataclass(slots=True)
class Node:
    """One entry of a folder, as the model sees it (``attributes`` makes the kernel's view)."""

    name: str
    inode: int
    mtime: float
    size: int = 0
    timeout: float = ENTRY_TIMEOUT
    writable: bool = False  # derived/ folders and the files in them

    @property
    def kind(self) -> Kind:
        return split_inode(self.inode)[0]


class Layout:
    """A family of folders (or files); subclasses declare ``kinds`` and answer for them."""

    kinds: ClassVar[frozenset[Kind]] = frozenset()

    def __init__(self, model: Model) -> None:
        self.model = model
        self.db = model.db

    def children(self, kind: Kind, row_id: int) -> list[Node]:
        """The entries of a folder of this family."""
        raise NotFoundError(inode_of(kind, row_id))

    def node(self, kind: Kind, row_id: int) -> Node:
        """An entry known only by its inode (its name is not needed, and may be '')."""
        raise NotFoundError(inode_of(kind, row_id))


class SeriesFile(Layout):
    """A file that every series folder shows beside its instances (series.json; volumes next)."""

    def entries(self, series_id: int, instances: list[tuple[str, InstanceRow]] | None) -> list[Node]:
        """This file's entries in the folder of series ``series_id``.

        ``instances``: the folder's instances with their names (None in a layout that names
        them by UID).
        """
        raise NotImplementedError


class Model:
    """All layouts over one index; summaries are kept in ``summaries`` (a cache the tree owns)."""

    def __init__(self, db: Database, summaries: MutableMapping[int, bytes] | None = None,
                 layouts: Iterable[type[Layout]] | None = None,
                 volumes: MutableMapping[int, SeriesVolumes] | None = None,
                 volume_listings: MutableMapping[int, VolumeFiles] | None = None) -> None:
        if layouts is None:
            from dicomfs.mount.layouts import LAYOUTS

            layouts = LAYOUTS
        self.db = db
        self.summaries: MutableMapping[int, bytes] = {} if summaries is None else summaries
        self.volume_plans: MutableMapping[int, SeriesVolumes] = {} if volumes is None else volumes
        self.volume_listings: MutableMapping[int, VolumeFiles] = {} if volume_listings is None else volume_listings
        self.volume_facts = FactsCache()
        self.mounted_at = time.time()
        self.layouts = [cls(self) for cls in layouts]
        self._by_kind: dict[Kind, Layout] = {kind: layout for layout in self.layouts for kind in layout.kinds}
        self.series_files = [layout for layout in self.layouts if isinstance(layout, SeriesFile)]
        missing = set(Kind) - set(self._by_kind)
        assert not missing, f"no layout answers for {missing}"

    def layout(self, kind: Kind) -> Layout:
        return self._by_kind[kind]

    def children(self, inode: int) -> list[Node]:
        kind, row_id = split(inode)
        if not kind.folder:
            raise NotADirectoryError(inode)
        try:
            return self._by_kind[kind].children(kind, row_id)
        except NoSuchRowError:
            raise NotFoundError(inode) from None

    def node(self, inode: int) -> Node:
        kind, row_id = split(inode)
        try:
            return self._by_kind[kind].node(kind, row_id)
        except NoSuchRowError:
            raise NotFoundError(inode) from None

    def summary(self, inode: int) -> bytes:
        """Bytes of a generated file (patient/study/series.json, origin.json), made once per change."""
        data = self.summaries.get(inode)
        if data is None:
            kind, row_id = split(inode)
            try:
                data = summaries.make(self, kind, row_id)
            except NoSuchRowError:
                raise NotFoundError(inode) from None
            self.summaries[inode] = data
        return data

    def volumes(self, series_id: int) -> SeriesVolumes:
        """The planned volumes of a series (every slice), made once per change of the series."""
        planned = self.volume_plans.get(series_id)
        if planned is None:
            planned = self.volume_plans[series_id] = series_volumes(self.db, series_id, self.volume_facts)
        return planned

    def volume_files(self, series_id: int) -> VolumeFiles:
        """What the series folder lists of its volumes, without planning when the series is unchanged."""
        listing = self.volume_listings.get(series_id)
        if listing is None:
            listing = self.volume_listings[series_id] = volume_files(
                self.db, series_id, self.volume_plans.get(series_id), cache=self.volume_facts)
        return listing

    def origin(self, inode: int) -> tuple[str, int] | None:
        """("study", id) or ("series", id) for a study or series folder in any layout, else None."""
        kind, row_id = split(inode)
        if kind.folder and kind.level in ("study", "series"):
            return kind.level, entity_of(kind, row_id)
        return None

    def derived_origin(self, inode: int) -> tuple[str, int]:
        """(level, row id) whose derived/ folder ``inode`` is; NotFoundError for any other inode."""
        kind, parent = split(inode)
        origin = self.origin(parent) if kind is Kind.DERIVED_FOLDER else None
        if origin is None:
            raise NotFoundError(inode)
        return origin

    # ------------------------------------------------------------ pieces several layouts share

    def level_mtime(self, level: str, row_id: int) -> float:
        """A folder or summary changes exactly when its entity does: its mtime is the entity's."""
        return self.db.get_float(f"SELECT updated_at FROM {_LEVEL_TABLE[level]} WHERE id = ?", (row_id,))

    def summary_node(self, kind: Kind, row_id: int) -> Node:
        inode = inode_of(kind, row_id)
        name = naming.SUMMARY_NAMES[kind.level] if kind.level else naming.ORIGIN_JSON_NAME
        return Node(name, inode, self._summary_mtime(kind, row_id), len(self.summary(inode)), SUMMARY_TIMEOUT)

    def _summary_mtime(self, kind: Kind, row_id: int) -> float:
        if kind is Kind.ORPHAN_JSON:
            return rows.orphan_mtime(self.db, row_id)
        assert kind.level is not None
        return self.level_mtime(kind.level, row_id)

    def derived_entry(self, folder_inode: int) -> Node:
        """The derived/ folder inside the study or series folder ``folder_inode``."""
        return Node(naming.DERIVED_NAME, inode_of(Kind.DERIVED_FOLDER, folder_inode), self.mounted_at,
                    timeout=SUMMARY_TIMEOUT, writable=True)


_LEVEL_TABLE = {"patient": "patients", "study": "studies", "series": "series"}


def split(inode: int) -> tuple[Kind, int]:
    try:
        return split_inode(inode)
    except ValueError:
        raise NotFoundError(inode) from None
