"""DICOM series of known geometry, for the volume tests: every slice's place and pixels are known.

``make_series`` writes one series (classic single-frame images, or one Enhanced multi-frame
object) and returns a ``GeneratedSeries``: the files in the order they were written (the
arrival order of an import), one ``Slice`` per frame with its voxel indices, its LPS
position and the pixel values a volume must hold for it, and the expected voxel → LPS
mapping of the volume (i along the DICOM columns, j along the rows, k along the slice
normal; NIfTI's RAS is LPS with x and y negated).

Pixel values are distinct across the whole series (slice number × rows × columns + row ×
columns + column, plus a per-modality offset), so a slice in the wrong place, a transposed
or flipped plane, or a wrong time point is detected by value, not only by geometry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dicomgen
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
AXIAL_FEET_FIRST = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # what scanners write for FFS axial images
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def oblique(degrees: float = 20.0, second: float = 10.0) -> tuple[float, ...]:
    """An axial plane turned ``degrees`` about z, then tilted ``second`` about the new row axis."""
    a, b = np.radians(degrees), np.radians(second)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a), np.cos(a), 0.0])
    col = np.cos(b) * col + np.sin(b) * np.cross(row, col)
    return tuple(float(round(v, 8)) for v in (*row, *col))


@dataclass(frozen=True)
class Slice:
    """One frame of the series: where it is, which file holds it, and what its voxels must be."""

    path: Path
    frame: int  # 0 for a single-frame image; the frame's index in a multi-frame object
    sop_uid: str
    k: int  # place along the slice normal, 0 first (in the full stack, gap included)
    t: int  # time point (0 unless repeated)
    echo: int  # echo number (1 unless several)
    position: tuple[float, float, float]  # ImagePositionPatient (LPS, mm) as written
    stored: np.ndarray  # (rows, columns) stored values
    slope: float
    intercept: float

    @property
    def values(self) -> np.ndarray:
        """The rescaled values, as (columns, rows): the volume's (i, j) plane at this k."""
        return (self.stored.astype(np.float64) * self.slope + self.intercept).T


@dataclass
class GeneratedSeries:
    files: list[Path]  # in the order written (the arrival order of an import)
    slices: list[Slice]
    rows: int
    columns: int
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns
    slice_spacing: float
    orientation: tuple[float, ...]
    origin: tuple[float, float, float]  # position of voxel (0, 0, 0), LPS
    tilt: float  # degrees
    study_uid: str
    series_uid: str
    patient_id: str
    repetitions: int = 1
    temporal_ids: bool = True
    b_values: list[float] | None = None
    gradients: list[tuple[float, float, float]] | None = None

    @property
    def row_direction(self) -> np.ndarray:
        return np.array(self.orientation[:3])

    @property
    def column_direction(self) -> np.ndarray:
        return np.array(self.orientation[3:])

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def slice_step(self) -> np.ndarray:
        """From one slice's first voxel to the next one's, LPS: along the normal, sheared by a tilt."""
        shear = np.tan(np.radians(self.tilt)) * self.slice_spacing * self.column_direction
        return self.slice_spacing * self.normal + shear

    def affine_lps(self, k_offset: int = 0) -> np.ndarray:
        """Voxel (i, j, k) → LPS of the stack that starts at slice ``k_offset``."""
        out = np.eye(4)
        out[:3, 0] = self.spacing[1] * self.row_direction
        out[:3, 1] = self.spacing[0] * self.column_direction
        out[:3, 2] = self.slice_step
        out[:3, 3] = np.array(self.origin) + k_offset * self.slice_step
        return out

    def affine_ras(self, k_offset: int = 0) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps(k_offset)

    def position(self, i: float, j: float, k: float) -> np.ndarray:
        """Voxel (i, j, k) → LPS, mm."""
        return (self.affine_lps() @ np.array([i, j, k, 1.0]))[:3]

    def sop_uids_in_slice_order(self, echo: int = 1) -> list[str]:
        """SOP Instance UIDs along the normal (then time), as the sidecar lists them; one per file."""
        seen: dict[str, None] = {}
        for s in sorted((s for s in self.slices if s.echo == echo), key=lambda s: (s.t, s.k)):
            seen.setdefault(s.sop_uid)
        return list(seen)

    def expected_data(self, echo: int = 1) -> np.ndarray:
        """The volume's voxels (i, j, k[, t]) for one echo, rescaled; slices of a gap are absent."""
        chosen = [s for s in self.slices if s.echo == echo]
        ks = sorted({s.k for s in chosen})
        ts = sorted({s.t for s in chosen})
        data = np.zeros((self.columns, self.rows, len(ks), len(ts)))
        for s in chosen:
            data[:, :, ks.index(s.k), ts.index(s.t)] = s.values
        return data[..., 0] if len(ts) == 1 else data


def make_series(
    directory: Path,
    *,
    rows: int = 8,
    columns: int = 6,
    spacing: tuple[float, float] = (0.8, 0.8),
    slice_spacing: float = 2.0,
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-20.0, -30.0, 40.0),
    slices: int = 5,
    patient_position: str = "HFS",
    modality: str = "CT",
    shuffle: int | None = None,
    instance_numbers: str = "ascending",
    tilt: float = 0.0,
    slopes: list[float] | None = None,
    repetitions: int = 1,
    echo_times: list[float] | None = None,
    gap: int | None = None,
    enhanced: bool = False,
    temporal_ids: bool = True,
    b_values: list[float] | None = None,
    gradients: list[tuple[float, float, float]] | None = None,
    uids: tuple[str, str, str] | None = None,
    patient_id: str = "VOL",
    description: str = "volume",
    series_number: int = 3,
    **attrs: Any,
) -> GeneratedSeries:
    """Write one series of ``slices`` positions under ``directory``; see the module docstring.

    ``modality``: "CT" (int16, rescale intercept -1024), "MR" (uint16, no rescale) or "PT"
    (int16 with a rescale slope per slice from ``slopes``). ``shuffle``: a seed for the order
    the files are written in. ``instance_numbers``: "ascending" or "descending" along the
    normal. ``tilt``: gantry tilt in degrees (positions sheared along the column direction).
    ``slopes``: a RescaleSlope per position. ``repetitions``: time points per position
    (TemporalPositionIdentifier, AcquisitionTime). ``echo_times``: one echo per value, in ms.
    ``gap``: a position left out. ``enhanced``: one Enhanced multi-frame object instead of
    one file per frame. ``temporal_ids``: whether repetitions carry TemporalPositionIdentifier
    (else only AcquisitionTime orders them). ``b_values``/``gradients``: diffusion weighting per
    repetition (DiffusionBValue, DiffusionGradientOrientation in LPS). ``uids``: (study,
    series, frame of reference) to add to an existing series. ``attrs`` are set on every dataset.
    """
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = uids or (generate_uid(), generate_uid(), generate_uid())
    echoes = list(echo_times) if echo_times else [None]
    signed = modality in ("CT", "PT")
    if slopes is not None and len(slopes) != slices:
        raise ValueError("one slope per position")
    series = GeneratedSeries(
        files=[], slices=[], rows=rows, columns=columns, spacing=spacing, slice_spacing=slice_spacing,
        orientation=tuple(orientation), origin=origin, tilt=tilt, study_uid=study_uid, series_uid=series_uid,
        patient_id=patient_id, repetitions=repetitions, temporal_ids=temporal_ids, b_values=b_values,
        gradients=gradients,
    )
    frames: list[dict[str, Any]] = []
    number = 0
    for e, echo_time in enumerate(echoes, start=1):
        for t in range(repetitions):
            for k in range(slices):
                if k == gap:
                    continue
                position = tuple(float(round(v, 6)) for v in series.position(0, 0, k))
                plane = np.arange(rows * columns, dtype=np.int64).reshape(rows, columns)
                stored = plane + number * rows * columns + (-300 if signed else 100)
                frames.append(dict(k=k, t=t, echo=e, echo_time=echo_time, position=position, number=number,
                                   stored=stored.astype(np.int16 if signed else np.uint16),
                                   slope=slopes[k] if slopes else 1.0,
                                   intercept=-1024.0 if modality == "CT" else 0.0))
                number += 1
    if instance_numbers == "descending":
        ranked = sorted(frames, key=lambda f: (f["echo"], -f["t"], -f["k"]))
    elif instance_numbers == "ascending":
        ranked = sorted(frames, key=lambda f: (f["echo"], f["t"], f["k"]))
    else:
        raise ValueError(instance_numbers)
    for n, frame in enumerate(ranked, start=1):
        frame["instance"] = n
    order = list(frames)
    if shuffle is not None:
        random.Random(shuffle).shuffle(order)
    common = dict(
        StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, FrameOfReferenceUID=frame_uid,
        PatientID=patient_id, PatientName=f"VOLUME^{patient_id}", StudyDescription=description,
        SeriesDescription=description, SeriesNumber=series_number, Modality=modality,
        PatientPosition=patient_position, AccessionNumber=patient_id[:16],
    )
    if enhanced:
        path = directory / "enhanced.dcm"
        ds = _enhanced(order, series, modality, signed, **common, **attrs)
        dicomgen.write(path, ds)
        series.files.append(path)
        for index, frame in enumerate(order):
            series.slices.append(_slice(path, index, ds.SOPInstanceUID, frame))
        return series
    for frame in order:
        ds = _classic(frame, series, modality, signed, **common, **attrs)
        path = directory / f"IM{frame['number']:05d}-{ds.SOPInstanceUID[-8:]}.dcm"
        dicomgen.write(path, ds)
        series.files.append(path)
        series.slices.append(_slice(path, 0, ds.SOPInstanceUID, frame))
    return series


def _slice(path: Path, index: int, sop_uid: str, frame: dict[str, Any]) -> Slice:
    return Slice(path=path, frame=index, sop_uid=sop_uid, k=frame["k"], t=frame["t"], echo=frame["echo"],
                 position=frame["position"], stored=frame["stored"], slope=frame["slope"],
                 intercept=frame["intercept"])


def _sop_class(modality: str, enhanced: bool) -> str:
    if enhanced:
        return EnhancedMRImageStorage if modality == "MR" else EnhancedCTImageStorage
    return {"CT": CTImageStorage, "MR": MRImageStorage, "PT": PositronEmissionTomographyImageStorage}[modality]


REPETITION_TIME = 500.0  # ms: also the time between repetitions of a position (as in fMRI)


def _acquisition_time(t: int) -> str:
    """09:30:00, then one time point every RepetitionTime."""
    millis = (9 * 3600 + 30 * 60) * 1000 + int(REPETITION_TIME) * t
    seconds, millis = divmod(millis, 1000)
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{millis:03d}000"


def _classic(frame: dict[str, Any], series: GeneratedSeries, modality: str, signed: bool, **attrs: Any) -> Dataset:
    values: dict[str, Any] = dict(
        SOPClassUID=_sop_class(modality, False),
        InstanceNumber=frame["instance"],
        ImagePositionPatient=list(frame["position"]),
        ImageOrientationPatient=list(series.orientation),
        PixelSpacing=list(series.spacing),
        SliceThickness=series.slice_spacing,
        BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=1 if signed else 0,
        RescaleSlope=frame["slope"], RescaleIntercept=frame["intercept"],
        AcquisitionTime=_acquisition_time(frame["t"]),
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        PixelData=frame["stored"].tobytes(),
    )
    if modality == "MR":
        values.update(RepetitionTime=REPETITION_TIME, FlipAngle=15.0, ScanningSequence="GR", SequenceVariant="SP",
                      MRAcquisitionType="2D", MagneticFieldStrength=3.0, EchoTime=frame["echo_time"] or 5.0)
        values.update(RescaleSlope=dicomgen.REMOVE, RescaleIntercept=dicomgen.REMOVE,
                      WindowCenter=dicomgen.REMOVE, WindowWidth=dicomgen.REMOVE)
    if modality == "PT":
        values.update(Units="BQML", DecayCorrection="START", SeriesDate="20240301", SeriesTime="081500",
                      CorrectedImage=["ATTN", "DECY"])
    if frame["echo_time"] is not None:
        values.update(EchoNumbers=frame["echo"], EchoTime=frame["echo_time"])
    if series.tilt:
        values.update(GantryDetectorTilt=series.tilt)
    if series.repetitions > 1 and series.temporal_ids:
        values.update(TemporalPositionIdentifier=frame["t"] + 1, NumberOfTemporalPositions=series.repetitions)
    if series.b_values is not None:
        values.update(DiffusionBValue=series.b_values[frame["t"]])
    if series.gradients is not None:
        values.update(DiffusionGradientOrientation=list(series.gradients[frame["t"]]))
    values.update(attrs)
    return dicomgen.make_dataset(rows=series.rows, columns=series.columns, **values)


def _enhanced(order: list[dict[str, Any]], series: GeneratedSeries, modality: str, signed: bool,
              **attrs: Any) -> Dataset:
    """One Enhanced CT/MR object holding the frames in ``order``, geometry in functional groups."""
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(series.orientation)
    shared.PlaneOrientationSequence = Sequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = list(series.spacing)
    measures.SliceThickness = series.slice_spacing
    shared.PixelMeasuresSequence = Sequence([measures])
    if modality == "MR":
        echo = Dataset()
        echo.EffectiveEchoTime = 5.0
        shared.MREchoSequence = Sequence([echo])
    per_frame = []
    for frame in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = list(frame["position"])
        item.PlanePositionSequence = Sequence([position])
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = frame["k"] + 1
        content.DimensionIndexValues = [1, frame["k"] + 1]
        content.FrameAcquisitionDateTime = "20240301" + _acquisition_time(frame["t"])
        item.FrameContentSequence = Sequence([content])
        transform = Dataset()
        transform.RescaleSlope = frame["slope"]
        transform.RescaleIntercept = frame["intercept"]
        transform.RescaleType = "US"
        item.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(item)
    values: dict[str, Any] = dict(
        SOPClassUID=_sop_class(modality, True),
        InstanceNumber=1,
        NumberOfFrames=len(order),
        SharedFunctionalGroupsSequence=Sequence([shared]),
        PerFrameFunctionalGroupsSequence=Sequence(per_frame),
        BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=1 if signed else 0,
        ImageType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
        ContentDate="20240301", ContentTime="093000", AcquisitionDateTime="20240301093000",
        PixelData=b"".join(frame["stored"].tobytes() for frame in order),
    )
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                 "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        values[name] = dicomgen.REMOVE
    values.update(attrs)
    return dicomgen.make_dataset(rows=series.rows, columns=series.columns, **values)


def compressed_copies(series: GeneratedSeries, directory: Path, transfer_syntax: str) -> GeneratedSeries:
    """The same instances (same UIDs, same pixels) re-encoded in ``transfer_syntax`` under ``directory``."""
    import pydicom

    directory.mkdir(parents=True, exist_ok=True)
    moved: dict[Path, Path] = {}
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.compress(transfer_syntax, generate_instance_uid=False)  # the same instance, re-encoded
        moved[path] = directory / path.name
        ds.save_as(moved[path], enforce_file_format=True)
    slices = [Slice(path=moved[s.path], frame=s.frame, sop_uid=s.sop_uid, k=s.k, t=s.t, echo=s.echo,
                    position=s.position, stored=s.stored, slope=s.slope, intercept=s.intercept) for s in series.slices]
    return GeneratedSeries(**{**series.__dict__, "files": [moved[p] for p in series.files], "slices": slices})
