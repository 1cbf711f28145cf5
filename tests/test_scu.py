"""The requesting side of the DICOM node against a real Orthanc: echo, find, get and move, and every way they fail."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import copy_testdata, free_port, wait_for
from orthanc import Orthanc
from pydicom.uid import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from dicomfs.config import RemoteNode
from dicomfs.errors import UserError
from dicomfs.net import scu

CALLING = "DICOMFS"
TIMEOUT = 10.0


def remote_of(server: Orthanc) -> RemoteNode:
    return RemoteNode(name="pacs", ae_title=server.aet, host="127.0.0.1", port=server.dicom_port)


def dataset_bytes(part10: bytes) -> bytes:
    """What follows the File Meta Information: (0002,0000)'s value sits at offset 140."""
    assert part10[128:132] == b"DICM"
    return part10[144 + int.from_bytes(part10[140:144], "little"):]


@pytest.fixture
def archive(orthanc: Orthanc, tmp_path: Path) -> dict[str, list[Path]]:
    """Orthanc holding three studies: DOE^JOHN (two series, 3 + 2), DOE^JANE (2023), SMITH^ANNA."""
    john = dicomgen.series(tmp_path / "john1", 3, rows=32, columns=32)
    study = pydicom.dcmread(john[0]).StudyInstanceUID
    john2 = dicomgen.series(tmp_path / "john2", 2, rows=8, columns=8, SeriesNumber=4, SeriesDescription="Soft")
    for path in john2:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path)
    jane = dicomgen.series(tmp_path / "jane", 1, rows=8, columns=8, PatientName="DOE^JANE", PatientID="J1",
                           StudyDate="20230105")
    anna = dicomgen.series(tmp_path / "anna", 1, rows=8, columns=8, PatientName="SMITH^ANNA", PatientID="A1",
                           StudyDate="20240310")
    orthanc.start()
    orthanc.upload(john + john2 + jane + anna)
    return {"john": john, "john2": john2, "jane": jane, "anna": anna}


def test_echo(orthanc: Orthanc) -> None:
    orthanc.start()
    scu.echo(remote_of(orthanc), calling_ae=CALLING, timeout=TIMEOUT)


def test_find_studies_by_wildcard_name_and_date_range(orthanc: Orthanc, archive: dict[str, list[Path]]) -> None:
    keys = {"PatientName": "DOE*", "StudyDate": "20240101-20241231", "StudyInstanceUID": "", "PatientID": "",
            "NumberOfStudyRelatedInstances": ""}
    [study] = scu.find(remote_of(orthanc), "STUDY", keys, calling_ae=CALLING, timeout=TIMEOUT)
    john = pydicom.dcmread(archive["john"][0])
    assert study.StudyInstanceUID == john.StudyInstanceUID
    assert study.PatientName == "DOE^JOHN"
    assert study.PatientID == "12345"
    assert int(study.NumberOfStudyRelatedInstances) == 5
    # the date range alone: JOHN and ANNA; the name alone: JOHN and JANE
    dated = scu.find(remote_of(orthanc), "STUDY", {"StudyDate": "20240101-", "PatientName": ""},
                     calling_ae=CALLING, timeout=TIMEOUT)
    assert sorted(str(ds.PatientName) for ds in dated) == ["DOE^JOHN", "SMITH^ANNA"]
    named = scu.find(remote_of(orthanc), "STUDY", {"PatientName": "DOE*", "StudyDate": ""},
                     calling_ae=CALLING, timeout=TIMEOUT)
    assert sorted(ds.StudyDate for ds in named) == ["20230105", "20240301"]
    assert scu.find(remote_of(orthanc), "STUDY", {"PatientName": "NOBODY*"}, calling_ae=CALLING, timeout=TIMEOUT) == []


def test_find_series_and_images(orthanc: Orthanc, archive: dict[str, list[Path]]) -> None:
    john = [pydicom.dcmread(p) for p in archive["john"]]
    study = john[0].StudyInstanceUID
    series = scu.find(remote_of(orthanc), "SERIES",
                      {"StudyInstanceUID": study, "SeriesInstanceUID": "", "SeriesNumber": "", "Modality": "",
                       "NumberOfSeriesRelatedInstances": ""}, calling_ae=CALLING, timeout=TIMEOUT)
    assert sorted((int(ds.SeriesNumber), int(ds.NumberOfSeriesRelatedInstances)) for ds in series) == [(3, 3), (4, 2)]
    assert {ds.Modality for ds in series} == {"CT"}
    images = scu.find(remote_of(orthanc), "IMAGE",
                      {"StudyInstanceUID": study, "SeriesInstanceUID": john[0].SeriesInstanceUID,
                       "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}, calling_ae=CALLING,
                      timeout=TIMEOUT)
    assert sorted((int(ds.InstanceNumber), ds.SOPInstanceUID) for ds in images) == [
        (n, ds.SOPInstanceUID) for n, ds in enumerate(john, start=1)]
    assert {ds.SOPClassUID for ds in images} == {CTImageStorage}


@pytest.mark.parametrize(
    ("encoding", "charset", "name"),
    [("Latin1", "ISO_IR 100", "Müller^Jürgen"), ("Utf8", "ISO_IR 192", "Müller^Jürgen"),
     ("Greek", "ISO_IR 126", "Παπαδόπουλος^Αθηνά")],
)
def test_find_non_ascii_names_come_back_decoded(
    orthanc: Orthanc, tmp_path: Path, encoding: str, charset: str, name: str
) -> None:
    """Orthanc answers in its DefaultEncoding: each answer is decoded per its own character set."""
    [path] = dicomgen.series(tmp_path / "in", 1, rows=8, columns=8, PatientName=name, PatientID="U1")
    orthanc.options = {"DefaultEncoding": encoding}
    orthanc.start()
    orthanc.upload([path])  # stored as UTF-8 (ISO_IR 192)
    for match in (name[:3] + "*", "*"):  # a match value sent as UTF-8, and an ASCII one
        [study] = scu.find(remote_of(orthanc), "STUDY", {"PatientName": match, "PatientID": "U1"},
                           calling_ae=CALLING, timeout=TIMEOUT)
        assert study.SpecificCharacterSet == charset
        assert str(study.PatientName) == name


def test_get_series_gives_the_uploaded_datasets(orthanc: Orthanc, archive: dict[str, list[Path]]) -> None:
    originals = {pydicom.dcmread(p).SOPInstanceUID: p for p in archive["john"]}
    first = pydicom.dcmread(archive["john"][0])
    received: list[bytes] = []
    result = scu.get(remote_of(orthanc), "SERIES",
                     {"StudyInstanceUID": first.StudyInstanceUID, "SeriesInstanceUID": first.SeriesInstanceUID},
                     calling_ae=CALLING, timeout=TIMEOUT, sop_classes=[CTImageStorage], on_instance=received.append)
    assert result == scu.RetrieveResult(completed=3, failed=0, warning=0, status=0x0000)
    assert len(received) == 3
    for data in received:
        got = pydicom.dcmread(io.BytesIO(data))
        original_path = originals.pop(got.SOPInstanceUID)
        original = pydicom.dcmread(original_path)
        assert got == original
        assert got.PixelData == original.PixelData
        assert dataset_bytes(data) == dataset_bytes(original_path.read_bytes())  # the bytes sent, untouched
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID
        assert got.file_meta.SourceApplicationEntityTitle == orthanc.aet
    assert not originals


def test_get_keeps_each_stored_transfer_syntax(orthanc: Orthanc, tmp_path: Path) -> None:
    """Two transfer syntaxes of one SOP class in one series, two of another class: none transcoded.

    Datasets are compared, not bytes: Orthanc re-encodes undefined-length sequences (in
    JPEG2000.dcm) with explicit lengths when it sends.
    """
    paths = copy_testdata(["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"],
                          tmp_path / "in")
    originals = {pydicom.dcmread(p).SOPInstanceUID: p for p in paths}
    orthanc.start()
    orthanc.upload(paths)
    received: list[bytes] = []
    for study in sorted({pydicom.dcmread(p).StudyInstanceUID for p in paths}):
        scu.get(remote_of(orthanc), "STUDY", {"StudyInstanceUID": study}, calling_ae=CALLING, timeout=TIMEOUT,
                sop_classes=[SecondaryCaptureImageStorage, MRImageStorage], on_instance=received.append)
    assert len(received) == len(paths)
    for data in received:
        got = pydicom.dcmread(io.BytesIO(data))
        original = originals[got.SOPInstanceUID]
        expected = pydicom.dcmread(original)
        assert got.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID
        assert got == expected
        assert got.PixelData == expected.PixelData


def test_get_counts_an_instance_that_could_not_be_kept(
    orthanc: Orthanc, archive: dict[str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    first = pydicom.dcmread(archive["john"][0])
    refused = pydicom.dcmread(archive["john"][1]).SOPInstanceUID
    kept: list[str] = []

    def keep(data: bytes) -> None:
        uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        if uid == refused:
            raise OSError(28, "No space left on device")
        kept.append(uid)

    result = scu.get(remote_of(orthanc), "SERIES",
                     {"StudyInstanceUID": first.StudyInstanceUID, "SeriesInstanceUID": first.SeriesInstanceUID},
                     calling_ae=CALLING, timeout=TIMEOUT, sop_classes=[CTImageStorage], on_instance=keep)
    assert (result.completed, result.failed, result.warning) == (2, 1, 0)
    assert result.status == 0xB000  # sub-operations complete, one or more failures
    assert refused not in kept and len(kept) == 2
    assert f"cannot keep {refused} from pacs: [Errno 28] No space left on device" in caplog.text


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp as a C-MOVE destination (AE STORESCP): (port, folder it writes to)."""
    port, out = free_port(), tmp_path / "moved"
    out.mkdir()
    proc = subprocess.Popen(["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: listening(port) or proc.poll() is not None, 10, "storescp")
        assert proc.poll() is None, "storescp exited"
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_move_delivers_to_a_storescp(orthanc: Orthanc, tmp_path: Path, storescp: tuple[int, Path]) -> None:
    port, out = storescp
    paths = dicomgen.series(tmp_path / "in", 4, rows=16, columns=16)
    orthanc.modalities = {"store": ("STORESCP", "127.0.0.1", port)}
    orthanc.start()
    orthanc.upload(paths)
    first = pydicom.dcmread(paths[0])
    result = scu.move(remote_of(orthanc), "SERIES",
                      {"StudyInstanceUID": first.StudyInstanceUID, "SeriesInstanceUID": first.SeriesInstanceUID},
                      destination_ae="STORESCP", calling_ae=CALLING, timeout=TIMEOUT)
    assert result == scu.RetrieveResult(completed=4, failed=0, warning=0, status=0x0000)
    wait_for(lambda: len(list(out.iterdir())) == 4, 5, "four files at storescp")
    originals = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in paths}
    for path in out.iterdir():
        got = pydicom.dcmread(path)
        assert got == originals[got.SOPInstanceUID]
        assert got.PixelData == originals[got.SOPInstanceUID].PixelData


def test_move_to_an_unknown_destination(orthanc: Orthanc, archive: dict[str, list[Path]]) -> None:
    study = pydicom.dcmread(archive["john"][0]).StudyInstanceUID
    with pytest.raises(scu.RemoteError) as caught:
        scu.move(remote_of(orthanc), "STUDY", {"StudyInstanceUID": study}, destination_ae="NOWHERE",
                 calling_ae=CALLING, timeout=TIMEOUT)
    # PS3.4 C.4.2.1.5 says 0xA801 (move destination unknown); Orthanc 1.10 answers 0xC000 (unable to process)
    assert caught.value.status in (0xA801, 0xC000)
    assert caught.value.remote == "pacs"
    assert "C-MOVE to NOWHERE on pacs" in str(caught.value)
    assert f"0x{caught.value.status:04X}" in str(caught.value)


def test_rejected_association_names_the_called_ae_title_to_correct(orthanc: Orthanc) -> None:
    orthanc.options = {"DicomCheckCalledAet": True}
    orthanc.start()
    wrong = RemoteNode(name="pacs", ae_title="NOT_ORTHANC", host="127.0.0.1", port=orthanc.dicom_port)
    with pytest.raises(scu.RemoteRefusedError, match=r"C-ECHO on pacs .* association rejected") as caught:
        scu.echo(wrong, calling_ae=CALLING, timeout=TIMEOUT)
    assert "called AE title not recognised (the remote is not 'NOT_ORTHANC': correct the ae_title of remote pacs)" \
        in str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


def test_rejected_association_names_our_calling_ae_title(orthanc: Orthanc) -> None:
    """Orthanc that answers declared modalities only: our AE title is unknown to it."""
    orthanc.options = {f"DicomAlwaysAllow{service}": False for service in ("Echo", "Store", "Find", "Get", "Move")}
    orthanc.modalities = {"other": ("OTHER", "127.0.0.1", free_port())}
    orthanc.start()
    with pytest.raises(scu.RemoteRefusedError) as caught:
        scu.find(remote_of(orthanc), "STUDY", {"PatientID": ""}, calling_ae=CALLING, timeout=TIMEOUT)
    assert "calling AE title not recognised (declare our AE title 'DICOMFS' on the remote" in str(caught.value)


def test_stopped_pacs_refuses_at_once(orthanc: Orthanc) -> None:
    orthanc.start()
    remote = remote_of(orthanc)
    orthanc.stop()
    for call in (lambda: scu.echo(remote, calling_ae=CALLING, timeout=TIMEOUT),
                 lambda: scu.find(remote, "STUDY", {"PatientID": ""}, calling_ae=CALLING, timeout=TIMEOUT)):
        started = time.monotonic()
        with pytest.raises(scu.RemoteError, match="cannot connect: Connection refused") as caught:
            call()
        assert time.monotonic() - started < 1.0
        assert caught.value.remote == "pacs" and caught.value.status is None
        assert not isinstance(caught.value, scu.RemoteTimeoutError | UserError)  # down: neither silent nor a mistake


@pytest.fixture
def silent_peer() -> Iterator[RemoteNode]:
    """A port whose connections the kernel completes but nobody ever accepts or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield RemoteNode(name="silent", ae_title="SILENT", host="127.0.0.1", port=listener.getsockname()[1])


@pytest.mark.parametrize("operation", ["echo", "find", "get", "move"])
def test_silent_peer_times_out(silent_peer: RemoteNode, operation: str) -> None:
    calls = {
        "echo": lambda: scu.echo(silent_peer, calling_ae=CALLING, timeout=2),
        "find": lambda: scu.find(silent_peer, "STUDY", {"PatientID": ""}, calling_ae=CALLING, timeout=2),
        "get": lambda: scu.get(silent_peer, "STUDY", {"StudyInstanceUID": "1.2.3"}, calling_ae=CALLING, timeout=2,
                               sop_classes=[CTImageStorage], on_instance=lambda data: None),
        "move": lambda: scu.move(silent_peer, "STUDY", {"StudyInstanceUID": "1.2.3"}, destination_ae="X",
                                 calling_ae=CALLING, timeout=2),
    }
    started = time.monotonic()
    with pytest.raises(scu.RemoteTimeoutError, match=r"on silent .* no answer within 2 s"):
        calls[operation]()
    assert time.monotonic() - started < 5


@pytest.fixture
def stalling_pacs() -> Iterator[RemoteNode]:
    """A pynetdicom C-GET SCP that accepts the association, then never answers the request."""
    release = threading.Event()

    def stall(event: evt.Event) -> Iterator[int]:
        release.wait(30)
        yield 0  # no sub-operations, far too late

    ae = AE(ae_title="STALL")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, stall)])
    try:
        yield RemoteNode(name="stall", ae_title="STALL", host="127.0.0.1", port=server.server_address[1])
    finally:
        release.set()
        server.shutdown()


def test_pacs_silent_after_association_times_out(stalling_pacs: RemoteNode) -> None:
    started = time.monotonic()
    with pytest.raises(scu.RemoteTimeoutError, match=r"C-GET on stall .* no answer within 2 s"):
        scu.get(stalling_pacs, "STUDY", {"StudyInstanceUID": "1.2.3"}, calling_ae=CALLING, timeout=2,
                sop_classes=[CTImageStorage], on_instance=lambda data: None)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("level", "keys", "message"),
    [("PATIENT", {}, "query level"), ("STUDY", {"PatientsName": "X"}, "not a DICOM keyword")],
)
def test_bad_requests_are_refused_before_connecting(level: str, keys: dict[str, str], message: str) -> None:
    nowhere = RemoteNode(name="nowhere", ae_title="X", host="127.0.0.1", port=free_port())
    with pytest.raises(ValueError, match=message):
        scu.find(nowhere, level, keys, calling_ae=CALLING, timeout=1)
