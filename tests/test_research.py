"""Projects and tags on a real mount: commands, /projects folders, the .json views."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, run_cli, wait_for


@pytest.fixture
def archive(daemon: Daemon, data_dir: Path, tmp_path: Path) -> dict[str, list[Path]]:
    """Two patients: P1 with a CT series, P2 with a CT and a PT series in one study."""
    p1 = dicomgen.series(tmp_path / "p1", 3, PatientID="P1", PatientName="ONE^PAT")
    p2_ct = dicomgen.series(tmp_path / "p2ct", 2, PatientID="P2", PatientName="TWO^PAT")
    study = pydicom.dcmread(p2_ct[0]).StudyInstanceUID
    p2_pt = dicomgen.series(tmp_path / "p2pt", 2, PatientID="P2", PatientName="TWO^PAT", Modality="PT",
                            SeriesNumber=5, SeriesDescription="FDG")
    for path in p2_pt:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path)
    run_cli("import", "--data-dir", data_dir, tmp_path / "p1", tmp_path / "p2ct", tmp_path / "p2pt")
    daemon.start()
    return {"p1": p1, "p2_ct": p2_ct, "p2_pt": p2_pt}


def cli(daemon: Daemon, *args: str, check: bool = True) -> str:
    result = run_cli(*args, "--data-dir", daemon.data_dir, check=check)
    return result.stdout if check else result.stdout + result.stderr


def uid(path: Path, keyword: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True)[keyword].value)


def test_projects_show_their_members_in_the_mount(daemon: Daemon, archive: dict[str, list[Path]]) -> None:
    cli(daemon, "project", "create", "TRIAL1", "--description", "amyloid PET")
    assert "exists already" in cli(daemon, "project", "create", "TRIAL1", check=False)
    assert "use letters" in cli(daemon, "project", "create", "../x", check=False)
    added = cli(daemon, "project", "add", "TRIAL1", uid(archive["p1"][0], "StudyInstanceUID"))
    assert added.strip() == "TRIAL1: 1 study added"
    cli(daemon, "project", "add", "TRIAL1", "--level", "series", uid(archive["p2_pt"][0], "SeriesInstanceUID"))
    both = [uid(archive["p1"][0], "StudyInstanceUID"), uid(archive["p2_pt"][0], "StudyInstanceUID")]
    cli(daemon, "project", "create", "TRIAL2")
    assert cli(daemon, "project", "add", "TRIAL2", *both).strip() == "TRIAL2: 2 studies added"
    assert cli(daemon, "project", "add", "TRIAL2", *both).strip() == "TRIAL2: 0 studies added, 2 studies already in it"
    cli(daemon, "project", "delete", "TRIAL2")
    project = daemon.mount / "projects" / "TRIAL1"
    wait_for(lambda: project.exists() and len(os.listdir(project)) == 2, 2.0, "two patients in the project")
    one = project / "ONE^PAT [P1]"
    [study] = [p for p in one.iterdir() if p.is_dir()]
    [series] = [p for p in study.iterdir() if p.is_dir() and p.name != "derived"]
    mounted = daemon.mount / "patients" / "ONE^PAT [P1]" / study.name / series.name
    assert (series / "001.dcm").read_bytes() == (mounted / "001.dcm").read_bytes()
    two_study = next(p for p in (project / "TWO^PAT [P2]").iterdir() if p.is_dir())
    assert sorted(p.name for p in two_study.iterdir() if p.is_dir()) == ["005 PT FDG", "derived"]  # member only
    listed = cli(daemon, "project", "list")
    assert "TRIAL1" in listed and "1 series" in listed and "1 study" in listed and "amyloid PET" in listed
    summary = json.loads((mounted.parent / "study.json").read_text())
    assert summary["Projects"] == ["TRIAL1"]

    stored = sorted((daemon.data_dir / "store").rglob("*.dcm"))
    cli(daemon, "project", "remove", "TRIAL1", uid(archive["p1"][0], "StudyInstanceUID"))
    wait_for(lambda: os.listdir(project) == ["TWO^PAT [P2]"], 2.0, "P1 gone from the project")
    cli(daemon, "project", "delete", "TRIAL1")
    wait_for(lambda: os.listdir(daemon.mount / "projects") == [], 2.0, "the project gone")
    assert sorted((daemon.data_dir / "store").rglob("*.dcm")) == stored  # no image was touched
    assert len(os.listdir(daemon.mount / "patients")) == 2


def test_tags_are_set_listed_shown_and_removed(daemon: Daemon, archive: dict[str, list[Path]]) -> None:
    study_uid = uid(archive["p2_ct"][0], "StudyInstanceUID")
    cli(daemon, "tag", "set", study_uid, "diagnosis=AD")
    cli(daemon, "tag", "set", "--level", "patient", "P2", "cohort=B")
    assert "must start with a letter" in cli(daemon, "tag", "set", study_uid, "1bad=x", check=False)
    assert "expected KEY=VALUE" in cli(daemon, "tag", "set", study_uid, "diagnosis", check=False)
    assert "no study matches" in cli(daemon, "tag", "set", "1.2.3.4", "a=b", check=False)
    assert f"{study_uid}\tdiagnosis=AD" in cli(daemon, "tag", "list", study_uid)
    patient = daemon.mount / "patients" / "TWO^PAT [P2]"
    study = next(p for p in patient.iterdir() if p.is_dir())
    wait_for(lambda: json.loads((study / "study.json").read_text())["Tags"] == {"diagnosis": "AD"}, 2.0,
             "the tag in study.json")
    assert json.loads((patient / "patient.json").read_text())["Tags"] == {"cohort": "B"}
    cli(daemon, "tag", "set", study_uid, "diagnosis=MCI")  # replaces
    assert "diagnosis=MCI" in cli(daemon, "tag", "list", study_uid)
    assert "removed from 1 study" in cli(daemon, "tag", "unset", study_uid, "diagnosis")
    wait_for(lambda: json.loads((study / "study.json").read_text())["Tags"] == {}, 2.0, "the tag gone")


def test_find_prints_tables_json_paths_and_counts(daemon: Daemon, archive: dict[str, list[Path]]) -> None:
    cli(daemon, "tag", "set", uid(archive["p2_ct"][0], "StudyInstanceUID"), "diagnosis=AD")
    assert cli(daemon, "find", "Modality=PT", "--count").strip() == "1"
    assert cli(daemon, "find", "Modality=CT", "--count").strip() == "2"
    table = cli(daemon, "find", "tag:diagnosis=AD")
    assert "TWO^PAT" in table and "ONE^PAT" not in table
    [line] = cli(daemon, "find", "Modality=PT and tag:diagnosis=AD", "--json").splitlines()
    found = json.loads(line)
    assert found["PatientID"] == "P2" and found["Tags"] == {"diagnosis": "AD"}
    paths = cli(daemon, "find", "Modality=PT", "--level", "series", "--paths", "--mount", str(daemon.mount))
    [series_path] = paths.splitlines()
    assert sorted(os.listdir(series_path)) == ["001.dcm", "001.jpg", "001.json", "002.dcm", "002.jpg", "002.json",
                                              "derived", "series.json", "volume.json", "volume.nii"]
    instances = cli(daemon, "find", "PatientID=P1", "--level", "instance", "--paths", "--mount", str(daemon.mount))
    assert all(Path(p).is_file() for p in instances.splitlines()) and len(instances.splitlines()) == 3
    bad = cli(daemon, "find", "Modality=PT StudyDate>2024", check=False)
    assert "expected 'and', 'or' or end of query" in bad and "^" in bad
    assert "did you mean" in cli(daemon, "find", "Modalty=PT", check=False).lower()


def test_derive_add_links_files_to_their_origin(daemon: Daemon, archive: dict[str, list[Path]],
                                                 tmp_path: Path) -> None:
    voi = tmp_path / "striatum.voi"
    voi.write_text("VOI data")
    series_uid = uid(archive["p2_pt"][0], "SeriesInstanceUID")
    out = cli(daemon, "derive", "add", series_uid, str(voi), "--kind", "voi")
    assert f"stored as derived voi data of series {series_uid}" in out
    assert "striatum.voi\tvoi\t8\t" in cli(daemon, "derive", "list", series_uid)
    assert cli(daemon, "find", "has:derived", "--count").strip() == "1"
    series_dir = Path(cli(daemon, "find", f"SeriesInstanceUID={series_uid}", "--level", "series", "--paths",
                          "--mount", str(daemon.mount)).strip())
    wait_for(lambda: (series_dir / "derived" / "striatum.voi").exists(), 2.0, "the derived file in the mount")
    assert (series_dir / "derived" / "striatum.voi").read_text() == "VOI data"
    summary = json.loads((series_dir / "series.json").read_text())
    [item] = summary["Derived"]
    assert item["name"] == "derived/striatum.voi" and item["origin"] == {"level": "series", "uid": series_uid}
    assert "needs exactly one" in cli(daemon, "derive", "add", "Modality=CT", str(voi), check=False)


def test_query_folders_list_matching_studies_and_saved_ones_persist(
    daemon: Daemon, archive: dict[str, list[Path]]
) -> None:
    cli(daemon, "tag", "set", uid(archive["p2_ct"][0], "StudyInstanceUID"), "diagnosis=AD")
    query = daemon.mount / "query"
    assert os.listdir(query) == []
    found = query / "Modality=PT and tag:diagnosis=AD"
    [study] = os.listdir(found)  # any valid query is a folder
    assert study.startswith("TWO^PAT")
    series = sorted(os.listdir(found / study))
    assert series == ["003 CT Lung 1.0", "005 PT FDG", "derived", "study.json"]
    assert (found / study / "005 PT FDG" / "001.dcm").read_bytes()[128:132] == b"DICM"
    assert len(os.listdir(query / "Modality=CT")) == 2
    assert not (query / "Modality=PT StudyDate").exists()  # not a query: no such folder
    with pytest.raises(OSError) as err:
        os.mkdir(query / "Modalty=PT")
    assert err.value.errno == errno.EINVAL
    assert sorted(os.listdir(query)) == ["Modality=CT", "Modality=PT and tag:diagnosis=AD"]  # used = saved
    os.rmdir(query / "Modality=CT")
    daemon.stop()
    daemon.start()
    assert os.listdir(daemon.mount / "query") == ["Modality=PT and tag:diagnosis=AD"]  # persists across remounts
    assert len(os.listdir(daemon.mount / "query" / "Modality=PT and tag:diagnosis=AD")) == 1


def test_rules_route_arriving_studies_into_projects(daemon: Daemon, tmp_path: Path) -> None:
    from conftest import dcmtk

    config = tmp_path / "rules.toml"
    config.write_text('[[rules]]\nproject = "AMYLOID"\nmatch = "StudyDescription~amyloid"\n\n'
                      '[[rules]]\nproject = "FROM-PET1"\ncalling_ae = "PET1"\n')
    daemon.start("--config", str(config))
    amyloid = dicomgen.series(tmp_path / "a", 2, PatientID="R1", StudyDescription="PET Amyloid brain")
    other = dicomgen.series(tmp_path / "b", 1, PatientID="R2", StudyDescription="CT chest")
    assert dcmtk("storescu", "-aet", "PET1", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *amyloid).returncode == 0
    assert dcmtk("storescu", "-aet", "CT9", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *other).returncode == 0
    projects = daemon.mount / "projects"
    wait_for(lambda: sorted(os.listdir(projects)) == ["AMYLOID", "FROM-PET1"], 3.0, "the rule-made projects")
    assert [p.split(" [")[1] for p in os.listdir(projects / "AMYLOID")] == ["R1]"]
    assert [p.split(" [")[1] for p in os.listdir(projects / "FROM-PET1")] == ["R1]"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nproject = "X"\nmatch = "Modalty=PT"\n')
    result = run_cli("find", "--config", bad, "--data-dir", daemon.data_dir, check=False)
    assert result.returncode == 2 and "did you mean" in result.stderr.lower()


def test_the_mount_finds_by_acquisition_values_and_folded_names_and_says_why_a_query_is_refused(
    daemon: Daemon, data_dir: Path, tmp_path: Path
) -> None:
    dicomgen.series(tmp_path / "mr", 2, PatientID="N1", PatientName="Ödegård^Åsa", Modality="MR",
                    SeriesDescription="t2_tse", SliceThickness=0.9, EchoTime=96.0)
    dicomgen.series(tmp_path / "dot", 1, PatientID="", PatientName=".Hidden^Anna", SliceThickness=5.0)
    run_cli("import", "--data-dir", data_dir, tmp_path / "mr", tmp_path / "dot")
    daemon.start()
    assert sorted(os.listdir(daemon.mount / "patients")) == ["_Hidden^Anna", "Ödegård^Åsa [N1]"]
    query = daemon.mount / "query"
    [study] = os.listdir(query / "PatientName=ödegård* and SliceThickness<=1 and EchoTime>=80")
    assert study.startswith("Ödegård^Åsa ")
    series = json.loads((query / "SliceThickness>1" / os.listdir(query / "SliceThickness>1")[0]
                         / "003 CT Lung 1.0" / "series.json").read_text())
    assert (series["SliceThickness"], series["PixelSpacing"], series["Rows"]) == (5.0, [0.7, 0.7], 16)
    for _ in range(2):
        assert not (query / "SliceThikness<1").exists()  # ENOENT, and the reason in the log once
        with pytest.raises(OSError) as err:
            os.mkdir(query / "SliceThikness<1")
        assert err.value.errno == errno.EINVAL
    wait_for(lambda: "is not a query" in daemon.log(), 5, "the warning")
    refused = [line for line in daemon.log().splitlines() if "is not a query" in line]
    assert len(refused) == 1 and "WARNING" in refused[0]
    assert "/query/SliceThikness<1 is not a query: unknown keyword 'SliceThikness' (did you mean SliceThickness?) " \
           "at position 0; known attributes" in refused[0]
