"""Generated views of an instance, by file suffix: the bytes a reader gets for NNN.<suffix>.

Each view is a pure function of the stored Part 10 file, so the mount can report sizes that
were fixed before anyone opened the file (see ``tree``), and the kernel may cache the bytes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom

from dicomfs.views.dicom_json import dataset_json
from dicomfs.views.jpeg import RenderError, render_jpeg

__all__ = ["VIEWS", "RenderError", "render_view"]


def _json(path: Path) -> bytes:
    return dataset_json(_read(path, stop_before_pixels=False))


def _jpg(path: Path) -> bytes:
    return render_jpeg(_read(path, stop_before_pixels=False))


def _read(path: Path, *, stop_before_pixels: bool) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(path.read_bytes()), stop_before_pixels=stop_before_pixels)


VIEWS: dict[str, Callable[[Path], bytes]] = {"json": _json, "jpg": _jpg}


def render_view(suffix: str, path: Path) -> bytes:
    """Bytes of view ``suffix`` of the stored file at ``path`` (runs in a worker thread)."""
    return VIEWS[suffix](path)
