"""Generated views of an instance, by file suffix: the bytes a reader gets for NNN.<suffix>.

Each view is a pure function of the stored Part 10 file, so the mount can report sizes that
were fixed before anyone opened the file (see ``tree``), and the kernel may cache the bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom

from dicomfs.views.dicom_json import dataset_json
from dicomfs.views.jpeg import RenderError, render_jpeg

__all__ = ["VIEWS", "RenderError", "render_view"]


def _json(path: Path) -> bytes:
    return dataset_json(_read(path))


def _jpg(path: Path) -> bytes:
    return render_jpeg(_read(path))


def _read(path: Path) -> pydicom.Dataset:
    """Parse exactly as ``parse.parse_instance`` did, so the JSON bytes match its measure."""
    return pydicom.dcmread(io.BytesIO(path.read_bytes()))


VIEWS: dict[str, Callable[[Path], bytes]] = {"json": _json, "jpg": _jpg}


def render_view(suffix: str, path: Path) -> bytes:
    """Bytes of view ``suffix`` of the stored file at ``path`` (runs in a worker thread)."""
    return VIEWS[suffix](path)
