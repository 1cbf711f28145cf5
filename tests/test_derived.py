"""derived/ folders on a real mount: write, read, replace, rename, delete, concurrent writers, names."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, run_cli, wait_for

STUDY = Path("patients/DOE^JOHN [12345]/2024-03-01 CT Thorax [ACC123]")
SERIES = STUDY / "003 CT Lung 1.0"


@pytest.fixture
def mounted(daemon: Daemon, data_dir: Path, tmp_path: Path) -> Daemon:
    dicomgen.series(tmp_path / "in", 3)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    daemon.expected_errors = ["is not a portable file name", "no derived file"]
    return daemon.start()


def test_files_written_into_derived_are_kept_with_their_origin(mounted: Daemon, tmp_path: Path) -> None:
    derived = mounted.mount / SERIES / "derived"
    assert derived.is_dir() and os.listdir(derived) == []
    (derived / "stats.csv").write_text("region,mean\nstriatum,1.8\n")
    assert (derived / "stats.csv").read_text() == "region,mean\nstriatum,1.8\n"  # readable at once
    assert os.stat(derived / "stats.csv").st_size == 25
    shutil.copy(__file__, derived / "copied.py")  # cp-like: create, write, close
    assert (derived / "copied.py").read_bytes() == Path(__file__).read_bytes()
    with open(derived / "stats.csv", "a") as f:  # append keeps what was there
        f.write("cortex,1.2\n")
    assert (derived / "stats.csv").read_text().endswith("striatum,1.8\ncortex,1.2\n")
    (derived / "stats.csv").write_text("replaced\n")  # O_TRUNC
    assert (derived / "stats.csv").read_text() == "replaced\n"
    os.truncate(derived / "stats.csv", 3)
    assert (derived / "stats.csv").read_text() == "rep"
    os.rename(derived / "copied.py", derived / "model.py")
    assert sorted(os.listdir(derived)) == ["model.py", "stats.csv"]
    os.unlink(derived / "model.py")
    assert os.listdir(derived) == ["stats.csv"]
    # The rest of the tree stays read-only, and derived/ holds no folders.
    for attempt in (lambda: (mounted.mount / SERIES / "x.txt").write_text("x"), lambda: os.mkdir(derived / "sub")):
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno == errno.EROFS
    # The same file is seen from the study in every layout, and survives a restart.
    study_uid_dir = next((mounted.mount / "studies").iterdir())
    series_uid_dir = next(p for p in study_uid_dir.iterdir() if p.is_dir() and p.name != "derived")
    assert (series_uid_dir / "derived" / "stats.csv").read_text() == "rep"
    mounted.stop()
    mounted.start()
    assert (mounted.mount / SERIES / "derived" / "stats.csv").read_text() == "rep"


def test_study_derived_folder_and_a_tool_writing_there(mounted: Daemon, tmp_path: Path) -> None:
    derived = mounted.mount / STUDY / "derived"
    subprocess.run(["dcm2niix", "-z", "n", "-f", "vol", "-o", str(derived), str(mounted.mount / SERIES)],
                   check=True, capture_output=True, timeout=120)
    names = sorted(os.listdir(derived))
    assert "vol.nii" in names and "vol.json" in names
    header = (derived / "vol.nii").read_bytes()[:348]
    assert [int.from_bytes(header[40 + 2 * i:42 + 2 * i], "little") for i in range(4)] == [3, 16, 16, 3]


def test_names_are_validated(mounted: Daemon) -> None:
    derived = mounted.mount / SERIES / "derived"
    for bad in ("tab\there.txt", "trailing.", "CON", "x" * 256):
        with pytest.raises(OSError) as err:
            (derived / bad).write_text("x")
        assert err.value.errno in (errno.EINVAL, errno.ENAMETOOLONG), bad
    assert os.listdir(derived) == []


def test_concurrent_writers_never_interleave(mounted: Daemon) -> None:
    target = mounted.mount / SERIES / "derived" / "map.bin"
    payloads = [bytes([i]) * 300_000 for i in range(8)]

    def write(data: bytes) -> None:
        with open(target, "wb") as f:
            for start in range(0, len(data), 65536):
                f.write(data[start:start + 65536])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(write, payloads))
    assert target.read_bytes() in payloads  # one whole version, whichever closed last
    two = subprocess.run(["sh", "-c", f"printf a > '{target}' & printf b > '{target}' & wait"], timeout=30)
    assert two.returncode == 0 and target.read_bytes() in (b"a", b"b")


@pytest.mark.parametrize("derived_first", [False, True], ids=["images-first", "derived-first"])
def test_derived_dicom_objects_appear_with_the_series_they_reference(
    daemon: Daemon, data_dir: Path, tmp_path: Path, derived_first: bool
) -> None:
    """Linked whichever arrives first; when the derived objects come first, the link is made
    as the images arrive, while the mount is up."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ct = dicomgen.series(tmp_path / "ct", 2)
    first = pydicom.dcmread(ct[0])
    seg = dicomgen.segmentation_of(first, SeriesDescription="Lesions")
    rt_series = Dataset()
    rt_series.SeriesInstanceUID = first.SeriesInstanceUID
    rt_study = Dataset()
    rt_study.RTReferencedSeriesSequence = Sequence([rt_series])
    frame = Dataset()
    frame.RTReferencedStudySequence = Sequence([rt_study])
    rtstruct = dicomgen.make_dataset(rows=0, columns=0, StudyInstanceUID=first.StudyInstanceUID, Modality="RTSTRUCT",
                                     SOPClassUID="1.2.840.10008.5.1.4.1.1.481.3", SeriesNumber=91,
                                     ReferencedFrameOfReferenceSequence=Sequence([frame]))
    image = Dataset()
    image.ReferencedSOPClassUID = first.SOPClassUID
    image.ReferencedSOPInstanceUID = first.SOPInstanceUID
    capture = dicomgen.make_dataset(StudyInstanceUID=first.StudyInstanceUID, Modality="OT", SeriesNumber=92,
                                    SOPClassUID="1.2.840.10008.5.1.4.1.1.7", SourceImageSequence=Sequence([image]))
    for name, ds in (("seg.dcm", seg), ("rt.dcm", rtstruct), ("sc.dcm", capture)):
        dicomgen.write(tmp_path / "derived" / name, ds)
    folder = daemon.mount / SERIES / "derived"
    expected = sorted([f"SEG_{seg.SOPInstanceUID}.dcm", f"RTSTRUCT_{rtstruct.SOPInstanceUID}.dcm",
                       f"OT_{capture.SOPInstanceUID}.dcm"])
    if derived_first:
        daemon.start()
        run_cli("import", "--data-dir", data_dir, tmp_path / "derived")
        wait_for(lambda: (daemon.mount / STUDY).is_dir(), 5, "the derived objects' study in the mount")
        assert not folder.parent.exists()  # the referenced series is not there yet
        run_cli("import", "--data-dir", data_dir, tmp_path / "ct")
        wait_for(lambda: folder.is_dir() and sorted(os.listdir(folder)) == expected, 5, "the late links")
    else:
        run_cli("import", "--data-dir", data_dir, tmp_path / "ct")
        run_cli("import", "--data-dir", data_dir, tmp_path / "derived")  # after the images they reference
        daemon.start()
    assert sorted(os.listdir(folder)) == expected
    seg_series = next(p for p in (daemon.mount / STUDY).iterdir() if p.name.startswith("090 SEG"))
    assert (folder / f"SEG_{seg.SOPInstanceUID}.dcm").read_bytes() == (seg_series / "001.dcm").read_bytes()
    summary = json.loads((daemon.mount / SERIES / "series.json").read_text())
    assert {d["SOPInstanceUID"] for d in summary["Derived"]} == {seg.SOPInstanceUID, rtstruct.SOPInstanceUID,
                                                                  capture.SOPInstanceUID}
    assert all(d["kind"] == "dicom" for d in summary["Derived"])
    with pytest.raises(OSError) as err:
        (folder / f"SEG_{seg.SOPInstanceUID}.dcm").write_bytes(b"x")
    assert err.value.errno == errno.EROFS
    os.unlink(folder / f"OT_{capture.SOPInstanceUID}.dcm")  # removes the link only
    assert len(os.listdir(folder)) == 2
    assert any(p.name.startswith("092 OT") for p in (daemon.mount / STUDY).iterdir())
