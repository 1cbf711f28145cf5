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


JSON_DEFER_SIZE = 4096
"""Values longer than this are read only if the JSON view needs them: the view never holds
pixel data, so a 512x512 CT renders in half the time (the output is the same bytes, tested
over pydicom's test files)."""


def _json(path: Path) -> bytes:
    return dataset_json(pydicom.dcmread(path, defer_size=JSON_DEFER_SIZE))


def _jpg(path: Path) -> bytes:
    return render_jpeg(_read(path))


def _read(path: Path) -> pydicom.Dataset:
    """Parse as ``parse.parse_instance`` did."""
    return pydicom.dcmread(io.BytesIO(path.read_bytes()))


VIEWS: dict[str, Callable[[Path], bytes]] = {"json": _json, "jpg": _jpg}


def render_view(suffix: str, path: Path, frame: int = 0) -> bytes:
    """Bytes of view ``suffix`` of the stored file at ``path`` (runs in a worker thread);
    ``frame`` (0 = first) for the .jpg of one frame (``NNN.frames/``)."""
    if frame:
        return render_jpeg(_read(path), frame=frame)
    return VIEWS[suffix](path)
