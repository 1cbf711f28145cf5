"""Parsing received instances in worker processes, so that the node's CPU is not one GIL.

pydicom parsing is most of a C-STORE's CPU (~4 ms of ~9 for a 512x512 CT), and it runs
under the interpreter lock that the associations' network threads need too: with four
associations the daemon used one core of two. Here the bytes go to a small pool of
processes that parse them and send back the index values. The bytes do not travel: the
worker reads them from the temporary file they were just written to (in the page cache),
while the node's thread waits for that file's fsync. A decoder
that crashes on a hostile object takes down its worker, not the daemon: the pool is made
again, the object is tried once more in the new pool, and refused if it breaks that too.

The workers start with the first instance received, not with the daemon (a daemon that
never receives costs no processes); until they are up, instances are parsed in the calling
thread, so the first one does not wait for them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from dicomfs.parse import InvalidInstanceError, ParsedInstance, parse_instance, quiet_pydicom

log = logging.getLogger(__name__)

__all__ = ["ParserPool"]


def _start_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the daemon's to handle
    quiet_pydicom()


def _parse_file(path: str, source: str, received: bool) -> ParsedInstance:
    with open(path, "rb") as f:
        data = f.read()
    parsed = parse_instance(data, source=source, received=received)
    parsed.data = b""  # the caller has the bytes: send back only the values
    return parsed


def _ready() -> None:
    """A task that makes a worker start, importing this module and so the parser, before it is needed."""


class ParserPool:
    """``parse`` from any thread; ``close`` once, when the node stops."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._starting: list[concurrent.futures.Future[None]] = []
        self._closed = False

    def start(self, *, wait: bool = False) -> None:
        """Start the workers (``parse`` does it the first time); ``wait`` until they are up."""
        with self._lock:
            if self._pool is None and not self._closed:
                self._pool = self._new_pool()
            starting = list(self._starting)
        if wait:
            concurrent.futures.wait(starting)

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("forkserver"), initializer=_start_worker)
        self._starting = [pool.submit(_ready) for _ in range(self.workers)]
        return pool

    def _ready_pool(self) -> concurrent.futures.ProcessPoolExecutor | None:
        """The pool once its workers are up, else None (and the workers are started)."""
        self.start()
        with self._lock:
            if self._starting and not all(f.done() for f in self._starting):
                return None
            self._starting = []
            return self._pool

    def parse(self, path: Path, *, source: str, received: bool) -> ParsedInstance:
        """``parse_instance`` of the file at ``path`` in a worker; raises what it raises
        (NotDicomError, InvalidInstanceError, OSError)."""
        for attempt in (1, 2):
            pool = self._ready_pool()
            if pool is None:  # the workers are still starting (or the node is stopping)
                return _parse_file(str(path), source, received)
            try:
                return pool.submit(_parse_file, str(path), source, received).result()
            except BrokenProcessPool:
                self._replace(pool)
                if attempt == 2:
                    raise InvalidInstanceError("a parser process died reading this object (twice)") from None
                log.error("a parser process died (an object from %s was being read); parsing goes on in new ones",
                          source)
            except RuntimeError:  # submit after close: the node is stopping
                raise InvalidInstanceError("the node is stopping") from None
        raise AssertionError("unreachable")

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken and not self._closed:
                self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
