"""The byte size of every ``NNN.jpg`` view, and its first and last bytes, from geometry alone.

Kept apart from the renderer (``views.jpeg``) so that listing a folder, which needs every
size, and answering a format probe, which needs the first bytes, import neither numpy,
Pillow nor pydicom.

The probe region: tools that scan a folder for DICOM (dcm2niix, GDCM, ``file``) read the
first few KiB of every file, and stdio's ``fseek(SEEK_END)`` reads the last block. Every
view therefore starts with ``jpeg_head`` (SOI, the JFIF APP0 segment and COM segments of
spaces) and ends with ``jpeg_tail`` (0xFF fill bytes, which T.81 B.1.1.2 allows before any
marker, then EOI); both depend on the geometry only, so reads that stay inside them are
answered without rendering. Their lengths come out of the pixel budget (a quarter of it
for the head, capped at ``PROBE_HEAD``; a sixteenth for the tail, capped at ``PROBE_TAIL``),
never out of the header allowance.
"""

from __future__ import annotations

import functools
import math

HEADER_ALLOWANCE = 2048
"""Bytes granted to JPEG headers and the text comment, on top of the pixel budget."""

BYTES_PER_SAMPLE = 0.5
"""Pixel budget: bytes per pixel per output channel."""


def is_color(photometric: str) -> bool:
    """True for RGB, YBR_* and PALETTE COLOR; False for MONOCHROME1/2 (and unknown values)."""
    value = photometric.strip().upper()
    return value in ("RGB", "PALETTE COLOR", "ARGB", "CMYK", "HSV") or value.startswith("YBR_")


PROBE_HEAD = 32768
"""Most bytes at the start of a view that depend on the geometry only (the kernel's first
read-ahead window of a small read is 16 KiB; GDCM's probe spans two pages of it)."""

PROBE_TAIL = 8192
"""Most bytes at the end of a view that depend on the geometry only (a stdio block)."""

HEAD_TEXT = b"dicomfs view"
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
JFIF_APP0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
"""The APP0 segment Pillow writes (JFIF 1.01, aspect ratio 1:1, no thumbnail)."""

_COM_MAX = 65533  # largest COM payload: the length field (which counts itself) is 16 bits


def probe_lengths(size: int) -> tuple[int, int]:
    """(head, tail) byte counts of a view of ``size`` bytes (see the module docstring)."""
    budget = max(size - HEADER_ALLOWANCE, 0)
    head = max(min(PROBE_HEAD, budget // 4), len(SOI) + len(JFIF_APP0) + 4 + len(HEAD_TEXT))
    tail = max(min(PROBE_TAIL, budget // 16), len(EOI))
    return head, tail


@functools.lru_cache(maxsize=64)
def jpeg_probe(size: int) -> tuple[bytes, bytes]:
    """(head, tail): the first and the last bytes of every view of ``size`` bytes (a
    ``jpeg_size``), whatever its pixels."""
    head_length, tail_length = probe_lengths(size)
    head = SOI + JFIF_APP0 + com_segments(HEAD_TEXT, head_length - len(SOI) - len(JFIF_APP0))
    return head, b"\xff" * (tail_length - len(EOI)) + EOI


def com_segments(text: bytes, total: int) -> bytes:
    """COM segments of exactly `total` bytes (at least 4 + len(text)); `text` opens the first."""
    segments = []
    remaining = total
    while remaining:
        payload = min(remaining - 4, _COM_MAX)
        left = remaining - 4 - payload
        if 0 < left < 4:  # too little for another segment: leave room for a minimal one
            payload -= 4 - left
        body = text.ljust(payload) if not segments else b" " * payload
        segments.append(b"\xff\xfe" + (payload + 2).to_bytes(2, "big") + body)
        remaining -= 4 + payload
    return b"".join(segments)


def jpeg_size(rows: int, columns: int, color: bool) -> int:
    """The exact byte size of every rendered view of this geometry."""
    if rows <= 0 or columns <= 0:
        raise ValueError(f"no image of {rows}x{columns} pixels")
    channels = 3 if color else 1
    return HEADER_ALLOWANCE + math.ceil(rows * columns * channels * BYTES_PER_SAMPLE)
