"""What the node must keep holding under stress: a full disk, and many senders with readers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import dicomgen
import pydicom
import pytest
from conftest import Daemon, dcmtk, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: a disk that can really fill up."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _statuses(storescu_log: str) -> list[str]:
    """The status storescu reports for each file it sent, in order."""
    return re.findall(r"Received Store Response \(([^)]*)\)", storescu_log)


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's dataset: the bytes after the file meta group (which the receiver writes anew)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    return data[144 + int.from_bytes(data[140:144], "little"):]


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _indexed_sop_uids(data_dir: Path) -> set[str]:
    db = apsw.Connection(str(data_dir / "index.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {row[0] for row in db.execute("SELECT sop_uid FROM instances")}
    finally:
        db.close()


def test_a_full_disk_answers_out_of_resources_and_recovers_when_space_is_freed(
        small_disk: Path, tmp_path: Path) -> None:
    data_dir = small_disk / "data"
    data_dir.mkdir()
    files = dicomgen.series(tmp_path / "in", 24, rows=512, columns=512)  # 512 KiB each
    daemon = Daemon(data_dir=data_dir, mount=tmp_path / "mnt", log_path=tmp_path / "daemon.log",
                    expected_errors=["cannot store", "cannot index"])
    daemon.start("--no-mount")
    try:
        assert dcmtk("storescu", "-aec", "DICOMFS", "127.0.0.1", daemon.port, files[0]).returncode == 0
        free = os.statvfs(small_disk)
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # leave room for about six more instances
            f.write(b"\0" * (free.f_bavail * free.f_frsize - 6 * 2**20 - 2**19))
        sent = dcmtk("storescu", "-v", "-nh", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *files[1:], timeout=120)
        statuses = _statuses(sent.stderr + sent.stdout)
        assert len(statuses) == len(files) - 1, sent.stderr
        refused = [f for f, s in zip(files[1:], statuses, strict=True) if s != "Success"]
        assert refused, "the disk never filled up"
        assert {s for s in statuses if s != "Success"} == {"Refused: OutOfResources"}, statuses
        accepted = {pydicom.dcmread(files[0]).SOPInstanceUID} | {
            _uid(f) for f, s in zip(files[1:], statuses, strict=True) if s == "Success"}
        assert _indexed_sop_uids(data_dir) == accepted  # all that was answered success, nothing else
        stored = list((data_dir / "store").rglob("*.dcm"))
        assert len(stored) == len(accepted)
        assert not list((data_dir / "store" / ".tmp").iterdir())  # no partial file is left

        filler.unlink()
        again = dcmtk("storescu", "-v", "-nh", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *refused, timeout=120)
        assert _statuses(again.stderr + again.stdout) == ["Success"] * len(refused), again.stderr
        assert len(_indexed_sop_uids(data_dir)) == len(files)
        by_uid = {_uid(f): dataset_bytes(f.read_bytes()) for f in files}
        for path in (data_dir / "store").rglob("*.dcm"):
            assert dataset_bytes(path.read_bytes()) == by_uid[_uid(path)]
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert not daemon.unexpected_errors(), daemon.unexpected_errors()


def test_eight_senders_four_readers_and_four_queriers_see_no_error_and_identical_bytes(
        daemon: Daemon, tmp_path: Path) -> None:
    seed = dicomgen.series(tmp_path / "seed", 20, rows=64, columns=64, PatientID="SEED")
    batches = [dicomgen.series(tmp_path / f"in{i}", 25, rows=64, columns=64, PatientID=f"P{i}") for i in range(8)]
    daemon.start()
    assert dcmtk("storescu", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *seed).returncode == 0
    seed_dir = daemon.mount / "patients" / "DOE^JOHN [SEED]"
    wait_for(seed_dir.exists, 2.0, "the seed patient")
    expected = {_uid(p): dataset_bytes(p.read_bytes())
                for p in [*seed, *(f for b in batches for f in b)]}
    stop = threading.Event()
    reads: list[int] = []

    def read_mount() -> None:  # users browsing and reading every file while the node is busy
        while not stop.is_set():
            for path in (daemon.mount / "patients").rglob("*.dcm"):
                with contextlib.suppress(FileNotFoundError):  # a folder listed a moment before a refresh
                    data = dataset_bytes(path.read_bytes())
                    assert data == expected[_uid(path)], path
                    reads.append(1)

    def query(_: int) -> subprocess.CompletedProcess[str]:
        return dcmtk("findscu", "-S", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                     "-k", "PatientID=SEED", "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", daemon.port)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        readers = [pool.submit(read_mount) for _ in range(4)]
        stores = [pool.submit(dcmtk, "storescu", "-v", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *paths)
                  for paths in batches]
        queries = [pool.submit(query, i) for i in range(4)]
        results = [f.result() for f in stores]
        answers = [f.result() for f in queries]
        stop.set()
        for reader in readers:
            reader.result()  # re-raises a failed or wrong read
    for result in results:
        assert result.returncode == 0 and _statuses(result.stderr) == ["Success"] * 25, result.stderr
    for answer in answers:  # queries answered while the node stores
        assert answer.returncode == 0 and "(0020,1208) IS [20]" in answer.stderr, answer.stderr
    assert len(reads) > 20, "the mount was hardly read during the transfers"
    wait_for(lambda: len(os.listdir(daemon.mount / "patients")) == 9, 2.0, "nine patients")
    files = sorted((daemon.mount / "patients").rglob("*.dcm"))
    assert len(files) == len(expected)
    for path in files:
        assert dataset_bytes(path.read_bytes()) == expected[_uid(path)]
