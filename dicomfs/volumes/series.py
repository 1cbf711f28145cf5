"""A series' volumes from the index: one query, the planner, and where each slice's file is."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dicomfs.index.db import Database
from dicomfs.volumes.facts import InstanceFacts
from dicomfs.volumes.plan import SeriesPlan, plan_series

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SeriesVolumes:
    plan: SeriesPlan
    file_paths: dict[int, str]  # instance id → stored file, relative to the store


def series_volumes(db: Database, series_id: int) -> SeriesVolumes:
    """Never raises for bad facts: an instance whose facts cannot be read is left out, and said so."""
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
            inputs.append((instance_id, sop_uid, InstanceFacts.from_json(text)))
        except (ValueError, TypeError) as exc:
            log.error("volume facts of instance %s unreadable: %s", sop_uid, exc)
            unreadable += 1
            continue
        paths[instance_id] = file_path
    plan = plan_series(inputs, not_local=not_local)
    if unreadable:
        plan.left_out.append(f"{unreadable} instances whose pixel data layout is not recorded")
    return SeriesVolumes(plan, paths)
