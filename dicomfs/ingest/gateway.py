"""The daemon's one way into the index writer: every batch is written on the trio loop.

The DICOM node's association threads and the retrieve pipeline's threads hand their batches
over with ``submit_from_thread``; the loop writes them (SQLite is used from that thread
alone) and then tells the listeners, e.g. the fetcher, whose opens wait for instances.
What the mount must refresh it learns from the change log, not from here.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from dicomfs.ingest.prepare import Batch
from dicomfs.ingest.writer import IndexWriter, Ingested

__all__ = ["IndexGateway", "Listener"]

Listener = Callable[[list[Ingested]], None]  # runs on the loop after each written batch; must not block


class IndexGateway:
    """Create it on the trio loop: it keeps that loop's token for the threads that submit."""

    def __init__(self, writer: IndexWriter) -> None:
        self.writer = writer
        self._token = trio.lowlevel.current_trio_token()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def index(self, batch: Batch) -> list[Ingested]:
        """On the loop: write ``batch`` (one transaction), then tell every listener what it did."""
        results = self.writer.add_batch(batch)
        for listener in self._listeners:
            listener(results)
        return results

    def submit_from_thread(self, batch: Batch) -> list[Ingested]:
        """From any other thread: ``index`` on the loop, waiting for it; raises what it raised,
        or ``trio.RunFinishedError`` once the loop has ended."""
        return trio.from_thread.run_sync(self.index, batch, trio_token=self._token)
