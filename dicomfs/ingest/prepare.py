"""Received bytes → a parsed instance and its durable temporary file: one path for every front end.

``dicomfs import`` workers, the node's C-STORE handler and the retrieve pipeline all call
``prepare``; each keeps its own way of reporting a refusal (report lines, DIMSE statuses,
failed counts). What comes out goes, in batches, to ``IndexWriter.add_batch``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicomfs.ingest.peek import peek_part10
from dicomfs.parse import ParsedInstance, parse_instance
from dicomfs.store import Store

if TYPE_CHECKING:
    from dicomfs.ingest.parsers import ParserPool

__all__ = ["SWITCH_INTERVAL", "Batch", "Prepared", "prepare"]


# The interpreter's default of 5 ms lets a thread that parses a received instance keep the
# lock that the thread waiting on its fsync, and the loop that indexes it, need for a few
# microseconds each: every instance then waited up to 5 ms per hand-over (measured: one
# association 100/s at 5 ms, 130/s at 0.5 ms). Set in each process that
# receives instances: the daemon once its node starts, and every retrieve worker.
SWITCH_INTERVAL = 0.0005
_SYNC_START_WAIT = 0.05  # seconds: a busy writer pool must not hold the parse up for long


@dataclass(frozen=True, slots=True)
class Prepared:
    """An instance ready to be indexed: its index values and the durable file that holds its bytes.

    ``placed``: the final relative path the file already has in the store too, durably
    (``Store.place_early``); the index writer adopts it, or ``discard`` takes it back.
    """

    parsed: ParsedInstance
    temp: Path
    placed: str = ""


def discard(store: Store, prepared: Prepared) -> None:
    """Remove what ``prepare`` wrote for an instance that will not be indexed."""
    if prepared.placed:
        store.release_early(prepared.placed, remove=True)
    store.discard(prepared.temp)


Batch = list[Prepared]  # what one index transaction writes


def prepare(data: bytes, store: Store, *, source: str, received: bool = False,
            writer: Executor | None = None, parsers: ParserPool | None = None) -> Prepared:
    """Parse ``data`` and write the bytes to keep durably to a temporary file in ``store``.

    ``received``: the bytes came over the network (see ``parse_instance``). ``writer``: a
    thread pool for the durable write (mostly waiting for fsync), the node's. When ``data``
    already has its Part 10 header, those are the bytes kept, placed early, and made durable
    there while they are parsed (``_prepare_in_place``); a refused dataset's file is then
    discarded. ``parsers``: worker processes to parse in, else this thread parses.
    ``parsed.data`` is emptied: the bytes are in the file, and no second copy travels on
    (back from an import worker, say).

    Raises ``NotDicomError``/``InvalidInstanceError`` (refused) or ``OSError`` (not written).
    """
    if writer is not None and data[128:132] == b"DICM":
        return _prepare_in_place(data, store, source=source, received=received, writer=writer, parsers=parsers)
    parsed = parse_instance(data, source=source, received=received)
    temp = store.write_temp(parsed.data)
    parsed.data = b""
    return Prepared(parsed, temp)


def _prepare_in_place(data: bytes, store: Store, *, source: str, received: bool, writer: Executor,
                      parsers: ParserPool | None) -> Prepared:
    """The node's way: the bytes go to a temporary file that gets its final name at once (from
    UIDs peeked at in the bytes), a parser process (or this thread) parses them, and one
    fsync, in a writer thread meanwhile, makes file and name durable. Parsing must agree with
    the peeked UIDs, or the early name is taken back and the index writer places the file
    after all."""
    temp = store.write_temp(data, durable=False)
    uids = peek_part10(data)
    relpath = store.relpath_for(*uids) if uids else ""
    final = store.place_early(temp, relpath) if relpath else None
    if final is None:
        relpath = ""
    try:
        syncing = _start_sync(writer, store, temp, final.parent if final else None)
        try:
            if parsers is not None:
                parsed = parsers.parse(temp, source=source, received=received)
            else:
                parsed = parse_instance(data, source=source, received=received)
        finally:
            syncing.result()
    except BaseException:
        if relpath:
            store.release_early(relpath, remove=True)
        store.discard(temp)
        raise
    if relpath and uids != (parsed.study["study_uid"], parsed.series["series_uid"], parsed.sop_uid):
        store.release_early(relpath, remove=True)
        relpath = ""
    parsed.data = b""
    return Prepared(parsed, temp, relpath)


def _start_sync(writer: Executor, store: Store, temp: Path, folder: Path | None) -> Future[None]:
    """Start the fsync of ``temp`` (and ``folder``) in a writer thread, and return once it is
    under way: the parse that follows holds the interpreter lock, and a thread still waiting
    for that lock would begin its fsync only when the parse is over."""
    started = threading.Event()

    def sync() -> None:
        started.set()
        store.sync_file(temp, folder)

    syncing = writer.submit(sync)
    started.wait(_SYNC_START_WAIT)
    return syncing

