"""``dicomfs status``: what the index holds, the fetched-data cache, a daemon's retrieves."""

from __future__ import annotations

import json
import os
import time

from dicomfs.config import Settings
from dicomfs.index.db import Database
from dicomfs.remote.rows import RemoteRows


def report(settings: Settings) -> str:
    lines = [f"archive: {settings.data_dir}"]
    if not settings.index_path.exists():
        return "\n".join([*lines, "no index yet (nothing imported or received)"])
    db = Database(settings.index_path, readonly=True)
    try:
        patients, studies, series = (db.get_int(f"SELECT count(*) FROM {t}")
                                     for t in ("patients", "studies", "series"))
        local, listed, stored = db.get_row(
            "SELECT count(*) FILTER (WHERE file_path != ''), count(*) FILTER (WHERE file_path = ''), "
            "coalesce(sum(file_size), 0) FROM instances")
        remote = RemoteRows(db)
        fetched = remote.fetched_bytes()
        remote_studies = remote.studies_per_remote()
        incomplete = remote.partly_fetched()
    finally:
        db.close()
    lines.append(f"index: {patients} patients, {studies} studies, {series} series, "
                 f"{local} local instances ({stored / 2**20:.1f} MB), {listed} listed on remotes only")
    lines.append(f"cache of fetched remote data: {fetched / 2**20:.1f} MB of {settings.dicom.cache_mb:.0f} MB"
                 + (f"; {incomplete} series partly fetched" if incomplete else ""))
    for name, count in remote_studies:
        lines.append(f"remote {name}: {count} studies listed")
    lines.extend(_daemon_lines(settings))
    return "\n".join(lines)


def _daemon_lines(settings: Settings) -> list[str]:
    try:
        state = json.loads(settings.status_path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return ["daemon: not running (or not with this data directory)"]
    lines = [f"daemon: running, pid {state['pid']}"]
    retrieves = state.get("retrieves", [])
    if not retrieves:
        lines.append("retrieves in flight: none")
    for r in retrieves:
        lines.append(f"retrieving series {r['series_id']} from {r['remote']}: {r['received']} instances, "
                     f"{time.time() - r['since']:.0f} s")
    return lines
