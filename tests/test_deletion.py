"""Deleting studies and series on a real mount: what goes, and the derived data that stays findable."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, run_cli, wait_for


def cli(daemon: Daemon, *args: str, check: bool = True) -> str:
    result = run_cli(*args, "--data-dir", daemon.data_dir, check=check)
    return result.stdout if check else result.stdout + result.stderr


def uid(path: Path, keyword: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True)[keyword].value)


@pytest.fixture
def two_patients(daemon: Daemon, data_dir: Path, tmp_path: Path) -> dict[str, list[Path]]:
    """ONE^PAT with a CT series; TWO^PAT with a CT and a PT series in one study. Mounted."""
    one = dicomgen.series(tmp_path / "one", 3, PatientID="P1", PatientName="ONE^PAT")
    two_ct = dicomgen.series(tmp_path / "two_ct", 2, PatientID="P2", PatientName="TWO^PAT")
    two_pt = dicomgen.series(tmp_path / "two_pt", 2, PatientID="P2", PatientName="TWO^PAT", Modality="PT",
                             SeriesNumber=5, SeriesDescription="FDG")
    for path in two_pt:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = uid(two_ct[0], "StudyInstanceUID")
        ds.save_as(path)
    run_cli("import", "--data-dir", data_dir, tmp_path / "one", tmp_path / "two_ct", tmp_path / "two_pt")
    daemon.start()
    return {"one": one, "two_ct": two_ct, "two_pt": two_pt}


def folder_of(daemon: Daemon, query: str, level: str = "study") -> Path:
    return Path(cli(daemon, "find", query, "--level", level, "--paths", "--mount", str(daemon.mount)).strip())


def test_a_deleted_study_leaves_its_derived_data_findable(
    daemon: Daemon, two_patients: dict[str, list[Path]], tmp_path: Path
) -> None:
    study_uid = uid(two_patients["one"][0], "StudyInstanceUID")
    study_dir = folder_of(daemon, f"StudyInstanceUID={study_uid}")
    series_dir = next(p for p in study_dir.iterdir() if p.is_dir() and p.name != "derived")
    (study_dir / "derived" / "report.txt").write_text("no findings\n")
    (series_dir / "derived" / "roi.csv").write_text("region,mean\nliver,54\n")
    store_files = sorted((daemon.data_dir / "store").rglob("*.dcm"))
    assert len(store_files) == 7
    cli(daemon, "project", "create", "KEEP")
    cli(daemon, "project", "add", "KEEP", study_uid)
    cli(daemon, "tag", "set", study_uid, "diagnosis=normal")

    # Without --yes nothing happens: it only says what would go.
    dry = run_cli("delete", study_uid, "--data-dir", daemon.data_dir, check=False)
    assert dry.returncode == 1
    assert "would delete 1 patients, 1 studies, 1 series, 3 instances; 2 derived items would stay" in dry.stdout
    assert study_dir.is_dir()

    out = cli(daemon, "delete", study_uid, "--yes")
    assert "deleted 1 patients, 1 studies, 1 series, 3 instances; 2 derived items stay, orphaned" in out
    # Gone from every layout, although the kernel had looked these names up.
    wait_for(lambda: not study_dir.exists(), 3, "the deleted study to leave the mount")
    assert not (daemon.mount / "patients" / "ONE^PAT [P1]").exists()
    assert not (daemon.mount / "studies" / study_uid).exists()
    assert os.listdir(daemon.mount / "patients") == ["TWO^PAT [P2]"]
    assert not (daemon.mount / "projects" / "KEEP" / "ONE^PAT [P1]").exists()
    assert len(sorted((daemon.data_dir / "store").rglob("*.dcm"))) == 4  # its files are deleted
    assert cli(daemon, "find", f"StudyInstanceUID={study_uid}", "--count", check=False).strip() == "0"
    assert cli(daemon, "find", "tag:diagnosis=normal", "--count", check=False).strip() == "0"

    # The derived data stays, read-only, and says what its origin was.
    orphans = daemon.mount / "orphans"
    wait_for(lambda: len(os.listdir(orphans)) == 2, 3, "two orphan folders")
    study_orphan = orphans / f"study-{study_uid}"
    assert sorted(os.listdir(study_orphan)) == ["origin.json", "report.txt"]
    assert (study_orphan / "report.txt").read_text() == "no findings\n"
    origin = json.loads((study_orphan / "origin.json").read_text())
    assert origin["Origin"]["deleted"] is True and origin["Origin"]["uid"] == study_uid
    assert origin["Origin"]["was"]["PatientName"] == "ONE^PAT" and origin["Origin"]["was"]["PatientID"] == "P1"
    assert [d["name"] for d in origin["Derived"]] == ["report.txt"]
    series_orphan = next(p for p in orphans.iterdir() if p.name.startswith("series-"))
    assert (series_orphan / "roi.csv").read_text() == "region,mean\nliver,54\n"
    assert json.loads((series_orphan / "origin.json").read_text())["Origin"]["was"]["Modality"] == "CT"
    with pytest.raises(OSError) as err:
        (study_orphan / "report.txt").write_text("changed")
    assert err.value.errno == errno.EROFS
    listed = cli(daemon, "derive", "list", "--orphaned")
    assert "report.txt" in listed and "roi.csv" in listed and study_uid in listed

    # The same study arriving again takes its derived data back.
    run_cli("import", "--data-dir", daemon.data_dir, tmp_path / "one")
    wait_for(lambda: folder_of(daemon, f"StudyInstanceUID={study_uid}").is_dir(), 3, "the study back")
    study_dir = folder_of(daemon, f"StudyInstanceUID={study_uid}")
    assert (study_dir / "derived" / "report.txt").read_text() == "no findings\n"
    series_dir = next(p for p in study_dir.iterdir() if p.is_dir() and p.name != "derived")
    assert (series_dir / "derived" / "roi.csv").read_text() == "region,mean\nliver,54\n"  # its series came too
    wait_for(lambda: os.listdir(orphans) == [], 3, "the orphan folders to go")
    wait_for(lambda: not study_orphan.exists(), 3, "the orphan name to expire (kept 1 s, untracked)")
    none = run_cli("derive", "list", "--orphaned", "--data-dir", daemon.data_dir, check=False)
    assert none.returncode == 1 and "roi.csv" not in none.stdout


def test_deleting_one_series_keeps_the_rest_of_its_study(
    daemon: Daemon, two_patients: dict[str, list[Path]]
) -> None:
    pt_uid = uid(two_patients["two_pt"][0], "SeriesInstanceUID")
    study_dir = folder_of(daemon, "PatientID=P2")
    assert sorted(p.name for p in study_dir.iterdir() if p.is_dir()) == ["003 CT Lung 1.0", "005 PT FDG", "derived"]
    pt_dir = study_dir / "005 PT FDG"
    assert (pt_dir / "001.dcm").exists()
    cli(daemon, "delete", "--level", "series", pt_uid, "--yes")
    wait_for(lambda: not pt_dir.exists(), 3, "the deleted series to leave the mount")
    assert sorted(p.name for p in study_dir.iterdir() if p.is_dir()) == ["003 CT Lung 1.0", "derived"]
    summary = json.loads((study_dir / "study.json").read_text())
    assert summary["NumberOfStudyRelatedSeries"] == 1 and summary["ModalitiesInStudy"] == ["CT"]
    bad = run_cli("delete", "--level", "series", "Modality=PT", "--data-dir", daemon.data_dir, check=False)
    assert bad.returncode == 2 and "no series matches" in bad.stderr
    # The index keeps its counts right (the C-FIND count attributes come from them).
    with sqlite3.connect(daemon.data_dir / "index.sqlite") as db:
        assert db.execute("SELECT num_series, num_instances FROM patients WHERE patient_id = 'P2'").fetchone() \
            == (1, 2)


def test_a_deleted_derived_object_leaves_the_folders_it_was_shown_in(
    daemon: Daemon, data_dir: Path, tmp_path: Path
) -> None:
    ct = dicomgen.series(tmp_path / "ct", 2)
    first = pydicom.dcmread(ct[0])
    seg = dicomgen.segmentation_of(first)
    dicomgen.write(tmp_path / "seg" / "seg.dcm", seg)
    run_cli("import", "--data-dir", data_dir, tmp_path / "ct", tmp_path / "seg")
    daemon.start()
    derived = folder_of(daemon, f"SeriesInstanceUID={first.SeriesInstanceUID}", "series") / "derived"
    assert os.listdir(derived) == [f"SEG_{seg.SOPInstanceUID}.dcm"]
    cli(daemon, "delete", "--level", "series", seg.SeriesInstanceUID, "--yes")
    wait_for(lambda: os.listdir(derived) == [], 3, "the SEG to leave the CT's derived/")
    # Names in derived/ are kept by the kernel for a second at most (other processes write there too).
    wait_for(lambda: not (derived / f"SEG_{seg.SOPInstanceUID}.dcm").exists(), 3, "the SEG name to go")
    assert os.listdir(daemon.mount / "orphans") == []  # nothing was made from the SEG series


def test_an_index_of_the_previous_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    from dicomfs.index.db import Database
    from dicomfs.index.schema import MIGRATIONS, SCHEMA_VERSION, migrate

    db = Database(tmp_path / "index.sqlite")
    for step in range(3):  # the schema before deletion and late links
        with db.transaction():
            MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")
    with db.transaction():
        db.execute("INSERT INTO derived (level, entity_id, origin_uid, name, file_path, size, created_at, "
                   "updated_at) VALUES ('study', 7, '1.2.3', 'fit.csv', '1.2.3/fit.csv', 4, 0, 0)")
    migrate(db)
    assert db.get_val("PRAGMA user_version") == SCHEMA_VERSION
    assert db.get_row("SELECT name, origin_deleted_at, origin_description FROM derived") == ("fit.csv", None, "")
    assert db.get_val("SELECT count(*) FROM derived_sources") == 0
    db.close()
