"""The archive through a real FUSE mount: layout, bytes, sizes, read-only, live updates."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, copy_testdata, run_cli, wait_for
from PIL import Image

PATIENT = "DOE^JOHN [12345]"
STUDY = "2024-03-01 CT Thorax [ACC123]"
SERIES = "003 CT Lung 1.0"


@pytest.fixture
def ct_series(tmp_path: Path) -> list[Path]:
    return dicomgen.series(tmp_path / "in", 5)


@pytest.fixture
def mounted(daemon: Daemon, data_dir: Path, ct_series: list[Path], tmp_path: Path) -> Daemon:
    extra = copy_testdata(["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"], tmp_path / "extra")
    run_cli("import", "--data-dir", data_dir, ct_series[0].parent, *extra)
    return daemon.start()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_patients_layout_holds_the_received_bytes(mounted: Daemon, ct_series: list[Path]) -> None:
    series_dir = mounted.mount / "patients" / PATIENT / STUDY / SERIES
    assert sorted(os.listdir(series_dir)) == sorted(
        [f"{n:03d}.{ext}" for n in range(1, 6) for ext in ("dcm", "json", "jpg")]
        + ["series.json", "derived", "volume.nii", "volume.json"]
    )
    for n, source in enumerate(ct_series, start=1):
        assert (series_dir / f"{n:03d}.dcm").read_bytes() == source.read_bytes()
    assert set(os.listdir(mounted.mount)) == {"patients", "studies", "dates", "projects", "query", "orphans"}
    assert sorted(os.listdir(series_dir.parent)) == [SERIES, "derived", "study.json"]
    assert "patient.json" in os.listdir(series_dir.parent.parent)


def test_uid_and_date_layouts_show_the_same_instances(mounted: Daemon, ct_series: list[Path]) -> None:
    ds = pydicom.dcmread(ct_series[2])
    by_uid = mounted.mount / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert by_uid.read_bytes() == ct_series[2].read_bytes()
    day = mounted.mount / "dates" / "2024" / "2024-03-01"
    assert os.listdir(day) == ["0815 DOE^JOHN CT Thorax [ACC123]"]
    by_date = day / "0815 DOE^JOHN CT Thorax [ACC123]" / SERIES / "003.dcm"
    assert by_date.read_bytes() == ct_series[2].read_bytes()
    # One file, one inode, whichever layout it is reached through.
    assert by_uid.stat().st_ino == by_date.stat().st_ino


def test_every_file_reads_back_exactly_its_listed_size(mounted: Daemon) -> None:
    files = all_files(mounted.mount)
    assert len(files) > 40
    for path in files:
        listed = path.stat().st_size
        assert len(path.read_bytes()) == listed, path


def test_views_are_valid_json_and_jpeg(mounted: Daemon, ct_series: list[Path]) -> None:
    series_dir = mounted.mount / "patients" / PATIENT / STUDY / SERIES
    model = json.loads((series_dir / "002.json").read_text())
    assert model["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}
    assert model["00200013"]["Value"] == [2]
    assert "7FE00010" not in model  # no bulk pixel data in the metadata view
    assert pydicom.Dataset.from_json(model).SOPInstanceUID == pydicom.dcmread(ct_series[1]).SOPInstanceUID
    with Image.open(series_dir / "002.jpg") as image:
        assert image.format == "JPEG" and image.size == (16, 16)
        image.load()
    summary = json.loads((series_dir / "series.json").read_text())
    assert summary["NumberOfSeriesRelatedInstances"] == 5
    assert [c["name"] for c in summary["Instances"]] == [f"{n:03d}.dcm" for n in range(1, 6)]
    study = json.loads((series_dir.parent / "study.json").read_text())
    assert study["ModalitiesInStudy"] == ["CT"] and study["NumberOfStudyRelatedInstances"] == 5
    patient = json.loads((series_dir.parent.parent / "patient.json").read_text())
    assert patient["PatientID"] == "12345" and patient["NumberOfPatientRelatedStudies"] == 1
    assert patient["Studies"][0]["name"] == STUDY


def test_non_image_objects_get_no_jpeg(mounted: Daemon) -> None:
    plans = [p for p in all_files(mounted.mount / "patients") if "RTPLAN" in str(p)]
    assert any(p.suffix == ".dcm" for p in plans)
    assert any(p.name == "nonum.json" for p in plans)  # RT Plans carry no Instance Number
    assert not any(p.suffix == ".jpg" for p in plans)


@pytest.mark.parametrize(
    "attempt",
    [
        lambda d: os.open(d / "001.dcm", os.O_RDWR),
        lambda d: os.open(d / "new.dcm", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda d: os.mkdir(d / "sub"),
        lambda d: os.unlink(d / "001.dcm"),
        lambda d: os.rename(d / "001.dcm", d / "x.dcm"),
        lambda d: os.truncate(d / "001.dcm", 0),
        lambda d: os.chmod(d / "001.dcm", 0o777),
    ],
    ids=["open-rw", "create", "mkdir", "unlink", "rename", "truncate", "chmod"],
)
def test_writes_are_refused_with_erofs(mounted: Daemon, attempt) -> None:
    series_dir = mounted.mount / "patients" / PATIENT / STUDY / SERIES
    with pytest.raises(OSError) as err:
        attempt(series_dir)
    assert err.value.errno == errno.EROFS
    assert len(os.listdir(series_dir)) == 19  # 5 × 3 views, series.json, volume.nii and .json, derived/


def test_instances_imported_while_mounted_appear_within_a_second(
    mounted: Daemon, data_dir: Path, tmp_path: Path
) -> None:
    patients = mounted.mount / "patients"
    os.listdir(patients)  # the kernel and the daemon now hold a listing that must be refreshed
    series_dir = patients / PATIENT / STUDY / SERIES
    before = series_dir.stat().st_mtime
    newcomer = dicomgen.make_dataset(PatientName="ROE^JANE", PatientID="777")
    dicomgen.write(tmp_path / "late" / "a.dcm", newcomer)
    extra = dicomgen.make_dataset(
        StudyInstanceUID=pydicom.dcmread(next(series_dir.glob("001.dcm"))).StudyInstanceUID,
        SeriesInstanceUID=pydicom.dcmread(next(series_dir.glob("001.dcm"))).SeriesInstanceUID,
        InstanceNumber=6,
    )
    dicomgen.write(tmp_path / "late" / "b.dcm", extra)
    run_cli("import", "--data-dir", data_dir, tmp_path / "late")
    imported = time.monotonic()
    wait_for(lambda: "ROE^JANE [777]" in os.listdir(patients), 1.0, "the new patient")
    wait_for(lambda: "006.dcm" in os.listdir(series_dir), 1.0, "the new instance")
    assert time.monotonic() - imported < 1.5
    assert (series_dir / "006.dcm").stat().st_size == (tmp_path / "late" / "b.dcm").stat().st_size
    wait_for(lambda: series_dir.stat().st_mtime > before, 2.0, "the folder's new mtime")
    summary = json.loads((series_dir / "series.json").read_text())
    assert summary["NumberOfSeriesRelatedInstances"] == 6


def test_restart_after_kill_recovers_the_stale_mount(daemon: Daemon, data_dir: Path, ct_series: list[Path]) -> None:
    run_cli("import", "--data-dir", data_dir, ct_series[0].parent)
    daemon.start()
    inode = (daemon.mount / "patients" / PATIENT).stat().st_ino
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    daemon.proc = None
    with pytest.raises(OSError) as err:
        os.listdir(daemon.mount)
    assert err.value.errno == errno.ENOTCONN
    daemon.expected_errors.append("stale mount")
    daemon.start()
    assert (daemon.mount / "patients" / PATIENT).stat().st_ino == inode  # stable across remounts
    assert len(os.listdir(daemon.mount / "patients" / PATIENT / STUDY / SERIES)) == 19


def test_restart_after_kill_with_listings_cached(daemon: Daemon, data_dir: Path,
                                                        ct_series: list[Path]) -> None:
    """Recovery asks the mount to list itself (which always reaches the daemon), not stat, which a
    kernel may answer from attributes it still holds."""
    run_cli("import", "--data-dir", data_dir, ct_series[0].parent)
    daemon.start()
    os.listdir(daemon.mount / "patients")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    daemon.proc = None
    daemon.expected_errors.append("stale mount")
    daemon.start()
    assert PATIENT in os.listdir(daemon.mount / "patients")


def test_a_mount_point_that_is_a_file_is_one_clear_line(daemon: Daemon, data_dir: Path) -> None:
    daemon.mount.parent.mkdir(parents=True, exist_ok=True)
    daemon.mount.write_text("not a folder")
    proc = subprocess.run(
        [*__import__("conftest").DICOMFS, "serve", "--data-dir", str(data_dir), "--mount", str(daemon.mount)],
        capture_output=True, text=True, timeout=30, env=__import__("conftest").cli_env(),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"mount point {daemon.mount} is not a folder: give --mount a folder (it is created if missing)")
    assert "Traceback" not in proc.stderr


def test_sigterm_unmounts_cleanly(daemon: Daemon, data_dir: Path, ct_series: list[Path]) -> None:
    run_cli("import", "--data-dir", data_dir, ct_series[0].parent)
    daemon.start()
    assert daemon.stop() == 0
    assert not os.path.ismount(daemon.mount)
    assert "unmounted" in daemon.log()


def test_refuses_a_mount_point_that_is_not_empty(daemon: Daemon, data_dir: Path) -> None:
    daemon.mount.mkdir(parents=True)
    (daemon.mount / "precious.txt").write_text("keep me")
    proc = subprocess.run(
        [*__import__("conftest").DICOMFS, "serve", "--data-dir", str(data_dir), "--mount", str(daemon.mount)],
        capture_output=True, text=True, timeout=30, env=__import__("conftest").cli_env(),
    )
    assert proc.returncode == 2
    assert "not empty" in proc.stderr
    assert (daemon.mount / "precious.txt").read_text() == "keep me"


def test_listing_a_large_series_renders_nothing(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "big", 1000, rows=8, columns=8)
    run_cli("import", "--data-dir", data_dir, tmp_path / "big")
    daemon.start("--log-level", "DEBUG")
    series_dir = daemon.mount / "patients" / PATIENT / STUDY / SERIES
    listing = subprocess.run(["ls", "-l", series_dir], capture_output=True, text=True, check=True).stdout
    lines = [line for line in listing.splitlines() if line.startswith("-")]
    assert len(lines) == 3003  # 1000 x 3 views, series.json, volume.nii, volume.json
    jpg_sizes = {int(line.split()[4]) for line in lines if line.endswith(".jpg")}
    assert len(jpg_sizes) == 1 and jpg_sizes.pop() > 0  # known from the geometry alone
    for entry in os.scandir(series_dir):
        entry.stat()
    assert "rendering" not in daemon.log()
    data = (series_dir / "500.jpg").read_bytes()  # opening is what renders
    assert data[:2] == b"\xff\xd8" and len(data) == (series_dir / "500.jpg").stat().st_size
    assert daemon.log().count("rendering jpg view") == 1


def test_sigint_unmounts_cleanly(daemon: Daemon, data_dir: Path, ct_series: list[Path]) -> None:
    run_cli("import", "--data-dir", data_dir, ct_series[0].parent)
    daemon.start()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(timeout=15) == 0
    assert not os.path.ismount(daemon.mount)


def test_names_in_every_character_set_reach_the_tree(daemon: Daemon, data_dir: Path) -> None:
    from pydicom.data import get_charset_files

    from dicomfs.mount.naming import person_name

    result = run_cli("import", "--data-dir", data_dir, *get_charset_files("chr*.dcm"), check=False)
    assert "rejected 2" in result.stdout  # the two chrSQEncoding samples carry no UIDs
    daemon.start()
    shown = {name.rsplit(" [", 1)[0] for name in os.listdir(daemon.mount / "patients")}
    expected = {"Buc^Jérôme", "Äneas^Rüdiger", "Διονυσιος", "Люкceмбypг", "שרון^דבורה", "قباني^لنزار",
                "Yamada^Tarou", "ﾔﾏﾀﾞ^ﾀﾛｳ", "Hong^Gildong", "Wang^XiaoDong", "やまだ^たろう", "김희중"}
    assert expected <= shown, expected - shown
    for patient in (daemon.mount / "patients").iterdir():
        summary = json.loads((patient / "patient.json").read_text(encoding="utf-8"))
        assert patient.name.startswith(person_name(summary["PatientName"]))
