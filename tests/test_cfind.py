"""C-FIND with DCMTK's findscu: levels, models, matching types, character sets."""

from __future__ import annotations

from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, dcmtk, run_cli
from pydicom.uid import generate_uid


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Three patients, four studies, six series; values chosen to exercise each rule."""
    root = tmp_path_factory.mktemp("find")
    src = root / "src"
    specs = [
        # patient, id, study date, time, accession, description, [(modality, series number, count)]
        ("DOE^JOHN", "P1", "20240301", "081500", "A100%", "CT Thorax", [("CT", 1, 3), ("CT", 2, 2)]),
        ("DOE^JANE", "P2", "20231115", "140000", "A_200", "PET FDG", [("PT", 1, 2), ("CT", 2, 1)]),
        ("Müller^Jürgen", "P3", "20220101", "000001", "", "MR Brain", [("MR", 5, 1)]),
        ("DOE^JOHN", "P1", "20240302", "090000", "A300", "CT Follow-up", [("CT", 1, 1)]),
    ]
    studies = []
    for name, pid, date, time, acc, desc, series in specs:
        study = generate_uid()
        studies.append(study)
        for modality, number, count in series:
            series_uid = generate_uid()
            for n in range(1, count + 1):
                ds = dicomgen.make_dataset(
                    PatientName=name, PatientID=pid, StudyDate=date, StudyTime=time, AccessionNumber=acc,
                    StudyDescription=desc, Modality=modality, SeriesNumber=number, InstanceNumber=n,
                    StudyInstanceUID=study, SeriesInstanceUID=series_uid, rows=8, columns=8,
                    SpecificCharacterSet="ISO_IR 100" if "ü" in name else "ISO_IR 192",
                )
                dicomgen.write(src / f"{study}-{series_uid}-{n}.dcm", ds)
    data = root / "data"
    data.mkdir()
    run_cli("import", "--data-dir", data, src)
    return {"data": data, "studies": studies}


@pytest.fixture
def node(archive: dict[str, object], tmp_path: Path) -> Daemon:
    d = Daemon(data_dir=archive["data"], mount=tmp_path / "mnt", log_path=tmp_path / "daemon.log")  # type: ignore[arg-type]
    d.start("--no-mount")
    yield d
    assert d.stop() == 0
    assert not d.unexpected_errors(), d.unexpected_errors()


def find(node: Daemon, tmp_path: Path, *keys: str, model: str = "-S") -> list[pydicom.Dataset]:
    out = tmp_path / f"rsp{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args = [model, "-aec", "DICOMFS", "-X", "-od", out]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, "127.0.0.1", node.port)
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_study_level_returns_one_answer_per_study_with_counts(node: Daemon, tmp_path: Path) -> None:
    answers = find(node, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=DOE^JOHN", "StudyInstanceUID",
                   "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                   "StudyDescription", "SOPClassesInStudy")
    assert sorted(a.StudyDescription for a in answers) == ["CT Follow-up", "CT Thorax"]
    thorax = next(a for a in answers if a.StudyDescription == "CT Thorax")
    assert thorax.NumberOfStudyRelatedSeries == 2 and thorax.NumberOfStudyRelatedInstances == 5
    assert thorax.ModalitiesInStudy == "CT"
    assert thorax.SOPClassesInStudy == "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("PatientName=DOE*", ["CT Follow-up", "CT Thorax", "PET FDG"]),  # wildcard
        ("PatientName=doe^j?ne", ["PET FDG"]),  # '?' and case-insensitive names
        ("PatientName=", ["CT Follow-up", "CT Thorax", "MR Brain", "PET FDG"]),  # universal
        ("StudyDate=20240101-", ["CT Follow-up", "CT Thorax"]),  # open range
        ("StudyDate=20220101-20231231", ["MR Brain", "PET FDG"]),  # closed range
        ("StudyDate=-20221231", ["MR Brain"]),
        ("StudyDate=20240302", ["CT Follow-up"]),  # single value
        ("StudyTime=0800-1000", ["CT Follow-up", "CT Thorax"]),
        ("AccessionNumber=A100%", ["CT Thorax"]),  # '%' is not a wildcard in DICOM
        ("AccessionNumber=A_*", ["PET FDG"]),  # '_' is not a wildcard either
        ("AccessionNumber=A1*", ["CT Thorax"]),
        ("ModalitiesInStudy=PT", ["PET FDG"]),  # matches any of the study's modalities
        ("ModalitiesInStudy=MR\\PT", ["MR Brain", "PET FDG"]),
        ("PatientName=Müller*", ["MR Brain"]),  # character sets
        ("PatientName=müller*", ["MR Brain"]),  # names fold case beyond ASCII
        ("PatientName=MÜLLER^JÜRGEN", ["MR Brain"]),
        ("PatientName=mueller*", []),  # folding is not transliteration
    ],
)
def test_matching_types(node: Daemon, tmp_path: Path, key: str, expected: list[str]) -> None:
    answers = find(node, tmp_path, "QueryRetrieveLevel=STUDY", key, "StudyDescription",
                   "SpecificCharacterSet=ISO_IR 192")
    assert sorted(a.StudyDescription for a in answers) == expected


def test_uid_list_matching(node: Daemon, tmp_path: Path, archive: dict[str, object]) -> None:
    studies = archive["studies"]
    answers = find(node, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={studies[0]}\\{studies[2]}",
                   "StudyDescription")
    assert sorted(a.StudyDescription for a in answers) == ["CT Thorax", "MR Brain"]


def test_series_and_image_levels_are_hierarchical(node: Daemon, tmp_path: Path, archive: dict[str, object]) -> None:
    study = archive["studies"][1]
    series = find(node, tmp_path, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID",
                  "Modality", "NumberOfSeriesRelatedInstances", "SeriesNumber")
    assert sorted((s.Modality, s.NumberOfSeriesRelatedInstances) for s in series) == [("CT", 1), ("PT", 2)]
    pet = next(s for s in series if s.Modality == "PT")
    images = find(node, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                  f"SeriesInstanceUID={pet.SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber")
    assert sorted(i.InstanceNumber for i in images) == [1, 2]
    # Without the study's UID a series-level query is refused (no relational queries).
    result = dcmtk("findscu", "-v", "-S", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=SERIES", "-k", "Modality=CT",
                   "127.0.0.1", node.port)
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr  # status 0xA900


def test_patient_root_model(node: Daemon, tmp_path: Path) -> None:
    patients = find(node, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientName", "PatientID",
                    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances", model="-P")
    summary = sorted((str(p.PatientName), p.PatientID, p.NumberOfPatientRelatedStudies) for p in patients)
    assert summary == [("DOE^JANE", "P2", 1), ("DOE^JOHN", "P1", 2), ("Müller^Jürgen", "P3", 1)]
    studies = find(node, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=P1", "StudyDate", model="-P")
    assert sorted(s.StudyDate for s in studies) == ["20240301", "20240302"]


def test_unknown_return_keys_are_answered_empty(node: Daemon, tmp_path: Path) -> None:
    answers = find(node, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=DOE^JANE", "Occupation",
                   "0011,0010", "RetrieveAETitle")
    assert len(answers) == 1
    assert "Occupation" in answers[0] and not answers[0].Occupation
    assert 0x00110010 in answers[0]
    assert answers[0].RetrieveAETitle == "DICOMFS"


def test_folded_names_match_in_process_and_from_the_index(archive: dict[str, object]) -> None:
    """fold_names uses the folded column and its index, not a function per row."""
    from dicomfs.archive import open_archive
    from dicomfs.index import cfind

    opened = open_archive(archive["data"])  # type: ignore[arg-type]
    try:
        q = cfind.build(cfind.Level.STUDY, {"PatientName": "MÜLLER*", "StudyDescription": ""}, patient_root=False,
                        fold_names=True)
        assert [a["StudyDescription"] for a in cfind.run(opened.db, q)] == ["MR Brain"]
        sql = " AND ".join(q.conditions)
        assert "patient_name_folded GLOB" in sql and "upper(" not in sql
        plan = " ".join(str(r[3]) for r in opened.db.query(
            f"EXPLAIN QUERY PLAN SELECT 1 FROM patients p WHERE {q.conditions[-1]}", q.args[-2:]))
        assert "patients_name_folded" in plan, plan
        strict = cfind.build(cfind.Level.STUDY, {"PatientName": "müller*"}, patient_root=False, fold_names=False)
        assert list(cfind.run(opened.db, strict)) == []  # without folding, case counts
    finally:
        opened.close()


def test_fold_name_folds_every_script() -> None:
    from dicomfs.index.cfind import fold_name

    assert fold_name("Ödegård^Åsa") == fold_name("ÖDEGÅRD^åsa") == "ödegård^åsa"
    assert fold_name("STRASSE") == fold_name("Straße")
    assert fold_name("O\u0308degard") == fold_name("Ödegard")  # decomposed and composed alike
    assert fold_name("ΣΊΣΥΦΟΣ") == fold_name("σίσυφος")
