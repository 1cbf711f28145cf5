"""C-GET and C-MOVE with DCMTK's getscu and movescu; the bytes that come back are the originals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, dcmtk, free_port, run_cli, wait_for


@pytest.fixture
def stored(daemon: Daemon, data_dir: Path, tmp_path: Path) -> list[Path]:
    paths = dicomgen.series(tmp_path / "in", 6, rows=32, columns=32)
    paths += dicomgen.series(tmp_path / "other", 2, rows=8, columns=8, PatientID="OTHER")
    run_cli("import", "--data-dir", data_dir, tmp_path / "in", tmp_path / "other")
    return paths


def same_dataset(received: Path, original: Path) -> bool:
    a, b = pydicom.dcmread(received), pydicom.dcmread(original)
    return a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData and a == b


def test_getscu_study_level(daemon: Daemon, stored: list[Path], tmp_path: Path) -> None:
    daemon.start("--no-mount")
    study = pydicom.dcmread(stored[0]).StudyInstanceUID
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", "-S", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={study}", "-od", out, "127.0.0.1", daemon.port)
    assert result.returncode == 0, result.stderr
    received = sorted(out.iterdir())
    assert len(received) == 6
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in stored[:6]}
    for path in received:
        assert same_dataset(path, by_uid[pydicom.dcmread(path).SOPInstanceUID])


def test_getscu_image_level_in_patient_root(daemon: Daemon, stored: list[Path], tmp_path: Path) -> None:
    daemon.start("--no-mount")
    ds = pydicom.dcmread(stored[3])
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", "-P", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=12345",
                   "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                   "-k", f"SOPInstanceUID={ds.SOPInstanceUID}", "-od", out, "127.0.0.1", daemon.port)
    assert result.returncode == 0, result.stderr
    [received] = list(out.iterdir())
    assert same_dataset(received, stored[3])


def test_movescu_to_a_configured_storescp(daemon: Daemon, stored: list[Path], tmp_path: Path) -> None:
    dest_port = free_port()
    out = tmp_path / "moved"
    out.mkdir()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[[dicom.remotes]]\nname = "ws"\nae_title = "STORESCP"\nhost = "127.0.0.1"\nport = {dest_port}\n'
    )
    receiver = subprocess.Popen(["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), str(dest_port)],
                                env={"TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        daemon.start("--no-mount", "--config", str(config))
        series = pydicom.dcmread(stored[0]).SeriesInstanceUID
        result = dcmtk("movescu", "-v", "-S", "-aec", "DICOMFS", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=SERIES",
                       "-k", f"StudyInstanceUID={pydicom.dcmread(stored[0]).StudyInstanceUID}",
                       "-k", f"SeriesInstanceUID={series}", "127.0.0.1", daemon.port)
        assert result.returncode == 0, result.stderr
        assert "Received Final Move Response (Success)" in result.stdout + result.stderr
        wait_for(lambda: len(list(out.iterdir())) == 6, 5, "six files at the destination")
        by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in stored[:6]}
        for path in out.iterdir():
            assert same_dataset(path, by_uid[pydicom.dcmread(path).SOPInstanceUID])
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)


def test_move_to_an_unknown_destination_is_refused(daemon: Daemon, stored: list[Path]) -> None:
    daemon.expected_errors.append("Unknown Move Destination: NOBODY")  # pynetdicom's own log line
    daemon.start("--no-mount")
    result = dcmtk("movescu", "-v", "-S", "-aec", "DICOMFS", "-aem", "NOBODY", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={pydicom.dcmread(stored[0]).StudyInstanceUID}", "127.0.0.1", daemon.port)
    assert "MoveDestinationUnknown" in result.stdout + result.stderr  # 0xA801
    assert "unknown destination 'NOBODY'" in daemon.log()


def test_retrieve_without_the_unique_key_is_refused(daemon: Daemon, stored: list[Path], tmp_path: Path) -> None:
    daemon.start("--no-mount")
    result = dcmtk("getscu", "-v", "-S", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=SERIES",
                   "-k", "Modality=CT", "-od", tmp_path, "127.0.0.1", daemon.port)
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr  # 0xA900
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob("CT*"))
