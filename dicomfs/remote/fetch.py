"""Remote studies in the mount: lists them lazily and fetches a series when a file is opened.

Runs on the daemon's trio loop, which alone writes the index; network calls run in worker
threads. One retrieve per series at a time, however many opens wait for it; each open
waits only for its own instance. Fetched instances take the same path as received ones
(``prepare`` → the daemon's ``IndexGateway`` → ``IndexWriter.add_batch``); the gateway then
calls ``arrived``, which wakes the waiting opens, whatever brought the instance in.
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
from dicomfs.index.db import NoSuchRowError
from dicomfs.index.query_language import QuerySyntaxError
from dicomfs.ingest.gateway import IndexGateway
from dicomfs.ingest.writer import Ingested
from dicomfs.net import scu
from dicomfs.remote import catalog, terms
from dicomfs.remote.retrieve import GroupIndex, Plan, WorkerPool
from dicomfs.remote.rows import RemoteRows
from dicomfs.remote.workers import Job, JobFailed
from dicomfs.store import Store

log = logging.getLogger(__name__)


class FetchError(OSError):
    """An open of a not-yet-local file failed: errno EIO or ETIMEDOUT, with the reason."""


@dataclass(slots=True)
class _Retrieval:
    remote: str
    done: trio.Event = field(default_factory=trio.Event)
    error: str = ""
    timed_out: bool = False  # the error is the remote's silence
    received: int = 0
    started: float = field(default_factory=time.time)  # wall clock, for `dicomfs status`
    began: float = 0.0  # trio.current_time() at its start
    plan: Plan | None = None  # by C-GET: the parts not asked for yet


class Fetcher:
    """Lazy listing and fetch-on-open for studies that live on remote PACS.

    Listens to ``gateway``: every instance arrives through it, from a C-GET of ours or
    through the node's C-STORE service (a C-MOVE of ours, or a peer sending on its own).
    """

    def __init__(self, settings: DicomSettings, rows: RemoteRows, store: Store, gateway: IndexGateway,
                 status_path: Path | None = None, *, in_process: bool = False) -> None:
        self.settings = settings
        self.status_path = status_path
        self._published = 0.0
        self.rows = rows
        self.store = store
        self.gateway = gateway
        self.retrievals: dict[int, _Retrieval] = {}  # series id → the retrieve in flight
        self._arrivals: dict[str, trio.Event] = {}  # SOP Instance UID → set when it is indexed
        # Told of instances fetched with the rest of their series (the mount listed them with size 0).
        self.on_filled: Callable[[list[Ingested]], None] | None = None
        self._used: dict[int, float] = {}  # series id → last open of one of its fetched files
        self._listing_locks: dict[tuple[str, int], trio.Lock] = {}
        self._deprecations_logged: set[tuple[str, str]] = set()  # (remote, saved query) in the old form
        self._nursery: trio.Nursery | None = None
        self._group_index = GroupIndex(gateway, store)
        self.pool: WorkerPool | None = None  # started by run() when a remote retrieves by C-GET
        self._in_process = in_process  # C-GETs in threads, not worker processes (tests that replace scu.get)
        gateway.listen(self.arrived)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the retrieves' nursery and refresh the saved queries on schedule."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            getters = [remote.associations for remote in self.settings.remotes if remote.retrieve == "get"]
            if getters:
                self.pool = WorkerPool(str(self.store.root), max(getters), in_process=self._in_process)
                await nursery.start(self.pool.run)
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
                match = self._saved_terms(remote, saved)
                studies = await trio.to_thread.run_sync(
                    catalog.find_studies, remote, match, self.settings.ae_title, abandon_on_cancel=True)
            except (terms.TermsError, QuerySyntaxError, scu.RemoteError) as exc:
                # Background work that runs again at the next refresh: a warning, not an error.
                reason = exc.message if isinstance(exc, QuerySyntaxError) else str(exc)  # one line
                log.warning("remote %s: saved query %r failed: %s", remote.name, saved, reason)
                continue
            new += self.rows.add_studies(remote.name, studies)
        log.info("remote %s: saved queries refreshed, %d new studies", remote.name, new)
        return new

    def _saved_terms(self, remote: RemoteNode, saved: str) -> dict[str, str]:
        """C-FIND keys of a saved query; one warning per process for one in the old form."""
        found = terms.parse(saved, "STUDY")
        if found.legacy and (remote.name, saved) not in self._deprecations_logged:
            self._deprecations_logged.add((remote.name, saved))
            log.warning("remote %s: saved query %s", remote.name, terms.deprecation(saved, found))
        return found.keys

    async def prepare_study(self, study_id: int) -> list[int]:
        """List a remote study's series when its folder is entered: the first time, and again once
        that listing is ``relist_minutes`` old (series may have come since). Returns the ids of
        the series listed now; [] when the listing stands. A first listing that fails raises
        FetchError; a re-listing that fails leaves the old one, with a warning."""
        if not self._listing_due(study_id):
            return []
        async with self._listing_lock("study", study_id):
            listed = self.rows.study_listing(study_id)
            if listed is None or not self._listing_due(study_id):
                return []  # listed while we waited
            study, listed_at = listed
            remote = self._remote(study.remote)
            try:
                series = await self._in_thread(catalog.find_series, remote, study.study_uid, self.settings.ae_title)
            except FetchError as exc:
                if listed_at is None:
                    raise
                log.warning("remote %s: study %s not listed again (%s); its earlier listing stands",
                            remote.name, study.study_uid, exc)
                self.rows.series_listed(study_id)
                return []
            return self.rows.add_series(remote.name, study_id, series)

    def _listing_due(self, study_id: int) -> bool:
        listed = self.rows.study_listing(study_id)
        if listed is None:
            return False
        listed_at = listed[1]
        age = self.settings.relist_minutes * 60
        return listed_at is None or (age > 0 and time.time() - listed_at >= age)

    async def prepare_series(self, series_id: int) -> None:
        """List a remote series' instances the first time its folder is entered."""
        if self.rows.unlisted_series(series_id) is None:
            return
        async with self._listing_lock("series", series_id):
            series = self.rows.unlisted_series(series_id)
            if series is None:
                return  # listed while we waited
            remote = self._remote(series.remote)
            found = await self._in_thread(catalog.find_instances, remote, series.study_uid, series.series_uid,
                                          self.settings.ae_title)
            self.rows.add_instances(remote.name, series_id, found)

    def _listing_lock(self, level: str, row_id: int) -> trio.Lock:
        return self._listing_locks.setdefault((level, row_id), trio.Lock())

    async def _in_thread(self, fn: Callable[..., Any], remote: RemoteNode, *args: Any) -> Any:
        try:
            with trio.fail_after(remote.timeout + 5):  # scu honours the timeout; this is the backstop
                return await trio.to_thread.run_sync(functools.partial(fn, remote, *args), abandon_on_cancel=True)
        except scu.RemoteError as exc:
            log.error("remote %s: %s", remote.name, exc)
            raise FetchError(errno.ETIMEDOUT if isinstance(exc, scu.RemoteTimeoutError) else errno.EIO,
                             str(exc)) from None
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
            instance = self.rows.instance(instance_id)
        except NoSuchRowError:
            raise FetchError(errno.ENOENT, "no such instance") from None
        if instance.file_path:
            return
        sop_uid, series_id = instance.sop_uid, instance.series_id
        if instance.remote is None:
            raise FetchError(errno.EIO, f"instance {sop_uid} is neither local nor on a known remote")
        remote = self._remote(instance.remote)
        arrived = self._arrivals.setdefault(sop_uid, trio.Event())
        opened = trio.current_time()
        self.rows.mark_used(series_id, time.time())
        with trio.move_on_at(opened + remote.timeout) as scope:
            while True:
                retrieval = self._retrieval(remote, series_id, sop_uid)
                if retrieval.plan is not None:
                    retrieval.plan.promote(sop_uid)
                await _first_of(arrived.wait, retrieval.done.wait)
                if arrived.is_set():
                    return
                if retrieval.began >= opened:
                    break
                # It began before this open, and ended without our instance: the remote may be back
                # since (a retrieve that failed is never remembered); ask it again, once.
        if scope.cancelled_caught:
            raise FetchError(errno.ETIMEDOUT, f"remote {remote.name}: {sop_uid} did not arrive within "
                                              f"{remote.timeout:.0f} s")
        reason = retrieval.error or f"the retrieve ended without {sop_uid}"
        raise FetchError(errno.ETIMEDOUT if retrieval.timed_out else errno.EIO, f"remote {remote.name}: {reason}")

    def _retrieval(self, remote: RemoteNode, series_id: int, first: str) -> _Retrieval:
        """The retrieve of the series in flight, or a new one that starts with ``first``."""
        retrieval = self.retrievals.get(series_id)
        if retrieval is None:
            retrieval = self.retrievals[series_id] = _Retrieval(remote.name, began=trio.current_time())
            assert self._nursery is not None, "Fetcher.run is not running"
            self._nursery.start_soon(self._retrieve, remote, series_id, retrieval, first)
            self.publish_status(force=True)
        return retrieval

    def arrived(self, results: list[Ingested]) -> None:
        """The gateway's listener: on the trio loop after each indexed batch, whatever its source."""
        filled = []
        for result in results:
            event = self._arrivals.pop(result.sop_uid, None)
            if event is not None:
                event.set()
            retrieval = self.retrievals.get(result.series_id)
            if retrieval is not None:
                retrieval.received += 1
                filled.append(result)
        if filled:
            self.publish_status()
            if self.on_filled is not None:
                self.on_filled(filled)

    async def _retrieve(self, remote: RemoteNode, series_id: int, retrieval: _Retrieval, first: str) -> None:
        """Retrieve the instance that was opened first, then the rest of its series.

        The remote sends a series in its own order: asked for at once, the opened file may
        come last. By C-GET the series is asked for in parts, the opened instance alone
        first (``retrieve.Plan``); by C-MOVE the opened instance, then the whole series.
        """
        ref = self.rows.series_ref(series_id)
        series_uid = ref.series_uid
        keys = {"StudyInstanceUID": ref.study_uid, "SeriesInstanceUID": series_uid}
        started = time.monotonic()
        log.info("remote %s: retrieving series %s (C-%s)", remote.name, series_uid, remote.retrieve.upper())
        try:
            if remote.retrieve == "move":
                result = await self._move(remote, series_id, keys, first)
            else:
                result = await self._get(remote, series_id, keys, first, retrieval)
            log.info("remote %s: series %s retrieved: %d completed, %d failed, %d warnings in %.1f s",
                     remote.name, series_uid, result.completed, result.failed, result.warning,
                     time.monotonic() - started)
            if result.failed:
                retrieval.error = f"{result.failed} sub-operations failed (status 0x{result.status:04X})"
        except scu.RemoteError as exc:
            log.error("remote %s: retrieve of series %s failed: %s", remote.name, series_uid, exc)
            retrieval.error = str(exc)
            retrieval.timed_out = isinstance(exc, scu.RemoteTimeoutError)
        except JobFailed as exc:
            log.error("remote %s: retrieve of series %s failed: %s", remote.name, series_uid, exc)
            retrieval.error = str(exc)
            retrieval.timed_out = exc.timed_out
        except Exception as exc:
            log.exception("remote %s: retrieve of series %s failed", remote.name, series_uid)
            retrieval.error = f"{type(exc).__name__}: {exc}"
        finally:
            del self.retrievals[series_id]
            self.rows.changes.note_series([series_id])  # the mount refreshes the series once, now
            retrieval.done.set()
            self.publish_status(force=True)
        await self.enforce_cache(keep=series_id)

    async def _move(self, remote: RemoteNode, series_id: int, keys: dict[str, str], first: str) -> scu.RetrieveResult:
        """The instances arrive through our own C-STORE service, which answers once they are durable."""
        if not self.settings.enabled:
            raise scu.RemoteError(remote, "C-MOVE", "needs this node's DICOM service ([dicom] enabled)")

        def call(level: str, level_keys: dict[str, str]) -> Callable[[], scu.RetrieveResult]:
            return functools.partial(scu.move, remote, level, level_keys, destination_ae=self.settings.ae_title,
                                     calling_ae=self.settings.ae_title, timeout=remote.timeout)

        if self.rows.missing(series_id) > 1:
            await trio.to_thread.run_sync(call("IMAGE", {**keys, "SOPInstanceUID": first}), abandon_on_cancel=True)
        return await trio.to_thread.run_sync(call("SERIES", keys), abandon_on_cancel=True)

    async def _get(self, remote: RemoteNode, series_id: int, keys: dict[str, str], first: str,
                   retrieval: _Retrieval) -> scu.RetrieveResult:
        """Parts of the series on up to ``remote.associations`` associations at once, by the workers.

        A remote that answers a part with a failure status (one that takes no UID lists, say)
        gets one SERIES C-GET for whatever is still missing once the other parts are done.
        """
        plan = retrieval.plan = Plan.of(self.rows.missing_uids(series_id), first, remote.associations)
        sop_classes = tuple(self.rows.sop_classes(series_id))
        keep = self._group_index.keep_from_thread(trio.lowlevel.current_trio_token())
        failures: list[JobFailed] = []

        async def run(job: Job) -> None:
            async with self._pool().worker() as worker:
                try:
                    with self._group_index.job():
                        result = await trio.to_thread.run_sync(worker.run, job, keep, abandon_on_cancel=True)
                    plan.count(result)
                except JobFailed as exc:
                    if exc.result is not None:
                        plan.count(exc.result)
                    failures.append(exc)

        async def runner() -> None:
            while not failures and (part := plan.take()) is not None:
                await run(Job(remote, "IMAGE", {**keys, "SOPInstanceUID": "\\".join(part)},
                              self.settings.ae_title, sop_classes))

        opened = plan.take()  # alone, before the rest competes with it for the CPU and the remote
        if opened is not None:
            await run(Job(remote, "IMAGE", {**keys, "SOPInstanceUID": opened[0]}, self.settings.ae_title, sop_classes))
        async with trio.open_nursery() as nursery:
            for _ in range(min(remote.associations, len(plan.parts))):
                nursery.start_soon(runner)
        retrieval.plan = None
        if failures and failures[0].status is not None and self.rows.missing(series_id):
            log.warning("remote %s: a part of series %s failed (%s); asking for the series at once",
                        remote.name, keys["SeriesInstanceUID"], failures[0])
            failures.clear()
            await run(Job(remote, "SERIES", keys, self.settings.ae_title, sop_classes))
        if failures and self.rows.missing(series_id):
            raise failures[-1]
        return scu.RetrieveResult(completed=plan.completed, failed=plan.failed, warning=plan.warning,
                                  status=0xB000 if plan.failed or plan.warning else 0x0000)

    def _pool(self) -> WorkerPool:
        assert self.pool is not None, "Fetcher.run is not running"
        return self.pool

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
        used = self.rows.fetched_bytes()
        if used <= limit:
            return
        candidates = self.rows.fetched_series()
        # least recently used first
        candidates.sort(key=lambda c: (max(c.last_used, self._used.get(c.series_id, 0.0)), c.series_id))
        for candidate in candidates:
            if used <= limit:
                break
            if candidate.series_id in self.retrievals or candidate.series_id == keep:
                continue
            evicted = self.rows.evict_series(candidate.series_id)
            await trio.to_thread.run_sync(self._delete, evicted.files)
            used -= evicted.size
            log.info("cache: evicted fetched series %d (%d files, %.1f MB); %.1f of %.1f MB used",
                     candidate.series_id, len(evicted.files), evicted.size / 2**20, used / 2**20, limit / 2**20)

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
