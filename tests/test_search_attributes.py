"""What research users filter on: acquisition and geometry attributes, from real imported files
through the query language and `dicomfs find`, and the upgrade that fills them for older rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from conftest import run_cli
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, PositronEmissionTomographyImageStorage, generate_uid
from schema_undo import undo_schema_v7

from dicomfs.archive import open_archive
from dicomfs.index.query_language import QuerySyntaxError, compile_query, known_keywords, run
from dicomfs.index.schema import SCHEMA_VERSION, migrate


def _series(src: Path, name: str, count: int, **attrs: Any) -> str:
    """``count`` instances of one series (one study per patient name); returns the series UID."""
    series_uid = generate_uid()
    study_uid = attrs.pop("StudyInstanceUID")
    for n in range(1, count + 1):
        ds = dicomgen.make_dataset(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, InstanceNumber=n,
                                   ImagePositionPatient=[0, 0, float(n)], **attrs)
        dicomgen.write(src / f"{series_uid}-{n}.dcm", ds)
    return series_uid


def _echoes(src: Path, study: str) -> str:
    """A multi-echo series: two slices at each of three echo times."""
    series_uid = generate_uid()
    for n, echo in enumerate((5.0, 5.0, 10.0, 10.0, 15.0, 15.0), 1):
        ds = dicomgen.make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series_uid, InstanceNumber=n,
                                   ImagePositionPatient=[0, 0, float(n % 2)], PatientName="Ödegård^Åsa",
                                   PatientID="P2", Modality="MR", SOPClassUID=MRImageStorage, SeriesNumber=3,
                                   SeriesDescription="me_gre", EchoTime=echo, EchoNumbers=(n + 1) // 2,
                                   PixelSpacing=[0.9, 0.9], SliceThickness=2.0, RepetitionTime=40,
                                   MagneticFieldStrength=3, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
        dicomgen.write(src / f"{series_uid}-{n}.dcm", ds)
    return series_uid


def _pet_information() -> list[Dataset]:
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    return [item]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CT study (thin and thick reconstructions), an MR study (T1, multi-echo T2), a PET study."""
    root = tmp_path_factory.mktemp("search")
    src = root / "src"
    ct, mr, pet = generate_uid(), generate_uid(), generate_uid()
    uids = {
        "ct_thin": _series(src, "ct", 2, StudyInstanceUID=ct, PatientName="CT^PATIENT", PatientID="P1",
                           Modality="CT", SeriesNumber=1, SliceThickness=0.625, PixelSpacing=[0.5, 0.5],
                           KVP=120, ConvolutionKernel=["FC07", "AIDR"], ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                           Manufacturer="TOSHIBA", ManufacturerModelName="Aquilion ONE",
                           ContrastBolusAgent="Omnipaque", AcquisitionDate="20240301"),
        "ct_thick": _series(src, "ct", 2, StudyInstanceUID=ct, PatientName="CT^PATIENT", PatientID="P1",
                            Modality="CT", SeriesNumber=2, SliceThickness=5.0, PixelSpacing=[0.78125, 0.78125],
                            KVP=100, ConvolutionKernel="FC18", ImageType=["DERIVED", "SECONDARY", "MPR"],
                            Manufacturer="TOSHIBA", ManufacturerModelName="Aquilion ONE"),
        "t1": _series(src, "mr", 2, StudyInstanceUID=mr, PatientName="Ödegård^Åsa", PatientID="P2", Modality="MR",
                      SOPClassUID=MRImageStorage, SeriesNumber=1, SeriesDescription="t1_mprage_sag",
                      SliceThickness=1.0, PixelSpacing=[1.0, 1.0], EchoTime=2.98, RepetitionTime=2300,
                      InversionTime=900, FlipAngle=9, MagneticFieldStrength=3, SequenceName="*tfl3d1_16ns",
                      ScanningSequence=["GR", "IR"], SequenceVariant=["SK", "SP", "MP"], MRAcquisitionType="3D",
                      Manufacturer="SIEMENS", ManufacturerModelName="Prisma", ProtocolName="t1_mprage_sag",
                      BodyPartExamined="BRAIN"),
        "echoes": _echoes(src, mr),
        "t2": _series(src, "mr", 1, StudyInstanceUID=mr, PatientName="Ödegård^Åsa", PatientID="P2", Modality="MR",
                      SOPClassUID=MRImageStorage, SeriesNumber=2, SeriesDescription="t2_tse_tra",
                      SliceThickness=4.0, PixelSpacing=[0.4, 0.45], EchoTime=96, RepetitionTime=5000,
                      FlipAngle=150, MagneticFieldStrength=3, SequenceName="*tse2d1_15", ScanningSequence="SE",
                      MRAcquisitionType="2D", Manufacturer="SIEMENS", ManufacturerModelName="Prisma",
                      BodyPartExamined="BRAIN"),
        "pet": _series(src, "pet", 1, StudyInstanceUID=pet, PatientName="PET^PATIENT", PatientID="P3",
                       Modality="PT", SOPClassUID=PositronEmissionTomographyImageStorage, SeriesNumber=3,
                       SliceThickness=2.03, PixelSpacing=[4.07, 4.07], Units="BQML", DecayCorrection="START",
                       RadiopharmaceuticalInformationSequence=_pet_information(),
                       ReconstructionMethod="OSEM3D 4i8s", Manufacturer="GE MEDICAL SYSTEMS"),
    }
    data = root / "data"
    run_cli("import", "--create", "--data-dir", data, src)
    return {"data": data, "uids": uids, "studies": {"ct": ct, "mr": mr, "pet": pet}}


@pytest.fixture
def db(archive: dict[str, Any]):  # type: ignore[no-untyped-def]
    opened = open_archive(archive["data"])
    yield opened.db
    opened.close()


def series(db, archive: dict[str, Any], text: str) -> list[str]:  # type: ignore[no-untyped-def]
    names = {v: k for k, v in archive["uids"].items()}
    return sorted(names[db.get_str("SELECT series_uid FROM series WHERE id = ?", (i,))]
                  for i in run(db, text, "series"))


def studies(db, archive: dict[str, Any], text: str) -> list[str]:  # type: ignore[no-untyped-def]
    names = {v: k for k, v in archive["studies"].items()}
    return sorted(names[db.get_str("SELECT study_uid FROM studies WHERE id = ?", (i,))] for i in run(db, text))


@pytest.mark.parametrize(("query", "expected"), [
    ("SliceThickness<=1.5", ["ct_thin", "t1"]),
    ("SliceThickness>1.5 and Modality=MR", ["echoes", "t2"]),
    ("SliceThickness=5", ["ct_thick"]),
    ("EchoTime>=80", ["t2"]),
    ("EchoTime<10 and RepetitionTime>2000", ["t1"]),
    ("EchoTime=10", ["echoes"]),  # any of its images
    ("EchoTime>12 and EchoTime<6", ["echoes"]),  # each comparison on its own image
    ("InversionTime>0", ["t1"]),
    ("not InversionTime>0", ["ct_thick", "ct_thin", "echoes", "pet", "t2"]),  # absent never matches; not complements
    ("FlipAngle<=10", ["t1"]),
    ("MagneticFieldStrength=3", ["echoes", "t1", "t2"]),
    ("KVP=120", ["ct_thin"]),
    ("KVP>=100", ["ct_thick", "ct_thin"]),
    ("SequenceName=*tse*", ["t2"]),
    ("ScanningSequence=IR", ["t1"]),  # one value: any item
    ("ScanningSequence=GR\\IR", ["t1"]),  # a list: the whole
    ("ScanningSequence=IR\\GR", []),
    ("SequenceVariant=MP", ["t1"]),
    ("MRAcquisitionType=3D", ["t1"]),
    ("ConvolutionKernel=FC07", ["ct_thin"]),
    ("ConvolutionKernel=FC*", ["ct_thick", "ct_thin"]),
    ("ImageType=DERIVED", ["ct_thick"]),
    ("ImageType=PRIMARY", ["ct_thin"]),
    ("ImageType=ORIGINAL\\PRIMARY\\AXIAL", ["ct_thin"]),
    ("ImageType=ORIGINAL\\PRIMARY", []),
    ("ImageType!=DERIVED and Modality=CT", ["ct_thin"]),
    ("ImageType~MPR", ["ct_thick"]),
    ("PixelSpacing=0.5", ["ct_thin"]),
    ("PixelSpacing=0.45", ["t2"]),  # the second item
    ("PixelSpacing=0.5\\0.5", ["ct_thin"]),
    ("PixelSpacing=0.4\\0.45", ["t2"]),
    ("PixelSpacing=0.45\\0.4", []),
    ("PixelSpacing<0.8", ["ct_thick", "ct_thin", "t2"]),
    ("PixelSpacing<1", ["ct_thick", "ct_thin", "echoes", "t2"]),
    ("PixelSpacing>4", ["pet"]),
    ("Manufacturer=SIEMENS", ["t1", "t2"]),
    ('ManufacturerModelName="Aquilion ONE"', ["ct_thick", "ct_thin"]),
    ("ProtocolName=t1*", ["t1"]),
    ("BodyPartExamined=BRAIN", ["t1", "t2"]),
    ("ContrastBolusAgent~omnipaque", ["ct_thin"]),
    ("AcquisitionDate>=20240101", ["ct_thin"]),
    ("Radiopharmaceutical~fluorodeoxy", ["pet"]),
    ("Units=BQML and DecayCorrection=START", ["pet"]),
    ("ReconstructionMethod~OSEM", ["pet"]),
    ("Rows=16 and Columns=16 and SliceThickness<1", ["ct_thin"]),
])
def test_series_level_attributes(db, archive: dict[str, Any], query: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert series(db, archive, query) == expected


def test_study_level_matches_when_any_series_does(db, archive: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    assert studies(db, archive, "SliceThickness<=1.5") == ["ct", "mr"]
    assert studies(db, archive, "EchoTime>=80") == ["mr"]
    assert studies(db, archive, "EchoTime>=80 and KVP=120") == []
    assert studies(db, archive, "ImageType=DERIVED or Radiopharmaceutical~FDG or Radiopharmaceutical~fluoro") == [
        "ct", "pet"]
    assert studies(db, archive, "PatientName=ödegård* and MagneticFieldStrength>=3") == ["mr"]


def test_instance_level_compares_each_instance(db, archive: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    assert len(run(db, "EchoTime<10 and InstanceNumber=2", "instance")) == 2  # of the T1 and of the echoes
    assert len(run(db, "SliceThickness<=1.5", "instance")) == 4
    assert len(run(db, "EchoTime>=10 and Modality=MR", "instance")) == 5  # 4 echoes, the T2


def test_numbers_are_searched_from_their_index(db) -> None:  # type: ignore[no-untyped-def]
    c = compile_query("SliceThickness<=1.5", "study")
    plan = " ".join(str(r[3]) for r in db.query(f"EXPLAIN QUERY PLAN SELECT {c.id_column} FROM {c.from_sql} "
                                                f"WHERE {c.where}", c.args))
    assert "COVERING INDEX instances_slice_thickness" in plan, plan


def test_every_searchable_attribute_has_a_column(db) -> None:  # type: ignore[no-untyped-def]
    from dicomfs.index.query_language import _PLAIN_COLUMN, QUERY_KEYS

    columns = {f"{alias}.{row[1]}" for table, alias in (("patients", "p"), ("studies", "st"), ("series", "se"),
                                                         ("instances", "i"))
               for row in db.query(f"PRAGMA table_info({table})")}
    plain = {k: key.sql for k, key in QUERY_KEYS.items() if _PLAIN_COLUMN.fullmatch(key.sql)}
    assert {k: sql for k, sql in plain.items() if sql not in columns} == {}
    for wanted in ("SliceThickness", "PixelSpacing", "Rows", "Columns", "ImageType", "Manufacturer",
                   "ManufacturerModelName", "ProtocolName", "BodyPartExamined", "SequenceName", "EchoTime",
                   "RepetitionTime", "InversionTime", "FlipAngle", "MagneticFieldStrength", "ContrastBolusAgent",
                   "SeriesDescription", "ScanningSequence", "ConvolutionKernel", "KVP", "StationName",
                   "InstitutionName", "AcquisitionDate", "AcquisitionTime"):
        assert wanted in plain, wanted


def test_an_unknown_attribute_lists_the_known_ones_by_level_and_suggests_the_closest() -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        compile_query("Modality=MR and EchoTim>=80")
    err = caught.value
    assert err.message == "unknown keyword 'EchoTim' (did you mean EchoTime?) at position 16"
    text = str(err).splitlines()
    assert text[:3] == ["unknown keyword 'EchoTim' (did you mean EchoTime?) at position 16",
                        "Modality=MR and EchoTim>=80", " " * 16 + "^"]
    assert text[3].startswith("known attributes")
    by_level = {line.split(":")[0].strip(): line for line in text[4:8]}
    assert list(by_level) == ["patient", "study", "series", "instance"]
    assert "SliceThickness" in by_level["instance"] and "Manufacturer" in by_level["series"]
    assert set(known_keywords()["instance"]) >= {"EchoTime", "PixelSpacing", "ImageType"}


def test_dicomfs_find_searches_them_and_names_the_known_attributes(archive: dict[str, Any]) -> None:
    found = run_cli("find", "--data-dir", archive["data"], "--level", "series", "--json", "SliceThickness<=1.5")
    uids = sorted(json.loads(line)["SeriesInstanceUID"] for line in found.stdout.splitlines())
    assert uids == sorted([archive["uids"]["ct_thin"], archive["uids"]["t1"]])
    names = run_cli("find", "--data-dir", archive["data"], "--count", "PatientName=ödegård*")
    assert names.stdout.strip() == "1"
    refused = run_cli("find", "--data-dir", archive["data"], "SliceThikness<=1.5", check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("dicomfs: unknown keyword 'SliceThikness' (did you mean SliceThickness?) "
                                     "at position 0\n")
    assert "  instance: " in refused.stderr and "Traceback" not in refused.stderr
    outside = run_cli("find", "--data-dir", archive["data"], "PatientState=X", check=False)
    assert outside.returncode == 2
    assert "PatientState is not kept in the index" in outside.stderr and "known attributes" in outside.stderr


def test_a_rule_with_an_unknown_attribute_names_the_known_ones(tmp_path: Path) -> None:
    from dicomfs import config
    from dicomfs.errors import UserError

    path = tmp_path / "dicomfs.toml"
    path.write_text('[[rules]]\nproject = "THIN"\nmatch = "SliceThicknes<1"\n')
    with pytest.raises(UserError) as caught:
        config.load(path)
    assert "did you mean SliceThickness?" in str(caught.value)
    assert "known attributes" in str(caught.value)


def test_an_index_of_schema_v6_is_upgraded_and_backfilled(archive: dict[str, Any], tmp_path: Path) -> None:
    """The v7 columns of older rows come from the facts and sidecar values v6 kept; no file is read."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(archive["data"], data)
    opened = open_archive(data)
    db = opened.db
    expected = {
        "instances": db.query("SELECT sop_uid, slice_thickness, pixel_spacing, echo_time, repetition_time, "
                              "inversion_time, flip_angle, magnetic_field_strength, kvp, sequence_name, "
                              "scanning_sequence, convolution_kernel FROM instances ORDER BY id"),
        "series": db.query("SELECT series_uid, manufacturer_model_name, radiopharmaceutical, units FROM series "
                           "ORDER BY id"),
        "names": db.query("SELECT patient_name_folded FROM patients ORDER BY id"),
        "series_values": [row for row in db.query("SELECT * FROM series_values ORDER BY 1, 2, 3")
                          if row[0] not in ("AcquisitionDate", "ContrastBolusAgent")] + [
            (keyword, "", series_id) for keyword in ("AcquisitionDate", "ContrastBolusAgent")
            for (series_id,) in db.query("SELECT id FROM series ORDER BY id")],
    }
    expected["series_values"].sort()
    with db.transaction():  # back to schema v6
        undo_schema_v7(db)
        db.execute("PRAGMA user_version = 6")
        db.execute("UPDATE instances SET file_path = 'moved/away.dcm'")  # prove that no file is opened
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    older = run_cli("find", "--data-dir", data, "Modality=MR", check=False)  # reads, never upgrades
    assert (older.returncode, older.stderr) == (2, f"dicomfs: the index {data / 'index.sqlite'} is of an older "
                                                   "dicomfs (schema 6, this one reads 8): start 'dicomfs serve' "
                                                   "once, which upgrades it\n")
    migrate(db)
    assert db.get_int("PRAGMA user_version") == SCHEMA_VERSION == 8
    assert db.query("SELECT sop_uid, slice_thickness, pixel_spacing, echo_time, repetition_time, inversion_time, "
                    "flip_angle, magnetic_field_strength, kvp, sequence_name, scanning_sequence, convolution_kernel "
                    "FROM instances ORDER BY id") == expected["instances"]
    assert db.query("SELECT series_uid, manufacturer_model_name, radiopharmaceutical, units FROM series "
                    "ORDER BY id") == expected["series"]
    assert db.query("SELECT patient_name_folded FROM patients ORDER BY id") == expected["names"]
    assert db.query("SELECT * FROM series_values ORDER BY 1, 2, 3") == expected["series_values"]
    assert db.query("SELECT DISTINCT contrast_bolus_agent FROM instances") == [("",)]  # not kept by v6
    assert len(run(db, "SliceThickness<=1.5 and PatientName=ÖDEGÅRD*", "series")) == 1
    opened.close()


def test_series_json_carries_geometry_and_acquisition_from_the_index(db, archive: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    from dicomfs.mount import summaries
    from dicomfs.mount.kinds import Kind
    from dicomfs.mount.model import Model

    model = Model(db)

    def summary(name: str) -> dict[str, Any]:
        series_id = db.get_int("SELECT id FROM series WHERE series_uid = ?", (archive["uids"][name],))
        return json.loads(summaries.make(model, Kind.SERIES_JSON, series_id))

    t1 = summary("t1")
    assert {k: t1[k] for k in ("Rows", "Columns", "PixelSpacing", "SliceThickness", "EchoTime", "RepetitionTime",
                               "InversionTime", "FlipAngle", "MagneticFieldStrength", "SequenceName",
                               "ScanningSequence", "SequenceVariant", "MRAcquisitionType", "Manufacturer",
                               "ManufacturerModelName", "ProtocolName", "ImageOrientationPatient",
                               "NumberOfFrames", "NumberOfSlices")} == {
        "Rows": 16, "Columns": 16, "PixelSpacing": [1.0, 1.0], "SliceThickness": 1.0, "EchoTime": 2.98,
        "RepetitionTime": 2300.0, "InversionTime": 900.0, "FlipAngle": 9.0, "MagneticFieldStrength": 3.0,
        "SequenceName": "*tfl3d1_16ns", "ScanningSequence": ["GR", "IR"], "SequenceVariant": ["SK", "SP", "MP"],
        "MRAcquisitionType": "3D", "Manufacturer": "SIEMENS", "ManufacturerModelName": "Prisma",
        "ProtocolName": "t1_mprage_sag", "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "NumberOfFrames": 2, "NumberOfSlices": 2}
    assert "ValuesThatVary" not in t1 and "KVP" not in t1 and "Radiopharmaceutical" not in t1
    echoes = summary("echoes")
    assert echoes["EchoTime"] == 5.0 and echoes["ValuesThatVary"] == {"EchoTime": [5.0, 10.0, 15.0]}
    assert echoes["ImageOrientationPatient"] == [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    assert echoes["NumberOfFrames"] == 6
    ct = summary("ct_thin")
    assert (ct["KVP"], ct["ConvolutionKernel"], ct["ImageType"], ct["ContrastBolusAgent"]) == (
        120.0, ["FC07", "AIDR"], ["ORIGINAL", "PRIMARY", "AXIAL"], "Omnipaque")
    pet = summary("pet")
    assert (pet["Radiopharmaceutical"], pet["Units"], pet["DecayCorrection"], pet["ReconstructionMethod"]) == (
        "Fluorodeoxyglucose", "BQML", "START", "OSEM3D 4i8s")


def test_a_rule_routes_studies_by_an_acquisition_attribute(tmp_path: Path) -> None:
    from dicomfs.config import ProjectRule
    from dicomfs.index import organise
    from dicomfs.ingest.files import run_import

    thin, thick = generate_uid(), generate_uid()
    _series(tmp_path / "src", "thin", 2, StudyInstanceUID=thin, SliceThickness=0.6, PatientID="A")
    _series(tmp_path / "src", "thick", 2, StudyInstanceUID=thick, SliceThickness=5.0, PatientID="B")
    opened = open_archive(tmp_path / "data", rules=[ProjectRule(project="THIN", match="SliceThickness<=1")])
    try:
        run_import(opened, [tmp_path / "src"], workers=1, progress=False)
        member = opened.db.get_int("SELECT id FROM studies WHERE study_uid = ?", (thin,))
        assert run(opened.db, "project:THIN") == [member]
        assert organise.projects_of(opened.db, "study", member) == ["THIN"]
    finally:
        opened.close()


def test_series_values_hold_exactly_the_distinct_values_of_each_series(db) -> None:  # type: ignore[no-untyped-def]
    from dicomfs.index.schema import SERIES_VALUE_COLUMNS

    for keyword, column in SERIES_VALUE_COLUMNS.items():
        assert db.query("SELECT value, series_id FROM series_values WHERE keyword = ? ORDER BY 1, 2", (keyword,)) == \
            db.query(f"SELECT DISTINCT {column}, series_id FROM instances ORDER BY 1, 2"), keyword
    c = compile_query("ImageType=DERIVED or SequenceName=*tse*", "study")
    plan = " ".join(str(r[3]) for r in db.query(f"EXPLAIN QUERY PLAN SELECT {c.id_column} FROM {c.from_sql} "
                                                f"WHERE {c.where}", c.args))
    assert "SEARCH sv USING PRIMARY KEY (keyword=?)" in plan and "instances" not in plan, plan
