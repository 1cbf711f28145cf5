"""``prepare``: received bytes → parsed instance + durable temporary file, the one path of every front end."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dicomgen
import pytest

from dicomfs.ingest.prepare import prepare
from dicomfs.parse import InvalidInstanceError, NotDicomError
from dicomfs.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def writers() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.mark.parametrize("overlapped", [False, True], ids=["in this thread", "write in a writer thread"])
def test_part10_bytes_are_kept_exactly(store: Store, writers: ThreadPoolExecutor, overlapped: bool) -> None:
    ds = dicomgen.make_dataset()
    data = dicomgen.encode(ds)
    prepared = prepare(data, store, source="CT1@10.0.0.1", received=True, writer=writers if overlapped else None)
    assert prepared.temp.read_bytes() == data
    assert prepared.temp.parent == store.tmp_dir
    assert prepared.parsed.sop_uid == ds.SOPInstanceUID
    assert prepared.parsed.instance["source"] == "CT1@10.0.0.1"
    assert prepared.parsed.data == b""  # the bytes live in the file only


def test_a_bare_dataset_is_kept_behind_a_new_header_even_with_a_writer(store: Store,
                                                                        writers: ThreadPoolExecutor) -> None:
    body = dicomgen.encode(dicomgen.make_dataset(), part10=False)
    prepared = prepare(body, store, source="file", writer=writers)
    kept = prepared.temp.read_bytes()
    assert kept[128:132] == b"DICM" and kept.endswith(body)
    assert prepared.parsed.added_part10_header


@pytest.mark.parametrize("overlapped", [False, True], ids=["in this thread", "write in a writer thread"])
def test_a_refused_dataset_leaves_no_temporary_file(store: Store, writers: ThreadPoolExecutor,
                                                    overlapped: bool) -> None:
    writer = writers if overlapped else None
    invalid = dicomgen.encode(dicomgen.make_dataset(SeriesInstanceUID=dicomgen.REMOVE))
    with pytest.raises(InvalidInstanceError, match="SeriesInstanceUID"):
        prepare(invalid, store, source="x", received=True, writer=writer)
    with pytest.raises(NotDicomError):
        prepare(b"hello, not DICOM at all", store, source="x", writer=writer)
    assert not list(store.tmp_dir.iterdir())


def test_a_failed_write_raises_oserror(store: Store, writers: ThreadPoolExecutor) -> None:
    store.tmp_dir.rmdir()  # nowhere to write
    with pytest.raises(FileNotFoundError):
        prepare(dicomgen.encode(dicomgen.make_dataset()), store, source="x", writer=writers)
