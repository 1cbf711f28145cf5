"""dicomfs as the client of strict peers: another dicomfs node (hierarchical C-FIND only) and Orthanc.

Each test runs against both: a second ``dicomfs serve --no-mount`` over an archive filled by
``dicomfs import``, and a real Orthanc. Remote query at every level (series and image
queries without the UIDs above them), ``remote pull`` of a study, and a listing with a
fetch-on-open through the mount.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, run_cli, wait_for
from orthanc import Orthanc

PATIENT = "Curie^Marie"
PATIENT_FOLDER = "Curie^Marie [INT1]"


@dataclass
class Peer:
    kind: str
    ae_title: str
    port: int
    files: list[Path]
    daemon: Daemon | None = None  # when it is a dicomfs node


@pytest.fixture
def peer_files(tmp_path: Path) -> list[Path]:
    """One study of patient INT1 with two series (6 and 3 instances), and a study of another patient."""
    first = dicomgen.series(tmp_path / "src1", 6, rows=16, columns=16, PatientID="INT1", PatientName=PATIENT,
                            StudyDate="20240105")
    study = pydicom.dcmread(first[0]).StudyInstanceUID
    second = dicomgen.series(tmp_path / "src2", 3, rows=16, columns=16, PatientID="INT1", PatientName=PATIENT,
                             StudyDate="20240105", SeriesNumber=4, SeriesDescription="Soft", Modality="MR")
    for path in second:  # the same study
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path)
    other = dicomgen.series(tmp_path / "src3", 2, rows=8, columns=8, PatientID="OTHER", PatientName="Other^Olga",
                            StudyDate="20230101")
    return first + second + other


@pytest.fixture(params=["dicomfs", "orthanc"])
def peer(request: pytest.FixtureRequest, tmp_path: Path, orthanc: Orthanc, peer_files: list[Path]) -> Iterator[Peer]:
    if request.param == "orthanc":
        orthanc.start()
        orthanc.upload(peer_files)
        yield Peer("orthanc", orthanc.aet, orthanc.dicom_port, peer_files)
        return
    node = Daemon(data_dir=tmp_path / "peer-data", mount=tmp_path / "peer-mnt", log_path=tmp_path / "peer.log")
    run_cli("import", "--create", "--data-dir", node.data_dir, *peer_files)
    try:
        node.start("--no-mount", "--ae-title", "PEER")
        yield Peer("dicomfs", "PEER", node.port, peer_files, node)
    finally:
        status = node.stop()
    assert status in (None, 0), node.log()
    assert not node.unexpected_errors(), "the peer logged errors:\n" + "\n".join(node.unexpected_errors())


def config_for(peer: Peer, tmp_path: Path, listing: str = "PatientID=INT1 and StudyDate>=20240101") -> Path:
    path = tmp_path / "dicomfs.toml"
    path.write_text(
        f'[dicom]\nrefresh_minutes = 0\n\n[[dicom.remotes]]\nname = "peer"\nae_title = "{peer.ae_title}"\n'
        f'host = "127.0.0.1"\nport = {peer.port}\ntimeout = 10\nlisting = [{json.dumps(listing)}]\n')
    return path


def query(config: Path, *terms: str, level: str = "study") -> list[dict[str, str]]:
    result = run_cli("remote", "query", "peer", *terms, "--level", level, "--json", "--config", config)
    assert "deprecated" not in result.stderr, result.stderr  # the query language: no deprecation
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_remote_query_at_every_level(peer: Peer, tmp_path: Path) -> None:
    config = config_for(peer, tmp_path)
    originals = [pydicom.dcmread(p) for p in peer.files]
    study_uid = originals[0].StudyInstanceUID

    [study] = query(config, "PatientName=Curie* and StudyDate>=20240101")
    assert study["StudyInstanceUID"] == study_uid and study["NumberOfStudyRelatedInstances"] == "9"
    assert len(query(config, "StudyDate>=20230101 and StudyDate<=20241231")) == 2
    [mr] = query(config, "Modality=MR")  # at study level: Modalities in Study
    assert mr["StudyInstanceUID"] == study_uid

    # series and images without the UIDs of the levels above: the walk finds them
    series = query(config, "PatientID=INT1", level="series")
    assert sorted((s["SeriesNumber"], s["NumberOfSeriesRelatedInstances"]) for s in series) == [("3", "6"), ("4", "3")]
    assert {s["StudyInstanceUID"] for s in series} == {study_uid}
    assert len(query(config, level="series")) == 3  # every series of every study
    [soft] = query(config, "Modality=MR and SeriesNumber=4", level="series")
    assert soft["SeriesDescription"] == "Soft"

    images = query(config, "PatientID=INT1", level="image")
    assert sorted(i["SOPInstanceUID"] for i in images) == sorted(ds.SOPInstanceUID for ds in originals[:9])
    in_soft = query(config, "SeriesDescription=Soft", level="image")
    assert sorted(i["SOPInstanceUID"] for i in in_soft) == sorted(ds.SOPInstanceUID for ds in originals[6:9])
    assert {i["SeriesInstanceUID"] for i in in_soft} == {originals[6].SeriesInstanceUID}
    one = originals[7].SOPInstanceUID
    assert [i["InstanceNumber"] for i in query(config, f"SOPInstanceUID={one}", level="image")] == ["2"]
    uids = f"StudyInstanceUID={study_uid} or StudyInstanceUID={originals[9].StudyInstanceUID}"
    assert len(query(config, uids, level="series")) == 3  # a list of UIDs

    table = run_cli("remote", "query", "peer", "PatientID=INT1", "--level", "image", "--config", config)
    assert "9 image answers from peer" in table.stderr
    if peer.daemon is not None:
        assert not peer.daemon.unexpected_errors()  # no request it refused


def test_remote_pull_of_a_study(peer: Peer, tmp_path: Path, data_dir: Path) -> None:
    config = config_for(peer, tmp_path)
    study_uid = pydicom.dcmread(peer.files[0]).StudyInstanceUID
    pulled = run_cli("remote", "pull", "peer", "--study", study_uid, "--data-dir", data_dir, "--config", config)
    assert "9 instances retrieved, 0 failed" in pulled.stdout
    stored = {pydicom.dcmread(p).SOPInstanceUID: p for p in (data_dir / "store").rglob("*.dcm")}
    originals = {pydicom.dcmread(p).SOPInstanceUID: p for p in peer.files[:9]}
    assert stored.keys() == originals.keys()
    for uid, path in stored.items():
        assert pydicom.dcmread(path) == pydicom.dcmread(originals[uid])
    series_uid = pydicom.dcmread(peer.files[6]).SeriesInstanceUID
    again = run_cli("remote", "pull", "peer", "--study", study_uid, "--series", series_uid, "--data-dir", data_dir,
                    "--config", config)
    assert "3 instances retrieved, 0 failed" in again.stdout


def test_listing_and_fetch_on_open_through_the_mount(peer: Peer, tmp_path: Path, daemon: Daemon) -> None:
    config = config_for(peer, tmp_path, listing="PatientName=Curie* and StudyDate>=20240101 and Modality=CT")
    daemon.start("--config", str(config))
    patient = daemon.mount / "patients" / PATIENT_FOLDER
    wait_for(lambda: patient.exists() and any(patient.iterdir()), 15.0, "the remote study in the tree")
    [study] = [p for p in patient.iterdir() if p.is_dir()]
    [soft] = [p for p in study.iterdir() if p.name.startswith("004 ")]
    assert sorted(p.name for p in soft.glob("*.dcm")) == ["001.dcm", "002.dcm", "003.dcm"]
    by_number = {pydicom.dcmread(p).InstanceNumber: pydicom.dcmread(p) for p in peer.files[6:9]}
    for number in (2, 1, 3):
        got = pydicom.dcmread(soft / f"{number:03d}.dcm")
        assert got == by_number[number] and got.PixelData == by_number[number].PixelData
    wait_for(lambda: json.loads((soft / "series.json").read_text())["Remote"]["Complete"], 10.0, "a complete series")
    assert os.listdir(daemon.mount / "patients") == [PATIENT_FOLDER]  # the other patient is not in the saved query
