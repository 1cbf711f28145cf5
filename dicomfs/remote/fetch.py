"""Remote studies in the mount: lists them lazily and fetches a series when a file is opened.

Runs on the daemon's trio loop, which alone writes the index; network calls run in worker
threads. One retrieve per series at a time, however many opens wait for it; each open
waits only for its own instance. Fetched instances take the same path as received ones
(parse → durable write → ``Indexer.add_batch``), and ``arrived`` wakes the waiting opens.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dicomfs.config import DicomSettings, RemoteNode
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.ingest.pipeline import StorePipeline, with_store_failures
from dicomfs.ingest.writer import Indexer, Ingested
from dicomfs.net import scu
from dicomfs.parse import ParsedInstance
from dicomfs.remote import catalog
from dicomfs.store import Store

log = logging.getLogger(__name__)


class FetchError(OSError):
    """An open of a not-yet-local file failed: errno EIO or ETIMEDOUT, with the reason."""


@dataclass(slots=True)
class _Retrieval:
    remote: str
    done: trio.Event = field(default_factory=trio.Event)
    error: str = ""
    received: int = 0
    started: float = field(default_factory=time.time)


class Fetcher:
    """Lazy listing and fetch-on-open for studies that live on remote PACS."""

    def __init__(self, settings: DicomSettings, db: Database, indexer: Indexer, store: Store,
                 status_path: Path | None = None) -> None:
        self.settings = settings
        self.status_path = status_path
        self._published = 0.0
        self.db = db
        self.indexer = indexer
        self.store = store
        self.retrievals: dict[int, _Retrieval] = {}  # series id → the retrieve in flight
        self._arrivals: dict[str, trio.Event] = {}  # SOP Instance UID → set when it is indexed
        # Told of instances fetched with the rest of their series (the mount listed them with size 0).
        self.on_filled: Callable[[list[str]], None] | None = None
        self._used: dict[int, float] = {}  # series id → last open of one of its fetched files
        self._listing_locks: dict[tuple[str, int], trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the retrieves' nursery and refresh the saved queries on schedule."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.publish_status(force=True)
            task_status.started()
            interval = self.settings.refresh_minutes * 60
            while True:
                for remote in self.settings.remotes:
                    if remote.listing:
                        await self.refresh(remote)
                if interval <= 0:
                    await trio.sleep_forever()
                await trio.sleep(interval)

    # ------------------------------------------------------------------ listing

    async def refresh(self, remote: RemoteNode) -> int:
        """Run the remote's saved queries now; returns the number of new studies."""
        new = 0
        for saved in remote.listing:
            try:
                match = catalog.parse_filter(saved)
                studies = await trio.to_thread.run_sync(
                    catalog.find_studies, remote, match, self.settings.ae_title, abandon_on_cancel=True)
            except (catalog.FilterError, scu.RemoteError) as exc:
                # Background work that runs again at the next refresh: a warning, not an error.
                log.warning("remote %s: saved query %r failed: %s", remote.name, saved, exc)
                continue
            new += self.indexer.add_remote_studies(remote.name, studies)
        log.info("remote %s: saved queries refreshed, %d new studies", remote.name, new)
        return new

    async def prepare_study(self, study_id: int) -> None:
        """List a remote study's series the first time its folder is entered."""
        row = self.db.query(
            "SELECT r.remote, st.study_uid FROM remote_studies r JOIN studies st ON st.id = r.study_id "
            "WHERE r.study_id = ? AND r.series_listed_at IS NULL", (study_id,))
        if not row:
            return
        async with self._listing_lock("study", study_id):
            name, study_uid = row[0]
            if self.db.get_val("SELECT series_listed_at FROM remote_studies WHERE study_id = ?", (study_id,)):
                return  # listed while we waited
            remote = self._remote(name)
            series = await self._in_thread(catalog.find_series, remote, study_uid, self.settings.ae_title)
            self.indexer.add_remote_series(remote.name, study_id, series)

    async def prepare_series(self, series_id: int) -> None:
        """List a remote series' instances the first time its folder is entered."""
        row = self.db.query(
            "SELECT r.remote, st.study_uid, se.series_uid FROM remote_series r "
            "JOIN series se ON se.id = r.series_id JOIN studies st ON st.id = se.study_id "
            "WHERE r.series_id = ? AND r.instances_listed_at IS NULL", (series_id,))
        if not row:
            return
        async with self._listing_lock("series", series_id):
            name, study_uid, series_uid = row[0]
            if self.db.get_val("SELECT instances_listed_at FROM remote_series WHERE series_id = ?", (series_id,)):
                return
            remote = self._remote(name)
            found = await self._in_thread(catalog.find_instances, remote, study_uid, series_uid,
                                          self.settings.ae_title)
            self.indexer.add_remote_instances(remote.name, series_id, found)

    def _listing_lock(self, level: str, row_id: int) -> trio.Lock:
        return self._listing_locks.setdefault((level, row_id), trio.Lock())

    async def _in_thread(self, fn: Callable[..., Any], remote: RemoteNode, *args: Any) -> Any:
        try:
            with trio.fail_after(remote.timeout + 5):  # scu honours the timeout; this is the backstop
                return await trio.to_thread.run_sync(functools.partial(fn, remote, *args), abandon_on_cancel=True)
        except scu.RemoteError as exc:
            log.error("remote %s: %s", remote.name, exc)
            raise FetchError(errno.EIO, str(exc)) from None
        except trio.TooSlowError:
            log.error("remote %s: no answer within %.0f s", remote.name, remote.timeout)
            raise FetchError(errno.ETIMEDOUT, f"remote {remote.name} did not answer") from None

    def _remote(self, name: str) -> RemoteNode:
        remote = self.settings.remote(name)
        if remote is None:
            raise FetchError(errno.EIO, f"remote {name!r} is no longer configured")
        return remote

    # ------------------------------------------------------------------ fetching

    async def make_local(self, instance_id: int) -> None:
        """Return once the instance's file is local; FetchError (EIO/ETIMEDOUT) otherwise."""
        try:
            sop_uid, file_path, series_id, name = self.db.get_row(
                "SELECT i.sop_uid, i.file_path, i.series_id, r.remote FROM instances i "
                "LEFT JOIN remote_series r ON r.series_id = i.series_id WHERE i.id = ?", (instance_id,))
        except NoSuchRowError:
            raise FetchError(errno.ENOENT, "no such instance") from None
        if file_path:
            return
        if name is None:
            raise FetchError(errno.EIO, f"instance {sop_uid} is neither local nor on a known remote")
        remote = self._remote(name)
        arrived = self._arrivals.setdefault(sop_uid, trio.Event())
        retrieval = self.retrievals.get(series_id)
        if retrieval is None:
            retrieval = self.retrievals[series_id] = _Retrieval(remote.name)
            assert self._nursery is not None, "Fetcher.run is not running"
            self._nursery.start_soon(self._retrieve, remote, series_id, retrieval, sop_uid)
            self.publish_status(force=True)
        self.db.execute("UPDATE remote_series SET last_used = ? WHERE series_id = ?", (time.time(), series_id))
        with trio.move_on_after(remote.timeout) as scope:
            await _first_of(arrived.wait, retrieval.done.wait)
        if arrived.is_set():
            return
        if scope.cancelled_caught:
            raise FetchError(errno.ETIMEDOUT, f"remote {remote.name}: {sop_uid} did not arrive within "
                                              f"{remote.timeout:.0f} s")
        reason = retrieval.error or f"the retrieve ended without {sop_uid}"
        raise FetchError(errno.EIO, f"remote {remote.name}: {reason}")

    def arrived(self, results: list[Ingested]) -> None:
        """Called on the trio loop after each indexed batch, whatever its source."""
        filled = []
        for result in results:
            event = self._arrivals.pop(result.sop_uid, None)
            if event is not None:
                event.set()
            retrieval = self.retrievals.get(result.series_id)
            if retrieval is not None:
                retrieval.received += 1
                filled.append(result.sop_uid)
        if filled:
            self.publish_status()
            if self.on_filled is not None:
                self.on_filled(filled)

    async def _retrieve(self, remote: RemoteNode, series_id: int, retrieval: _Retrieval, first: str) -> None:
        """Retrieve the instance that was opened first, then the rest of its series.

        The remote sends a series in its own order: asked for at once, the opened file may
        come last. One instance first costs an extra association (~10 ms) and gives the
        first open its bytes in the time of one instance.
        """
        study_uid, series_uid = self.db.get_row(
            "SELECT st.study_uid, se.series_uid FROM series se JOIN studies st ON st.id = se.study_id "
            "WHERE se.id = ?", (series_id,))
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        started = time.monotonic()
        log.info("remote %s: retrieving series %s (C-%s)", remote.name, series_uid, remote.retrieve.upper())
        try:
            if remote.retrieve == "move" and not self.settings.enabled:
                raise scu.RemoteError(remote, "C-MOVE", "needs this node's DICOM service ([dicom] enabled)")
            remaining = int(self.db.get_val(
                "SELECT count(*) FROM instances WHERE series_id = ? AND file_path = ''", (series_id,)))
            if remaining > 1:
                await trio.to_thread.run_sync(
                    self._retrieve_call(remote, series_id, "IMAGE", {**keys, "SOPInstanceUID": first}),
                    abandon_on_cancel=True)
            result = await trio.to_thread.run_sync(
                self._retrieve_call(remote, series_id, "SERIES", keys), abandon_on_cancel=True)
            log.info("remote %s: series %s retrieved: %d completed, %d failed, %d warnings in %.1f s",
                     remote.name, series_uid, result.completed, result.failed, result.warning,
                     time.monotonic() - started)
            if result.failed:
                retrieval.error = f"{result.failed} sub-operations failed (status 0x{result.status:04X})"
        except scu.RemoteError as exc:
            log.error("remote %s: retrieve of series %s failed: %s", remote.name, series_uid, exc)
            retrieval.error = str(exc)
        except Exception as exc:
            log.exception("remote %s: retrieve of series %s failed", remote.name, series_uid)
            retrieval.error = f"{type(exc).__name__}: {exc}"
        finally:
            del self.retrievals[series_id]
            retrieval.done.set()
            self.publish_status(force=True)
        await self.enforce_cache(keep=series_id)

    def _retrieve_call(self, remote: RemoteNode, series_id: int, level: str, keys: dict[str, str],
                       ) -> Callable[[], scu.RetrieveResult]:
        if remote.retrieve == "move":  # the instances arrive through our own C-STORE service
            return functools.partial(scu.move, remote, level, keys, destination_ae=self.settings.ae_title,
                                     calling_ae=self.settings.ae_title, timeout=remote.timeout)
        sop_classes = [r[0] for r in self.db.query(
            "SELECT DISTINCT sop_class_uid FROM instances WHERE series_id = ? AND sop_class_uid != ''",
            (series_id,))]
        token = self._token

        def submit(batch: list[tuple[ParsedInstance, Path]]) -> list[Ingested]:
            return trio.from_thread.run_sync(self.index, batch, trio_token=token)

        def run() -> scu.RetrieveResult:
            pipeline = StorePipeline(self.store, submit, source=f"remote {remote.name}")
            try:
                result = scu.get(remote, level, keys, calling_ae=self.settings.ae_title, timeout=remote.timeout,
                                 sop_classes=sop_classes, on_instance=pipeline.put)
            finally:
                pipeline.close()
            return with_store_failures(result, pipeline.failed)

        return run

    def index(self, batch: list[tuple[ParsedInstance, Path]]) -> list[Ingested]:
        """Index a batch and wake the opens waiting for it (the node's C-STORE uses this too)."""
        results = self.indexer.add_batch(batch)
        self.arrived(results)
        return results

    # ------------------------------------------------------------------ cache and status

    def touch(self, series_id: int) -> None:
        """A fetched file of this series was opened (kept in memory: opens must stay cheap)."""
        self._used[series_id] = time.time()

    async def enforce_cache(self, keep: int | None = None) -> None:
        """Evict least recently used fetched series until fetched data fits ``cache_mb``.

        ``keep``: the series just fetched, which someone is reading, stays even when it alone
        exceeds the cache.
        """
        limit = int(self.settings.cache_mb * 1024 * 1024)
        used = int(self.db.get_val("SELECT coalesce(sum(file_size), 0) FROM instances WHERE fetched = 1"))
        if used <= limit:
            return
        candidates = self.db.query(
            "SELECT i.series_id, sum(i.file_size), coalesce(r.last_used, 0) FROM instances i "
            "LEFT JOIN remote_series r ON r.series_id = i.series_id WHERE i.fetched = 1 GROUP BY i.series_id")
        candidates.sort(key=lambda c: (max(c[2], self._used.get(c[0], 0.0)), c[0]))  # least recently used first
        for series_id, size, _ in candidates:
            if used <= limit:
                break
            if series_id in self.retrievals or series_id == keep:
                continue
            paths = self.indexer.evict_series(series_id)
            await trio.to_thread.run_sync(self._delete, paths)
            used -= size
            log.info("cache: evicted fetched series %d (%d files, %.1f MB); %.1f of %.1f MB used",
                     series_id, len(paths), size / 2**20, used / 2**20, limit / 2**20)

    def _delete(self, paths: list[str]) -> None:
        for relpath in paths:
            self.store.path(relpath).unlink(missing_ok=True)

    def publish_status(self, force: bool = False) -> None:
        """Write in-flight retrieves to the status file for ``dicomfs status`` (at most once a second)."""
        now = time.time()
        if self.status_path is None or (not force and now - self._published < 1.0):
            return
        self._published = now
        retrieves = [{"series_id": sid, "remote": r.remote, "received": r.received, "since": r.started}
                     for sid, r in self.retrievals.items()]
        data = json.dumps({"pid": os.getpid(), "updated_at": now, "retrieves": retrieves})
        temp = self.status_path.with_suffix(".tmp")
        try:
            temp.write_text(data)
            os.replace(temp, self.status_path)
        except OSError as exc:
            log.debug("cannot write %s: %s", self.status_path, exc)


async def _first_of(*waits: Callable[[], Any]) -> None:
    """Return as soon as any of the awaitables returns."""
    async with trio.open_nursery() as nursery:
        async def one(wait: Callable[[], Any]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)
