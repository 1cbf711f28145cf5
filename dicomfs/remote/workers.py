"""Retrieve workers: C-GET associations in their own processes, each answered only once durable.

Receiving a 512x512 instance with pynetdicom and parsing it cost ~3.5 ms of Python; in the
daemon, beside the mount and the index writer, they share one interpreter lock, and a
500-instance series took five times as long as DCMTK ``getscu``. Each worker process holds
one association at a time: it receives an instance, parses it and writes it durably to a
temporary file (``prepare``), sends the result to the daemon, which indexes it with whatever
else arrived meanwhile (one transaction), and only then answers the remote's C-STORE with
success. A C-GET's sub-operations are sequential, so each association waits for its own
fsync: several workers run at once, each on a part of the series.

The protocol on a worker's pipe is strict request/response: the daemon sends a ``Job``; the
worker sends ``("instance", Prepared)`` and waits for ``(ok, reason)``, as often as
instances come, and ``("log", logger, level, message)`` whenever it logs; then ``("done", result,
error)``. ``None`` ends the worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dicomfs.config import RemoteNode
from dicomfs.ingest.prepare import SWITCH_INTERVAL, Prepared, prepare
from dicomfs.net import scu
from dicomfs.parse import quiet_pydicom
from dicomfs.store import Store

__all__ = ["Job", "JobFailed", "Keep", "ThreadWorker", "Worker", "run_job", "start_worker"]

log = logging.getLogger(__name__)

Connection = multiprocessing.connection.Connection


@dataclass(frozen=True, slots=True)
class Job:
    """One C-GET: ``level`` and ``keys`` as for ``scu.get``."""

    remote: RemoteNode
    level: str
    keys: dict[str, str]
    calling_ae: str
    sop_classes: tuple[str, ...]


class JobFailed(Exception):
    """A worker's C-GET failed: ``timed_out`` if the remote went silent, ``result`` its counts if it sent them."""

    def __init__(self, message: str, timed_out: bool, result: scu.RetrieveResult | None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.result = result
        self.status = status  # the remote's failure status, if it answered with one


Keep = Callable[[Prepared], str]  # on the daemon's side: index it; "" once durable and indexed, else why not


class Worker:
    """The daemon's handle on one worker process; ``run`` is called from one thread at a time."""

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    def run(self, job: Job, keep: Keep) -> scu.RetrieveResult:
        """Run ``job``, passing each instance to ``keep``; raises ``JobFailed`` or ``EOFError`` (worker gone)."""
        self.conn.send(job)
        while True:
            message = self.conn.recv()
            kind = message[0]
            if kind == "instance":
                self.conn.send(keep(message[1]))
            elif kind == "log":  # under the record's own logger: the daemon's levels apply
                logging.getLogger(message[1]).log(message[2], "%s", message[3])
            else:
                _, result, error = message
                if error is not None:
                    raise JobFailed(*error)
                return result  # type: ignore[no-any-return]

    def close(self) -> None:
        """End the worker: at once if it is in the middle of a job (its association is dropped)."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.conn.close()
        self.process.join(0.5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)


class ThreadWorker:
    """A worker in the daemon's own process (tests that replace ``scu.get``): the same job, in a thread."""

    process = None

    def __init__(self, store_root: str) -> None:
        self.store = Store(store_root)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="durable-write")

    def run(self, job: Job, keep: Keep) -> scu.RetrieveResult:
        return run_job(job, self.store, self.writer, keep)

    def close(self) -> None:
        self.writer.shutdown(wait=False)


def start_worker(store_root: str) -> Worker:
    """A new worker process (forkserver: not a fork of the daemon's threads and FUSE session)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(theirs, store_root), name="dicomfs-retrieve", daemon=True)
    process.start()
    theirs.close()
    return Worker(process, ours)


# ----------------------------------------------------------------------------- in the worker process


class _Forward(logging.Handler):
    """The worker's log records, sent to the daemon to be logged there."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send(("log", record.name, record.levelno, self.format(record)))


def _serve(conn: Connection, store_root: str) -> None:
    quiet_pydicom()
    sys.setswitchinterval(SWITCH_INTERVAL)  # parse and fsync overlap (see ingest.prepare)
    lock = threading.Lock()  # pynetdicom's DUL thread may log too

    def send(message: Any) -> None:
        with lock:
            conn.send(message)

    def keep(prepared: Prepared) -> str:
        send(("instance", prepared))
        try:
            reason = conn.recv()
        except (EOFError, OSError):
            reason = None
        if reason is None:  # the daemon stops (or has gone): the association is dropped with us
            os._exit(0)
        return str(reason)

    handler = _Forward(send)
    handler.setFormatter(logging.Formatter("retrieve worker %(process)d: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # pynetdicom dumps every identifier at INFO
    logging.getLogger("dicomfs").setLevel(logging.INFO)
    store = Store(store_root)
    with ThreadPoolExecutor(1, thread_name_prefix="durable-write") as writer:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            try:
                send(("done", run_job(job, store, writer, keep), None))
            except JobFailed as exc:
                send(("done", None, (str(exc), exc.timed_out, exc.result, exc.status)))


def run_job(job: Job, store: Store, writer: Executor, keep: Keep) -> scu.RetrieveResult:
    """The C-GET of ``job``: each instance prepared, then handed to ``keep``; raises ``JobFailed``."""
    source = f"remote {job.remote.name}"

    def on_instance(data: bytes) -> None:
        try:
            prepared = prepare(data, store, source=source, received=True, writer=writer)
        except OSError as exc:
            raise OSError(f"cannot store it: {exc}") from None
        reason = keep(prepared)
        if reason:
            raise OSError(reason)  # answered Out of Resources; the daemon has logged why

    try:
        return scu.get(job.remote, job.level, job.keys, calling_ae=job.calling_ae, timeout=job.remote.timeout,
                       sop_classes=job.sop_classes, on_instance=on_instance)
    except scu.RemoteError as exc:
        raise JobFailed(str(exc), isinstance(exc, scu.RemoteTimeoutError), exc.result, exc.status) from None
    except Exception as exc:  # a bug must reach the daemon's log, not end the worker silently
        log.exception("C-GET failed")
        raise JobFailed(f"{type(exc).__name__}: {exc}", False, None) from None
