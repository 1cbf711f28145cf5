"""A series' volumes from the index: the planner over its instances, and what a listing needs.

Planning a series parses every instance's facts (~25 µs each), too slow for a folder
listing. So the listing's part — each volume's file names and sizes, and what
``series.json`` says — is kept in ``volume_plans`` under a signature of the series'
instances (how many, when the series last changed, how many are not local): a listing reads one row, and
plans again only when the series changed. The whole plan (every slice) is made when a
volume or its sidecar is opened.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import apsw

from dicomfs.index.db import Database
from dicomfs.volumes import nifti, sidecar
from dicomfs.volumes.facts import FACTS_VERSION, InstanceFacts
from dicomfs.volumes.plan import PLAN_VERSION, SeriesPlan, VolumePlan, plan_series
from dicomfs.volumes.source import VolumeLayout

log = logging.getLogger(__name__)

JSON, BVAL, BVEC = 1, 2, 3  # the text parts of a volume (mount.kinds.VolumePart)


@dataclass(frozen=True, slots=True)
class SeriesVolumes:
    plan: SeriesPlan
    file_paths: dict[int, str]  # instance id → stored file, relative to the store


@dataclass(slots=True)
class VolumeFiles:
    """What a series folder lists of its volumes: per volume, (part, file name, size) of each file.

    ``layouts``: per volume, where a raw volume's bytes are (None: it must be decoded); read
    from the index only when a volume is opened (``load_layouts``).
    """

    volumes: list[list[tuple[int, str, int]]]
    summary: dict[str, Any]  # the ``Volume`` of series.json
    signature: str = ""
    layouts: list[VolumeLayout | None] | None = None

    def to_json(self) -> str:
        return json.dumps({"volumes": self.volumes, "summary": self.summary}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, signature: str) -> VolumeFiles:
        data = json.loads(text)
        return cls([[tuple(f) for f in files] for files in data["volumes"]], data["summary"],  # type: ignore[misc]
                   signature)

    def layouts_json(self) -> str:
        assert self.layouts is not None
        return json.dumps([None if layout is None else layout.to_json() for layout in self.layouts],
                          separators=(",", ":"))


class FactsCache:
    """Parsed facts by instance id: they never change once stored, so a series planned again
    after a change parses only its new instances. Bounded; least recently planned go first."""

    def __init__(self, limit: int = 20_000) -> None:  # ~1.5 KiB each: ~30 MiB at most
        self.limit = limit
        self._facts: OrderedDict[int, InstanceFacts] = OrderedDict()

    def get(self, instance_id: int, text: str) -> InstanceFacts:
        facts = self._facts.get(instance_id)
        if facts is None:
            facts = self._facts[instance_id] = InstanceFacts.from_json(text)
            if len(self._facts) > self.limit:
                self._facts.popitem(last=False)
        else:
            self._facts.move_to_end(instance_id)
        return facts


def series_volumes(db: Database, series_id: int, cache: FactsCache | None = None) -> SeriesVolumes:
    """Never raises for bad facts: an instance whose facts cannot be read is left out, and said so."""
    cache = cache or FactsCache()
    inputs: list[tuple[int, str, InstanceFacts]] = []
    paths: dict[int, str] = {}
    not_local = unreadable = 0
    for instance_id, sop_uid, file_path, text in db.query(
            "SELECT id, sop_uid, file_path, volume_facts FROM instances WHERE series_id = ?", (series_id,)):
        if not file_path:
            not_local += 1
            continue
        if not text:
            unreadable += 1
            continue
        try:
            inputs.append((instance_id, sop_uid, cache.get(instance_id, text)))
        except (ValueError, TypeError) as exc:
            log.error("volume facts of instance %s unreadable: %s", sop_uid, exc)
            unreadable += 1
            continue
        paths[instance_id] = file_path
    plan = plan_series(inputs, not_local=not_local)
    if unreadable:
        plan.left_out.append(f"{unreadable} instances whose pixel data layout is not recorded")
    return SeriesVolumes(plan, paths)


def text_file(db: Database, plan: VolumePlan, part: int, series_id: int) -> bytes | None:
    """A volume's sidecar, .bval or .bvec; None for gradient files of a volume without diffusion."""
    if part == JSON:
        series_uid = db.get_str("SELECT series_uid FROM series WHERE id = ?", (series_id,))
        acquisition = db.get_str("SELECT volume_sidecar FROM instances WHERE id = ?", (plan.first.instance_id,))
        return sidecar.sidecar_json(plan, series_uid, json.loads(acquisition or "{}"))
    if plan.b_values is None:
        return None
    return sidecar.bval(plan) if part == BVAL else sidecar.bvec(plan)


def signature(db: Database, series_id: int) -> str:
    """Changes whenever the series' instances do: arrivals and deletions change the count and
    (arrivals) the series' updated_at; evictions and fetches change how many are not local."""
    count, updated = db.get_row("SELECT num_instances, updated_at FROM series WHERE id = ?", (series_id,))
    not_local = db.get_int("SELECT COUNT(*) FROM instances WHERE series_id = ? AND file_path = ''", (series_id,))
    return f"{PLAN_VERSION}.{FACTS_VERSION}:{count}:{updated!r}:{not_local}"


def volume_files(db: Database, series_id: int, planned: SeriesVolumes | None = None, *,
                 persist: bool = True, cache: FactsCache | None = None) -> VolumeFiles:
    """The listing's part of a series' volumes, from ``volume_plans`` when the series has not changed.

    ``planned``: the series' plan when the caller has it now. ``persist``: keep a new
    listing in the index (a cache: skipped when another process holds the write lock).
    """
    sign = signature(db, series_id)
    kept = db.query("SELECT signature, files FROM volume_plans WHERE series_id = ?", (series_id,))
    if kept and kept[0][0] == sign:
        return VolumeFiles.from_json(kept[0][1], sign)
    planned = planned or series_volumes(db, series_id, cache)
    files: list[list[tuple[int, str, int]]] = []
    for plan in planned.plan.volumes:
        entry = [(0, f"{plan.name}.nii", nifti.file_size(plan))]
        for part, suffix in ((JSON, ".json"), (BVAL, ".bval"), (BVEC, ".bvec")):
            data = text_file(db, plan, part, series_id)
            if data is not None:
                entry.append((part, f"{plan.name}{suffix}", len(data)))
        files.append(entry)
    listing = VolumeFiles(files, planned.plan.summary(), sign,
                          [VolumeLayout.of(plan) if plan.raw else None for plan in planned.plan.volumes])
    if persist and not db.conn.in_transaction:
        try:
            with db.transaction():
                db.execute("INSERT OR REPLACE INTO volume_plans (series_id, signature, files, layouts) "
                           "VALUES (?, ?, ?, ?)", (series_id, sign, listing.to_json(), listing.layouts_json()))
        except (apsw.BusyError, apsw.ReadOnlyError):
            log.debug("volume listing of series %d not kept: the index is busy or read-only", series_id)
    return listing


def load_layouts(db: Database, series_id: int, listing: VolumeFiles) -> bool:
    """Fill ``listing.layouts`` from the index; False when they are not kept for its signature."""
    if listing.layouts is not None:
        return True
    kept = db.query("SELECT layouts FROM volume_plans WHERE series_id = ? AND signature = ?",
                    (series_id, listing.signature))
    if not kept:
        return False
    listing.layouts = [None if data is None else VolumeLayout.from_json(data) for data in json.loads(kept[0][0])]
    return True


def stored_files(db: Database, series_id: int) -> dict[int, str]:
    """Instance id → stored file of a series' local instances."""
    return dict(db.query("SELECT id, file_path FROM instances WHERE series_id = ? AND file_path != ''", (series_id,)))
