"""Volumes whose stored bytes cannot be served as voxels, decoded once into a bounded cache.

Compressed transfer syntaxes, big endian, planar colour, and a rescale that differs between
slices (PET: float32 voxels) are decoded with pydicom (and its pylibjpeg plugins) slice by
slice into ``<data>/cache/volumes/<key>.nii``: written to a temporary name and renamed, so a
reader sees a whole file or none. The key covers every slice's SOP Instance UID and frame,
so a changed series gets a new file; the least recently used files are removed when the
cache grows past its limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from dicomfs.privacy import DIR_MODE
from dicomfs.volumes import nifti
from dicomfs.volumes.plan import VolumePlan

log = logging.getLogger(__name__)


class VolumeCache:
    def __init__(self, folder: Path, limit_bytes: int) -> None:
        self.folder = folder
        self.limit_bytes = limit_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, plan: VolumePlan, store_root: Path, file_paths: dict[int, str]) -> Path:
        """The decoded volume's file, made now if it is not cached (blocking: call in a thread)."""
        key = _key(plan)
        path = self.folder / f"{key}.nii"
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if path.exists():
                os.utime(path)  # least recently used goes first
                return path
            self.folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            fd, temp = tempfile.mkstemp(dir=self.folder, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(nifti.header(plan))
                    _, dtype, _ = nifti.voxel_type(plan)
                    blank = bytes(nifti.voxel_bytes(plan))
                    for s in plan.slices:
                        if s is None:
                            out.write(blank)
                            continue
                        out.write(_decoded_slice(plan, store_root / file_paths[s.instance_id], s.frame,
                                                 s.frame_facts.slope, s.frame_facts.intercept, dtype))
                os.replace(temp, path)
            except BaseException:
                os.unlink(temp)
                raise
            log.info("decoded volume %s into the cache (%d MiB)", plan.name, path.stat().st_size >> 20)
        self._evict(keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        files = sorted(self.folder.glob("*.nii"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.limit_bytes:
                break
            if path != keep:
                total -= path.stat().st_size
                path.unlink(missing_ok=True)  # readers with it open keep reading their copy


def _key(plan: VolumePlan) -> str:
    digest = hashlib.sha256(plan.name.encode())
    for s in plan.slices:
        digest.update(b"-" if s is None else f"{s.sop_uid}/{s.frame};".encode())
    return digest.hexdigest()[:32]


def _decoded_slice(plan: VolumePlan, path: Path, frame: int, slope: float, intercept: float, dtype: str) -> bytes:
    import pydicom

    ds = pydicom.dcmread(path)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        from pydicom.pixels import pixel_array

        array = pixel_array(ds, index=frame)
    else:
        array = ds.pixel_array
    if array.shape[:2] != (plan.rows, plan.columns):
        raise ValueError(f"{path.name}: frame of {array.shape[:2]} pixels, the volume's grid is "
                         f"{plan.rows}x{plan.columns}")
    if plan.per_slice_rescale:
        array = array.astype(np.float64) * slope + intercept
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
