"""The byte size of every ``NNN.jpg`` view, from geometry alone (see ``views.jpeg``).

Kept apart from the renderer so that listing a folder, which needs every size, imports
neither numpy, Pillow nor pydicom.
"""

from __future__ import annotations

import math

HEADER_ALLOWANCE = 2048
"""Bytes granted to JPEG headers and the text comment, on top of the pixel budget."""

BYTES_PER_SAMPLE = 0.5
"""Pixel budget: bytes per pixel per output channel."""


def is_color(photometric: str) -> bool:
    """True for RGB, YBR_* and PALETTE COLOR; False for MONOCHROME1/2 (and unknown values)."""
    value = photometric.strip().upper()
    return value in ("RGB", "PALETTE COLOR", "ARGB", "CMYK", "HSV") or value.startswith("YBR_")


def jpeg_size(rows: int, columns: int, color: bool) -> int:
    """The exact byte size of every rendered view of this geometry."""
    if rows <= 0 or columns <= 0:
        raise ValueError(f"no image of {rows}x{columns} pixels")
    channels = 3 if color else 1
    return HEADER_ALLOWANCE + math.ceil(rows * columns * channels * BYTES_PER_SAMPLE)
