"""Series volumes through a real mount: ``volume*.nii`` and ``volume.json`` against dcm2niix and the files.

Every geometry case of ``volumegen`` is imported with ``dicomfs import`` into one archive,
served by one daemon, and its series folder found under ``/patients``. The volume read
through the mount must weigh what its header says, hold every slice where the slice's own
ImagePositionPatient says (``assert_positions``, unflipped: i along the columns, j along
the rows, k along the normal), and be the same volume as dcm2niix makes of the same
original files (``assert_same_volume``, after ``as_closest_canonical``).

Where no volume can be made, no ``.nii`` is listed and ``series.json`` says why under
``"Volume"``. A series that is not one stack may be split; whatever volumes it gets, none
may hold a slice anywhere but at its own position (``assert_volumes_place``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
import nibabel as nib
import numpy as np
import pydicom
import pytest
import volumegen
from conftest import Daemon, copy_testdata, run_cli, wait_for
from pydicom.uid import JPEG2000Lossless, RLELossless, SecondaryCaptureImageStorage, generate_uid
from volume_reference import (
    assert_positions,
    assert_same_volume,
    frames_of,
    is_integer,
    nifti_size,
    run_dcm2niix,
    sidecar,
    world_gradients,
)

# One case per geometry: the generator's options. Each gets its own patient (PatientID = case).
GEOMETRY = {
    "axial-hfs": dict(),
    "feet-first": dict(patient_position="FFS", orientation=volumegen.AXIAL_FEET_FIRST),
    "sagittal": dict(orientation=volumegen.SAGITTAL, modality="MR"),
    "coronal": dict(orientation=volumegen.CORONAL),
    "oblique": dict(orientation=volumegen.oblique(), modality="MR"),
    "non-square-pixels": dict(spacing=(0.5, 1.25), rows=10, columns=7),
    "instance-numbers-against-position": dict(instance_numbers="descending", modality="MR"),
    "shuffled-arrival": dict(shuffle=7, slices=9),
    "per-slice-rescale": dict(modality="PT", slopes=[0.5, 1.5, 2.25, 0.125, 3.0]),
    "4d": dict(repetitions=3, modality="MR", shuffle=3),
    "enhanced-mr": dict(enhanced=True, modality="MR", shuffle=1),
}
OTHER = {
    "two-echoes": dict(echo_times=[10.0, 20.0], modality="MR", shuffle=5),
    "gap": dict(slices=6, gap=2),
    "tilted": dict(tilt=15.0),
    "single-image": dict(slices=1),
    # Time points known by AcquisitionTime only, InstanceNumber running against time and position.
    "4d-acquisition-time": dict(repetitions=3, modality="MR", temporal_ids=False, instance_numbers="descending",
                                shuffle=4),
    # b=0 volumes interleaved with weighted ones, in acquisition order.
    "diffusion": dict(repetitions=4, modality="MR", orientation=volumegen.oblique(), shuffle=2, temporal_ids=False,
                      b_values=[0.0, 1000.0, 0.0, 1000.0],
                      gradients=[(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.6, 0.8)]),
}

COMPRESSED = {"rle-lossless": RLELossless, "jpeg-2000-lossless": JPEG2000Lossless}


@dataclass
class Archive:
    daemon: Daemon
    series: dict[str, volumegen.GeneratedSeries]
    inputs: Path  # one folder of original files per case
    scratch: Path

    @property
    def mount(self) -> Path:
        return self.daemon.mount

    def folder(self, case: str) -> Path:
        return series_folder(self.mount, self.series[case])


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """All generated cases (and the corpus' Enhanced CT) in one archive, mounted once for the module."""
    root = tmp_path_factory.mktemp("volumes")
    inputs = root / "in"
    series = {case: volumegen.make_series(inputs / case, patient_id=case, **options)
              for case, options in {**GEOMETRY, **OTHER}.items()}
    series["no-geometry"] = secondary_captures(inputs / "no-geometry")
    for case, syntax in COMPRESSED.items():  # originals kept aside for dcm2niix and the comparison
        original = volumegen.make_series(root / "originals" / case, patient_id=case, rows=40, columns=36,
                                         modality="MR" if "rle" in case else "CT")
        series[case] = volumegen.compressed_copies(original, inputs / case, syntax)
    axial = volumegen.make_series(inputs / "two-orientations" / "axial", patient_id="two-orientations", slices=3)
    series["two-orientations"] = axial
    series["two-orientations-sagittal"] = volumegen.make_series(
        inputs / "two-orientations" / "sagittal", patient_id="two-orientations", slices=4,
        orientation=volumegen.SAGITTAL, uids=(axial.study_uid, axial.series_uid, generate_uid()))
    copy_testdata(["eCT_Supplemental.dcm"], inputs / "enhanced-ct")
    (root / "data").mkdir()
    run_cli("import", "--data-dir", root / "data", *sorted(inputs.iterdir()))
    daemon = Daemon(data_dir=root / "data", mount=root / "mnt", log_path=root / "daemon.log").start()
    try:
        yield Archive(daemon=daemon, series=series, inputs=inputs, scratch=root / "scratch")
    finally:
        status = daemon.stop()
    assert status == 0, f"daemon exited {status}:\n{daemon.log()}"
    assert not daemon.unexpected_errors(), "daemon logged errors:\n" + "\n".join(daemon.unexpected_errors())


def secondary_captures(directory: Path, count: int = 3) -> volumegen.GeneratedSeries:
    """Screenshots: a series of images with no position, orientation or pixel spacing."""
    study, uid = generate_uid(), generate_uid()
    files = []
    for n in range(1, count + 1):
        ds = dicomgen.make_dataset(
            SOPClassUID=SecondaryCaptureImageStorage, Modality="OT", StudyInstanceUID=study, SeriesInstanceUID=uid,
            PatientID="no-geometry", PatientName="VOLUME^no-geometry", InstanceNumber=n, ConversionType="WSD",
            ImagePositionPatient=dicomgen.REMOVE, ImageOrientationPatient=dicomgen.REMOVE,
            PixelSpacing=dicomgen.REMOVE, SliceThickness=dicomgen.REMOVE,
        )
        files.append(dicomgen.write(directory / f"SC{n}.dcm", ds))
    return volumegen.GeneratedSeries(
        files=files, slices=[], rows=16, columns=16, spacing=(1.0, 1.0), slice_spacing=1.0,
        orientation=volumegen.AXIAL, origin=(0.0, 0.0, 0.0), tilt=0.0, study_uid=study, series_uid=uid,
        patient_id="no-geometry",
    )


# --------------------------------------------------------------------------------------- helpers

def series_folder(mount: Path, series: volumegen.GeneratedSeries) -> Path:
    """The series' folder under /patients/<patient>/<study>/, found by its series.json."""
    return find_series(mount, series.patient_id, series.series_uid)


def find_series(mount: Path, patient_id: str, series_uid: str) -> Path:
    """The folder of ``series_uid`` under /patients (under its patient's folder if ``patient_id``)."""
    patients = [p for p in (mount / "patients").iterdir() if not patient_id or p.name.endswith(f"[{patient_id}]")]
    assert patients, f"patient {patient_id}: {os.listdir(mount / 'patients')}"
    for patient in patients:
        for study in patient.iterdir():
            if not study.is_dir() or study.name == "derived":
                continue
            for folder in study.iterdir():
                summary = folder / "series.json"
                if (folder.is_dir() and summary.exists()
                        and json.loads(summary.read_text())["SeriesInstanceUID"] == series_uid):
                    return folder
    raise AssertionError(f"no folder of series {series_uid} under {[p.name for p in patients]}")


def volumes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("volume") and p.suffix == ".nii")


def summary(folder: Path) -> dict:
    return json.loads((folder / "series.json").read_text())


def volume_reason(folder: Path, key: str = "NoVolume") -> str:
    """Why the series has no volume (``NoVolume``) or which frames no volume holds (``LeftOut``),
    as series.json says under ``Volume``; fails if it says nothing."""
    data = summary(folder)
    assert "Volume" in data, f"series.json of {folder.name} has no 'Volume': {sorted(data)}"
    said = data["Volume"].get(key)
    assert said, f"series.json of {folder.name} says no {key}: {data['Volume']}"
    return said if isinstance(said, str) else "; ".join(said)


def read_volume(path: Path, scratch: Path) -> Path:
    """Read a volume whole through the mount (its listed size, exactly) into a local copy."""
    listed = os.stat(path).st_size
    data = path.read_bytes()
    assert len(data) == listed, f"{path.name}: read {len(data)} bytes, listed {listed}"
    local = scratch / f"{path.parent.name}-{path.name}".replace(" ", "_")
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    assert listed == nifti_size(local), f"{path.name}: {listed} bytes, its header says {nifti_size(local)}"
    return local


def assert_nifti_header(local: Path, *, integer: bool) -> None:
    header = nib.load(local).header
    assert header.sizeof_hdr == 348 and bytes(header["magic"]) == b"n+1\x00"
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    assert is_integer(local) == integer, f"voxel type {header.get_data_dtype()}"
    if not integer:
        assert header.get_data_dtype() == np.float32


def references(archive: Archive, case: str, files: list[Path] | None = None) -> list[Path]:
    """dcm2niix on the case's original files (or on ``files`` only)."""
    archive.scratch.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"{case}-dcm2niix-", dir=archive.scratch))  # dcm2niix renames on conflict
    return run_dcm2niix(archive.inputs / case if files is None else _only(out / "in", files), out)


def placement(series: volumegen.GeneratedSeries, slices: list[volumegen.Slice], four_d: bool) -> dict:
    """Where each slice must be: k counted among the positions present, t among the time points."""
    ks = sorted({s.k for s in slices})
    ts = sorted({s.t for s in slices})
    return {(s.sop_uid, s.frame): (ks.index(s.k), ts.index(s.t)) if four_d else (ks.index(s.k),) for s in slices}


def assert_volumes_place(folder: Path, files: list[Path], scratch: Path) -> set[str]:
    """Every volume in ``folder`` holds the slices its sidecar lists, each at its own position.

    Returns the SOP Instance UIDs held. A volume must hold at least two slices, and each
    listed file must be one of ``files``.
    """
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    held: set[str] = set()
    for nii in volumes(folder):
        local = read_volume(nii, scratch)
        listed = json.loads(nii.with_suffix(".json").read_text())["SOPInstanceUIDs"]
        uids = {u for u in listed if u is not None}  # null: a missing slice, filled with zeros
        assert uids <= set(by_uid), f"{nii.name} lists instances not in the series"
        assert not held & uids, f"{nii.name} holds slices another volume holds"
        placed = assert_positions(local, [by_uid[u] for u in dict.fromkeys(u for u in listed if u is not None)])
        assert len(placed) >= 2, f"{nii.name} is a volume of {len(placed)} slice"
        data = nib.load(local).get_fdata()
        if data.ndim == 3:
            assert sorted(placed.values()) == [(i,) for i, u in enumerate(listed) if u is not None], (
                f"{nii.name}: the sidecar's order is not the voxels' ({listed})")
        stored = nib.load(local).dataobj.get_unscaled()
        for k in (i for i, u in enumerate(listed) if u is None):
            assert not stored[:, :, k].any(), f"{nii.name}: missing slice {k} is not stored zeros"
        held |= uids
    return held


# ----------------------------------------------------------------------------- geometry cases

@pytest.mark.parametrize("case", list(GEOMETRY))
def test_volume_is_dcm2niix_s_and_the_files_positions(archive: Archive, case: str) -> None:
    series = archive.series[case]
    folder = archive.folder(case)
    assert [p.name for p in volumes(folder)] == ["volume.nii"]
    assert "volume.json" in os.listdir(folder)
    local = read_volume(folder / "volume.nii", archive.scratch)
    assert_nifti_header(local, integer=len({(s.slope, s.intercept) for s in series.slices}) == 1)
    four_d = series.repetitions > 1
    shape = (series.columns, series.rows, len({s.k for s in series.slices}))
    assert nib.load(local).shape == ((*shape, series.repetitions) if four_d else shape)
    assert np.allclose(nib.load(local).get_sform(), series.affine_ras(), atol=0.01)
    assert np.allclose(nib.load(local).get_qform(), series.affine_ras(), atol=0.01)
    assert assert_positions(local, series.files) == placement(series, series.slices, four_d)
    assert np.array_equal(nib.load(local).get_fdata(), series.expected_data())
    (reference,) = references(archive, case)
    assert_same_volume(local, reference)


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_sidecar_lists_the_instances_along_the_normal(archive: Archive, case: str) -> None:
    series = archive.series[case]
    path = archive.folder(case) / "volume.json"
    listed = os.stat(path).st_size
    text = path.read_bytes()
    assert len(text) == listed
    jq = subprocess.run(["jq", "-c", ".SOPInstanceUIDs", str(path)], capture_output=True, text=True, check=True)
    uids = json.loads(jq.stdout)
    assert uids == json.loads(text)["SOPInstanceUIDs"]
    if case == "enhanced-mr":  # one object holds every frame: its UID once per slice, with the frame numbers
        assert uids == [series.slices[0].sop_uid] * len(series.slices)
        by_k = sorted(series.slices, key=lambda s: s.k)
        assert json.loads(text)["FrameNumbers"] == [s.frame + 1 for s in by_k]
    else:
        assert uids == series.sop_uids_in_slice_order()
    ours = json.loads(text)
    (reference,) = references(archive, case)
    theirs = sidecar(reference)
    assert "ConversionSoftware" in ours and ours["ImageType"] == theirs["ImageType"]
    for key in ("Modality", "SeriesNumber", "PatientPosition", "SliceThickness", "EchoTime", "RepetitionTime",
                "FlipAngle", "MagneticFieldStrength", "MRAcquisitionType"):
        if key in theirs:
            assert ours.get(key) == pytest.approx(theirs[key]), f"{key}: ours {ours.get(key)}, dcm2niix {theirs[key]}"


def test_two_echoes_are_two_volumes(archive: Archive) -> None:
    series = archive.series["two-echoes"]
    folder = archive.folder("two-echoes")
    assert [p.name for p in volumes(folder)] == ["volume_echo-1.nii", "volume_echo-2.nii"]
    by_echo = {sidecar(r)["EchoNumber"]: r for r in references(archive, "two-echoes")}
    assert sorted(by_echo) == [1, 2]
    for echo in (1, 2):
        local = read_volume(folder / f"volume_echo-{echo}.nii", archive.scratch)
        assert_nifti_header(local, integer=True)
        slices = [s for s in series.slices if s.echo == echo]
        assert assert_positions(local, [s.path for s in slices]) == placement(series, slices, False)
        assert_same_volume(local, by_echo[echo])
        ours = json.loads((folder / f"volume_echo-{echo}.json").read_text())
        assert ours["EchoTime"] == pytest.approx({1: 0.010, 2: 0.020}[echo])  # seconds, as BIDS wants
        assert ours["SOPInstanceUIDs"] == series.sop_uids_in_slice_order(echo)


def test_tilted_series_is_sheared_at_the_files_positions(archive: Archive) -> None:
    """dcm2niix writes the sheared stack and a resampled ``_Tilt_1``: ours is the sheared one."""
    series = archive.series["tilted"]
    folder = archive.folder("tilted")
    assert [p.name for p in volumes(folder)] == ["volume.nii"]
    local = read_volume(folder / "volume.nii", archive.scratch)
    assert assert_positions(local, series.files) == placement(series, series.slices, False)
    assert np.allclose(nib.load(local).get_sform(), series.affine_ras(), atol=0.01)
    unresampled = {p.name: p for p in references(archive, "tilted")}["3_0.nii"]
    assert_same_volume(local, unresampled)


def test_a_gap_is_filled_with_zeros_at_the_true_positions(archive: Archive) -> None:
    """dcm2niix stacks the slices on each side of a gap as if evenly spaced; we must not.

    Every slice is where its position says, the missing one is a plane of zeros (null in
    the sidecar's SOPInstanceUIDs), and series.json notes it.
    """
    series = archive.series["gap"]
    folder = archive.folder("gap")
    assert [p.name for p in volumes(folder)] == ["volume.nii"]
    held = assert_volumes_place(folder, series.files, archive.scratch)
    assert held == {s.sop_uid for s in series.slices}
    image = nib.load(read_volume(folder / "volume.nii", archive.scratch))
    assert image.shape == (series.columns, series.rows, 6)
    assert np.allclose(image.get_sform(), series.affine_ras(), atol=0.01)
    data = image.get_fdata()
    assert not image.dataobj.get_unscaled()[:, :, 2].any()  # stored zeros: the intercept after scaling
    assert np.all(data[:, :, 2] == image.dataobj.inter)
    by_k = {s.k: s for s in series.slices}
    for k in (0, 1, 3, 4, 5):
        assert np.array_equal(data[:, :, k], by_k[k].values)
    uids = json.loads((folder / "volume.json").read_text())["SOPInstanceUIDs"]
    assert uids == [by_k[0].sop_uid, by_k[1].sop_uid, None, by_k[3].sop_uid, by_k[4].sop_uid, by_k[5].sop_uid]
    (described,) = summary(folder)["Volume"]["Volumes"]
    assert described["File"] == "volume.nii" and described["Dimensions"] == [6, 8, 6]
    assert any("missing" in note for note in described["Notes"])


@pytest.mark.parametrize("case", list(COMPRESSED))
def test_compressed_series_is_decoded_into_the_same_volume(archive: Archive, case: str) -> None:
    series = archive.series[case]
    assert pydicom.dcmread(series.files[0]).file_meta.TransferSyntaxUID == COMPRESSED[case]
    folder = archive.folder(case)
    assert [p.name for p in volumes(folder)] == ["volume.nii"]
    local = read_volume(folder / "volume.nii", archive.scratch)
    assert_nifti_header(local, integer=True)
    assert assert_positions(local, series.files) == placement(series, series.slices, False)
    assert np.array_equal(nib.load(local).get_fdata(), series.expected_data())
    (reference,) = references(archive, case)
    assert_same_volume(local, reference)
    assert (folder / "volume.nii").read_bytes() == local.read_bytes()  # the second read: the same bytes


def test_two_orientations_are_two_volumes(archive: Archive) -> None:
    folder = archive.folder("two-orientations")
    assert [p.name for p in volumes(folder)] == ["volume_axial.nii", "volume_sagittal.nii"]
    for name, case in (("axial", "two-orientations"), ("sagittal", "two-orientations-sagittal")):
        series = archive.series[case]
        local = read_volume(folder / f"volume_{name}.nii", archive.scratch)
        assert assert_positions(local, series.files) == placement(series, series.slices, False)
        (reference,) = run_dcm2niix(archive.inputs / "two-orientations" / name, archive.scratch / f"{case}-ref")
        assert_same_volume(local, reference)
        listed = json.loads((folder / f"volume_{name}.json").read_text())["SOPInstanceUIDs"]
        assert listed == series.sop_uids_in_slice_order()


def test_4d_is_ordered_by_acquisition_time_not_instance_number(archive: Archive) -> None:
    """dcm2niix orders these time points by InstanceNumber (backwards here); AcquisitionTime is the truth."""
    series = archive.series["4d-acquisition-time"]
    folder = archive.folder("4d-acquisition-time")
    local = read_volume(folder / "volume.nii", archive.scratch)
    assert nib.load(local).shape == (series.columns, series.rows, 5, 3)
    assert assert_positions(local, series.files) == placement(series, series.slices, True)
    assert np.array_equal(nib.load(local).get_fdata(), series.expected_data())
    assert summary(folder)["Volume"]["Volumes"][0]["FourthDimension"] == "acquisition times"
    (reference,) = references(archive, "4d-acquisition-time")
    reversed_in_time = archive.scratch / "4d-acquisition-time-reversed.nii"
    image = nib.load(reference)
    nib.save(nib.Nifti1Image(image.get_fdata()[..., ::-1].astype(np.float32), image.affine), reversed_in_time)
    assert_same_volume(local, reversed_in_time)


def test_diffusion_volumes_keep_acquisition_order_with_bval_and_bvec(archive: Archive) -> None:
    series = archive.series["diffusion"]
    folder = archive.folder("diffusion")
    assert {"volume.nii", "volume.json", "volume.bval", "volume.bvec"} <= set(os.listdir(folder))
    local = read_volume(folder / "volume.nii", archive.scratch)
    assert assert_positions(local, series.files) == placement(series, series.slices, True)
    (reference,) = references(archive, "diffusion")
    assert_same_volume(local, reference)
    bval = (folder / "volume.bval").read_text().split()
    assert [float(b) for b in bval] == series.b_values
    assert [float(b) for b in bval] == [float(b) for b in reference.with_suffix(".bval").read_text().split()]
    bvec = archive.scratch / "diffusion.bvec"
    bvec.write_bytes((folder / "volume.bvec").read_bytes())
    ours = world_gradients(bvec, nib.load(local).affine)
    theirs = world_gradients(reference.with_suffix(".bvec"), nib.load(reference).affine)
    expected = np.array(series.gradients) * np.array([-1.0, -1.0, 1.0])  # LPS → RAS
    assert np.allclose(ours, expected, atol=1e-4), ours
    assert np.allclose(ours, theirs, atol=1e-4)


def test_enhanced_ct_of_the_corpus_matches_dcm2niix(archive: Archive) -> None:
    path = archive.inputs / "enhanced-ct" / "eCT_Supplemental.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    folder = find_series(archive.mount, ds.PatientID, ds.SeriesInstanceUID)
    assert [p.name for p in volumes(folder)] == ["volume.nii"]
    local = read_volume(folder / "volume.nii", archive.scratch)
    assert_nifti_header(local, integer=True)
    assert nib.load(local).shape == (512, 512, 2)
    placed = assert_positions(local, [path])
    # Frames are stored top first (z -149, then -159): k runs along the normal, not the frame order.
    assert placed == {(ds.SOPInstanceUID, 0): (1,), (ds.SOPInstanceUID, 1): (0,)}
    (reference,) = references(archive, "enhanced-ct")
    assert_same_volume(local, reference)


@pytest.mark.parametrize("case", ["single-image", "no-geometry"])
def test_no_volume_and_a_reason_without_a_stack(archive: Archive, case: str) -> None:
    folder = archive.folder(case)
    assert volumes(folder) == []
    assert not [n for n in os.listdir(folder) if n.startswith("volume")]
    volume_reason(folder)


def test_same_volume_in_every_layout(archive: Archive) -> None:
    series = archive.series["oblique"]
    by_patient = archive.folder("oblique")
    by_uid = archive.mount / "studies" / series.study_uid / series.series_uid
    day = archive.mount / "dates" / "2024" / "2024-03-01"
    by_date = [d / by_patient.name for d in day.iterdir() if "oblique" in d.name]
    assert len(by_date) == 1
    for name in ("volume.nii", "volume.json"):
        expected = (by_patient / name).read_bytes()
        for other in (by_uid, by_date[0]):
            assert os.stat(other / name).st_size == len(expected)
            assert (other / name).read_bytes() == expected, other


def test_the_listing_reads_back_exactly(archive: Archive) -> None:
    """Every volume file anywhere in /patients reads back exactly its listed size."""
    files = [p for p in (archive.mount / "patients").rglob("volume*") if p.is_file()]
    assert len(files) >= 2 * len(GEOMETRY)
    for path in files:
        assert len(path.read_bytes()) == path.stat().st_size, path


# ----------------------------------------------------------------------------------- the corpus

@pytest.mark.parametrize(
    "name", ["emri_small.dcm", "emri_small_big_endian.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"]
)
def test_enhanced_mr_of_the_corpus_without_orientation_gets_a_reason(
    daemon: Daemon, data_dir: Path, tmp_path: Path, name: str
) -> None:
    """These objects (one SOP Instance UID, four transfer syntaxes) carry no functional groups:
    no position, no orientation. dcm2niix still writes a NIfTI, "Bogus spatial matrix"; we must not."""
    (path,) = copy_testdata([name], tmp_path / "in")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "PerFrameFunctionalGroupsSequence" not in ds and "ImageOrientationPatient" not in ds
    run_cli("import", "--data-dir", data_dir, path)
    daemon.start()
    folder = find_series(daemon.mount, "", ds.SeriesInstanceUID)
    assert volumes(folder) == []
    volume_reason(folder)


# ---------------------------------------------------------------------------------- bad input

def test_a_slice_of_other_rows_is_split_off_or_left_out(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    series = volumegen.make_series(tmp_path / "in", patient_id="rows")
    odd = pydicom.dcmread(series.files[2])
    odd.SOPInstanceUID, odd.InstanceNumber, odd.Rows = generate_uid(), 99, 10
    odd.PixelData = np.full((10, series.columns), 7, np.int16).tobytes()
    odd_path = dicomgen.write(tmp_path / "in" / "odd.dcm", odd)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    daemon.start()
    folder = series_folder(daemon.mount, series)
    held = assert_volumes_place(folder, [*series.files, odd_path], tmp_path / "scratch")
    assert held >= {s.sop_uid for s in series.slices}, "the five slices of one size are one volume"
    assert odd.SOPInstanceUID not in held  # alone in its size: no volume of one slice
    assert "single image" in volume_reason(folder, "LeftOut")
    names = [p.name for p in volumes(folder)]
    assert names in (["volume.nii"], [f"volume_{series.columns}x{series.rows}.nii"]), names


def test_a_truncated_slice_is_refused_and_the_rest_is_a_volume(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    series = volumegen.make_series(tmp_path / "in", patient_id="truncated", slices=6)
    last = max(series.slices, key=lambda s: s.k)  # the top slice: the rest stays one even stack
    last.path.write_bytes(last.path.read_bytes()[:-20])
    proc = run_cli("import", "--data-dir", data_dir, tmp_path / "in", check=False)
    assert proc.returncode == 1 and "truncated" in proc.stderr and last.path.name in proc.stderr
    daemon.start()
    folder = series_folder(daemon.mount, series)
    assert summary(folder)["NumberOfSeriesRelatedInstances"] == 5
    local = read_volume(folder / "volume.nii", tmp_path / "scratch")
    kept = [s for s in series.slices if s is not last]
    assert nib.load(local).shape == (series.columns, series.rows, 5)
    assert assert_positions(local, [s.path for s in kept]) == placement(series, kept, False)
    (reference,) = run_dcm2niix(_only(tmp_path / "kept", [s.path for s in kept]), tmp_path / "ref")
    assert_same_volume(local, reference)


def test_two_instances_at_one_position_are_never_stacked(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    """dcm2niix stacks six slices over five positions; we keep the first at each place (lowest
    InstanceNumber) and name the one left out, never misplace."""
    series = volumegen.make_series(tmp_path / "in", patient_id="twice")
    twin = pydicom.dcmread(series.files[2])
    twin.SOPInstanceUID, twin.InstanceNumber = generate_uid(), 99
    twin.PixelData = (twin.pixel_array.astype(np.int16) + 7).tobytes()
    twin_path = dicomgen.write(tmp_path / "in" / "twin.dcm", twin)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    daemon.start()
    folder = series_folder(daemon.mount, series)
    held = assert_volumes_place(folder, [*series.files, twin_path], tmp_path / "scratch")
    assert held == {s.sop_uid for s in series.slices}
    summary = json.loads((folder / "series.json").read_text())["Volume"]
    [notes] = [v["Notes"] for v in summary["Volumes"]]
    assert notes == [f"1 other objects at positions already filled left out: {twin.SOPInstanceUID}"]


def _only(directory: Path, files: list[Path]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, directory / f.name)
    return directory


# ----------------------------------------------------------------------------------- freshness

def test_volume_follows_imports_and_deletions_while_mounted(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    series = volumegen.make_series(tmp_path / "all", patient_id="fresh", slices=6, modality="MR")
    by_k = sorted(series.slices, key=lambda s: s.k)
    first, later = by_k[:4], by_k[4:]
    run_cli("import", "--data-dir", data_dir, *[s.path for s in first])
    daemon.start()
    folder = series_folder(daemon.mount, series)
    nii = folder / "volume.nii"
    local = read_volume(nii, tmp_path / "before")
    assert nib.load(local).shape == (6, 8, 4)
    before = os.stat(nii).st_size

    run_cli("import", "--data-dir", data_dir, *[s.path for s in later])
    wait_for(lambda: os.stat(nii).st_size >= before + 2 * series.rows * series.columns * 2, 2.0,
             "the volume to grow by two slices")
    local = read_volume(nii, tmp_path / "after")
    assert nib.load(local).shape == (6, 8, 6)
    assert assert_positions(local, series.files) == placement(series, series.slices, False)
    assert json.loads((folder / "volume.json").read_text())["SOPInstanceUIDs"] == series.sop_uids_in_slice_order()

    # No instance level to `dicomfs delete`: the series goes, and comes back with fewer slices.
    run_cli("delete", "--data-dir", data_dir, "--level", "series", series.series_uid, "--yes")
    wait_for(lambda: not nii.exists(), 2.0, "the deleted series' volume to go")
    run_cli("import", "--data-dir", data_dir, *[s.path for s in by_k[1:4]])
    wait_for(lambda: any(p.name.endswith("[fresh]") for p in (daemon.mount / "patients").iterdir()), 2.0,
             "the re-imported patient")
    folder = series_folder(daemon.mount, series)
    local = read_volume(folder / "volume.nii", tmp_path / "again")
    assert nib.load(local).shape == (6, 8, 3)
    assert assert_positions(local, [s.path for s in by_k[1:4]]) == placement(series, by_k[1:4], False)
    assert frames_of(by_k[1].path)[0].sop_uid == json.loads((folder / "volume.json").read_text())["SOPInstanceUIDs"][0]
