"""Remote PACS in the tree, with a real Orthanc: listing, fetch on open (C-GET and C-MOVE),
concurrent opens, a PACS that is down, the cache, and the ``dicomfs remote`` commands."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, free_port, run_cli, wait_for
from orthanc import Orthanc

PATIENT = "Röntgen^Wilhelm [REM1]"


def dataset_bytes(path: Path) -> bytes:
    return dataset_bytes_of(path.read_bytes())


def dataset_bytes_of(data: bytes) -> bytes:
    """The dataset as encoded after the File Meta Information (which each writer makes its own)."""
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) value, right after DICM + tag/VR/len
    return data[144 + meta_length:]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", modalities={})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def remote_series(tmp_path: Path) -> list[Path]:
    """Two series of one study (6 and 3 instances) for patient REM1, not in the archive."""
    first = dicomgen.series(tmp_path / "src1", 6, rows=32, columns=32, PatientID="REM1",
                            PatientName="Röntgen^Wilhelm", StudyDate="20240105")
    study = pydicom.dcmread(first[0]).StudyInstanceUID
    second = dicomgen.series(tmp_path / "src2", 3, rows=32, columns=32, PatientID="REM1",
                             PatientName="Röntgen^Wilhelm", StudyDate="20240105",
                             SeriesNumber=4, SeriesDescription="Soft")
    for path in second:  # same study
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path)
    return first + second


def write_config(tmp_path: Path, pacs: Orthanc, *, retrieve: str = "get", timeout: float = 10,
                 refresh_minutes: float = 0, extra: str = "",
                 listing: str = "PatientID=REM1 and StudyDate>=20240101") -> Path:
    config = tmp_path / "dicomfs.toml"
    config.write_text(
        f'[dicom]\nrefresh_minutes = {refresh_minutes}\n{extra}\n'
        f'[[dicom.remotes]]\nname = "pacs"\nae_title = "{pacs.aet}"\nhost = "127.0.0.1"\n'
        f'port = {pacs.dicom_port}\nretrieve = "{retrieve}"\ntimeout = {timeout}\n'
        f'listing = [{json.dumps(listing)}]\n'
    )
    return config


def series_dir(mount: Path, number: int) -> Path:
    study = mount / "patients" / PATIENT
    wait_for(lambda: study.exists() and any(study.iterdir()), 10.0, "the remote study in the tree")
    [study_dir] = [p for p in study.iterdir() if p.is_dir()]
    [folder] = [p for p in study_dir.iterdir() if p.name.startswith(f"{number:03d} ")]
    return folder


def serve_remote(daemon: Daemon, pacs: Orthanc, files: list[Path], tmp_path: Path, *extra: str,
                 **config: object) -> Path:
    """Orthanc holding ``files``, and a daemon whose saved query lists them; returns the config file."""
    pacs.start()
    pacs.upload(files)
    path = write_config(tmp_path, pacs, **config)  # type: ignore[arg-type]
    daemon.start("--config", str(path), *extra)
    return path


def test_remote_study_listed_then_fetched_on_open_by_cget(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    serve_remote(daemon, pacs, remote_series, tmp_path)
    folder = series_dir(daemon.mount, 3)
    names = sorted(p.name for p in folder.iterdir())
    assert [n for n in names if n.endswith(".dcm")] == [f"{n:03d}.dcm" for n in range(1, 7)]
    assert (folder / "001.dcm").stat().st_size == 0  # not fetched yet: size unknown
    summary = json.loads((folder / "series.json").read_text())
    assert summary["Remote"]["name"] == "pacs" and summary["Remote"]["LocalInstances"] == 0
    assert not any(i["local"] for i in summary["Instances"])
    assert not list((daemon.data_dir / "store").rglob("*.dcm"))  # listing fetched nothing

    # Each reader gets the complete bytes on the first try.
    by_number = {pydicom.dcmread(p).InstanceNumber: p for p in remote_series[:6]}
    copy = tmp_path / "cp.dcm"  # the first reader: cp of a file that is not local yet
    subprocess.run(["cp", str(folder / "003.dcm"), str(copy)], check=True, timeout=60)
    assert dataset_bytes(copy) == dataset_bytes(by_number[3])
    assert os.stat(folder / "003.dcm").st_size == copy.stat().st_size
    with open(tmp_path / "cat.dcm", "wb") as out:  # fetched with its series; listed with size 0 before
        subprocess.run(["cat", str(folder / "001.dcm")], stdout=out, check=True, timeout=60)
    assert dataset_bytes(tmp_path / "cat.dcm") == dataset_bytes(by_number[1])
    with open(folder / "004.dcm", "rb") as f:  # Python's read(): sizes its buffer from fstat
        assert dataset_bytes_of(f.read()) == dataset_bytes(by_number[4])
    ds = pydicom.dcmread(folder / "005.dcm")
    assert ds.SOPInstanceUID == pydicom.dcmread(by_number[5]).SOPInstanceUID
    assert (ds.pixel_array == pydicom.dcmread(by_number[5]).pixel_array).all()
    shutil.copy(folder / "006.dcm", tmp_path / "copied.dcm")
    assert dataset_bytes(tmp_path / "copied.dcm") == dataset_bytes(by_number[6])
    second_uid = pydicom.dcmread(by_number[2]).SOPInstanceUID
    assert json.loads((folder / "002.json").read_text())["00080018"]["Value"] == [second_uid]
    wait_for(lambda: json.loads((folder / "series.json").read_text())["Remote"]["Complete"], 5.0,
             "the series marked complete")
    assert daemon.log().count("retrieving series") == 1  # one retrieve for the whole series
    assert (folder / "001.jpg").exists()  # views appear once the instances are local


def test_dcm2niix_converts_a_series_that_is_not_local(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    serve_remote(daemon, pacs, remote_series, tmp_path)
    folder = series_dir(daemon.mount, 3)
    out = tmp_path / "nifti"
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "n", "-f", "vol", "-o", str(out), str(folder)], check=True,
                   capture_output=True, timeout=120)
    header = (out / "vol.nii").read_bytes()[:348]
    dims = [int.from_bytes(header[40 + 2 * i:42 + 2 * i], "little") for i in range(4)]
    assert dims == [3, 32, 32, 6]


def test_concurrent_opens_share_one_retrieve(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    serve_remote(daemon, pacs, remote_series, tmp_path)
    folder = series_dir(daemon.mount, 3)
    files = sorted(folder.glob("*.dcm")) * 3  # 18 opens from 18 threads
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        results = list(pool.map(lambda p: pydicom.dcmread(p).InstanceNumber, files))
    assert sorted(results) == sorted(list(range(1, 7)) * 3)
    assert daemon.log().count("retrieving series") == 1


def test_fetch_by_cmove_to_our_own_node(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    port = free_port()
    pacs.modalities = {"dicomfs": ("DICOMFS", "127.0.0.1", port)}
    serve_remote(daemon, pacs, remote_series, tmp_path, "--port", str(port), retrieve="move")
    daemon.port = port
    folder = series_dir(daemon.mount, 4)
    by_number = {pydicom.dcmread(p).InstanceNumber: p for p in remote_series[6:]}
    for n in (1, 2, 3):
        assert dataset_bytes(folder / f"{n:03d}.dcm") == dataset_bytes(by_number[n])
    assert "C-MOVE" in daemon.log()


def test_pacs_down_gives_eio_within_the_timeout_and_the_next_open_retries(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    daemon.expected_errors = ["remote pacs", "open failed"]
    serve_remote(daemon, pacs, remote_series, tmp_path, timeout=3)
    folder = series_dir(daemon.mount, 3)
    assert len(list(folder.glob("*.dcm"))) == 6  # listed while the PACS was up
    readable = daemon.mount / "patients"  # the rest of the mount stays usable meanwhile
    pacs.stop()
    for _ in range(2):  # at once, each time: a refused connection is no reason to wait
        started = time.monotonic()
        with pytest.raises(OSError) as failure:
            (folder / "001.dcm").read_bytes()
        assert failure.value.errno == errno.EIO
        assert time.monotonic() - started < 1.0
    assert os.listdir(readable)
    assert "remote pacs" in daemon.log()
    assert not list((daemon.data_dir / "store").rglob("*.dcm"))  # nothing partial became visible
    pacs.start()  # back on the same ports
    assert pydicom.dcmread(folder / "001.dcm").InstanceNumber == 1


def test_frozen_pacs_gives_etimedout_and_the_next_open_after_it_thaws_asks_again(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    daemon.expected_errors = ["remote pacs", "open failed", "ACSE timeout reached"]
    serve_remote(daemon, pacs, remote_series, tmp_path, timeout=3)
    folder = series_dir(daemon.mount, 3)
    assert len(list(folder.glob("*.dcm"))) == 6  # listed while the PACS answered
    assert pacs.proc is not None
    os.kill(pacs.proc.pid, signal.SIGSTOP)  # the kernel still accepts connections; nobody answers
    try:
        for _ in range(2):  # each open waits its own timeout, and then fails with ETIMEDOUT
            started = time.monotonic()
            with pytest.raises(OSError) as failure:
                (folder / "001.dcm").read_bytes()
            assert failure.value.errno == errno.ETIMEDOUT
            assert 3 <= time.monotonic() - started < 3 + 2
            started = time.monotonic()
            assert os.listdir(daemon.mount / "patients")  # the rest of the mount stays responsive
            assert time.monotonic() - started < 0.5
    finally:
        os.kill(pacs.proc.pid, signal.SIGCONT)
    started = time.monotonic()  # at once: the stuck retrieve may still be failing
    assert pydicom.dcmread(folder / "001.dcm").InstanceNumber == 1
    assert time.monotonic() - started < 3
    assert daemon.log().count("retrieving series") >= 2  # the second open did not take the first one's failure


def test_a_saved_query_in_the_old_form_works_with_one_warning(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    serve_remote(daemon, pacs, remote_series, tmp_path, refresh_minutes=0.01,  # every 0.6 s
                 listing="PatientID=REM1 StudyDate=20240101-")
    series_dir(daemon.mount, 3)
    wait_for(lambda: daemon.log().count("saved queries refreshed") >= 3, 10.0, "three refreshes")
    warnings = [line for line in daemon.log().splitlines() if "old KEYWORD=VALUE form" in line]
    assert len(warnings) == 1, warnings  # once per saved query, not per refresh
    assert "WARNING" in warnings[0] and "write it in the query language of dicomfs find, " \
        "'PatientID=REM1 and StudyDate>=20240101'" in warnings[0]


def test_least_recently_used_fetched_series_is_evicted(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    # 0.02 MB: holds either series (~16 and ~8 KB), not both.
    serve_remote(daemon, pacs, remote_series, tmp_path, extra="cache_mb = 0.02")
    first, second = series_dir(daemon.mount, 3), series_dir(daemon.mount, 4)

    def local(folder: Path) -> int:
        return int(json.loads((folder / "series.json").read_text())["Remote"]["LocalInstances"])

    assert pydicom.dcmread(first / "001.dcm").InstanceNumber == 1
    wait_for(lambda: local(first) == 6, 5.0, "the first series local")
    assert pydicom.dcmread(second / "001.dcm").InstanceNumber == 1  # the first series is now least recent
    wait_for(lambda: local(first) == 0 and local(second) == 3, 10.0, "the first series evicted")
    assert (daemon.mount / "patients").exists()
    assert pydicom.dcmread(first / "002.dcm").InstanceNumber == 2  # fetched again on demand
    wait_for(lambda: local(first) == 6 and local(second) == 0, 10.0, "the second series evicted")
    status = run_cli("status", "--data-dir", daemon.data_dir,
                     "--config", str(tmp_path / "dicomfs.toml")).stdout
    assert "cache of fetched remote data" in status and "remote pacs: 1 studies listed" in status
    assert "daemon: running" in status


def test_remote_commands_edit_the_configuration_and_query_and_pull(
    pacs: Orthanc, remote_series: list[Path], tmp_path: Path, data_dir: Path
) -> None:
    pacs.start()
    pacs.upload(remote_series)
    config = tmp_path / "config.toml"
    config.write_text("# my settings\n[mount]\npath = \"/tmp/x\"\n")
    run_cli("remote", "add", "pacs", "--aet", pacs.aet, "--host", "127.0.0.1", "--port", str(pacs.dicom_port),
            "--listing", "PatientID=REM1", "--config", config)
    assert "# my settings" in config.read_text()  # comments survive
    listed = run_cli("remote", "list", "--config", config).stdout
    assert "pacs" in listed and f"ORTHANC@127.0.0.1:{pacs.dicom_port}" in listed
    duplicate = run_cli("remote", "add", "pacs", "--aet", "X", "--host", "h", "--config", config, check=False)
    assert duplicate.returncode == 2 and "exists already" in duplicate.stderr
    assert "C-ECHO succeeded" in run_cli("remote", "echo", "pacs", "--config", config).stdout

    table = run_cli("remote", "query", "pacs", "PatientName=Rö* and StudyDate>=20240101", "--config", config)
    assert "Röntgen^Wilhelm" in table.stdout and "REM1" in table.stdout and "warning" not in table.stderr
    old = run_cli("remote", "query", "pacs", "PatientName=Rö*", "StudyDate=20240101-", "--config", config)
    assert old.stdout == table.stdout  # the old form still works, and says how to write it now
    assert "dicomfs: warning: 'PatientName=Rö* StudyDate=20240101-' is in the old KEYWORD=VALUE form, which is " \
        "deprecated: write it in the query language of dicomfs find, 'PatientName=Rö* and StudyDate>=20240101'" \
        in old.stderr
    lines = run_cli("remote", "query", "pacs", "PatientID=REM1", "--level", "study", "--json",
                    "--config", config).stdout.splitlines()
    [study] = [json.loads(line) for line in lines]
    assert study["NumberOfStudyRelatedInstances"] == "9"
    bad = run_cli("remote", "query", "pacs", "NoSuchKeyword=1", "--config", config, check=False)
    assert bad.returncode == 2 and "not a DICOM keyword" in bad.stderr

    pulled = run_cli("remote", "pull", "pacs", "--study", study["StudyInstanceUID"], "--data-dir", data_dir,
                     "--config", config)
    assert "9 instances retrieved, 0 failed" in pulled.stdout
    stored = sorted((data_dir / "store").rglob("*.dcm"))
    assert len(stored) == 9
    originals = {pydicom.dcmread(p).SOPInstanceUID: p for p in remote_series}
    for path in stored:
        assert dataset_bytes(path) == dataset_bytes(originals[pydicom.dcmread(path).SOPInstanceUID])
    status = run_cli("status", "--data-dir", data_dir, "--config", config).stdout
    assert "9 local instances" in status and "cache of fetched remote data: 0.0 MB" in status  # pulled = kept

    run_cli("remote", "remove", "pacs", "--config", config)
    assert "pacs" not in run_cli("remote", "list", "--config", config).stdout
    pacs.stop()
    down = run_cli("remote", "echo", "pacs", "--config", config, check=False)
    assert down.returncode == 2  # removed: unknown name


def test_remote_echo_reports_a_pacs_that_is_down(pacs: Orthanc, tmp_path: Path) -> None:
    pacs.start()
    config = write_config(tmp_path, pacs, timeout=2)
    pacs.stop()
    result = run_cli("remote", "echo", "pacs", "--config", config, check=False)
    assert result.returncode == 1 and "pacs" in result.stderr


def test_our_node_answers_only_for_what_is_local(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    from conftest import dcmtk

    serve_remote(daemon, pacs, remote_series, tmp_path)
    folder = series_dir(daemon.mount, 3)

    def studies_found() -> str:
        result = dcmtk("findscu", "-S", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=REM1",
                       "-k", "StudyInstanceUID", "127.0.0.1", daemon.port)
        assert result.returncode == 0, result.stderr
        return result.stderr

    assert "(Pending)" not in studies_found()  # listed from the PACS only: not offered by us
    pydicom.dcmread(folder / "001.dcm")
    assert "Find Response: 1 (Pending)" in studies_found()  # part of it is local now


def test_saved_queries_are_refreshed_on_schedule_and_on_demand(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    config = serve_remote(daemon, pacs, remote_series[:6], tmp_path, refresh_minutes=0.02)  # every 1.2 s
    patient = daemon.mount / "patients" / PATIENT
    wait_for(lambda: patient.exists() and len([p for p in patient.iterdir() if p.is_dir()]) == 1, 10.0,
             "the first remote study")
    later = dicomgen.series(tmp_path / "later", 2, rows=8, columns=8, PatientID="REM1",
                            PatientName="Röntgen^Wilhelm", StudyDate="20240301", StudyDescription="Follow-up")
    pacs.upload(later)  # a new study on the PACS: the schedule finds it
    wait_for(lambda: len([p for p in patient.iterdir() if p.is_dir()]) == 2, 15.0, "the new study")
    other = dicomgen.series(tmp_path / "other", 1, rows=8, columns=8, PatientID="REM1",
                            PatientName="Röntgen^Wilhelm", StudyDate="20240401", StudyDescription="Third")
    pacs.upload(other)
    refreshed = run_cli("remote", "refresh", "pacs", "--data-dir", daemon.data_dir, "--config", config)
    assert "1 new studies" in refreshed.stdout or "0 new studies" in refreshed.stdout  # the schedule may be first
    wait_for(lambda: len([p for p in patient.iterdir() if p.is_dir()]) == 3, 10.0, "the third study")
    old = dicomgen.series(tmp_path / "old", 1, rows=8, columns=8, PatientID="REM1", StudyDate="20231231")
    pacs.upload(old)  # outside the saved query's date range: never listed
    run_cli("remote", "refresh", "pacs", "--data-dir", daemon.data_dir, "--config", config)
    time.sleep(1.0)  # past the mount's poll interval and one scheduled refresh: still three
    assert len([p for p in patient.iterdir() if p.is_dir()]) == 3
    assert all("2023" not in p.name for p in patient.iterdir())


def test_a_series_that_came_to_the_remote_later_shows_up_once_the_listing_is_old(
    daemon: Daemon, pacs: Orthanc, remote_series: list[Path], tmp_path: Path
) -> None:
    serve_remote(daemon, pacs, remote_series[:6], tmp_path, extra="relist_minutes = 0.01")  # 0.6 s
    study = series_dir(daemon.mount, 3).parent
    assert not any(p.name.startswith("004 ") for p in study.iterdir())
    pacs.upload(remote_series[6:])  # a second series of the same study, after the first listing
    wait_for(lambda: any(p.name.startswith("004 ") for p in study.iterdir()), 10.0, "the new series in the study")
    assert sorted(p.name for p in series_dir(daemon.mount, 4).iterdir() if p.suffix == ".dcm") == [
        "001.dcm", "002.dcm", "003.dcm"]
    assert daemon.log().count("not listed again") == 0
