"""NIfTI-1 and NIfTI-2 headers for a planned volume (the voxels follow the header directly).

Written with ``struct`` from the published layouts, so that the header's bytes and the
file's size are known without numpy arrays or nibabel at listing time.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from dicomfs.volumes.plan import VolumePlan

NIFTI1_HEADER = 348
NIFTI2_HEADER = 540
EXTENSION_FLAG = b"\0\0\0\0"  # no extensions: voxels start right after
NIFTI1_LIMIT = 32767  # dim[] is int16 in NIfTI-1

# (bits allocated, signed, float) → (datatype code, numpy dtype)
_DATATYPES: dict[tuple[int, bool, bool], tuple[int, str]] = {
    (8, False, False): (2, "u1"), (8, True, False): (256, "i1"),
    (16, False, False): (512, "<u2"), (16, True, False): (4, "<i2"),
    (32, False, False): (768, "<u4"), (32, True, False): (8, "<i4"),
    (64, False, False): (1280, "<u8"), (64, True, False): (1024, "<i8"),
    (32, True, True): (16, "<f4"), (32, False, True): (16, "<f4"),
    (64, True, True): (64, "<f8"), (64, False, True): (64, "<f8"),
}
RGB24 = 128
FLOAT32 = 16


def voxel_type(plan: VolumePlan) -> tuple[int, str, int]:
    """(NIfTI datatype, numpy dtype of the voxels, bytes per voxel)."""
    facts = plan.first.facts
    if plan.per_slice_rescale:
        return FLOAT32, "<f4", 4
    if facts.samples == 3:
        return RGB24, "u1", 3
    code, dtype = _DATATYPES[(facts.bits_allocated, facts.signed, bool(facts.float_pixels))]
    return code, dtype, np.dtype(dtype).itemsize


def voxel_bytes(plan: VolumePlan) -> int:
    """Bytes of one slice in the volume."""
    return plan.columns * plan.rows * voxel_type(plan)[2]


def data_size(plan: VolumePlan) -> int:
    return voxel_bytes(plan) * len(plan.slices)


def needs_nifti2(plan: VolumePlan) -> bool:
    return max(plan.columns, plan.rows, plan.slices_per_volume, plan.timepoints) > NIFTI1_LIMIT


def header_size(plan: VolumePlan) -> int:
    return (NIFTI2_HEADER if needs_nifti2(plan) else NIFTI1_HEADER) + len(EXTENSION_FLAG)


def file_size(plan: VolumePlan) -> int:
    return header_size(plan) + data_size(plan)


def header(plan: VolumePlan) -> bytes:
    """The header and the empty extension flag: the voxels start at ``len(header(plan))``."""
    code, _, itemsize = voxel_type(plan)
    dims = [3 if plan.timepoints == 1 else 4, plan.columns, plan.rows, plan.slices_per_volume,
            plan.timepoints, 1, 1, 1]
    quaternion, offset, qfac, zooms = qform(plan.affine)
    pixdim = [qfac, *zooms, 1.0, 1.0, 1.0, 1.0]
    slope, intercept = (plan.slope, plan.intercept)
    if code in (RGB24,) or plan.per_slice_rescale:
        slope, intercept = 1.0, 0.0
    rows = [list(map(float, plan.affine[i])) for i in range(3)]
    description = b"dicomfs series volume"
    units = 2 | 8  # mm, seconds
    vox_offset = header_size(plan)
    bitpix = itemsize * 8
    if needs_nifti2(plan):
        data = struct.pack(
            "<i8s2h8q3d8dq6d2q80s24s2i3d3d4d4d4d3i16sc15s",
            NIFTI2_HEADER, b"n+2\0\r\n\x1a\n", code, bitpix, *dims, 0.0, 0.0, 0.0, *pixdim, vox_offset,
            slope, intercept, 0.0, 0.0, 0.0, 0.0, 0, 0, description, b"", 1, 1, *quaternion, *offset,
            *rows[0], *rows[1], *rows[2], 0, units, 0, b"", b"\0", b"",
        )
    else:
        data = struct.pack(
            "<i10s18sihcb8h3f4h8f3fhcb4f2i80s24s2h3f3f4f4f4f16s4s",
            NIFTI1_HEADER, b"", b"", 0, 0, b"r", 0, *dims, 0.0, 0.0, 0.0, 0, code, bitpix, 0, *pixdim,
            float(vox_offset), slope, intercept, 0, b"\0", units, 0.0, 0.0, 0.0, 0.0, 0, 0, description, b"",
            1, 1, *quaternion, *offset, *rows[0], *rows[1], *rows[2], b"", b"n+1\0",
        )
    return data + EXTENSION_FLAG


def qform(affine: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float], float,
                                       tuple[float, float, float]]:
    """(quatern b, c, d), offset, qfac and voxel sizes of the rotation closest to ``affine``.

    A sheared affine (a tilted stack) has no exact qform: the orthogonal part is used, as
    the NIfTI standard asks; the sform keeps the exact mapping.
    """
    matrix = affine[:3, :3].astype(float)
    zooms = np.linalg.norm(matrix, axis=0)
    zooms[zooms == 0] = 1.0
    rotation = matrix / zooms
    u, _, vt = np.linalg.svd(rotation)
    rotation = u @ vt
    qfac = 1.0
    if np.linalg.det(rotation) < 0:
        qfac = -1.0
        rotation[:, 2] = -rotation[:, 2]
    r = rotation
    a = r[0, 0] + r[1, 1] + r[2, 2] + 1.0
    if a > 0.5:
        a = 0.5 * math.sqrt(a)
        b = 0.25 * (r[2, 1] - r[1, 2]) / a
        c = 0.25 * (r[0, 2] - r[2, 0]) / a
        d = 0.25 * (r[1, 0] - r[0, 1]) / a
    else:
        xd = 1.0 + r[0, 0] - (r[1, 1] + r[2, 2])
        yd = 1.0 + r[1, 1] - (r[0, 0] + r[2, 2])
        zd = 1.0 + r[2, 2] - (r[0, 0] + r[1, 1])
        if xd > 1.0:
            b = 0.5 * math.sqrt(xd)
            c = 0.25 * (r[0, 1] + r[1, 0]) / b
            d = 0.25 * (r[0, 2] + r[2, 0]) / b
            a = 0.25 * (r[2, 1] - r[1, 2]) / b
        elif yd > 1.0:
            c = 0.5 * math.sqrt(yd)
            b = 0.25 * (r[0, 1] + r[1, 0]) / c
            d = 0.25 * (r[1, 2] + r[2, 1]) / c
            a = 0.25 * (r[0, 2] - r[2, 0]) / c
        else:
            d = 0.5 * math.sqrt(zd)
            b = 0.25 * (r[0, 2] + r[2, 0]) / d
            c = 0.25 * (r[1, 2] + r[2, 1]) / d
            a = 0.25 * (r[1, 0] - r[0, 1]) / d
        if a < 0.0:
            b, c, d = -b, -c, -d
    offset = tuple(float(v) for v in affine[:3, 3])
    return (b, c, d), offset, qfac, (float(zooms[0]), float(zooms[1]), float(zooms[2]))  # type: ignore[return-value]
