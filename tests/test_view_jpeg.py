"""The NNN.jpg view: a windowed rendering, always exactly jpeg_size() bytes of valid JPEG."""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

import dicomfs.views.jpeg as view
import dicomfs.views.jpeg_size as sizes
from dicomfs.views.jpeg import RenderError, is_color, jpeg_size, render_jpeg, renders_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on odd test files


def make_image(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", **attrs: Any) -> Dataset:
    """An uncompressed single-frame image holding `pixels` (rows, columns[, samples])."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = pixels.shape[2] if pixels.ndim == 3 else 1
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def quadrants(
    values: tuple[int, int, int, int], dtype: Any = np.int16, size: int = 64
) -> np.ndarray:
    """Four flat quadrants: top-left, top-right, bottom-left, bottom-right."""
    half = size // 2
    pixels = np.empty((size, size), dtype=dtype)
    pixels[:half, :half], pixels[:half, half:] = values[0], values[1]
    pixels[half:, :half], pixels[half:, half:] = values[2], values[3]
    return pixels


def quadrant_means(image: np.ndarray) -> list[float]:
    """Mean of each quadrant's interior (away from the JPEG ringing at the edges)."""
    half = image.shape[0] // 2
    m = half // 4
    corners = [(0, 0), (0, half), (half, 0), (half, half)]
    return [float(image[r + m : r + half - m, c + m : c + half - m].mean()) for r, c in corners]


def rendered(ds: Dataset, **kwargs: Any) -> tuple[bytes, np.ndarray]:
    """Render, check the invariants every view must have, and decode the pixels."""
    data = render_jpeg(ds, **kwargs)
    color = is_color(str(ds.PhotometricInterpretation))
    assert len(data) == jpeg_size(ds.Rows, ds.Columns, color)
    check_jpeg_structure(data)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        assert im.size == (ds.Columns, ds.Rows)
        assert im.mode == ("RGB" if color else "L")
        return data, np.asarray(im)


def check_jpeg_structure(data: bytes) -> list[bytes]:
    """Walk the markers: SOI, JFIF APP0, COM segments, header segments, scan, fill bytes, EOI.

    The first bytes and the last are the geometry's fixed probe region. Returns the COM
    payloads from the one that describes the rendering on.
    """
    assert data[:2] == b"\xff\xd8"
    assert data[-2:] == b"\xff\xd9"  # EOI ends the file: no trailing garbage
    head, tail = sizes.jpeg_probe(len(data))
    assert data.startswith(head) and data.endswith(tail)
    assert set(tail[:-2]) <= {0xFF}  # fill bytes (T.81 B.1.1.2) before EOI
    position, comments, markers = 2, [], []
    while True:
        assert data[position] == 0xFF
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        markers.append(marker)
        if marker == 0xFE:
            comments.append(data[position + 4 : position + 2 + length])
        if marker == 0xDA:  # SOS: entropy-coded data follows up to EOI
            break
        position += 2 + length
    assert comments, "no COM segment"
    first_com = markers.index(0xFE)
    assert markers[:first_com] == [0xE0], "COM must follow SOI and JFIF APP0 directly"
    assert all(m == 0xFE for m in markers[first_com : first_com + len(comments)])
    assert comments[0].startswith(sizes.HEAD_TEXT)
    described = [i for i, c in enumerate(comments) if c.startswith(b"dicomfs view: frame ")]
    assert len(described) == 1
    return comments[described[0]:]


def comment(data: bytes) -> str:
    return check_jpeg_structure(data)[0].decode("ascii").rstrip()


def test_the_probe_region_is_the_rendered_files_own_bytes() -> None:
    """A format probe is answered from the geometry: it must be what the full render has."""
    for shape, photometric in (((512, 512), "MONOCHROME2"), ((64, 48, 3), "RGB"), ((3, 5), "MONOCHROME2")):
        pixels = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
        data = render_jpeg(make_image(pixels, photometric=photometric))
        head, tail = sizes.jpeg_probe(len(data))
        assert data[: len(head)] == head and data[len(data) - len(tail) :] == tail
        assert data[:256] == head[:256] or len(head) < 256
    assert sizes.probe_lengths(jpeg_size(512, 512, False)) == (32768, 8192)


# --- size and classification --------------------------------------------------------------


def test_jpeg_size_formula() -> None:
    assert jpeg_size(512, 512, False) == 2048 + 512 * 512 // 2
    assert jpeg_size(512, 512, True) == 2048 + 3 * 512 * 512 // 2
    assert jpeg_size(1, 1, False) == 2049  # half a byte rounds up
    assert jpeg_size(3, 3, True) == 2048 + 14
    with pytest.raises(ValueError):
        jpeg_size(0, 10, False)


@pytest.mark.parametrize(
    ("photometric", "color"),
    [
        ("MONOCHROME1", False),
        ("MONOCHROME2", False),
        ("RGB", True),
        ("YBR_FULL", True),
        ("YBR_FULL_422", True),
        ("YBR_RCT", True),
        ("YBR_ICT", True),
        ("YBR_PARTIAL_420", True),
        ("PALETTE COLOR", True),
        (" rgb ", True),
        ("", False),
    ],
)
def test_is_color(photometric: str, color: bool) -> None:
    assert is_color(photometric) is color


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "reportsi.dcm", "waveform_ecg.dcm"])
def test_objects_without_pixel_data_do_not_render(name: str) -> None:
    ds = dcmread(get_testdata_file(name))
    assert not renders_image(ds)
    with pytest.raises(RenderError):
        render_jpeg(ds)


def test_rtstruct_does_not_render() -> None:
    ds = dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    assert ds.Modality == "RTSTRUCT"
    assert not renders_image(ds)


def test_renders_image_needs_pixels_and_geometry() -> None:
    assert renders_image(make_image(np.zeros((4, 4), np.uint8)))
    assert not renders_image(make_image(np.zeros((4, 4), np.uint8), Rows=0))
    assert not renders_image(make_image(np.zeros((4, 4), np.uint8), PixelData=b""))
    no_geometry = make_image(np.zeros((4, 4), np.uint8))
    del no_geometry.Columns
    assert not renders_image(no_geometry)
    path = get_testdata_file("CT_small.dcm")
    assert renders_image(dcmread(path))
    assert not renders_image(dcmread(path, stop_before_pixels=True))
    video = make_image(np.zeros((4, 4), np.uint8))
    video.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: nothing decodes it
    assert not renders_image(video)
    floats = make_image(np.zeros((4, 4), np.uint8))
    del floats.PixelData, floats.BitsStored, floats.HighBit, floats.PixelRepresentation
    floats.BitsAllocated = 32
    floats.FloatPixelData = np.arange(16, dtype=np.float32).tobytes()
    assert renders_image(floats)
    floats.BitsAllocated = 8  # 64 bytes that do not match the header: import finds out, once
    assert not renders_image(floats)
    truncated = make_image(np.zeros((4, 4), np.uint8))
    truncated.PixelData = bytes(10)
    assert not renders_image(truncated)


# --- every bundled image --------------------------------------------------------------------

_BROKEN = {  # pydicom's own test files that are broken on purpose (or for its decoders)
    "JPEG-lossy.dcm",  # libjpeg rejects this 12-bit extended stream
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "MR_truncated.dcm",
    "badVR.dcm",  # Number of Frames "1A"
}


def _images() -> list[str]:
    paths = []
    for path in sorted(get_testdata_files()):
        try:
            ds = dcmread(path)
        except Exception:
            continue
        if renders_image(ds):
            paths.append(path)
    return paths


IMAGES = _images()


def independent_grey(ds: Dataset) -> np.ndarray | None:
    """PS3.3 C.11.2.1.2.1 LINEAR window of Rescale Slope/Intercept, written out by hand.

    None when the object needs more than that (LUTs, colour, no window, functional groups).
    """
    keywords = ("ModalityLUTSequence", "VOILUTSequence", "SharedFunctionalGroupsSequence")
    if ds.PhotometricInterpretation not in ("MONOCHROME1", "MONOCHROME2") or any(
        k in ds for k in keywords
    ):
        return None
    if "WindowCenter" not in ds or ds.get("VOILUTFunction", "LINEAR") != "LINEAR":
        return None
    stored = ds.pixel_array.astype(np.float64)
    if stored.ndim == 3:
        stored = stored[0]
    values = stored * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    center = float(np.atleast_1d(ds.WindowCenter)[0])
    width = float(np.atleast_1d(ds.WindowWidth)[0])
    grey = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    return 255 - grey if ds.PhotometricInterpretation == "MONOCHROME1" else grey


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: "/".join(Path(p).parts[-2:]))
def test_every_bundled_image_renders_or_says_why(path: str) -> None:
    ds = dcmread(path)
    if Path(path).name in _BROKEN:
        with pytest.raises(RenderError) as info:
            render_jpeg(ds)
        assert str(info.value)
        return
    data, pixels = rendered(ds)
    expected = independent_grey(ds)
    if expected is not None:
        assert np.abs(pixels - expected).mean() < 3
    else:
        assert pixels.std() > 0, "blank rendering"
    assert render_jpeg(ds) == data  # deterministic


def test_most_bundled_greyscale_images_are_checked_pixel_by_pixel() -> None:
    checked = [p for p in IMAGES if Path(p).name not in _BROKEN]
    checked = [p for p in checked if independent_grey(dcmread(p)) is not None]
    assert len(checked) >= 30


def test_bundled_image_list_is_not_empty() -> None:
    names = {Path(p).name for p in IMAGES}
    assert len(IMAGES) > 60
    assert {"CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm"} <= names
    assert {"SC_rgb_rle.dcm", "examples_palette.dcm", "image_dfl.dcm", "693_J2KI.dcm"} <= names


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_encodings_render_identically(name: str) -> None:
    """Same pixels, same header window: the compressed file must give the same bytes."""
    reference = render_jpeg(dcmread(get_testdata_file("MR_small.dcm")))
    assert render_jpeg(dcmread(get_testdata_file(name))) == reference


@pytest.mark.parametrize(
    "name",
    ["MR_small.dcm", "CT_small.dcm", "693_J2KI.dcm", "JPGExtended.dcm", "examples_overlay.dcm"],
)
def test_greyscale_matches_the_standard_pipeline(name: str) -> None:
    """Against an independent PS3.3 C.11.2.1.2.1 LINEAR window (or the auto range)."""
    ds = dcmread(get_testdata_file(name))
    stored = ds.pixel_array.astype(np.float64)
    values = stored * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    if "WindowCenter" in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        expected = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    else:
        low, high = np.percentile(values, [0.5, 99.5])
        expected = np.clip((values - low) / (high - low), 0, 1) * 255
    _, pixels = rendered(ds)
    assert np.abs(pixels - expected).mean() < 2.5


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_rle_16bit.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "examples_jpeg2k.dcm",
        "examples_palette.dcm",
        "ExplVR_BigEnd.dcm",
    ],
)
def test_colour_matches_pydicom_rgb(name: str) -> None:
    ds = dcmread(get_testdata_file(name))
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames") or 1) > 1:
        arr = arr[0]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        arr = arr >> 8 if arr.dtype.itemsize > 1 and arr.max() > 255 else arr
    elif arr.dtype.itemsize > 1:
        arr = arr >> (ds.BitsStored - 8)
    _, pixels = rendered(ds)
    assert np.abs(pixels.astype(float) - arr.astype(float)).mean() < 4


# --- greyscale pipeline ---------------------------------------------------------------------

# HU -1000, 40, 240+ and -160-: window 40/400 puts them at mid, mid, white, black.
_CT = dict(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)


def test_window_from_header_maps_below_to_black_and_above_to_white() -> None:
    ds = make_image(quadrants((1024 - 300, 1024 + 40, 1024 + 500, 1024 + 240)), **_CT)
    data, pixels = rendered(ds)
    black, middle, white, edge = quadrant_means(pixels)
    assert black < 2 and white > 253
    assert abs(middle - 128) < 3
    assert edge > 250  # C + W/2 is the top of the window
    assert "window C=40 W=400 (header)" in comment(data)


def test_monochrome1_is_inverted() -> None:
    ds = make_image(
        quadrants((1024 - 300, 1024 + 40, 1024 + 500, 1024 + 240)),
        photometric="MONOCHROME1",
        **_CT,
    )
    data, pixels = rendered(ds)
    white, middle, black, _ = quadrant_means(pixels)
    assert white > 253 and black < 2 and abs(middle - 127) < 3
    assert "inverted" in comment(data)


def test_presentation_lut_shape_inverse_inverts_monochrome2() -> None:
    ds = make_image(quadrants((0, 0, 4000, 4000), np.uint16), PresentationLUTShape="INVERSE")
    _, pixels = rendered(ds)
    top, _, bottom, _ = quadrant_means(pixels)
    assert top > 253 and bottom < 2


def test_first_window_of_several_and_sigmoid() -> None:
    pixels = quadrants((1024 - 1000, 1024 + 40, 1024 + 1000, 1024 + 40))
    ds = make_image(pixels, RescaleSlope=1, RescaleIntercept=-1024)
    ds.WindowCenter, ds.WindowWidth = [40, 500], [400, 2000]
    ds.VOILUTFunction = "SIGMOID"
    data, out = rendered(ds)
    low, middle, high, _ = quadrant_means(out)
    assert low < 5 and high > 250 and abs(middle - 128) < 3
    assert "SIGMOID" in comment(data)


def test_linear_exact_window() -> None:
    ds = make_image(quadrants((0, 100, 200, 150), np.uint16), WindowCenter=100, WindowWidth=200)
    ds.VOILUTFunction = "LINEAR_EXACT"
    _, out = rendered(ds)
    means = quadrant_means(out)
    assert means[0] < 2 and means[2] > 253
    assert abs(means[1] - 127.5) < 3 and abs(means[3] - 191) < 3


def test_invalid_window_falls_back_to_automatic() -> None:
    ds = make_image(quadrants((100, 200, 100, 200), np.uint16), WindowCenter=40, WindowWidth=0)
    data, out = rendered(ds)
    left, right, _, _ = quadrant_means(out)
    assert left < 2 and right > 253
    assert "auto" in comment(data)


def test_automatic_window_ignores_a_few_outliers() -> None:
    pixels = quadrants((100, 200, 100, 200), np.uint16, size=128)
    pixels[0, :20] = 60000  # 20 of 16384 pixels: 0.12 %, above the 99.5th percentile
    ds = make_image(pixels)
    data, out = rendered(ds)
    left, right, _, _ = quadrant_means(out)
    assert left < 2 and right > 253
    assert "auto 0.5-99.5%" in comment(data)


def test_flat_image_renders_black() -> None:
    _, out = rendered(make_image(np.full((32, 32), 777, np.uint16)))
    assert out.max() < 2


def test_signed_pixels_with_bits_stored_below_bits_allocated() -> None:
    pixels = quadrants((-2048, -100, 2047, 100))
    # garbage in the unused top bits of the negative and positive values
    words = pixels.view(np.uint16) & 0x0FFF | 0x5000
    ds = make_image(words.view(np.int16), BitsStored=12, HighBit=11, PixelRepresentation=1)
    ds.WindowCenter, ds.WindowWidth = 0, 400
    _, out = rendered(ds)
    black, low, white, high = quadrant_means(out)
    assert black < 2 and white > 253
    assert abs(low - 64) < 4 and abs(high - 191) < 4


def test_voi_lut_sequence_is_preferred_to_the_window() -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]
    lut.LUTData = [0, 10, 200, 250]
    ds = make_image(quadrants((0, 1, 2, 3), np.uint16), WindowCenter=1, WindowWidth=2)
    ds.VOILUTSequence = [lut]
    data, out = rendered(ds)
    expected = [255 * (v - 0) / 250 for v in (0, 10, 200, 250)]
    assert np.allclose(quadrant_means(out), expected, atol=3)
    assert "VOI LUT (header)" in comment(data)


def test_modality_lut_sequence() -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 16]
    lut.LUTData = [0, 1000, 2000, 3000]
    lut.ModalityLUTType = "OD"
    ds = make_image(quadrants((0, 1, 2, 3), np.uint16), WindowCenter=1500, WindowWidth=2001)
    ds.ModalityLUTSequence = [lut]
    _, out = rendered(ds)
    black, low, high, white = quadrant_means(out)
    assert black < 2 and white > 253 and abs(low - 64) < 4 and abs(high - 191) < 4


def test_float_pixel_data() -> None:
    pixels = quadrants((0, 1, 2, 3), np.float32)
    ds = make_image(np.zeros((64, 64), np.uint8))
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = pixels.tobytes()
    ds.WindowCenter, ds.WindowWidth = 1.5, 4
    _, out = rendered(ds)
    # LINEAR: ((x - 1) / 3 + 0.5) * 255
    assert np.allclose(quadrant_means(out), [42.5, 127.5, 212.5, 255], atol=3)


def enhanced_ct() -> Dataset:
    """Two frames; rescale in the shared groups, a different window per frame."""
    frame = np.concatenate([np.full((32, 16), 1000), np.full((32, 16), 2000)], axis=1)
    frames = np.stack([frame, frame]).astype(np.uint16)
    ds = make_image(frames[0])
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1000, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for center in (0, 1000):
        window = Dataset()
        window.WindowCenter, window.WindowWidth = center, 101
        group = Dataset()
        group.FrameVOILUTSequence = [window]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


def test_enhanced_multiframe_takes_window_and_rescale_per_frame() -> None:
    ds = enhanced_ct()
    data, out = rendered(ds, frame=0)
    assert abs(out[:, 4:12].mean() - 128) < 3 and out[:, 20:28].mean() > 253
    assert comment(data).startswith("dicomfs view: frame 1/2, window C=0 W=101 (functional groups)")
    data, out = rendered(ds, frame=1)
    assert out[:, 4:12].mean() < 2 and abs(out[:, 20:28].mean() - 128) < 3
    assert comment(data).startswith("dicomfs view: frame 2/2, window C=1000 W=101")


def test_multiframe_renders_the_requested_frame_only() -> None:
    frames = np.zeros((3, 32, 32), np.uint8)
    for index in range(3):
        frames[index, :, index * 10 : index * 10 + 10] = 255
    ds = make_image(frames[0], WindowCenter=128, WindowWidth=256)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    for index in range(3):
        _, out = rendered(ds, frame=index)
        bright = out.mean(axis=0) > 128
        assert bright[index * 10 + 2 : index * 10 + 8].all()
        assert bright.sum() <= 12
    with pytest.raises(RenderError, match="out of range"):
        render_jpeg(ds, frame=3)
    with pytest.raises(RenderError, match="out of range"):
        render_jpeg(ds, frame=-1)


# --- colour ---------------------------------------------------------------------------------

RED = np.zeros((32, 32, 3), np.uint8)
RED[..., 0] = 255


def assert_red(out: np.ndarray) -> None:
    r, g, b = (float(out[4:-4, 4:-4, i].mean()) for i in range(3))
    assert r > 240 and g < 15 and b < 15, (r, g, b)


def test_rgb_red_renders_red() -> None:
    data, out = rendered(make_image(RED, photometric="RGB"))
    assert_red(out)
    assert "colour RGB" in comment(data)


def test_ybr_full_red_renders_red() -> None:
    ybr = convert_color_space(RED, "RGB", "YBR_FULL")
    data, out = rendered(make_image(ybr, photometric="YBR_FULL"))
    assert_red(out)
    assert "from YBR_FULL" in comment(data)


def test_ybr_partial_red_renders_red() -> None:
    ybr = np.zeros_like(RED)
    ybr[...] = (82, 90, 240)  # red in the studio range of PS3.3 C.7.6.3.1.2
    _, out = rendered(make_image(ybr, photometric="YBR_PARTIAL_420"))
    assert_red(out)


def test_planar_configuration_is_honoured() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16, 0] = 255  # left red
    rgb[:, 16:, 1] = 255  # right green
    ds = make_image(rgb, photometric="RGB", PlanarConfiguration=1)
    ds.PixelData = rgb.transpose(2, 0, 1).tobytes()  # all R, then all G, then all B
    _, out = rendered(ds)
    assert_red(out[:, :16])
    assert out[4:-4, 20:28, 1].mean() > 240 and out[4:-4, 20:28, 0].mean() < 15


def palette_image(bits: int) -> Dataset:
    indices = np.ones((32, 32), np.uint8)
    indices[:, 16:] = 2
    ds = make_image(indices, photometric="PALETTE COLOR")
    top = (1 << bits) - 1
    red, green, blue = (np.zeros(256, f"<u{bits // 8}") for _ in range(3))
    red[1], green[2] = top, top
    for colour, table in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, bits])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    return ds


@pytest.mark.parametrize("bits", [8, 16])
def test_palette_colour_red_and_green(bits: int) -> None:
    data, out = rendered(palette_image(bits))
    assert_red(out[:, :16])
    assert out[4:-4, 20:28, 1].mean() > 240 and out[4:-4, 20:28, 0].mean() < 15
    assert "palette colour" in comment(data)


# --- the size budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(512, 512), (512, 512, 3), (1, 1), (1, 1, 3), (1, 3000), (3000, 1, 3), (7, 9, 3), (33, 1)],
)
def test_noise_still_fits_the_budget(shape: tuple[int, ...]) -> None:
    noise = np.random.default_rng(7).integers(0, 256, size=shape, dtype=np.uint8)
    photometric = "RGB" if len(shape) == 3 else "MONOCHROME2"
    ds = make_image(noise, photometric=photometric, WindowCenter=128, WindowWidth=256)
    _, out = rendered(ds)
    assert out.shape[:2] == shape[:2]


def test_quality_drops_only_as_far_as_needed() -> None:
    smooth = np.tile(np.linspace(0, 4095, 256, dtype=np.uint16), (256, 1))
    assert "quality 92" in comment(render_jpeg(make_image(smooth)))
    noise = np.random.default_rng(1).integers(0, 256, size=(256, 256), dtype=np.uint8)
    text = comment(render_jpeg(make_image(noise)))
    quality = int(text.rsplit("quality ", 1)[1])
    assert quality < 92


def test_fallbacks_when_no_quality_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    noise = np.random.default_rng(3).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    ds = make_image(noise, photometric="RGB")
    monkeypatch.setattr(view, "QUALITY_LADDER", ((100, 0),))
    monkeypatch.setattr(sizes, "BYTES_PER_SAMPLE", 0.05)
    data, out = rendered(ds)
    assert "16x16 blocks" in comment(data)
    # each 16x16 block is flat: the mean colour of that block of the original
    assert (
        np.abs(out[20:28, 20:28].astype(float) - noise[16:32, 16:32].mean(axis=(0, 1))).max() < 12
    )
    monkeypatch.setattr(view, "_blocky", lambda image: image)  # blocks no longer help
    monkeypatch.setattr(sizes, "BYTES_PER_SAMPLE", 0.0)
    noisy, flat = (len(view._encode(image, 5, 2)) for image in (noise, np.full_like(noise, 128)))
    assert flat + 200 < noisy
    monkeypatch.setattr(sizes, "HEADER_ALLOWANCE", flat + 150)  # room for flat and the text
    data, out = rendered(ds)
    assert "flat" in comment(data) and np.abs(out.astype(int) - 128).max() < 3


def test_padding_spans_several_com_segments_for_big_images() -> None:
    big = np.zeros((600, 600), np.uint8)
    data, _ = rendered(make_image(big))
    comments = check_jpeg_structure(data)
    assert len(comments) > 2  # 180 kB of padding does not fit one 64 kB segment
    assert all(not c.strip() for c in comments[1:])


@pytest.mark.parametrize("total", [4, 5, 7, 8, 65537, 65538, 65539, 65540, 131075, 200000])
def test_com_segments_have_exactly_the_requested_size(total: int) -> None:
    segments = sizes.com_segments(b"", total)
    assert len(segments) == total
    position = 0
    while position < total:
        assert segments[position : position + 2] == b"\xff\xfe"
        position += 2 + int.from_bytes(segments[position + 2 : position + 4], "big")
    assert position == total


# --- broken pixel data ----------------------------------------------------------------------


def test_truncated_pixel_data_raises_render_error() -> None:
    ds = make_image(np.zeros((32, 32), np.uint16))
    ds.PixelData = ds.PixelData[:-100]
    with pytest.raises(RenderError, match="less than expected"):
        render_jpeg(ds)


@pytest.mark.parametrize("tsyntax", [JPEGBaseline8Bit, JPEG2000Lossless, RLELossless])
def test_corrupt_compressed_frames_raise_render_error(tsyntax: str) -> None:
    ds = make_image(np.zeros((32, 32), np.uint8))
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc0 certainly not an image \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(RenderError, match="cannot decode frame 0"):
        render_jpeg(ds)


def test_unsupported_photometric_raises_render_error() -> None:
    with pytest.raises(RenderError, match="HSV"):
        render_jpeg(make_image(RED, photometric="HSV"))


def test_mangled_headers_never_raise_anything_but_render_error() -> None:
    """Whatever the header says, the result is the exact size, or RenderError."""
    base = dcmread(get_testdata_file("CT_small.dcm"))
    mutations: list[dict[str, Any]] = [
        {"Rows": 64},
        {"Columns": 200},
        {"BitsAllocated": 8},
        {"BitsAllocated": 32},
        {"BitsStored": 0},
        {"BitsStored": 40},
        {"PixelRepresentation": 5},
        {"SamplesPerPixel": 3},
        {"PhotometricInterpretation": "RGB"},
        {"PhotometricInterpretation": "PALETTE COLOR"},
        {"PhotometricInterpretation": "MONOCHROME3"},
        {"NumberOfFrames": 4},
        {"RescaleSlope": 0},
        {"WindowCenter": "nan"},
        {"WindowWidth": -5},
        {"VOILUTFunction": "CUBIC"},
        {"PlanarConfiguration": 7},
    ]
    outcomes = []
    for mutation in mutations:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        for key, value in mutation.items():
            setattr(ds, key, value)
        try:
            data = render_jpeg(ds)
        except RenderError as exc:
            assert str(exc)
            outcomes.append("error")
            continue
        color = is_color(str(ds.PhotometricInterpretation))
        assert len(data) == jpeg_size(int(ds.Rows), int(ds.Columns), color), mutation
        outcomes.append("ok")
    assert "ok" in outcomes and "error" in outcomes
    assert base.Rows == 128  # the originals are untouched


# --- speed ----------------------------------------------------------------------------------


def test_a_512_ct_slice_renders_in_milliseconds() -> None:
    ds = dcmread(get_testdata_file("693_J2KI.dcm"))
    ds.decompress()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    ds = dcmread(io.BytesIO(buffer.getvalue()))
    assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (512, 512, 16)
    render_jpeg(ds)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        render_jpeg(ds)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.05  # ~3 ms here; generous for loaded CI machines
