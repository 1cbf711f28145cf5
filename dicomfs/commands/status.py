"""``dicomfs status``: which archive, what it holds, whether its daemon runs, and where."""

from __future__ import annotations

import json
import time

from dicomfs import pidfile
from dicomfs.archive import NotAnArchiveError, archive_state, holdings
from dicomfs.config import Settings
from dicomfs.index.db import Database
from dicomfs.remote.rows import RemoteRows


def report(settings: Settings) -> str:
    """The report; ``NotAnArchiveError`` for a path that is not an archive (status creates nothing)."""
    data_dir = settings.data_dir
    state = archive_state(data_dir)
    if state == "missing":
        raise NotAnArchiveError(f"no archive at {data_dir}: check --data-dir, or create one with "
                                f"'dicomfs init {data_dir}'")
    lines = [f"archive: {data_dir}"]
    if state == "empty":
        lines.append("holds: nothing yet (an empty archive)")
        lines.extend(_daemon_lines(settings))
        return "\n".join(lines)
    db = Database(settings.index_path, readonly=True)
    try:
        held = holdings(db)
        remote = RemoteRows(db)
        fetched = remote.fetched_bytes()
        remote_studies = remote.studies_per_remote()
        incomplete = remote.partly_fetched()
    finally:
        db.close()
    lines.append(f"holds: {held}")
    lines.append(f"cache of fetched remote data: {fetched / 2**20:.1f} MB of {settings.dicom.cache_mb:.0f} MB"
                 + (f"; {incomplete} series partly fetched" if incomplete else ""))
    for name, count in remote_studies:
        lines.append(f"remote {name}: {count} studies listed")
    lines.extend(_daemon_lines(settings))
    return "\n".join(lines)


def _daemon_lines(settings: Settings) -> list[str]:
    recorded, alive = pidfile.running(settings.pid_path)
    if not alive:
        mount = settings.mount.path if settings.mount.enabled else "off"
        state = f"not running (stale pid file from pid {recorded.pid})" if recorded else "not running"
        return [f"daemon: {state}", f"mount point: {mount} (configured)",
                f"DICOM node: {settings.dicom_address} (configured)"]
    lines = [f"daemon: running, pid {recorded.pid}", f"mount point: {recorded.mount}",
             f"DICOM node: {recorded.dicom}"]
    try:
        state = json.loads(settings.status_path.read_text())
    except (OSError, ValueError):
        state = {}
    retrieves = state.get("retrieves", []) if isinstance(state, dict) else []
    if not retrieves:
        lines.append("retrieves in flight: none")
    for r in retrieves:
        lines.append(f"retrieving series {r['series_id']} from {r['remote']}: {r['received']} instances, "
                     f"{time.time() - r['since']:.0f} s")
    return lines
