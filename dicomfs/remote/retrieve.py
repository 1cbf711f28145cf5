"""A series retrieved by C-GET over several associations, in parts, in the order it is read.

The series' missing instances, from the one opened first on in reading order, are cut
into parts; each part is one IMAGE-level C-GET naming its SOP Instance UIDs (a list, PS3.4
C.4.3.2.1), run by a worker process (``workers``). Up to ``associations`` parts run at once;
an open of an instance whose part has not started yet moves that part to the front. What
the workers send back is indexed on the loop, everything that arrived meanwhile in one
transaction (``GroupIndex``), before the worker answers the remote.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import trio

from dicomfs.ingest.gateway import IndexGateway
from dicomfs.ingest.prepare import Prepared
from dicomfs.net.scu import RetrieveResult
from dicomfs.remote.workers import Keep, ThreadWorker, Worker, start_worker
from dicomfs.store import Store

__all__ = ["GroupIndex", "Plan", "WorkerPool", "part_size"]

log = logging.getLogger(__name__)

AnyWorker = Worker | ThreadWorker
PART_MIN, PART_MAX = 8, 64  # instances per C-GET: small enough to follow the reader, large enough to be cheap


def part_size(missing: int, associations: int) -> int:
    """About four parts per association, so that the last ones end together."""
    return max(PART_MIN, min(PART_MAX, math.ceil(missing / (4 * max(associations, 1)))))


@dataclass(slots=True)
class Plan:
    """The parts of a series not asked for yet, the next first."""

    parts: list[list[str]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    warning: int = 0

    @classmethod
    def of(cls, missing: list[str], first: str, associations: int) -> Plan:
        """``missing`` in reading order; ``first`` (the opened one) alone, then the rest from there on."""
        if first in missing:
            at = missing.index(first)
            rest = missing[at + 1:] + missing[:at]
        else:
            rest = list(missing)
        size = part_size(len(rest), associations)
        return cls([[first], *(rest[i:i + size] for i in range(0, len(rest), size))])

    def take(self) -> list[str] | None:
        return self.parts.pop(0) if self.parts else None

    def promote(self, sop_uid: str) -> None:
        """An open waits for ``sop_uid``: its part is asked for next."""
        for index, part in enumerate(self.parts):
            if sop_uid in part:
                if index:
                    self.parts.insert(0, self.parts.pop(index))
                return

    def count(self, result: RetrieveResult) -> None:
        self.completed += result.completed
        self.failed += result.failed
        self.warning += result.warning


@dataclass(slots=True)
class _Waiting:
    prepared: Prepared
    done: trio.Event = field(default_factory=trio.Event)
    error: str = ""


class GroupIndex:
    """Instances from all workers, indexed on the loop, as few transactions as the answers allow.

    Each worker waits for its instance to be indexed before it answers the remote and gets
    the next one, so a batch can hold at most one instance per worker in a job (``busy``).
    A batch is written once each of them has sent one, or ``GATHER`` seconds after its first
    instance came: one transaction and one folder fsync for several instances.
    """

    GATHER = 0.003

    def __init__(self, gateway: IndexGateway, store: Store) -> None:
        self.gateway = gateway
        self.store = store
        self.busy = 0  # workers in the middle of a job
        self._pending: list[_Waiting] = []
        self._full = trio.Event()
        self._writing = False

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Around a worker's job: one more instance may be on its way."""
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            if self._pending and len(self._pending) >= self.busy:
                self._full.set()

    async def index(self, prepared: Prepared) -> str:
        """"" once ``prepared`` is durable and indexed, else why not (its temporary file is gone)."""
        waiting = _Waiting(prepared)
        self._pending.append(waiting)
        if len(self._pending) >= self.busy:
            self._full.set()
        if not self._writing:
            self._writing = True
            try:
                while self._pending:
                    with trio.move_on_after(self.GATHER):
                        await self._full.wait()
                    self._full = trio.Event()
                    batch, self._pending = self._pending, []
                    self._write(batch)
            finally:
                self._writing = False
        await waiting.done.wait()
        return waiting.error

    def _write(self, batch: list[_Waiting]) -> None:
        try:
            self.gateway.index([w.prepared for w in batch])
        except Exception as exc:
            log.error("cannot index %d retrieved instances: %s", len(batch), exc)
            for waiting in batch:
                self.store.discard(waiting.prepared.temp)
                waiting.error = f"cannot index it: {exc}"
        for waiting in batch:
            waiting.done.set()

    def keep_from_thread(self, token: trio.lowlevel.TrioToken) -> Keep:
        """``index`` for a worker's thread."""
        return lambda prepared: trio.from_thread.run(self.index, prepared, trio_token=token)


class WorkerPool:
    """Retrieve worker processes, started with the daemon (an import of pynetdicom takes ~0.5 s)."""

    def __init__(self, store_root: str, size: int, *, in_process: bool = False) -> None:
        self.store_root = store_root
        self.size = size
        self.in_process = in_process  # threads instead of processes (tests that replace ``scu.get``)
        self._send, self._idle = trio.open_memory_channel[AnyWorker](size)
        self._all: set[AnyWorker] = set()
        self._closing = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers in the background; end them all when cancelled."""
        task_status.started()
        try:
            for _ in range(self.size):
                await self._add()
            await trio.sleep_forever()
        finally:
            self._closing = True
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_all)

    async def _add(self) -> None:
        start = ThreadWorker if self.in_process else start_worker
        worker: AnyWorker = await trio.to_thread.run_sync(start, self.store_root)
        self._all.add(worker)
        self._send.send_nowait(worker)

    def _close_all(self) -> None:
        for worker in list(self._all):
            worker.close()

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[AnyWorker]:
        """An idle worker for one job; one that ended (or was abandoned mid-job) is replaced."""
        worker = await self._idle.receive()
        healthy = False
        try:
            yield worker
            healthy = True
        except EOFError:
            code = worker.process.exitcode if worker.process is not None else None
            log.error("a retrieve worker ended (exit code %s); starting another", code)
            raise
        finally:
            if healthy:
                self._send.send_nowait(worker)
            else:
                self._all.discard(worker)
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(worker.close)
                    if not self._closing:
                        await self._add()
