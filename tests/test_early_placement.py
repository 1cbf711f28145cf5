"""The node's early placement: a received file gets its final name before it is parsed, and the
index writer adopts it; every other outcome leaves the store as the ordinary path would."""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dicomgen
import pydicom
import pydicom.data
import pytest

from dicomfs.archive import Archive
from dicomfs.ingest.parsers import ParserPool
from dicomfs.ingest.peek import peek_part10
from dicomfs.ingest.prepare import Prepared, discard, prepare
from dicomfs.ingest.writer import Outcome
from dicomfs.parse import InvalidInstanceError


@pytest.fixture(scope="module")
def parsers() -> Iterator[ParserPool]:
    pool = ParserPool(1)
    pool.start(wait=True)
    yield pool
    pool.close()


@pytest.fixture
def writers() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _received(archive: Archive, data: bytes, writers: ThreadPoolExecutor, parsers: ParserPool) -> Prepared:
    return prepare(data, archive.store, source="CT1@127.0.0.1", received=True, writer=writers, parsers=parsers)


def _store_files(archive: Archive) -> list[Path]:
    return sorted(p for p in archive.store.root.rglob("*") if p.is_file())


def test_peeked_uids_are_pydicoms_or_nothing() -> None:
    """Every Part 10 file of pydicom's own test data: the same three UIDs, or None (never others)."""
    folder = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    peeked = 0
    for path in glob.glob(os.path.join(folder, "**", "*.dcm"), recursive=True):
        raw = Path(path).read_bytes()
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            continue
        got = peek_part10(raw)
        if got is not None:
            peeked += 1
            assert got == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID), path
        for cut in (200, len(raw) // 2):  # cut short: the same UIDs where they are in, else None
            assert peek_part10(raw[:cut]) in (None, got), path
    assert peeked >= 40


def test_a_received_file_is_adopted_where_it_was_placed(archive: Archive, writers: ThreadPoolExecutor,
                                                        parsers: ParserPool) -> None:
    ds = dicomgen.make_dataset()
    data = dicomgen.encode(ds)
    prepared = _received(archive, data, writers, parsers)
    relpath = archive.store.relpath_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert prepared.placed == relpath
    assert archive.store.holds(prepared.temp, relpath)
    assert [r.outcome for r in archive.writer.add_batch([prepared])] == [Outcome.STORED]
    assert not prepared.temp.exists()  # the temporary name is gone, the final one stays
    assert archive.store.path(relpath).read_bytes() == data
    assert archive.db.get_str("SELECT file_path FROM instances WHERE sop_uid = ?", (ds.SOPInstanceUID,)) == relpath
    assert archive.store.place_early(archive.store.path(relpath), relpath) is None  # released, and taken


def test_a_resent_instance_is_a_duplicate_and_leaves_nothing_behind(archive: Archive, writers: ThreadPoolExecutor,
                                                                     parsers: ParserPool) -> None:
    data = dicomgen.encode(dicomgen.make_dataset())
    archive.writer.add_batch([_received(archive, data, writers, parsers)])
    before = _store_files(archive)
    again = _received(archive, data, writers, parsers)
    assert again.placed == ""  # the name is taken
    assert [r.outcome for r in archive.writer.add_batch([again])] == [Outcome.IDENTICAL]
    assert _store_files(archive) == before


def test_a_refused_object_and_a_discarded_one_leave_nothing(archive: Archive, writers: ThreadPoolExecutor,
                                                            parsers: ParserPool) -> None:
    truncated = dicomgen.encode(dicomgen.make_dataset(rows=64, columns=64))[:-2000]  # UIDs in, pixels cut
    with pytest.raises(InvalidInstanceError):
        _received(archive, truncated, writers, parsers)
    assert _store_files(archive) == []
    prepared = _received(archive, dicomgen.encode(dicomgen.make_dataset()), writers, parsers)
    assert prepared.placed
    discard(archive.store, prepared)  # e.g. the daemon stopping before it was indexed
    assert _store_files(archive) == []


def test_while_the_node_holds_a_name_nobody_else_replaces_the_file(archive: Archive, writers: ThreadPoolExecutor,
                                                                   parsers: ParserPool) -> None:
    ds = dicomgen.make_dataset()
    data = dicomgen.encode(ds)
    arriving = _received(archive, data, writers, parsers)  # placed early, not indexed yet
    imported = prepare(data, archive.store, source="import")  # the same instance by another way
    with pytest.raises(OSError) as busy:
        archive.writer.add_batch([imported])
    assert busy.value.errno == errno.EBUSY
    assert imported.temp.exists()  # put back: the caller may discard it or try again
    assert [r.outcome for r in archive.writer.add_batch([arriving])] == [Outcome.STORED]
    assert [r.outcome for r in archive.writer.add_batch([imported])] == [Outcome.IDENTICAL]
    assert [p.name for p in _store_files(archive)] == [f"{ds.SOPInstanceUID}.dcm"]


def test_a_failed_transaction_takes_the_early_name_back(archive: Archive, writers: ThreadPoolExecutor,
                                                        parsers: ParserPool) -> None:
    good = _received(archive, dicomgen.encode(dicomgen.make_dataset()), writers, parsers)
    lost = prepare(dicomgen.encode(dicomgen.make_dataset()), archive.store, source="import")
    archive.store.discard(lost.temp)  # this one cannot be written: the batch fails
    with pytest.raises(FileNotFoundError):
        archive.writer.add_batch([good, lost])
    assert _store_files(archive) == [good.temp]  # only the temporary, for another try
    assert [r.outcome for r in archive.writer.add_batch([good])] == [Outcome.STORED]
    assert archive.db.get_int("SELECT count(*) FROM instances") == 1
