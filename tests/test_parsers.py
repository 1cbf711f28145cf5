"""The node's parser processes: the same values as parsing in process, and a worker that dies
(the OOM killer, a decoder crashing on a hostile object) costs no instance and not the daemon."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest

from dicomfs.ingest.parsers import ParserPool
from dicomfs.parse import InvalidInstanceError, NotDicomError, parse_instance


@pytest.fixture
def pool() -> Iterator[ParserPool]:
    parsers = ParserPool(2)
    parsers.start(wait=True)
    yield parsers
    parsers.close()


def _file(tmp_path: Path, data: bytes, name: str = "in.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_first_instances_do_not_wait_for_the_workers(tmp_path: Path) -> None:
    parsers = ParserPool(1)
    try:
        parsed = parsers.parse(_file(tmp_path, dicomgen.encode(dicomgen.make_dataset())), source="x", received=True)
        assert parsed.data == b"" and parsed.sop_uid  # parsed here: the worker was still starting
        parsers.start(wait=True)
        assert parsers._ready_pool() is not None  # from now on, in the worker
    finally:
        parsers.close()
    assert parsers._ready_pool() is None  # closed: parsing falls back to the caller's thread


def test_a_worker_gives_what_parsing_in_process_gives(pool: ParserPool, tmp_path: Path) -> None:
    data = dicomgen.encode(dicomgen.make_dataset(patient_name="Ödegård^Åsa"))
    here = parse_instance(data, source="WS1@127.0.0.1", received=True)
    there = pool.parse(_file(tmp_path, data), source="WS1@127.0.0.1", received=True)
    assert there.data == b""  # the bytes do not travel back
    assert (there.patient, there.study, there.series, there.instance) == \
        (here.patient, here.study, here.series, here.instance)


def test_a_refusal_comes_back_as_the_same_error(pool: ParserPool, tmp_path: Path) -> None:
    with pytest.raises(NotDicomError):
        pool.parse(_file(tmp_path, b"not an image " * 100), source="x", received=True)
    truncated = dicomgen.encode(dicomgen.make_dataset())[:-1000]
    with pytest.raises(InvalidInstanceError):
        pool.parse(_file(tmp_path, truncated), source="x", received=True)


def test_a_killed_worker_costs_no_instance(pool: ParserPool, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    path = _file(tmp_path, dicomgen.encode(dicomgen.make_dataset()))
    first = pool.parse(path, source="x", received=True)
    workers = list(pool._pool._processes)  # type: ignore[union-attr]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    with caplog.at_level(logging.ERROR, logger="dicomfs.ingest.parsers"):
        again = pool.parse(path, source="x", received=True)
    assert again.instance == first.instance
    assert "a parser process died" in caplog.text
    assert not set(pool._pool._processes) & set(workers)  # type: ignore[union-attr]
