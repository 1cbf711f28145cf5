"""Hostile and broken metadata: imported, named safely, served, and the daemon stays up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dicomgen
import pytest
from conftest import Daemon, run_cli
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

REMOVE = dicomgen.REMOVE


def _undecodable():
    ds = dicomgen.make_dataset(PatientID="UNDEC", SpecificCharacterSet="ISO_IR 192")
    ds.add_new(0x00100010, "PN", b"Bad\xff\xfe^Bytes")
    ds.add_new(0x00081030, "LO", b"Desc\xc3\x28ription")
    return ds


def _invalid_numbers():
    ds = dicomgen.make_dataset(PatientID="NUM2")
    # Raw elements: pydicom refuses to create such values, but modalities send them.
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 4, b"abc ", 0, False, True)
    ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"x1", 0, False, True)
    return ds


CASES = {
    "no_name": lambda: dicomgen.make_dataset(PatientName=REMOVE, PatientID="P-NONAME"),
    "empty_name": lambda: dicomgen.make_dataset(PatientName="", PatientID="P-EMPTY"),
    "traversal": lambda: dicomgen.make_dataset(PatientName="../../etc/passwd", PatientID="../.."),
    "control": lambda: dicomgen.make_dataset(PatientName="A\x07B\x1bC", PatientID="CTRL"),
    "dots": lambda: dicomgen.make_dataset(PatientName="..", PatientID="", PatientBirthDate="19990101"),
    "single_dot": lambda: dicomgen.make_dataset(PatientName=".", PatientID=""),
    "long_name": lambda: dicomgen.make_dataset(PatientName="Ä" * 3000, PatientID="LONG"),
    "reserved": lambda: dicomgen.make_dataset(PatientName="CON", PatientID=""),
    "no_date": lambda: dicomgen.make_dataset(PatientID="DATES", StudyDate=REMOVE, StudyTime=REMOVE),
    "bad_date": lambda: dicomgen.make_dataset(PatientID="DATES", StudyDate="20241345"),
    "garbage_date": lambda: dicomgen.make_dataset(PatientID="DATES", StudyDate="yesterday"),
    "long_description": lambda: dicomgen.make_dataset(
        PatientID="DESC", StudyDescription="x/y\\z\n" * 3000, SeriesDescription="s" * 5000
    ),
    "no_numbers": lambda: dicomgen.make_dataset(
        PatientID="NUM", SeriesNumber=REMOVE, InstanceNumber=REMOVE, Modality=REMOVE
    ),
    "bad_numbers": lambda: _invalid_numbers(),
    "undecodable": _undecodable,
    "unknown_charset": lambda: dicomgen.make_dataset(
        PatientName="Müller", PatientID="CS", SpecificCharacterSet="ISO_IR 999"
    ),
    "letters_in_uids": lambda: dicomgen.make_dataset(
        PatientID="UIDS", StudyInstanceUID="1.2.abc/../x", SeriesInstanceUID="9" * 80
    ),
}


@pytest.fixture
def mounted(daemon: Daemon, data_dir: Path, tmp_path: Path) -> Daemon:
    for name, make in CASES.items():
        dicomgen.write(tmp_path / "in" / f"{name}.dcm", make())
    result = run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    assert f"imported {len(CASES)}" in result.stdout, result.stdout + result.stderr
    return daemon.start()


def test_every_name_is_safe_and_every_file_readable(mounted: Daemon) -> None:
    count = 0
    for root, dirs, files in os.walk(mounted.mount):
        for name in dirs + files:
            raw = name.encode("utf-8", "surrogateescape")
            assert len(raw) <= 255 and name not in (".", "..")
            assert not any(c in name for c in '/\\\0:*?"<>|') and name == name.rstrip(". ")
            assert all(ord(c) >= 32 for c in name)
            raw.decode("utf-8")  # valid UTF-8
        for name in files:
            path = Path(root, name)
            assert len(path.read_bytes()) == path.stat().st_size
            count += 1
    assert count > len(CASES) * 3 * 2


def test_expected_names(mounted: Daemon) -> None:
    patients = set(os.listdir(mounted.mount / "patients"))
    assert {"(no name) [P-NONAME]", "(no name) [P-EMPTY]", "___.._etc_passwd [.._..]", "A_B_C [CTRL]",
            "_CON", "Müller [CS]"} <= patients
    # '..' and '.' as names, without IDs: both fall back, and the second gets a suffix.
    assert {"(no name)", "(no name) (2)"} <= patients
    long_name = next(p for p in patients if p.startswith("ÄÄ"))
    assert long_name.endswith(" [LONG]") and len(long_name.encode()) <= 255
    undecodable = next(p for p in patients if p.endswith("[UNDEC]"))
    assert undecodable.startswith("Bad")
    studies = sorted(os.listdir(mounted.mount / "patients" / "DOE^JOHN [DATES]"))
    assert studies == ["(no date) CT Thorax [ACC123]", "(no date) CT Thorax [ACC123] (2)",
                       "(no date) CT Thorax [ACC123] (3)", "patient.json"]
    assert len(os.listdir(mounted.mount / "dates" / "unknown")) == 3


def test_missing_numbers_and_modality(mounted: Daemon) -> None:
    study = mounted.mount / "patients" / "DOE^JOHN [NUM]" / "2024-03-01 CT Thorax [ACC123]"
    assert sorted(os.listdir(study)) == ["Lung 1.0", "derived", "study.json"]  # no number, no modality
    files = sorted(os.listdir(study / "Lung 1.0"))
    assert files == ["derived", "nonum.dcm", "nonum.jpg", "nonum.json", "series.json"]


def test_invalid_uids_still_reach_a_safe_path(mounted: Daemon) -> None:
    by_uid = os.listdir(mounted.mount / "studies")
    assert "1.2.abc_.._x" in by_uid
    series = os.listdir(mounted.mount / "studies" / "1.2.abc_.._x")
    assert "9" * 80 in series


def test_undecodable_text_is_served_with_replacement_characters(mounted: Daemon) -> None:
    patient = next(p for p in (mounted.mount / "patients").iterdir() if p.name.endswith("[UNDEC]"))
    summary = json.loads((patient / "patient.json").read_text())
    assert summary["PatientName"].startswith("Bad")
    instance = next(patient.rglob("001.json"))
    model = json.loads(instance.read_text())
    assert model["00100010"]["Value"][0]["Alphabetic"].startswith("Bad")


def _sop_uid(dcm: Path) -> str:
    return json.loads(dcm.with_suffix(".json").read_text())["00080018"]["Value"][0]


def test_duplicate_instance_numbers_get_stable_suffixes(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for i, number in enumerate([1, 1, 2, 1]):
        ds = dicomgen.make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=number)
        dicomgen.write(tmp_path / "in" / f"{i}.dcm", ds)
        run_cli("import", "--data-dir", data_dir, tmp_path / "in" / f"{i}.dcm")  # arrival order
    daemon.start()
    folder = daemon.mount / "patients/DOE^JOHN [12345]/2024-03-01 CT Thorax [ACC123]/003 CT Lung 1.0"
    stems = sorted(p.stem for p in folder.glob("*.dcm"))
    assert stems == ["001", "001_2", "001_3", "002"]
    sop_of = {p.stem: _sop_uid(p) for p in folder.glob("*.dcm")}
    daemon.stop()
    daemon.start()
    again = {p.stem: _sop_uid(p) for p in folder.glob("*.dcm")}
    assert again == sop_of
