"""The ``NNN.jpg`` view: one frame as a radiologist would window it, at a size known in advance.

Why a fixed size: the mount lists every file with its ``st_size`` (pyfuse3 always
answers readdir with attributes), long before anyone renders the JPEG. So the size
depends on geometry only::

    jpeg_size(rows, columns, color) = 2048 + ceil(rows * columns * channels / 2)
                                      (channels: 3 for colour, 1 for greyscale)

that is half a byte per pixel per output channel, plus 2048 bytes for the JPEG
headers (about 650 bytes) and our comment. The frame is encoded at quality 92,
85, 75, 60, 40, 20, 5 in turn until it fits (85 and up without chroma
subsampling). If even quality 5 is too big (noise), the image is averaged into
flat 16x16 blocks, and as a last resort rendered flat grey: a flat block costs
at most a few bytes per 8x8 block, far below the 32 bytes per block the budget
grants, so the last step always fits for any geometry. The stream is then framed to exactly
``jpeg_size``: it starts with the geometry's fixed head (SOI, JFIF APP0, COM
segments of spaces) and ends with its fixed tail (0xFF fill bytes, EOI), so a
format probe is answered without rendering (see ``jpeg_size``); between them
come COM segments whose first says what was rendered, e.g. ``dicomfs view:
frame 1/1, window C=40 W=400 (header), quality 92``, then the stream's own
segments and scan. The file stays a valid JPEG with nothing after EOI.

The display pipeline follows PS3.4 N.2 with pydicom's own helpers: Modality
LUT (Rescale Slope/Intercept or Modality LUT Sequence), then VOI (VOI LUT
Sequence, else the first Window Center/Width with its VOI LUT Function, else
the 0.5-99.5 percentile range of the frame), MONOCHROME1 (or Presentation LUT
Shape INVERSE) inverted. Enhanced multi-frame objects take both from their
per-frame or shared functional groups. For integer pixels up to 16 bits the
pipeline runs once over every possible stored value to build a 8-bit lookup
table, so a 512x512 CT costs one table lookup per pixel. Colour: YBR is
converted to RGB, PALETTE COLOR goes through its LUT, deeper than 8-bit samples
are scaled down.

Anything that goes wrong with the pixel data surfaces as :class:`RenderError`.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    convert_color_space,
    get_decoder,
)
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomfs.views.jpeg_size import EOI, SOI, com_segments, is_color, jpeg_probe, jpeg_size, probe_lengths

__all__ = ["RenderError", "has_renderable_pixels", "is_color", "jpeg_size", "placeholder_jpeg", "render_jpeg",
           "renders_image"]

QUALITY_LADDER: tuple[tuple[int, int], ...] = (
    (92, 0),
    (85, 0),
    (75, 2),
    (60, 2),
    (40, 2),
    (20, 2),
    (5, 2),
)
"""(quality, Pillow subsampling: 0 = 4:4:4, 2 = 4:2:0), tried in order."""

AUTO_PERCENTILES = (0.5, 99.5)
"""Window used when the header has none: this range of the frame's values."""

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloat...
_BLOCK = 16  # flat blocks of the fallback: one 4:2:0 MCU, so chroma is flat too
_MAX_TEXT = 200


class RenderError(Exception):
    """The object has pixel data, but it cannot be decoded or rendered; the message says why."""


def renders_image(ds: pydicom.Dataset) -> bool:
    """True if `ds` has pixel data this module can render (so the mount lists ``NNN.jpg``).

    Decided at import, where a listed ``.jpg`` is promised: beyond the cheap checks
    (``has_renderable_pixels``), the first frame is decoded once, so pixel data that no
    decoder reads (a broken stream, truncated data, a bad Number of Frames) gives False.
    Needs the pixel data element in `ds` (do not read with ``stop_before_pixels``).
    SR, RTSTRUCT, RTPLAN, waveforms and video (MPEG/HEVC, no decoder) give False.
    """
    if not has_renderable_pixels(ds):
        return False
    try:
        tsyntax = _transfer_syntax(ds)
        if tsyntax.is_compressed or "PixelData" not in ds:  # float pixel data: decoding checks more
            _decode(ds, 0)
        else:  # what decoding native integer data can fail on, checked without copying the pixels
            runner = DecodeRunner(tsyntax)
            runner.set_source(ds)
            runner.set_options(**as_pixel_options(ds))
            runner.validate()
    except Exception:
        return False
    return True


def has_renderable_pixels(ds: pydicom.Dataset) -> bool:
    """Pixel data, a geometry and a decoder for the transfer syntax: no decoding."""
    elem = next((ds.get_item(t, keep_deferred=True) for t in _PIXEL_TAGS if t in ds), None)
    if elem is None or not _has_value(elem):
        return False
    try:
        if int(ds.Rows) <= 0 or int(ds.Columns) <= 0:
            return False
        return get_decoder(_transfer_syntax(ds)).is_available
    except Exception:
        return False


def render_jpeg(ds: pydicom.Dataset, *, frame: int = 0) -> bytes:
    """Render frame `frame` (0 = first) of `ds`: ``jpeg_size(Rows, Columns, colour)`` bytes.

    Raises RenderError, and nothing else, when the frame cannot be rendered.
    """
    if not has_renderable_pixels(ds):
        raise RenderError("no renderable pixel data (or no decoder for its transfer syntax)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        color = is_color(str(ds.get("PhotometricInterpretation", "")))
        size = jpeg_size(rows, columns, color)
        image, note = _display_image(ds, frame, rows, columns, color)
        return _encode_to_size(image, size, note)
    except RenderError:
        raise
    except Exception as exc:  # pydicom and the codecs raise many types on bad data
        raise RenderError(f"cannot render frame {frame}: {type(exc).__name__}: {exc}") from exc


def placeholder_jpeg(size: int, reason: str) -> bytes:
    """A valid JPEG of exactly `size` bytes (a ``jpeg_size``): a small grey square whose
    comment says why the frame could not be rendered. Served instead of a read error, so a
    tree walk (``cp -r``, ``tar``, ``grep -r``) never fails on one bad object."""
    note = f"dicomfs view: frame not rendered: {reason}"
    return _encode_to_size(np.full((16, 16), 128, np.uint8), size, note)


# --- decoding ---------------------------------------------------------------------------------


def _has_value(elem: Any) -> bool:
    """Non-empty pixel data, judged without reading a deferred value."""
    if isinstance(elem, RawDataElement):
        return bool(elem.length)
    value = elem.value
    return bool(value) if isinstance(value, bytes | bytearray) else value is not None


def _transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax, or the native one a dataset without file meta was read with."""
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if tsyntax:
        return UID(tsyntax)
    implicit, little = ds.original_encoding
    if little is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _decode(ds: Dataset, frame: int) -> tuple[np.ndarray, str, int]:
    """Decode only frame `frame`: (array, photometric after decoding, number of frames)."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if not 0 <= frame < max(frames, 1):
        raise RenderError(f"frame {frame} out of range: the object has {frames} frame(s)")
    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
        arr, meta = decoder.as_array(ds, index=frame, validate=True, **as_pixel_options(ds))
    except Exception as exc:
        name = getattr(tsyntax, "name", str(tsyntax))
        raise RenderError(
            f"cannot decode frame {frame} ({name}): {type(exc).__name__}: {exc}"
        ) from exc
    return arr, str(meta.get("photometric_interpretation", "")).strip().upper(), frames


def _display_image(
    ds: Dataset, frame: int, rows: int, columns: int, color: bool
) -> tuple[np.ndarray, str]:
    """The 8-bit image to encode, and the text describing how it was made."""
    arr, photometric, frames = _decode(ds, frame)
    if arr.shape[:2] != (rows, columns):
        raise RenderError(f"decoded frame is {arr.shape[:2]}, header says {(rows, columns)}")
    if color:
        image, how = _color(ds, arr, photometric)
    else:
        if arr.ndim == 3:  # single-sample photometric, multi-sample data: show the first
            arr = arr[..., 0]
        image, how = _grey(ds, arr, frame)
    if color and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image), f"dicomfs view: frame {frame + 1}/{frames}, {how}"


# --- greyscale: modality LUT, VOI, polarity ---------------------------------------------------


@dataclass(frozen=True)
class _Voi:
    """How stored values become display values: kind is 'lut', 'window' or 'auto'."""

    kind: str
    source: Dataset | None = None
    center: float = 0.0
    width: float = 0.0
    function: str = "LINEAR"
    origin: str = "header"


def _grey(ds: Dataset, arr: np.ndarray, frame: int) -> tuple[np.ndarray, str]:
    modality_src, voi_src, origin = _frame_sources(ds, frame)
    modality = _modality_dataset(ds, modality_src)
    voi = _voi_spec(voi_src, origin)
    invert = _inverted(ds)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        # The pipeline runs once over every possible stored value, giving an 8-bit table
        # indexed by the raw 8/16-bit words, so the frame costs one lookup per pixel.
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        words = arr.view(f"=u{arr.dtype.itemsize}")
        signed = arr.dtype.kind == "i"
        low, count, position = _stored_values(signed, arr.dtype.itemsize, _bits(ds, arr))
        values = _apply_modality(np.arange(low, low + count, dtype=np.int64), modality)

        def histogram() -> np.ndarray:
            per_word = np.bincount(words.ravel(), minlength=position.size)
            return np.bincount(position, weights=per_word, minlength=count)

        table, note = _apply_voi(ds, values, voi, histogram)
        if invert:
            table = 255 - table
        image = table[position][words]
    else:
        values = _apply_modality(arr.astype(np.float64), modality)
        image, note = _apply_voi(ds, values, voi, None)
        if invert:
            image = 255 - image
    return image, note + (", inverted" if invert else "")


@functools.lru_cache(maxsize=32)
def _stored_values(signed: bool, itemsize: int, bits: int) -> tuple[int, int, np.ndarray]:
    """(lowest value, count, position) for `bits`-bit stored values in native `itemsize` words.

    ``position[word]`` indexes the stored value a raw word holds, clipped into range,
    so bits above Bits Stored (which pydicom already masks) can never index out.
    """
    words = np.arange(1 << (8 * itemsize), dtype=np.uint32).astype(f"=u{itemsize}")
    stored = words.view(f"=i{itemsize}" if signed else f"=u{itemsize}").astype(np.int64)
    low = -(1 << (bits - 1)) if signed else 0
    count = 1 << bits
    position = np.clip(stored - low, 0, count - 1).astype(np.intp)
    position.setflags(write=False)
    return low, count, position


def _frame_sources(ds: Dataset, frame: int) -> tuple[Dataset, Dataset, str]:
    """Where the rescale and window of this frame live: functional groups, else the header."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])

    def first(keyword: str) -> Dataset | None:
        for group in groups:
            items = group.get(keyword)
            if items:
                return items[0]
        return None

    transform, window = first("PixelValueTransformationSequence"), first("FrameVOILUTSequence")
    if window is None:
        return (ds if transform is None else transform), ds, "header"
    return (ds if transform is None else transform), window, "functional groups"


def _modality_dataset(ds: Dataset, source: Dataset) -> Dataset | None:
    """A dataset holding only the Modality LUT module of the frame, for apply_modality_lut."""
    out = Dataset()
    _copy_encoding(ds, out)
    if source.get("ModalityLUTSequence"):
        out.ModalityLUTSequence = source.ModalityLUTSequence
        return out
    slope, intercept = source.get("RescaleSlope"), source.get("RescaleIntercept")
    if slope is None and intercept is None:
        return None
    try:
        out.RescaleSlope = float(slope if slope not in (None, "") else 1.0)
        out.RescaleIntercept = float(intercept if intercept not in (None, "") else 0.0)
    except (TypeError, ValueError):
        return None  # unreadable rescale: show stored values rather than nothing
    return out


def _apply_modality(values: np.ndarray, modality: Dataset | None) -> np.ndarray:
    if modality is None:
        return values.astype(np.float64)
    try:
        return np.asarray(apply_modality_lut(values, modality), dtype=np.float64)
    except Exception:
        return values.astype(np.float64)  # e.g. a LUT of unsupported depth


def _voi_spec(source: Dataset, origin: str) -> _Voi:
    """VOI LUT Sequence, else the first valid window, else automatic."""
    lut = source.get("VOILUTSequence")
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        return _Voi("lut", source=source, origin=origin)
    try:
        center = float(_first(source.get("WindowCenter")))
        width = float(_first(source.get("WindowWidth")))
    except (TypeError, ValueError, IndexError):
        return _Voi("auto")
    function = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    minimum = 1.0 if function == "LINEAR" else 0.0
    if not (math.isfinite(center) and math.isfinite(width)) or width < minimum or width == 0:
        return _Voi("auto")
    return _Voi("window", center=center, width=width, function=function, origin=origin)


def _first(value: Any) -> Any:
    if value is None or isinstance(value, str | bytes | int | float):
        return value
    return value[0]


def _apply_voi(
    ds: Dataset, values: np.ndarray, voi: _Voi, histogram: Any
) -> tuple[np.ndarray, str]:
    """Map modality values to 0..255 (uint8); `histogram` gives pixel counts per value."""
    if voi.kind == "lut":
        try:
            return _voi_lut(ds, values, voi), f"VOI LUT ({voi.origin})"
        except Exception:
            voi = _Voi("auto")
    if voi.kind == "window":
        window = Dataset()
        window.PhotometricInterpretation = "MONOCHROME2"
        window.BitsStored, window.PixelRepresentation = 8, 0  # output range 0..255
        window.WindowCenter, window.WindowWidth = voi.center, voi.width
        window.VOILUTFunction = voi.function
        out = apply_windowing(values, window)
        function = "" if voi.function == "LINEAR" else f" {voi.function}"
        note = f"window C={voi.center:g} W={voi.width:g}{function} ({voi.origin})"
        return _to_uint8(out), note
    low, high = _auto_range(values, histogram)
    out = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    note = f"window C={(low + high) / 2:g} W={high - low:g} (auto {AUTO_PERCENTILES[0]:g}-"
    return _to_uint8(out), note + f"{AUTO_PERCENTILES[1]:g}%)"


def _voi_lut(ds: Dataset, values: np.ndarray, voi: _Voi) -> np.ndarray:
    """VOI LUT Sequence through pydicom, scaled by the LUT's actual output range."""
    assert voi.source is not None
    lut = Dataset()
    _copy_encoding(ds, lut)
    lut.VOILUTSequence = voi.source.VOILUTSequence
    descriptor = lut.VOILUTSequence[0].LUTDescriptor
    entries, first_map = int(descriptor[0]) or 65536, int(descriptor[1])
    if first_map >= 32768 and values.min() < 0:
        first_map -= 65536  # US descriptor of a signed first value
    table = apply_voi(np.arange(first_map, first_map + entries, dtype=np.int64), lut)
    low, high = float(table.min()), float(table.max())
    out = apply_voi(np.rint(np.nan_to_num(values)).astype(np.int64), lut).astype(np.float64)
    scale = 255.0 / (high - low) if high > low else 0.0
    return _to_uint8((out - low) * scale)


def _auto_range(values: np.ndarray, histogram: Any) -> tuple[float, float]:
    """The robust range of the frame; min/max if that range is empty."""
    low_q, high_q = (p / 100 for p in AUTO_PERCENTILES)
    if histogram is None:  # values are the pixels themselves
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return 0.0, 0.0
        low, high = np.percentile(finite, [100 * low_q, 100 * high_q])
        if high <= low:
            low, high = finite.min(), finite.max()
        return float(low), float(high)
    counts = histogram()[: len(values)]  # values is the table of every stored value
    present = counts > 0
    v, c = values[present], counts[present]
    if v.size > 1 and not np.all(v[1:] >= v[:-1]):
        order = np.argsort(v, kind="stable")
        v, c = v[order], c[order]
    cumulative = np.cumsum(c)
    total = cumulative[-1]
    low = v[min(np.searchsorted(cumulative, total * low_q), v.size - 1)]
    high = v[min(np.searchsorted(cumulative, total * high_q), v.size - 1)]
    if high <= low:
        low, high = v[0], v[-1]
    return float(low), float(high)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    out = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _inverted(ds: Dataset) -> bool:
    """MONOCHROME1 shows low values white; so does MONOCHROME2 with an INVERSE LUT shape."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "MONOCHROME1":
        return True
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    return photometric == "MONOCHROME2" and shape == "INVERSE"


def _copy_encoding(ds: Dataset, out: Dataset) -> None:
    """pydicom needs the byte order to read OW LUT data in a helper dataset."""
    implicit, little = ds.original_encoding
    if little is None:
        little = _transfer_syntax(ds).is_little_endian
    out.set_original_encoding(bool(implicit), bool(little))


# --- colour -----------------------------------------------------------------------------------


def _color(ds: Dataset, arr: np.ndarray, photometric: str) -> tuple[np.ndarray, str]:
    original = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        return _palette(ds, arr), "palette colour"
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise RenderError(f"{original} image with {arr.shape[2:] or 1} sample(s) per pixel")
    arr = arr[..., :3]
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
    elif photometric in ("YBR_PARTIAL_422", "YBR_PARTIAL_420"):
        arr = _ybr_partial_to_rgb(arr, _bits(ds, arr))
    elif photometric not in ("RGB", "YBR_ICT", "YBR_RCT"):  # J2K decoders undo ICT/RCT
        raise RenderError(f"photometric interpretation {original} is not supported")
    how = "colour RGB" if original == "RGB" else f"colour RGB from {original}"
    return _scale_to_8_bits(arr, _bits(ds, arr)), how


def _palette(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """PALETTE COLOR through pydicom's apply_color_lut, built once as a table."""
    if arr.ndim != 2:
        raise RenderError("PALETTE COLOR image with more than one sample per pixel")
    low = int(arr.min()) if arr.dtype.kind == "i" else 0
    high = int(arr.max())
    table = apply_color_lut(np.arange(low, high + 1, dtype=np.int64), ds)[..., :3]
    if table.dtype.itemsize > 1:
        # 16-bit entries, unless they only use 8 bits (a common encoder mistake)
        table = table if table.max() <= 255 else table >> 8
    return table.astype(np.uint8)[arr.astype(np.int64) - low]


def _bits(ds: Dataset, arr: np.ndarray) -> int:
    try:
        return min(int(ds.get("BitsStored") or 8), 8 * arr.dtype.itemsize)
    except (TypeError, ValueError):
        return 8 * arr.dtype.itemsize


def _scale_to_8_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        return _to_uint8(arr)
    shift = max(bits - 8, 0)
    return np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def _ybr_partial_to_rgb(arr: np.ndarray, bits: int) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2: YBR_PARTIAL uses the studio range (Y 16-235, chroma 16-240)."""
    ybr = _scale_to_8_bits(arr, bits).astype(np.float32)
    y = 1.1644 * (ybr[..., 0] - 16)
    cb, cr = ybr[..., 1] - 128, ybr[..., 2] - 128
    rgb = np.stack([y + 1.5960 * cr, y - 0.3918 * cb - 0.8130 * cr, y + 2.0172 * cb], axis=-1)
    return _to_uint8(rgb)


# --- JPEG at an exact size --------------------------------------------------------------------


def _encode_to_size(image: np.ndarray, size: int, note: str) -> bytes:
    """Walk the quality ladder until the stream and its comment fit, then pad to `size`."""
    for quality, subsampling in QUALITY_LADDER:
        data = _encode(image, quality, subsampling)
        text = _comment(f"{note}, quality {quality}")
        if _fits(data, size, text):
            return _pad(data, size, text)
    for fallback, label in ((_blocky(image), "16x16 blocks"), (np.full_like(image, 128), "flat")):
        data = _encode(fallback, 5, 2)
        text = _comment(f"{note}, too detailed for its budget: {label}")
        if _fits(data, size, text):
            return _pad(data, size, text)
    raise RenderError(f"internal error: even a flat image exceeds {size} bytes")


def _fits(data: bytes, size: int, text: bytes) -> bool:
    """Room for the stream, the fixed head and tail, and a COM segment holding ``text``."""
    head, tail = probe_lengths(size)
    return len(data) + head + tail + 4 + len(text) <= size


def _encode(image: np.ndarray, quality: int, subsampling: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=quality, subsampling=subsampling)
    return out.getvalue()


def _comment(text: str) -> bytes:
    return text.encode("ascii", "replace")[:_MAX_TEXT]


def _blocky(image: np.ndarray) -> np.ndarray:
    """The image as flat 16x16 blocks, each its mean: nearly free to encode."""
    rows, columns = image.shape[:2]
    pad_rows, pad_columns = -rows % _BLOCK, -columns % _BLOCK
    padding = ((0, pad_rows), (0, pad_columns)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image, padding, mode="edge").astype(np.float32)
    shape = (padded.shape[0] // _BLOCK, _BLOCK, padded.shape[1] // _BLOCK, _BLOCK)
    means = padded.reshape(shape + image.shape[2:]).mean(axis=(1, 3))
    blocks = np.repeat(np.repeat(means, _BLOCK, axis=0), _BLOCK, axis=1)[:rows, :columns]
    return np.ascontiguousarray(np.rint(blocks).astype(np.uint8))


def _pad(data: bytes, size: int, text: bytes) -> bytes:
    """Frame Pillow's stream to exactly ``size`` bytes: the geometry's fixed head (SOI, APP0,
    COM of spaces), a COM with ``text`` and the padding, the stream's own segments and scan,
    the fixed tail (fill bytes, EOI)."""
    head, tail = jpeg_probe(size)
    position = 2
    if data[2:4] == b"\xff\xe0":  # Pillow's JFIF APP0: ours, identical, is in the head
        position = 4 + int.from_bytes(data[4:6], "big")
    body = data[position:-2]
    assert data[:2] == SOI and data[-2:] == EOI
    padded = head + com_segments(text, size - len(head) - len(body) - len(tail)) + body + tail
    assert len(padded) == size
    return padded
