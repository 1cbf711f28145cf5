"""The text files beside a volume: a JSON sidecar as dcm2niix writes for BIDS, ``.bval`` and ``.bvec``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from dicomfs import __version__
from dicomfs.volumes.plan import VolumePlan

_MILLISECONDS = ("EchoTime", "RepetitionTime", "InversionTime")  # BIDS wants seconds


def sidecar_json(plan: VolumePlan, series_uid: str, acquisition: dict[str, Any]) -> bytes:
    """``acquisition``: the first slice's ``facts.sidecar_values``."""
    first = plan.first
    out: dict[str, Any] = {}
    for keyword, value in acquisition.items():
        if keyword in _MILLISECONDS and isinstance(value, int | float):
            value = round(value / 1000.0, 9)
        out[keyword] = value
    frame = first.frame_facts
    if frame.orientation is not None:
        out["ImageOrientationPatientDICOM"] = list(frame.orientation)
    out["SeriesInstanceUID"] = series_uid
    out["ConversionSoftware"] = "dicomfs"
    out["ConversionSoftwareVersion"] = __version__
    if plan.timepoints > 1:
        out["FourthDimension"] = plan.repetition
    if plan.notes:
        out["VolumeNotes"] = plan.notes
    # Every slice of the volume in file order (k fastest, then t); null: a missing slice.
    out["SOPInstanceUIDs"] = [None if s is None else s.sop_uid for s in plan.slices]
    if any(s is not None and len(s.facts.frames) > 1 for s in plan.slices):
        out["FrameNumbers"] = [None if s is None else s.frame + 1 for s in plan.slices]
    return (json.dumps(out, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def bval(plan: VolumePlan) -> bytes:
    assert plan.b_values is not None
    return (" ".join(f"{b:g}" for b in plan.b_values) + "\n").encode()


def bvec(plan: VolumePlan) -> bytes:
    """Gradient directions in voxel axes, as FSL reads them (x negated for a positive determinant)."""
    assert plan.gradients is not None
    axes = plan.affine[:3, :3] * np.array([-1.0, -1.0, 1.0])[:, None]  # back to LPS
    axes = axes / np.linalg.norm(axes, axis=0)
    vectors = []
    for gradient in plan.gradients:
        g = np.asarray(gradient, dtype=float)
        v = axes.T @ g if np.linalg.norm(g) > 0 else np.zeros(3)
        if np.linalg.det(plan.affine[:3, :3]) > 0:
            v[0] = -v[0]
        vectors.append(v)
    lines = [" ".join(f"{v[axis]:.6g}" for v in vectors) for axis in range(3)]
    return ("\n".join(lines) + "\n").encode()
