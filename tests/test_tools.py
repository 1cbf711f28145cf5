"""The tools people point at a series folder work on the mount as on a disk."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, run_cli
from PIL import Image

SERIES = Path("patients/DOE^JOHN [12345]/2024-03-01 CT Thorax [ACC123]/003 CT Lung 1.0")


@pytest.fixture
def mounted(daemon: Daemon, data_dir: Path, tmp_path: Path) -> Daemon:
    dicomgen.series(tmp_path / "in", 8, rows=32, columns=32)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    return daemon.start()


def sh(*cmd: str | os.PathLike[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True, timeout=120, **kw)


def test_cp_r_copies_complete_files(mounted: Daemon, tmp_path: Path) -> None:
    sh("cp", "-r", mounted.mount / SERIES, tmp_path / "copy")
    cmp = filecmp.dircmp(mounted.mount / SERIES, tmp_path / "copy")
    assert len(cmp.common_files) == 8 * 3 + 3 and not cmp.left_only and not cmp.right_only
    _, mismatch, errors = filecmp.cmpfiles(mounted.mount / SERIES, tmp_path / "copy", cmp.common_files, shallow=False)
    assert mismatch == [] and errors == []


def test_shutil_copyfile_uses_sendfile_and_gets_every_byte(mounted: Daemon, tmp_path: Path) -> None:
    for name in ("001.dcm", "001.json", "001.jpg", "series.json"):
        source = mounted.mount / SERIES / name
        shutil.copyfile(source, tmp_path / name)
        assert (tmp_path / name).read_bytes() == source.read_bytes()
        assert (tmp_path / name).stat().st_size == source.stat().st_size > 0


def test_tar_archives_the_series(mounted: Daemon, tmp_path: Path) -> None:
    sh("tar", "-cf", tmp_path / "s.tar", "-C", mounted.mount / SERIES.parent, SERIES.name)
    with tarfile.open(tmp_path / "s.tar") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        assert len(members) == 27  # 8 x 3 views, series.json, volume.nii, volume.json
        for name, member in members.items():
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert data == (mounted.mount / SERIES.parent / name).read_bytes()


def test_find_du_and_grep(mounted: Daemon) -> None:
    found = sh("find", mounted.mount, "-type", "f", "-name", "*.dcm").stdout.splitlines()
    assert len(found) == 8 * 3  # three layouts
    du = int(sh("du", "-s", "--apparent-size", "-B1", mounted.mount / SERIES).stdout.split()[0])
    assert du == sum(p.stat().st_size for p in (mounted.mount / SERIES).iterdir())
    grep = sh("grep", "-rl", "DOE^JOHN", mounted.mount / SERIES).stdout.splitlines()
    assert len(grep) == 8 * 2  # every .dcm and .json; series.json does not name the patient
    assert all(not line.endswith(".jpg") for line in grep)


def test_jq_reads_json_views(mounted: Daemon) -> None:
    out = sh("jq", "-r", '."00100010".Value[0].Alphabetic', mounted.mount / SERIES / "004.json").stdout
    assert out.strip() == "DOE^JOHN"
    out = sh("jq", "-c", "[.Instances[].name]", mounted.mount / SERIES / "series.json").stdout
    assert json.loads(out) == [f"{n:03d}.dcm" for n in range(1, 9)]
    out = sh("jq", "-r", ".StudyDescription", mounted.mount / SERIES.parent / "study.json").stdout
    assert out.strip() == "CT Thorax"


def test_dcm2niix_converts_the_series_folder(mounted: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "nifti"
    out.mkdir()
    sh("dcm2niix", "-z", "n", "-f", "vol", "-o", out, mounted.mount / SERIES)
    nifti = out / "vol.nii"
    assert nifti.exists()
    header = nifti.read_bytes()[:348]
    dims = [int.from_bytes(header[40 + 2 * i:42 + 2 * i], "little") for i in range(4)]
    assert dims == [3, 32, 32, 8]


def test_pydicom_and_pillow_open_by_path(mounted: Daemon) -> None:
    ds = pydicom.dcmread(mounted.mount / SERIES / "005.dcm")
    assert ds.InstanceNumber == 5 and ds.pixel_array.shape == (32, 32)
    with Image.open(mounted.mount / SERIES / "005.jpg") as image:
        image.load()
        assert image.size == (32, 32)


def test_mmap_of_generated_views(mounted: Daemon) -> None:
    import mmap

    for name in ("006.jpg", "006.json", "006.dcm"):
        path = mounted.mount / SERIES / name
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert m[:] == path.read_bytes()


def test_extended_attributes_are_not_supported(mounted: Daemon) -> None:
    import errno

    path = mounted.mount / SERIES / "001.dcm"
    for _ in range(2):  # the second answer comes from the kernel, which stopped asking us
        with pytest.raises(OSError) as err:
            os.getxattr(path, "user.comment")
        assert err.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as err:
        os.listxattr(path)
    assert err.value.errno == errno.EOPNOTSUPP
    assert subprocess.run(["ls", "-l", path], capture_output=True, check=True).returncode == 0


def test_cp_tar_and_grep_walk_every_study_of_the_test_corpus(
        daemon: Daemon, data_dir: Path, pydicom_files: Path, tmp_path: Path) -> None:
    """pydicom's test files include objects no decoder reads: they get no .jpg, and nothing
    listed fails on read, so whole-tree tools finish without an error."""
    run_cli("import", "--data-dir", data_dir, pydicom_files, check=False)  # some are rejected on purpose
    mounted = daemon.start()
    studies = mounted.mount / "studies"
    sh("cp", "-r", studies, tmp_path / "copy")
    listed = sorted(p.relative_to(studies) for p in studies.rglob("*") if p.is_file())
    copied = sorted(p.relative_to(tmp_path / "copy") for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert listed == copied and len(listed) > 300
    assert any(p.suffix == ".jpg" for p in listed)
    frames = {p.parent for p in listed if p.parent.suffix == ".frames"}
    assert frames and all(len(list((studies / f).iterdir())) > 1 for f in frames)
    sh("tar", "-cf", tmp_path / "all.tar", "-C", mounted.mount, "studies")
    with tarfile.open(tmp_path / "all.tar") as tar:
        assert len([m for m in tar.getmembers() if m.isfile()]) == len(listed)
    grep = subprocess.run(["grep", "-rc", "DICM", studies], capture_output=True, text=True, timeout=300)
    assert grep.returncode in (0, 1) and grep.stderr == ""  # 1: some files have no match, none failed
    for jpg in (p for p in listed if p.suffix == ".jpg"):
        with Image.open(studies / jpg) as image:
            image.load()
    unrendered = [c for s in studies.glob("*/*/series.json") for c in json.loads(s.read_text())["Instances"]
                  if c["jpg"] is None]
    assert any("cannot be decoded" in c["no_jpg_reason"] for c in unrendered)
