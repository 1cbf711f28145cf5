"""The DICOM node with real DCMTK peers: echo and store."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import Daemon, copy_testdata, dcmtk, free_port, wait_for
from orthanc import Orthanc

SERIES = Path("patients/DOE^JOHN [12345]/2024-03-01 CT Thorax [ACC123]/003 CT Lung 1.0")


def test_echoscu(daemon: Daemon) -> None:
    daemon.start()
    result = dcmtk("echoscu", "-aec", "DICOMFS", "127.0.0.1", daemon.port)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("parse_workers", [2, 0], ids=["parser-processes", "in-thread"])
def test_storescu_many_files_one_association(daemon: Daemon, tmp_path: Path, parse_workers: int) -> None:
    paths = dicomgen.series(tmp_path / "in", 20, rows=32, columns=32)
    config = tmp_path / "node.toml"
    config.write_text(f"[dicom]\nparse_workers = {parse_workers}\n")
    daemon.start("--config", str(config))
    result = dcmtk("storescu", "-aec", "DICOMFS", "-aet", "MODALITY", "127.0.0.1", daemon.port, *paths)
    assert result.returncode == 0, result.stderr
    series_dir = daemon.mount / SERIES
    wait_for(lambda: series_dir.exists() and len(list(series_dir.glob("*.dcm"))) == 20, 2.0, "the series")
    for n, path in enumerate(paths, start=1):
        stored = (series_dir / f"{n:03d}.dcm").read_bytes()
        original = path.read_bytes()
        # Our Part 10 header, then exactly the dataset bytes that were sent.
        sent = pydicom.dcmread(path)
        assert stored[128:132] == b"DICM"
        assert stored.endswith(original[original.index(b"\x08\x00\x05\x00"):])
        assert pydicom.dcmread(series_dir / f"{n:03d}.dcm").SOPInstanceUID == sent.SOPInstanceUID


def test_a_data_set_in_many_small_pdus_is_kept_exactly(daemon: Daemon, tmp_path: Path) -> None:
    """storescu limited to 4 KiB PDUs: each 128x128 image arrives in nine P-DATA PDUs."""
    paths = dicomgen.series(tmp_path / "in", 5, rows=128, columns=128)
    daemon.start()
    result = dcmtk("storescu", "--max-send-pdu", "4096", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *paths)
    assert result.returncode == 0, result.stderr
    series_dir = daemon.mount / SERIES
    wait_for(lambda: len(list(series_dir.glob("*.dcm"))) == 5, 2.0, "the series")
    for n, path in enumerate(paths, start=1):
        original = path.read_bytes()
        assert (series_dir / f"{n:03d}.dcm").read_bytes().endswith(original[original.index(b"\x08\x00\x05\x00"):])


def test_one_association_mixing_echo_store_and_find(daemon: Daemon, tmp_path: Path) -> None:
    """Requests we answer in the reading thread (C-ECHO, C-STORE) between pynetdicom's (C-FIND),
    with a refused C-STORE and its reason on the way."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

    daemon.start()
    ae = AE(ae_title="MIXED")
    for context in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
        ae.add_requested_context(context)
    good = [dicomgen.make_dataset(rows=64, columns=64, InstanceNumber=n) for n in (1, 2)]
    bad = dicomgen.make_dataset(StudyInstanceUID=dicomgen.REMOVE)
    for ds in (*good, bad):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientName = "DOE*"
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="DICOMFS")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(good[0]).Status == 0x0000
        answers = [identifier.StudyInstanceUID for status, identifier in
                   assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind) if status.Status == 0xFF00]
        refused = assoc.send_c_store(bad)
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(good[1]).Status == 0x0000
    finally:
        assoc.release()
    assert answers == [good[0].StudyInstanceUID]
    assert refused.Status == 0xC000 and "StudyInstanceUID" in refused.ErrorComment
    for ds in good:
        wait_for(lambda ds=ds: _find(daemon, f"{ds.SOPInstanceUID}.dcm") is not None, 2.0, "the stored instance")
    assert "refused C-STORE" in daemon.log()


@pytest.mark.parametrize(
    ("option", "files", "stored_as"),
    [
        ("-xi", ["CT_small.dcm"], "1.2.840.10008.1.2"),
        ("-xe", ["CT_small.dcm"], "1.2.840.10008.1.2.1"),
        ("-xd", ["CT_small.dcm"], "1.2.840.10008.1.2.1.99"),  # deflated by storescu on the way
        ("-xy", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_small_odd_jpeg.dcm"], "1.2.840.10008.1.2.4.50"),
        ("-xx", ["JPGExtended.dcm"], "1.2.840.10008.1.2.4.51"),
        ("-xs", ["SC_rgb_jpeg_gdcm.dcm"], "1.2.840.10008.1.2.4.70"),
        ("-xt", ["MR_small_jpeg_ls_lossless.dcm"], "1.2.840.10008.1.2.4.80"),
        ("-xu", ["JPEGLSNearLossless_08.dcm"], "1.2.840.10008.1.2.4.81"),
        ("-xv", ["GDCMJ2K_TextGBR.dcm"], "1.2.840.10008.1.2.4.90"),
        ("-xw", ["693_J2KI.dcm"], "1.2.840.10008.1.2.4.91"),
        ("-xr", ["SC_rgb_rle.dcm"], "1.2.840.10008.1.2.5"),
    ],
    ids=["implicit", "explicit", "deflated", "jpeg-baseline", "jpeg-extended", "jpeg-lossless", "jpeg-ls",
         "jpeg-ls-near-lossless", "jpeg2000-lossless", "jpeg2000", "rle"],
)
def test_storescu_transfer_syntaxes(
    daemon: Daemon, tmp_path: Path, option: str, files: list[str], stored_as: str
) -> None:
    paths = [_with_uids(p) for p in copy_testdata(files, tmp_path / "in")]
    daemon.start()
    result = dcmtk("storescu", option, "-aec", "DICOMFS", "127.0.0.1", daemon.port, *paths)
    assert result.returncode == 0, result.stderr
    for path in paths:
        sent = pydicom.dcmread(path)
        name = f"{sent.SOPInstanceUID}.dcm"
        wait_for(lambda name=name: _find(daemon, name) is not None, 2.0, name)
        stored = pydicom.dcmread(_find(daemon, name))
        assert stored.SOPInstanceUID == sent.SOPInstanceUID
        assert stored.file_meta.TransferSyntaxUID == stored_as
        if stored_as == sent.file_meta.TransferSyntaxUID:  # compressed data is kept exactly as sent
            assert stored.PixelData == sent.PixelData


def _find(daemon: Daemon, name: str) -> Path | None:
    return next((daemon.mount / "studies").rglob(name), None)


def _with_uids(path: Path) -> Path:
    """Some of pydicom's codec samples lack Study/Series UIDs; add them, pixel data untouched."""
    ds = pydicom.dcmread(path)
    if "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or pydicom.uid.generate_uid()
        ds.save_as(path)
    return path


def test_store_refuses_an_object_without_uids(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    ds = dicomgen.make_dataset(StudyInstanceUID=dicomgen.REMOVE)
    path = dicomgen.write(tmp_path / "bad.dcm", ds)
    result = dcmtk("storescu", "-aec", "DICOMFS", "127.0.0.1", daemon.port, path)
    assert "0xc000" in (result.stdout + result.stderr).lower() or result.returncode != 0
    assert not list((daemon.data_dir / "store").rglob("*.dcm"))
    assert not list((daemon.data_dir / "store" / ".tmp").iterdir())
    assert "refused C-STORE" in daemon.log()


def test_allow_lists_refuse_other_callers(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[dicom.allow]\nstore = ["MODALITY@127.0.0.1"]\nquery = ["WS1"]\n')
    path = dicomgen.write(tmp_path / "a.dcm", dicomgen.make_dataset())
    daemon.start("--config", str(config))
    refused = dcmtk("storescu", "-v", "-aet", "INTRUDER", "-aec", "DICOMFS", "127.0.0.1", daemon.port, path)
    assert "Refused" in refused.stdout + refused.stderr or refused.returncode != 0
    assert not list((daemon.data_dir / "store").rglob("*.dcm"))
    accepted = dcmtk("storescu", "-aet", "MODALITY", "-aec", "DICOMFS", "127.0.0.1", daemon.port, path)
    assert accepted.returncode == 0, accepted.stderr
    assert len(list((daemon.data_dir / "store").rglob("*.dcm"))) == 1
    # MODALITY may not query: the query models are not offered to it at negotiation.
    query = dcmtk("findscu", "-v", "-S", "-aet", "MODALITY", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "PatientName", "127.0.0.1", daemon.port)
    assert query.returncode != 0 and "No Acceptable Presentation Contexts" in query.stdout + query.stderr
    allowed = dcmtk("findscu", "-v", "-S", "-aet", "WS1", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "PatientName", "127.0.0.1", daemon.port)
    assert "Success" in allowed.stdout + allowed.stderr and "DOE^JOHN" in allowed.stdout + allowed.stderr
    assert "refused store request from INTRUDER@127.0.0.1" in daemon.log()


def test_peers_in_no_allow_list_are_rejected_at_association(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    # Every group restricted; WS1 is admitted only from a host that is not this one.
    config.write_text('[dicom.allow]\nstore = ["MODALITY@127.0.0.1"]\nquery = ["WS1@192.0.2.1"]\n'
                      'retrieve = ["WS1@192.0.2.1"]\n')
    daemon.start("--config", str(config))
    for caller in ("INTRUDER", "WS1"):
        rejected = dcmtk("echoscu", "-v", "-aet", caller, "-aec", "DICOMFS", "127.0.0.1", daemon.port)
        out = rejected.stdout + rejected.stderr
        assert rejected.returncode != 0 and "Association Rejected" in out, out
        assert "Calling AE Title Not Recognized" in out, out
        assert f"rejected an association from {caller}@127.0.0.1: in no allow-list" in daemon.log()
    accepted = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "DICOMFS", "127.0.0.1", daemon.port)
    assert accepted.returncode == 0, accepted.stderr
    # MODALITY may only store: a query on its association finds no accepted context.
    query = dcmtk("findscu", "-v", "-S", "-aet", "MODALITY", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "PatientName", "127.0.0.1", daemon.port)
    assert query.returncode != 0 and "No Acceptable Presentation Contexts" in query.stdout + query.stderr


def test_a_configured_remote_may_send_where_store_is_restricted(daemon: Daemon, orthanc: Orthanc,
                                                               tmp_path: Path) -> None:
    """A PACS we retrieve from by C-MOVE sends back: a declared peer for storage, not for query."""
    orthanc.dicom_port, orthanc.http_port = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(f'[dicom.allow]\nstore = ["MODALITY"]\nquery = ["WS1"]\n\n[[dicom.remotes]]\nname = "pacs"\n'
                      f'ae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    daemon.start("--no-mount", "--config", str(config))
    port = daemon.port
    orthanc.modalities = {"dicomfs": ("DICOMFS", "127.0.0.1", port)}
    orthanc.start()
    ids = orthanc.upload(dicomgen.series(tmp_path / "in", 3, rows=16, columns=16, PatientID="BACK"))
    request = urllib.request.Request(f"{orthanc.url}/modalities/dicomfs/store", method="POST",
                                     data=json.dumps({"Resources": ids, "Synchronous": True}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    assert len(list((daemon.data_dir / "store").rglob("*.dcm"))) == 3
    assert f"store: MODALITY, {orthanc.aet}@127.0.0.1 (remote pacs)" in daemon.log()
    # The same AE title may not query: its query contexts are not offered.
    query = dcmtk("findscu", "-S", "-aet", orthanc.aet, "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "PatientID", "127.0.0.1", port)
    assert query.returncode != 0 and "No Acceptable Presentation Contexts" in query.stdout + query.stderr


def test_check_called_ae_refuses_associations_for_another_title(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\ncheck_called_ae = true\n")
    daemon.start("--no-mount", "--config", str(config))
    wrong = dcmtk("echoscu", "-v", "-aec", "ANY-SCP", "127.0.0.1", daemon.port)
    out = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in out, out
    assert dcmtk("echoscu", "-aec", "DICOMFS", "127.0.0.1", daemon.port).returncode == 0
