"""The volume tests' own ground: the generated series, dcm2niix and the comparison helpers agree.

No mount here. For every geometry case, dcm2niix's volume of the generated files must hold
every slice where the files' own positions say (``assert_positions``), and a NIfTI written
straight from the generator's expectation (unflipped, as the mount serves it) must pass
``assert_positions`` strictly and equal dcm2niix's volume (``assert_same_volume``). The
helpers must also fail where they should: a volume with one slice misplaced, flipped, or
shifted by half a voxel.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import volumegen
from volume_reference import (
    assert_positions,
    assert_same_volume,
    nifti_size,
    run_dcm2niix,
    sidecar,
    world_gradients,
)

CASES = {
    "axial-hfs": dict(),
    "feet-first": dict(patient_position="FFS", orientation=volumegen.AXIAL_FEET_FIRST),
    "sagittal": dict(orientation=volumegen.SAGITTAL, modality="MR"),
    "coronal": dict(orientation=volumegen.CORONAL),
    "oblique": dict(orientation=volumegen.oblique(), modality="MR"),
    "non-square-pixels": dict(spacing=(0.5, 1.25)),
    "instance-numbers-against-position": dict(instance_numbers="descending"),
    "shuffled-arrival": dict(shuffle=7, modality="MR"),
    "per-slice-rescale": dict(modality="PT", slopes=[0.5, 1.5, 2.25, 0.125, 3.0]),
    "4d": dict(repetitions=3, modality="MR", shuffle=3),
    "enhanced-mr": dict(enhanced=True, modality="MR", shuffle=1),
}


def expected_nifti(series: volumegen.GeneratedSeries, path: Path, *, echo: int = 1) -> Path:
    """The volume as the mount must serve it, written by nibabel from the generator's expectation."""
    data = series.expected_data(echo)
    slopes = {(s.slope, s.intercept) for s in series.slices}
    if len(slopes) == 1:  # integer voxels with one rescale
        ((slope, intercept),) = slopes
        stored = np.round((data - intercept) / slope).astype(series.slices[0].stored.dtype)
        image = nib.Nifti1Image(stored, series.affine_ras())
        image.header.set_slope_inter(slope, intercept)
    else:
        image = nib.Nifti1Image(data.astype(np.float32), series.affine_ras())
    image.set_sform(series.affine_ras(), code=1)
    image.set_qform(series.affine_ras(), code=1)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_dcm2niix_the_files_and_the_expectation_agree(case: str, tmp_path: Path) -> None:
    series = volumegen.make_series(tmp_path / "in", **CASES[case])
    (reference,) = run_dcm2niix(tmp_path / "in", tmp_path / "ref")
    found = assert_positions(reference, series.files, unflipped=False)
    assert len(found) == len(series.slices)
    ours = expected_nifti(series, tmp_path / "expected.nii")
    placed = assert_positions(ours, series.files)
    for s in series.slices:
        assert placed[(s.sop_uid, s.frame)] == ((s.k, s.t) if series.repetitions > 1 else (s.k,))
    assert_same_volume(ours, reference)
    assert nifti_size(ours) == ours.stat().st_size


def test_two_echoes_are_two_volumes_for_dcm2niix(tmp_path: Path) -> None:
    series = volumegen.make_series(tmp_path / "in", echo_times=[10.0, 20.0], modality="MR")
    references = run_dcm2niix(tmp_path / "in", tmp_path / "ref")
    assert len(references) == 2
    for reference in references:
        echo = sidecar(reference)["EchoNumber"]
        assert sidecar(reference)["EchoTime"] == pytest.approx({1: 0.01, 2: 0.02}[echo])
        assert_positions(reference, [s.path for s in series.slices if s.echo == echo], unflipped=False)
        assert_same_volume(expected_nifti(series, tmp_path / f"e{echo}.nii", echo=echo), reference)


def test_a_tilted_series_matches_dcm2niix_before_its_resampling(tmp_path: Path) -> None:
    series = volumegen.make_series(tmp_path / "in", tilt=15.0)
    references = {p.name: p for p in run_dcm2niix(tmp_path / "in", tmp_path / "ref")}
    assert set(references) == {"3_0.nii", "3_0_Tilt_1.nii"}  # the sheared stack, and a resampled one
    assert_positions(references["3_0.nii"], series.files, unflipped=False)
    sform = nib.load(references["3_0.nii"]).get_sform()
    assert not np.allclose(sform[:3, 2] @ sform[:3, 1], 0, atol=1e-3)  # sheared: k is not normal to j
    ours = expected_nifti(series, tmp_path / "expected.nii")
    assert_positions(ours, series.files)
    assert_same_volume(ours, references["3_0.nii"])
    with pytest.raises(AssertionError):  # resampled: rows interpolated, the files' pixels are not there
        assert_positions(references["3_0_Tilt_1.nii"], series.files, unflipped=False)


def test_dcm2niix_misplaces_the_slices_after_a_gap(tmp_path: Path) -> None:
    """Why the gap case is checked against the files' positions only: dcm2niix stacks what it has."""
    series = volumegen.make_series(tmp_path / "in", slices=6, gap=2)
    references = {p.name: p for p in run_dcm2niix(tmp_path / "in", tmp_path / "ref")}
    assert nib.load(references["3_0.nii"]).shape == (6, 8, 5)
    with pytest.raises(AssertionError, match="not its pixels"):
        assert_positions(references["3_0.nii"], series.files, unflipped=False)
    data = series.expected_data()
    assert data.shape == (6, 8, 5)  # the positions present; the missing one is absent
    assert sorted({s.k for s in series.slices}) == [0, 1, 3, 4, 5]


def test_the_helpers_catch_a_misplaced_slice_a_flip_and_a_shift(tmp_path: Path) -> None:
    series = volumegen.make_series(tmp_path / "in")
    good = expected_nifti(series, tmp_path / "good.nii")
    image = nib.load(good)
    stored = image.get_fdata().astype(np.float32)  # nibabel rescales integers it saves: keep floats

    def variant(name: str, data: np.ndarray, affine: np.ndarray) -> Path:
        out = nib.Nifti1Image(data, affine)
        out.set_sform(affine, code=1)
        nib.save(out, tmp_path / name)
        return tmp_path / name

    swapped = stored.copy()
    swapped[:, :, [1, 2]] = swapped[:, :, [2, 1]]
    with pytest.raises(AssertionError, match="not its pixels"):
        assert_positions(variant("swapped.nii", swapped, image.affine), series.files)
    with pytest.raises(AssertionError):
        assert_same_volume(tmp_path / "swapped.nii", good)
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = series.rows - 1
    flipped = variant("flipped.nii", stored[:, ::-1, :].copy(), image.affine @ flip)
    assert_positions(flipped, series.files, unflipped=False)  # the same voxels in the same places…
    assert_same_volume(flipped, good)
    with pytest.raises(AssertionError, match="pixel \\(0, 0\\)"):  # …but not as the mount must serve them
        assert_positions(flipped, series.files)
    shifted = image.affine.copy()
    shifted[:3, 3] += shifted[:3, 2] * 0.5
    with pytest.raises(AssertionError, match="from a voxel centre"):
        assert_positions(variant("shifted.nii", stored, shifted), series.files)
    with pytest.raises(AssertionError, match="affine"):
        assert_same_volume(tmp_path / "shifted.nii", good)


def test_dcm2niix_bvecs_mean_the_files_gradients(tmp_path: Path) -> None:
    gradients = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.6, 0.8)]
    series = volumegen.make_series(tmp_path / "in", repetitions=4, modality="MR", orientation=volumegen.oblique(),
                                   temporal_ids=False, b_values=[0.0, 1000.0, 0.0, 1000.0], gradients=gradients)
    (reference,) = run_dcm2niix(tmp_path / "in", tmp_path / "ref")
    assert reference.with_suffix(".bval").read_text().split() == ["0", "1000", "0", "1000"]  # acquisition order
    found = world_gradients(reference.with_suffix(".bvec"), nib.load(reference).affine)
    assert np.allclose(found, np.array(gradients) * [-1.0, -1.0, 1.0], atol=1e-4)
    placed = assert_positions(reference, series.files, unflipped=False)
    assert {s.sop_uid: s.t for s in series.slices} == {uid: kt[1] for (uid, _), kt in placed.items()}
