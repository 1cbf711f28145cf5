"""Exact bytes out: C-GET (getscu) and C-MOVE (movescu to a storescp) send the stored dataset
bytes whenever the peer takes the stored transfer syntax, convert losslessly when it does not,
and count a sub-operation failed when no lossless way exists."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import dicomgen
import numpy as np
import pydicom
import pytest
from conftest import Daemon, dcmtk, free_port, run_cli, wait_for
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    XRayAngiographicImageStorage,
    generate_uid,
)

from dicomfs.index import cfind
from dicomfs.index.db import Database
from dicomfs.index.schema import SCHEMA_VERSION, migrate
from dicomfs.net import outgoing

# Stored transfer syntax: the SOP class its series is stored under (one syntax per class, as
# the acceptor's choice is per SOP class), and the getscu option that makes it propose it.
SYNTAXES = {
    ImplicitVRLittleEndian: (CTImageStorage, "+x="),
    ExplicitVRLittleEndian: (MRImageStorage, "+x="),
    DeflatedExplicitVRLittleEndian: (ComputedRadiographyImageStorage, "+xd"),
    JPEGBaseline8Bit: (SecondaryCaptureImageStorage, "+xy"),
    JPEGLosslessSV1: (NuclearMedicineImageStorage, "+xs"),
    JPEGLSLossless: (PositronEmissionTomographyImageStorage, "+xt"),
    JPEG2000Lossless: (UltrasoundImageStorage, "+xv"),
    RLELossless: (XRayAngiographicImageStorage, "+xr"),
}
PER_SERIES = 2


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's bytes after its file meta group (whose length its first element gives)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00", path
    (length,) = struct.unpack("<I", data[140:144])
    return data[144 + length:]


class Stored:
    """The archive's instances: one series per transfer syntax, in one study."""

    def __init__(self, root: Path) -> None:
        self.study = generate_uid()
        self.series: dict[str, str] = {}
        self.files: dict[str, Path] = {}  # SOP Instance UID -> the imported file
        for syntax, (sop_class, _) in SYNTAXES.items():
            series = self.series[syntax] = generate_uid()
            for n in range(1, PER_SERIES + 1):
                ds = dicomgen.make_dataset(rows=32, columns=32, SOPClassUID=sop_class, StudyInstanceUID=self.study,
                                           SeriesInstanceUID=series, InstanceNumber=n, SeriesNumber=len(self.series))
                if syntax == JPEGBaseline8Bit:
                    dicomgen.eight_bit(ds)
                path = dicomgen.write_in(root / UID(syntax).name.replace(" ", "_") / f"{n}.dcm", ds, syntax)
                self.files[ds.SOPInstanceUID] = path

    def original(self, received: Path) -> Path:
        return self.files[pydicom.dcmread(received, stop_before_pixels=True).SOPInstanceUID]


@pytest.fixture
def stored(daemon: Daemon, data_dir: Path, tmp_path: Path) -> Stored:
    archive = Stored(tmp_path / "in")
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    return archive


def assert_exact(received: Path, original: Path) -> None:
    meta = pydicom.dcmread(received, stop_before_pixels=True).file_meta
    stored_syntax = pydicom.dcmread(original, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert meta.TransferSyntaxUID == stored_syntax, f"{original}: arrived as {meta.TransferSyntaxUID.name}"
    assert dataset_bytes(received) == dataset_bytes(original), f"{original}: the dataset bytes differ"


def assert_converted(received: Path, original: Path, syntax: str) -> None:
    """Arrived in ``syntax``: the same attributes, and the same pixels once decoded."""
    got, want = pydicom.dcmread(received), pydicom.dcmread(original)
    assert got.file_meta.TransferSyntaxUID == syntax, f"{original}: arrived as {got.file_meta.TransferSyntaxUID.name}"
    assert np.array_equal(got.pixel_array, want.pixel_array), f"{original}: the pixels differ"
    for element in want:
        if element.keyword != "PixelData":
            assert got[element.tag].value == element.value, f"{original}: {element.keyword} differs"


def getscu(daemon: Daemon, out: Path, *options: str, **keys: str) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True)
    matching = [arg for keyword, value in keys.items() for arg in ("-k", f"{keyword}={value}")]
    return dcmtk("getscu", "-v", "+B", "-S", "-aec", "DICOMFS", *options, *matching, "-od", out,
                 "127.0.0.1", daemon.port)


# --- the choices, in process ---------------------------------------------------------------

def test_a_syntax_every_stored_instance_can_take_comes_first() -> None:
    assert outgoing.order_for_sending(set())[:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert outgoing.order_for_sending({ImplicitVRLittleEndian})[0] == ImplicitVRLittleEndian
    assert outgoing.order_for_sending({JPEGLSLossless})[:2] == [JPEGLSLossless, ExplicitVRLittleEndian]
    # A compressed syntax first would fail the instances stored otherwise: uncompressed wins,
    # the stored one first; between two stored ones, Explicit.
    mixed = outgoing.order_for_sending({JPEGLSLossless, ImplicitVRLittleEndian})
    assert mixed[:2] == [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    assert mixed.index(JPEGLSLossless) > mixed.index(DeflatedExplicitVRLittleEndian)
    both = outgoing.order_for_sending({ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless})
    assert both[:3] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]


def test_the_stored_syntaxes_of_a_sop_class_come_from_the_index_alone(tmp_path: Path) -> None:
    """Schema v8's index answers them (a few probes, whatever the number of instances);
    an index of v7 is upgraded to it."""
    data = tmp_path / "data"
    archive = Stored(tmp_path / "in")
    run_cli("import", "--create", "--data-dir", data, tmp_path / "in")
    db = Database(data / "index.sqlite")
    with db.transaction():  # back to schema v7
        db.execute("DROP INDEX instances_sop_class_syntax")
        db.execute("CREATE INDEX instances_sop_class ON instances(sop_class_uid)")
        db.execute("PRAGMA user_version = 7")
    migrate(db)
    assert db.get_int("PRAGMA user_version") == SCHEMA_VERSION == 8
    indexes = {row[0] for row in db.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "instances_sop_class_syntax" in indexes and "instances_sop_class" not in indexes
    assert cfind.stored_syntaxes(db, [CTImageStorage, RLELossless, "1.2.3"]) == {CTImageStorage: {
        ImplicitVRLittleEndian}}
    assert cfind.stored_syntaxes(db, [s for s, _ in SYNTAXES.values()]) == {
        sop_class: {syntax} for syntax, (sop_class, _) in SYNTAXES.items()}
    plan = " ".join(str(row) for row in db.query(
        "EXPLAIN QUERY PLAN SELECT transfer_syntax_uid FROM instances WHERE sop_class_uid = ? "
        "AND transfer_syntax_uid > ? ORDER BY transfer_syntax_uid LIMIT 1", ("x", "")))
    assert "COVERING INDEX instances_sop_class_syntax" in plan
    assert len(archive.files) == len(SYNTAXES) * PER_SERIES


def test_a_move_proposes_each_stored_syntax_on_its_own() -> None:
    contexts = outgoing.move_contexts([(CTImageStorage, JPEGLSLossless), (CTImageStorage, ImplicitVRLittleEndian),
                                       (CTImageStorage, JPEGLSLossless), (MRImageStorage, ExplicitVRLittleEndian)])
    assert [(c.abstract_syntax, c.transfer_syntax) for c in contexts] == [
        (CTImageStorage, [JPEGLSLossless]), (CTImageStorage, [ImplicitVRLittleEndian]),
        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (MRImageStorage, [ExplicitVRLittleEndian]), (MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    ]
    many = outgoing.move_contexts([(f"1.2.3.{n}", JPEGLSLossless) for n in range(100)])
    assert len(many) == 100 and many[0].transfer_syntax == [JPEGLSLossless, ExplicitVRLittleEndian,
                                                            ImplicitVRLittleEndian]


# --- C-GET with getscu ---------------------------------------------------------------------

def test_getscu_gets_the_stored_bytes_in_every_syntax(daemon: Daemon, stored: Stored, tmp_path: Path) -> None:
    daemon.start("--no-mount")
    for syntax, (_, option) in SYNTAXES.items():
        out = tmp_path / "got" / syntax
        result = getscu(daemon, out, option, QueryRetrieveLevel="SERIES", StudyInstanceUID=stored.study,
                        SeriesInstanceUID=stored.series[syntax])
        assert result.returncode == 0, result.stderr
        received = list(out.iterdir())
        assert len(received) == PER_SERIES, f"{UID(syntax).name}: {result.stdout}{result.stderr}"
        for path in received:
            assert_exact(path, stored.original(path))


def test_getscu_gets_conversions_where_it_takes_no_stored_syntax(
    daemon: Daemon, stored: Stored, tmp_path: Path
) -> None:
    daemon.start("--no-mount")
    # Default proposals (Explicit, Big Endian, Implicit): uncompressed arrives exact, the rest
    # inflated or decompressed to Explicit VR Little Endian.
    result = getscu(daemon, tmp_path / "default", QueryRetrieveLevel="STUDY", StudyInstanceUID=stored.study)
    assert result.returncode == 0, result.stderr
    received = list((tmp_path / "default").iterdir())
    assert len(received) == len(stored.files)
    for path in received:
        original = stored.original(path)
        syntax = pydicom.dcmread(original, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
            assert_exact(path, original)
        else:
            assert_converted(path, original, ExplicitVRLittleEndian)


# --- C-MOVE to a storescp ------------------------------------------------------------------

ONLY_JPEG_BASELINE = """
[[TransferSyntaxes]]
[Baseline]
TransferSyntax1 = JPEGBaseline
[[PresentationContexts]]
[Baseline]
{contexts}
[[Profiles]]
[Baseline]
PresentationContexts = Baseline
"""


@pytest.fixture
def storescp(tmp_path: Path) -> tuple[int, Path]:
    """Where the test's storescp listens, and the folder it writes to."""
    out = tmp_path / "moved"
    out.mkdir()
    return free_port(), out


def start_storescp(port: int, out: Path, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/usr/bin/storescp", "-aet", "STORESCP", "+B", *options, "-od", str(out), str(port)],
                            env={"TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def movescu(daemon: Daemon, *options: str, **keys: str) -> subprocess.CompletedProcess[str]:
    matching = [arg for keyword, value in keys.items() for arg in ("-k", f"{keyword}={value}")]
    return dcmtk("movescu", "-v", *options, "-S", "-aec", "DICOMFS", "-aem", "STORESCP", *matching,
                 "127.0.0.1", daemon.port)


def start_with_destination(daemon: Daemon, tmp_path: Path, port: int) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[[dicom.remotes]]\nname = "ws"\nae_title = "STORESCP"\nhost = "127.0.0.1"\nport = {port}\n')
    daemon.start("--no-mount", "--config", str(config))


# storescp's options: what it accepts, and the syntax what it does not accept arrives in
STORESCP_ACCEPTS = {"all": (["+xa"], None), "uncompressed": ([], ExplicitVRLittleEndian),
                    "implicit only": (["+xi"], ImplicitVRLittleEndian)}


@pytest.mark.parametrize("accepts", list(STORESCP_ACCEPTS))
def test_movescu_moves_the_stored_bytes_to_storescp(
    daemon: Daemon, stored: Stored, tmp_path: Path, storescp: tuple[int, Path], accepts: str
) -> None:
    port, out = storescp
    options, converted_to = STORESCP_ACCEPTS[accepts]
    receiver = start_storescp(port, out, *options)
    try:
        start_with_destination(daemon, tmp_path, port)
        result = movescu(daemon, QueryRetrieveLevel="STUDY", StudyInstanceUID=stored.study)
        assert result.returncode == 0, result.stderr
        assert "Received Final Move Response (Success)" in result.stdout + result.stderr
        wait_for(lambda: len(list(out.iterdir())) == len(stored.files), 5, "every instance at the destination")
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    for path in out.iterdir():
        original = stored.original(path)
        syntax = pydicom.dcmread(original, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if converted_to is None or syntax == converted_to or (
            converted_to == ExplicitVRLittleEndian and syntax == ImplicitVRLittleEndian
        ):
            assert_exact(path, original)
        else:
            assert_converted(path, original, converted_to)


def test_a_move_that_only_lossy_compression_could_carry_fails(
    daemon: Daemon, stored: Stored, tmp_path: Path, storescp: tuple[int, Path]
) -> None:
    port, out = storescp
    classes = [SecondaryCaptureImageStorage, MRImageStorage]
    profile = tmp_path / "baseline.cfg"
    profile.write_text(ONLY_JPEG_BASELINE.format(contexts="\n".join(
        f"PresentationContext{n} = {sop_class}\\Baseline" for n, sop_class in enumerate(classes, 1))))
    daemon.expected_errors.append("accepted no transfer syntax for MR Image Storage")  # pynetdicom's failure line
    receiver = start_storescp(port, out, "-xf", str(profile), "Baseline")
    try:
        start_with_destination(daemon, tmp_path, port)
        result = movescu(daemon, "-d", QueryRetrieveLevel="SERIES", StudyInstanceUID=stored.study,
                         SeriesInstanceUID=f"{stored.series[JPEGBaseline8Bit]}\\{stored.series[ExplicitVRLittleEndian]}")
        text = result.stdout + result.stderr
        final = text[text.index("Received Final Move Response"):]
        assert re.search(r"Completed Suboperations\s*: 2\n", final), final
        assert re.search(r"Failed Suboperations\s*: 2\n", final), final
        wait_for(lambda: len(list(out.iterdir())) == PER_SERIES, 5, "the JPEG baseline instances")
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    for path in out.iterdir():
        assert_exact(path, stored.original(path))
    assert "not sent:" in daemon.log() and "stored as Explicit VR Little Endian; STORESCP accepted no transfer syntax" \
        in daemon.log()


def test_a_get_that_only_lossy_compression_could_carry_fails(daemon: Daemon, stored: Stored) -> None:
    """A C-GET requestor (pynetdicom) that takes only JPEG baseline, for SC and MR objects."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    daemon.expected_errors.append("accepted only JPEG Baseline (Process 1), which we do not compress into")
    daemon.start("--no-mount")
    classes = [SecondaryCaptureImageStorage, MRImageStorage]
    ae = AE(ae_title="PEER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in classes:
        ae.add_requested_context(sop_class, [JPEGBaseline8Bit])
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.encoded_dataset(include_meta=False)
        return 0x0000

    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="DICOMFS",
                         ext_neg=[build_role(sop_class, scp_role=True) for sop_class in classes],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = stored.study
        identifier.SeriesInstanceUID = [stored.series[JPEGBaseline8Bit], stored.series[ExplicitVRLittleEndian]]
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xB000  # sub-operations complete, one or more failures
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (PER_SERIES, PER_SERIES)
    assert len(received) == PER_SERIES
    for sop_uid, data in received.items():
        original = stored.files[sop_uid]
        assert pydicom.dcmread(original, stop_before_pixels=True).SOPClassUID == SecondaryCaptureImageStorage
        assert data == dataset_bytes(original)
    assert "not sent:" in daemon.log()
    assert "stored as Explicit VR Little Endian; PEER accepted only JPEG Baseline" in daemon.log()


def test_an_instance_whose_file_is_gone_is_a_failed_sub_operation(
    daemon: Daemon, stored: Stored, data_dir: Path, tmp_path: Path
) -> None:
    db = Database(data_dir / "index.sqlite", readonly=True)
    [(sop_uid, relpath)] = db.query("SELECT sop_uid, file_path FROM instances WHERE sop_class_uid = ? LIMIT 1",
                                    (MRImageStorage,))
    db.close()
    next(p for p in data_dir.rglob("*") if p.is_file() and str(p).endswith(relpath)).unlink()
    daemon.expected_errors += ["cannot read an instance for a retrieve", "is missing"]
    daemon.start("--no-mount")
    out = tmp_path / "got"
    result = getscu(daemon, out, QueryRetrieveLevel="SERIES", StudyInstanceUID=stored.study,
                    SeriesInstanceUID=stored.series[ExplicitVRLittleEndian])
    assert "SubOperationsCompleteOneOrMoreFailures" in result.stdout + result.stderr
    [received] = list(out.iterdir())
    assert_exact(received, stored.original(received))
    assert f"cannot read an instance for a retrieve: {sop_uid}: its file" in daemon.log()
