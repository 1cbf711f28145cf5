"""Storing what ``dicomfs remote pull`` brings in, beside the network thread instead of in it.

(Fetch-on-open answers each C-STORE only once durable and indexed: ``remote/workers.py``.)

pynetdicom answers each C-STORE of a C-GET only when our callback returns. Parsing, the
durable write and indexing there (~4 ms per 512x512 instance) would double the transfer
time, so the callback only queues the bytes and worker threads do the rest, indexing in
batches. The remote gets its success answer before the instance is durable: acceptable
for a copy the remote still holds; an instance that cannot be stored is counted as failed
and fetched again at its next open.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from dicomfs.ingest.prepare import Batch, prepare
from dicomfs.ingest.writer import Submit
from dicomfs.parse import InvalidInstanceError, NotDicomError
from dicomfs.store import Store

log = logging.getLogger(__name__)

_DONE = b""
BATCH = 16  # instances per index transaction at most; a batch is also sent whenever the queue runs dry


class StorePipeline:
    """``put`` is the C-GET callback; ``close`` waits until everything put is stored or counted failed."""

    def __init__(self, store: Store, submit: Submit, *, source: str, workers: int = 2,
                 on_stored: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.submit = submit
        self.source = source
        self.on_stored = on_stored
        self.failed = 0
        self.stored = 0
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=64)  # bounds memory: ~64 instances in flight
        self._submit_lock = threading.Lock()  # one index transaction at a time
        self._count_lock = threading.Lock()
        self._workers = [threading.Thread(target=self._work, name=f"fetch-store-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def put(self, data: bytes) -> None:
        self._queue.put(data)

    def close(self) -> None:
        for _ in self._workers:
            self._queue.put(_DONE)
        for worker in self._workers:
            worker.join()

    def _work(self) -> None:
        batch: Batch = []
        while True:
            data = self._queue.get()
            if data is _DONE:
                break
            try:
                batch.append(prepare(data, self.store, source=self.source, received=True))
            except (NotDicomError, InvalidInstanceError, OSError) as exc:
                log.warning("%s: an instance could not be stored: %s", self.source, exc)
                self._count(failed=1)
            if len(batch) >= BATCH or (batch and self._queue.empty()):
                self._flush(batch)
                batch = []
        if batch:
            self._flush(batch)

    def _flush(self, batch: Batch) -> None:
        try:
            with self._submit_lock:
                self.submit(batch)
        except Exception as exc:
            log.error("%s: cannot index %d instances: %s", self.source, len(batch), exc)
            for prepared in batch:
                self.store.discard(prepared.temp)
            self._count(failed=len(batch))
            return
        self._count(stored=len(batch))
        if self.on_stored is not None:
            self.on_stored(len(batch))

    def _count(self, *, stored: int = 0, failed: int = 0) -> None:
        with self._count_lock:
            self.stored += stored
            self.failed += failed
