"""What the index keeps of an instance so that series volumes need no file opened to be planned.

Recorded at ingest (and backfilled for older archives): where the pixel data lies in the
stored file and how it is encoded, and per frame its geometry, rescale and the values that
split a series or order a repetition (echo, time, diffusion, dimension index). An Enhanced
multi-frame object has one ``FrameFacts`` per frame, read from its functional groups; a
classic image has one. Kept as compact JSON in ``instances.volume_facts``; the acquisition
values for the volume's sidecar (``sidecar_values``) in ``instances.volume_sidecar``, apart,
since only the first slice's are ever read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

FACTS_VERSION = 1  # bump when extraction changes: older rows are backfilled from their files

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_PIXEL_DATA = 0x7FE00009

UNCOMPRESSED_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})

# Values copied into the volume's JSON sidecar (dcm2niix/BIDS names), from the first slice.
# Times are converted to seconds there, as BIDS wants; the DICOM values are in ms.
SIDECAR_KEYWORDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName", "DeviceSerialNumber",
    "SoftwareVersions", "BodyPartExamined", "PatientPosition", "MagneticFieldStrength", "ImagingFrequency",
    "MRAcquisitionType", "ScanningSequence", "SequenceVariant", "ScanOptions", "SequenceName", "ProtocolName",
    "SeriesDescription", "SeriesNumber", "ImageType", "AcquisitionNumber", "AcquisitionTime", "SliceThickness",
    "SpacingBetweenSlices", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "EchoTrainLength",
    "PixelBandwidth", "PercentPhaseFieldOfView", "InPlanePhaseEncodingDirection", "SAR", "KVP", "XRayTubeCurrent",
    "Exposure", "ConvolutionKernel", "ReconstructionDiameter", "Units", "DecayCorrection",
    "AttenuationCorrectionMethod", "ReconstructionMethod", "FrameReferenceTime", "ActualFrameDuration",
    "RadiopharmaceuticalInformationSequence",
)


@dataclass(slots=True)
class FrameFacts:
    """One frame (a slice) of an instance: where it is and what distinguishes it."""

    position: tuple[float, float, float] | None = None  # ImagePositionPatient, mm, LPS
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient: row then column direction
    spacing: tuple[float, float] | None = None  # PixelSpacing: between rows, between columns (mm)
    thickness: float | None = None  # SliceThickness
    slope: float = 1.0
    intercept: float = 0.0
    echo_number: int | None = None
    echo_time: float | None = None  # ms
    temporal: float | None = None  # TemporalPositionIdentifier / Index, the declared time point
    trigger_time: float | None = None  # ms (cardiac phases)
    acquisition_time: float | None = None  # seconds since midnight
    b_value: float | None = None
    gradient: tuple[float, float, float] | None = None  # diffusion direction, LPS
    dimension_index: tuple[int, ...] | None = None  # DimensionIndexValues of an Enhanced object
    stack: str | None = None  # StackID


@dataclass(slots=True)
class InstanceFacts:
    """Pixel encoding, where the pixel data is in the stored file, and the frames' facts."""

    rows: int = 0
    columns: int = 0
    samples: int = 1
    bits_allocated: int = 0
    bits_stored: int = 0
    signed: bool = False
    planar: int = 0
    photometric: str = ""
    float_pixels: int = 0  # 0 integer pixels, 4 Float Pixel Data, 8 Double Float Pixel Data
    transfer_syntax: str = ""
    pixel_offset: int = -1  # first byte of the pixel data's value in the stored file; -1: none
    pixel_length: int = 0  # its length in bytes; -1: encapsulated (compressed), undefined length
    image_type: str = ""
    acquisition_number: int | None = None
    instance_number: int | None = None
    frames: list[FrameFacts] = field(default_factory=list)

    @property
    def has_pixels(self) -> bool:
        return self.pixel_offset >= 0 and self.rows > 0 and self.columns > 0 and self.bits_allocated > 0

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * max(self.bits_allocated // 8, 1)

    @property
    def served_raw(self) -> bool:
        """Whether the stored bytes of each frame can be served as NIfTI voxels as they are."""
        return (
            self.transfer_syntax in UNCOMPRESSED_LE
            and self.pixel_length >= self.frame_bytes * len(self.frames)
            and self.bits_allocated in (8, 16, 32, 64)
            and (self.samples == 1 or (self.samples == 3 and self.planar == 0 and self.bits_allocated == 8))
            and (self.float_pixels == 0 or self.float_pixels * 8 == self.bits_allocated)
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["frames"] = [{k: v for k, v in frame.items() if v is not None} for frame in data["frames"]]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> InstanceFacts:
        data = json.loads(text)
        frames = []
        for f in data.pop("frames", ()):
            for key in _TUPLES.intersection(f):
                f[key] = tuple(f[key])
            frames.append(FrameFacts(**f))
        return cls(**data, frames=frames)


_TUPLES = frozenset({"position", "orientation", "spacing", "gradient", "dimension_index"})


def extract(ds: Dataset) -> InstanceFacts:
    """The facts of a dataset read from its stored file (offsets are the file's: read it whole).

    Never raises: what cannot be read is left out, and the planner says why no volume exists.
    """
    facts = InstanceFacts()
    try:
        _pixel_encoding(ds, facts)
    except Exception:
        facts.pixel_offset = -1
    facts.image_type = _text(ds, 0x00080008)
    facts.acquisition_number = _int(_value(ds, 0x00200012))
    facts.instance_number = _int(_value(ds, 0x00200013))
    try:
        facts.frames = _frames(ds, max(_int(_value(ds, 0x00280008)) or 1, 1))
    except Exception:
        facts.frames = [FrameFacts()]
    return facts


def _pixel_encoding(ds: Dataset, facts: InstanceFacts) -> None:
    facts.rows = _int(_value(ds, 0x00280010)) or 0
    facts.columns = _int(_value(ds, 0x00280011)) or 0
    facts.samples = _int(_value(ds, 0x00280002)) or 1
    facts.bits_allocated = _int(_value(ds, 0x00280100)) or 0
    facts.bits_stored = _int(_value(ds, 0x00280101)) or facts.bits_allocated
    facts.signed = (_int(_value(ds, 0x00280103)) or 0) == 1
    facts.planar = _int(_value(ds, 0x00280006)) or 0
    facts.photometric = _text(ds, 0x00280004)
    facts.transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    for tag, width in ((PIXEL_DATA, 0), (FLOAT_PIXEL_DATA, 4), (DOUBLE_PIXEL_DATA, 8)):
        elem = ds.get_item(tag, keep_deferred=True)  # a deferred value stays unread
        if elem is None:
            continue
        facts.float_pixels = width
        if width:
            facts.bits_allocated = width * 8
        if isinstance(elem, RawDataElement) and elem.value_tell is not None:
            facts.pixel_offset = int(elem.value_tell)
            facts.pixel_length = -1 if elem.length == 0xFFFFFFFF else int(elem.length)
        else:  # already converted (should not happen for a file read from bytes): position unknown
            facts.pixel_offset, facts.pixel_length = 0, -1
        return


def _frames(ds: Dataset, count: int) -> list[FrameFacts]:
    shared = _first_item(ds, 0x52009229)  # SharedFunctionalGroupsSequence
    per_frame = ds.get(0x52009230)  # PerFrameFunctionalGroupsSequence
    if per_frame is None and shared is None:
        return [_classic(ds)] if count == 1 else [_classic(ds) for _ in range(count)]
    base = _classic(ds)  # top-level values are the fallback (e.g. rescale of an Enhanced CT)
    items = list(per_frame.value) if per_frame is not None else []
    frames = []
    for index in range(count):
        frame = FrameFacts(**{name: getattr(base, name) for name in FrameFacts.__slots__})
        for groups in (shared, items[index] if index < len(items) else None):
            if groups is not None:
                _functional_groups(groups, frame)
        frames.append(frame)
    return frames


def _classic(ds: Dataset) -> FrameFacts:
    return FrameFacts(
        position=_floats(ds, 0x00200032, 3),
        orientation=_floats(ds, 0x00200037, 6),
        spacing=_floats(ds, 0x00280030, 2) or _floats(ds, 0x00181164, 2),  # or Imager Pixel Spacing
        thickness=_float(_value(ds, 0x00180050)),
        slope=_float(_value(ds, 0x00281053)) or 1.0,
        intercept=_float(_value(ds, 0x00281052)) or 0.0,
        echo_number=_int(_value(ds, 0x00180086)),
        echo_time=_float(_value(ds, 0x00180081)),
        temporal=_float(_value(ds, 0x00200100)),
        trigger_time=_float(_value(ds, 0x00181060)),
        acquisition_time=_seconds(_text(ds, 0x00080032)),
        b_value=_float(_value(ds, 0x00189087)),
        gradient=_floats(ds, 0x00189089, 3),
    )


def _functional_groups(groups: Dataset, frame: FrameFacts) -> None:
    """Fill ``frame`` from one item of the shared or per-frame functional groups."""
    if (item := _first_item(groups, 0x00209113)) is not None:  # PlanePositionSequence
        frame.position = _floats(item, 0x00200032, 3) or frame.position
    if (item := _first_item(groups, 0x00209116)) is not None:  # PlaneOrientationSequence
        frame.orientation = _floats(item, 0x00200037, 6) or frame.orientation
    if (item := _first_item(groups, 0x00289110)) is not None:  # PixelMeasuresSequence
        frame.spacing = _floats(item, 0x00280030, 2) or frame.spacing
        frame.thickness = _float(_value(item, 0x00180050)) or frame.thickness
    if (item := _first_item(groups, 0x00289145)) is not None:  # PixelValueTransformationSequence
        slope = _float(_value(item, 0x00281053))
        intercept = _float(_value(item, 0x00281052))
        frame.slope = slope if slope is not None else frame.slope
        frame.intercept = intercept if intercept is not None else frame.intercept
    if (item := _first_item(groups, 0x00209111)) is not None:  # FrameContentSequence
        indices = _value(item, 0x00209157)
        if indices is not None:
            values = indices if isinstance(indices, list | tuple) else [indices]
            frame.dimension_index = tuple(int(v) for v in values)
        temporal = _float(_value(item, 0x00209128))  # TemporalPositionIndex
        frame.temporal = temporal if temporal is not None else frame.temporal
        stack = _value(item, 0x00209056)
        frame.stack = str(stack) if stack is not None else frame.stack
        acquired = str(_value(item, 0x00189074) or "")  # FrameAcquisitionDateTime
        if len(acquired) >= 14:
            frame.acquisition_time = _seconds(acquired[8:])
    if (item := _first_item(groups, 0x00189114)) is not None:  # MREchoSequence
        frame.echo_time = _float(_value(item, 0x00189082)) or frame.echo_time  # EffectiveEchoTime
    if (item := _first_item(groups, 0x00189117)) is not None:  # MRDiffusionSequence
        frame.b_value = _float(_value(item, 0x00189087))
        direction = _first_item(item, 0x00189076)  # DiffusionGradientDirectionSequence
        if direction is not None:
            frame.gradient = _floats(direction, 0x00189089, 3)
    if (item := _first_item(groups, 0x00189118)) is not None:  # CardiacSynchronizationSequence
        frame.trigger_time = _float(_value(item, 0x00209153)) or frame.trigger_time  # NominalCardiacTriggerDelayTime


_SIDECAR_TAGS = tuple((keyword, tag_for_keyword(keyword)) for keyword in SIDECAR_KEYWORDS)


def sidecar_values(ds: Dataset) -> dict[str, Any]:
    """The SIDECAR_KEYWORDS present in ``ds``, as JSON values; never raises."""
    try:
        return _sidecar(ds)
    except Exception:
        return {}


def sidecar_json(ds: Dataset) -> str:
    return json.dumps(sidecar_values(ds), separators=(",", ":"), ensure_ascii=False)


def _sidecar(ds: Dataset) -> dict[str, Any]:
    found: dict[str, Any] = {}
    sources = [ds]
    shared = _first_item(ds, 0x52009229)
    if shared is not None:  # Enhanced objects keep some of these in their functional groups
        sources += [item[0] for item in shared if getattr(item, "VR", "") == "SQ" and len(item.value)]
    for keyword, tag in _SIDECAR_TAGS:
        for source in sources:
            try:
                elem = source.get(tag)
                if elem is None or elem.value in (None, "", b""):
                    continue
                value = _json_value(elem)
            except Exception:  # a malformed value is left out of the sidecar
                continue
            if value is not None:
                found[keyword] = value
                break
    return found


def _json_value(elem: Any) -> Any:
    value = elem.value
    if elem.VR == "SQ":
        items = []
        for item in value:
            entry = {}
            for child in item:
                if child.VR != "SQ" and child.keyword:
                    child_value = _json_value(child)
                    if child_value is not None:
                        entry[child.keyword] = child_value
            items.append(entry)
        return items
    if isinstance(value, bytes):
        return None
    if elem.VR in ("DS", "IS", "FL", "FD", "US", "SS", "UL", "SL"):
        values = value if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(
            value, str)) else [value]
        numbers = [float(v) if elem.VR in ("DS", "FL", "FD") else int(v) for v in values]
        return numbers[0] if len(numbers) == 1 else numbers
    if hasattr(value, "__iter__") and not isinstance(value, str):
        return [str(v) for v in value]
    return str(value).strip()


# ------------------------------------------------------------------- small readers, never raising

def _value(ds: Dataset, tag: int) -> Any:
    try:
        elem = ds.get(tag)
        return None if elem is None else elem.value
    except Exception:
        return None


def _first_item(ds: Dataset, tag: int) -> Dataset | None:
    try:
        elem = ds.get(tag)
        return elem.value[0] if elem is not None and len(elem.value) else None
    except Exception:
        return None


def _text(ds: Dataset, tag: int) -> str:
    value = _value(ds, tag)
    if value is None:
        return ""
    if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _floats(ds: Dataset, tag: int, count: int) -> tuple[float, ...] | None:
    value = _value(ds, tag)
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or any(n != n for n in numbers):  # NaN
        return None
    return numbers


def _float(value: Any) -> float | None:
    try:
        if isinstance(value, list | tuple) or (hasattr(value, "__getitem__") and not isinstance(value, str | bytes)):
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if number == number else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _seconds(time_text: str) -> float | None:
    """HHMMSS.FFFFFF → seconds since midnight."""
    text = time_text.strip().replace(":", "")
    try:
        hours = int(text[0:2]) if len(text) >= 2 else 0
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds if text else None
