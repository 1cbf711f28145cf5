"""The daemon's one way into the index writer: every batch is written on the trio loop.

The DICOM node's association threads and the retrieve pipeline's threads hand their batches
over with ``submit_from_thread``; the loop writes them (SQLite is used from that thread
alone) and then tells the listeners, e.g. the fetcher, whose opens wait for instances.
What the mount must refresh it learns from the change log, not from here.

Group commit: the batches that arrive while the loop is busy are written together, in one
transaction with one fsync of each folder they touched, and each submitter is answered when
that transaction has committed. So four associations storing at once cost the loop one
transaction per turn, not four. A group whose transaction fails is written again batch by
batch, so one batch's failure (a full disk, say) is only that batch's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import trio

from dicomfs.ingest.prepare import Batch
from dicomfs.ingest.writer import IndexWriter, Ingested

__all__ = ["IndexGateway", "Listener"]

log = logging.getLogger(__name__)

Listener = Callable[[list[Ingested]], None]  # runs on the loop after each written batch; must not block


class _Submission:
    """One thread's batch, waiting for the transaction that writes it."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.results: list[Ingested] = []
        self.error: BaseException | None = None
        self.done = threading.Event()


class IndexGateway:
    """Create it on the trio loop: it keeps that loop's token for the threads that submit."""

    def __init__(self, writer: IndexWriter) -> None:
        self.writer = writer
        self._token = trio.lowlevel.current_trio_token()
        self._listeners: list[Listener] = []
        self._waiting: list[_Submission] = []  # touched on the loop only
        self.groups = 0  # transactions written for submissions from threads (for tests and figures)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def index(self, batch: Batch) -> list[Ingested]:
        """On the loop: write ``batch`` (one transaction), then tell every listener what it did."""
        results = self.writer.add_batch(batch)
        self._tell(results)
        return results

    def submit_from_thread(self, batch: Batch) -> list[Ingested]:
        """From any other thread: written on the loop with whatever else is waiting; raises
        what writing it raised, or ``trio.RunFinishedError`` once the loop has ended."""
        submission = _Submission(batch)
        self._token.run_sync_soon(self._arrive, submission)
        submission.done.wait()
        if submission.error is not None:
            raise submission.error
        return submission.results

    def _arrive(self, submission: _Submission) -> None:
        self._waiting.append(submission)
        if len(self._waiting) == 1:  # the first of a group: write after the others queued meanwhile
            self._token.run_sync_soon(self._write_waiting)

    def _write_waiting(self) -> None:
        group, self._waiting = self._waiting, []
        self.groups += 1
        try:
            results = self.writer.add_batch([prepared for s in group for prepared in s.batch])
        except BaseException as exc:
            if len(group) == 1:
                group[0].error = exc
                group[0].done.set()
                return
            for submission in group:  # alone, each batch fails or succeeds on its own
                self._write_alone(submission)
            return
        start = 0
        for submission in group:
            submission.results = results[start:start + len(submission.batch)]
            start += len(submission.batch)
        self._tell(results)
        for submission in group:
            submission.done.set()

    def _write_alone(self, submission: _Submission) -> None:
        try:
            submission.results = self.writer.add_batch(submission.batch)
        except BaseException as exc:
            submission.error = exc
        else:
            self._tell(submission.results)
        submission.done.set()

    def _tell(self, results: list[Ingested]) -> None:
        """Listeners must not fail; one that does is logged, and the others are still told."""
        for listener in self._listeners:
            try:
                listener(results)
            except Exception:
                log.exception("a listener of the index failed")
