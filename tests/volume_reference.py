"""Reference checks for NIfTI volumes: dcm2niix on the same files, and the positions in the files.

``assert_same_volume`` compares two NIfTI files after ``nibabel.as_closest_canonical``
(so dcm2niix's flipped rows and ours compare equal when they describe the same voxels in
the same places). ``assert_positions`` needs no reference at all: each frame of each DICOM
file is looked up in the volume through the sform, from its own ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, and its rescaled pixels must be the voxels found
there.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
POSITION_TOLERANCE_MM = 0.01


def run_dcm2niix(folder: Path, out: Path) -> list[Path]:
    """dcm2niix on ``folder`` (BIDS sidecars, no compression, named <series>_<echo>): its .nii files."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["dcm2niix", "-b", "y", "-z", "n", "-f", "%s_%e", "-o", str(out), str(folder)],
        capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(f"dcm2niix exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return sorted(out.glob("*.nii"))


def sidecar(nifti: Path) -> dict[str, Any]:
    """The JSON sidecar beside a NIfTI file (``x.nii`` → ``x.json``)."""
    return json.loads(nifti.with_suffix(".json").read_text())


def canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (scaled, float64) and affine of the volume in its closest RAS+ orientation."""
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.get_fdata()), image.affine


def nifti_size(path: Path) -> int:
    """What the file must weigh according to its own header: the voxel offset plus the voxels."""
    with open(path, "rb") as f:  # the file's own header: a loaded image's copy has its offset reset
        header = nib.Nifti1Header.from_fileobj(f)
    return int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize


def is_integer(path: Path) -> bool:
    return bool(np.issubdtype(nib.load(path).header.get_data_dtype(), np.integer))


def assert_same_volume(ours: Path, reference: Path) -> None:
    """Same voxels (exactly when both are integers, after scaling) in the same places (0.01 mm)."""
    data, affine = canonical(ours)
    ref_data, ref_affine = canonical(reference)
    data, ref_data = _squeeze_time(data), _squeeze_time(ref_data)
    assert data.shape == ref_data.shape, f"shape {data.shape}, reference {ref_data.shape}"
    assert np.allclose(affine, ref_affine, atol=POSITION_TOLERANCE_MM), (
        f"affine\n{np.round(affine, 4)}\nreference\n{np.round(ref_affine, 4)}"
    )
    if is_integer(ours) and is_integer(reference):
        differ = int(np.count_nonzero(data != ref_data))
        assert differ == 0, f"{differ} of {data.size} voxels differ (first: {_first_difference(data, ref_data)})"
    else:
        close = np.isclose(data, ref_data, rtol=1e-5, atol=1e-3)
        assert close.all(), f"{int((~close).sum())} of {data.size} voxels differ: {_first_difference(data, ref_data)}"


def _squeeze_time(data: np.ndarray) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    where = np.argwhere(~np.isclose(a, b, rtol=1e-5, atol=1e-3))
    if not len(where):
        return "none"
    index = tuple(where[0])
    return f"at {index}: {a[index]} vs {b[index]}"


@dataclass(frozen=True)
class Frame:
    """A frame of a DICOM file as its own attributes place it."""

    path: Path
    frame: int
    sop_uid: str
    position: np.ndarray  # LPS
    row_direction: np.ndarray
    column_direction: np.ndarray
    spacing: tuple[float, float]  # between rows, between columns
    values: np.ndarray  # (rows, columns), rescaled


def frames_of(path: Path) -> list[Frame]:
    """Every frame of a file, classic or Enhanced (functional groups), with its rescaled pixels."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float64)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if count == 1:
        pixels = pixels[np.newaxis]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
    frames = []
    for index in range(count):
        groups = [g for g in (shared, per_frame[index] if per_frame is not None else None) if g is not None]

        def find(sequence: str, keyword: str, groups: list[Any] = groups) -> Any:
            value = ds.get(keyword)
            for group in groups:
                if sequence in group and keyword in group[sequence][0]:
                    value = group[sequence][0].get(keyword)
            return value

        position = find("PlanePositionSequence", "ImagePositionPatient")
        orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = find("PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise AssertionError(f"{path} frame {index} has no geometry")
        slope = find("PixelValueTransformationSequence", "RescaleSlope")
        intercept = find("PixelValueTransformationSequence", "RescaleIntercept")
        slope = 1.0 if slope is None else float(slope)
        intercept = 0.0 if intercept is None else float(intercept)
        orientation = np.array([float(v) for v in orientation])
        frames.append(Frame(
            path=path, frame=index, sop_uid=str(ds.SOPInstanceUID),
            position=np.array([float(v) for v in position]),
            row_direction=orientation[:3], column_direction=orientation[3:],
            spacing=(float(spacing[0]), float(spacing[1])),
            values=pixels[index] * slope + intercept,
        ))
    return frames


def assert_positions(nifti: Path, dicom_files: list[Path], *, unflipped: bool = True) -> dict[tuple[str, int], tuple]:
    """Each frame of ``dicom_files`` is in ``nifti`` where its own geometry says, with its values.

    The centre of the frame's pixel (0, 0) is ImagePositionPatient: through the inverse sform
    (RAS) it must land on a voxel centre (within 0.01 mm), the next column and the next row on
    neighbouring voxels in-plane, and the rescaled pixels must be the voxels there, at one
    time point. ``unflipped``: pixel (0, 0) must be voxel (0, 0, k), columns along +i and
    rows along +j (our volumes; dcm2niix flips the rows). Returns, per (SOP Instance UID,
    frame), the voxel index (k,) of a 3D volume or (k, t) of a 4D one. No two frames may
    share one.
    """
    image = nib.load(nifti)
    sform, code = image.header.get_sform(coded=True)
    assert code and code > 0, f"{nifti.name}: sform_code is {code}"
    data = np.asarray(image.get_fdata())
    four_d = data.ndim == 4
    volumes = data if four_d else data[..., np.newaxis]
    to_voxel = np.linalg.inv(sform)
    found: dict[tuple[str, int], tuple] = {}
    for path in dicom_files:
        for frame in frames_of(path):
            rows, columns = frame.values.shape
            corner = frame.position
            next_column = corner + frame.spacing[1] * frame.row_direction
            next_row = corner + frame.spacing[0] * frame.column_direction
            v00, v01, v10 = (_voxel(to_voxel, sform, p, frame, nifti) for p in (corner, next_column, next_row))
            di, dj = v01 - v00, v10 - v00
            where = f"{path.name} frame {frame.frame} (IPP {np.round(corner, 3).tolist()})"
            assert _in_plane_step(di) and _in_plane_step(dj) and abs(di @ dj) == 0, (
                f"{where}: a column step is voxel step {di.tolist()}, a row step {dj.tolist()}"
            )
            if unflipped:
                assert v00[:2].tolist() == [0, 0], f"{where}: pixel (0, 0) is voxel {v00.tolist()}"
                assert di.tolist() == [1, 0, 0] and dj.tolist() == [0, 1, 0], (
                    f"{where}: columns step {di.tolist()}, rows step {dj.tolist()} (flipped or transposed)"
                )
            c, r = np.meshgrid(np.arange(columns), np.arange(rows))
            index = v00[:, None, None] + di[:, None, None] * c + dj[:, None, None] * r
            inside = all(index[a].min() >= 0 and index[a].max() < volumes.shape[a] for a in range(3))
            assert inside, f"{where}: falls outside the volume {volumes.shape[:3]} (voxels {v00.tolist()}…)"
            planes = volumes[index[0], index[1], index[2], :]  # (rows, columns, time)
            matches = [t for t in range(volumes.shape[3])
                       if np.allclose(planes[..., t], frame.values, rtol=1e-5, atol=1e-3)]
            assert matches, f"{where}: at k={int(v00[2])} the voxels are not its pixels: " + _difference(
                planes[..., 0], frame.values)
            assert len(matches) == 1, f"{where}: its pixels are at every time point {matches}"
            key = (int(v00[2]), matches[0]) if four_d else (int(v00[2]),)
            assert key not in found.values(), f"{where}: voxel index {key} holds two frames"
            found[(frame.sop_uid, frame.frame)] = key
    return found


def _voxel(to_voxel: np.ndarray, sform: np.ndarray, lps: np.ndarray, frame: Frame, nifti: Path) -> np.ndarray:
    ras = LPS_TO_RAS @ lps
    exact = (to_voxel @ np.append(ras, 1.0))[:3]
    rounded = np.round(exact)
    miss = np.linalg.norm((sform @ np.append(rounded, 1.0))[:3] - ras)
    assert miss <= POSITION_TOLERANCE_MM, (
        f"{frame.path.name} frame {frame.frame}: LPS {np.round(lps, 3).tolist()} is voxel "
        f"{np.round(exact, 3).tolist()} of {nifti.name}, {miss:.3f} mm from a voxel centre"
    )
    return rounded.astype(int)


def _in_plane_step(step: np.ndarray) -> bool:
    return step[2] == 0 and sorted(np.abs(step).tolist()) == [0, 0, 1]


def _difference(found: np.ndarray, expected: np.ndarray) -> str:
    where = np.argwhere(~np.isclose(found, expected, rtol=1e-5, atol=1e-3))
    index = tuple(where[0])
    return f"pixel (row, column) {index}: voxel {found[index]}, pixel {expected[index]}"


def world_gradients(bvec: Path, affine: np.ndarray) -> np.ndarray:
    """FSL-style .bvec (voxel axes, x negated when the affine's determinant is positive) → RAS unit vectors.

    Lets volumes of different voxel orders (ours unflipped, dcm2niix's with flipped rows) be
    compared by the directions they mean, one row per time point.
    """
    vectors = np.loadtxt(bvec, ndmin=2).T  # (time, 3)
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if np.linalg.det(affine[:3, :3]) > 0:
        vectors = vectors * np.array([-1.0, 1.0, 1.0])
    return vectors @ axes.T
