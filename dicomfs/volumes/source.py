"""A volume's bytes: the header, then each slice's stored pixel bytes, read where they lie.

For uncompressed little-endian pixel data with one rescale for the whole volume, a read of
any range maps onto ``pread`` of the stored files: nothing is decoded, copied or held. Other
volumes (compressed, big endian, per-slice rescale) are decoded once into a cache file
(``volumes.cache``) and read from there. A ``VolumeSource`` is a snapshot: the slices it was
made with stay its slices, so a reader never sees two versions mixed.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomfs.volumes import nifti
from dicomfs.volumes.plan import VolumePlan

OPEN_FILES = 64  # stored files kept open per reader: a sequential read moves through them in order


@dataclass(frozen=True, slots=True)
class VolumeLayout:
    """Where a raw volume's bytes lie: its header, then each slice's pixel bytes as (instance
    id, offset in its stored file), None for a missing slice (zeros). Kept in the index with
    the listing, so that opening a volume needs no planning."""

    header: bytes
    slice_bytes: int
    slices: list[tuple[int, int] | None]

    @classmethod
    def of(cls, plan: VolumePlan) -> VolumeLayout:
        assert plan.raw
        return cls(nifti.header(plan), nifti.voxel_bytes(plan), [
            None if s is None else (s.instance_id, s.facts.pixel_offset + s.frame * s.facts.frame_bytes)
            for s in plan.slices])

    @property
    def size(self) -> int:
        return len(self.header) + self.slice_bytes * len(self.slices)

    def to_json(self) -> dict[str, object]:
        return {"header": base64.b64encode(self.header).decode(), "slice_bytes": self.slice_bytes,
                "slices": self.slices}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VolumeLayout:
        return cls(base64.b64decode(data["header"]), data["slice_bytes"],
                   [None if s is None else (s[0], s[1]) for s in data["slices"]])


class VolumeSource:
    """Reads of a raw volume, from its layout and the stored files."""

    def __init__(self, layout: VolumeLayout, store_root: Path, file_paths: dict[int, str]) -> None:
        """``file_paths``: instance id → stored file path (relative to ``store_root``)."""
        self.header = layout.header
        self.slice_bytes = layout.slice_bytes
        self.size = layout.size
        self._slices: list[tuple[str, int] | None] = [
            None if s is None else (str(store_root / file_paths[s[0]]), s[1]) for s in layout.slices]
        self._open: OrderedDict[str, int] = OrderedDict()
    def read(self, off: int, size: int) -> bytes:
        """Bytes ``off`` to ``off + size`` (fewer at the end); OSError when a stored file is gone."""
        size = max(0, min(size, self.size - off))
        if size == 0:
            return b""
        parts: list[bytes] = []
        header_len = len(self.header)
        if off < header_len:
            chunk = self.header[off:off + size]
            parts.append(chunk)
            off += len(chunk)
            size -= len(chunk)
        while size > 0:
            index, within = divmod(off - header_len, self.slice_bytes)
            count = min(size, self.slice_bytes - within)
            where = self._slices[index]
            if where is None:
                parts.append(bytes(count))
            else:
                path, start = where
                chunk = os.pread(self._fd(path), count, start + within)
                if len(chunk) != count:
                    raise OSError(f"{path}: pixel data shorter than the index says")
                parts.append(chunk)
            off += count
            size -= count
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _fd(self, path: str) -> int:
        fd = self._open.get(path)
        if fd is not None:
            self._open.move_to_end(path)
            return fd
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._open[path] = fd
        if len(self._open) > OPEN_FILES:
            os.close(self._open.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1])
