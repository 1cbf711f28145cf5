"""Small, valid DICOM instances for tests, with any attribute overridden or removed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

_REMOVE = object()
REMOVE: Any = _REMOVE  # pass as a value to drop the attribute


def make_dataset(*, rows: int = 16, columns: int = 16, **attrs: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "12345"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = "20240301"
    ds.StudyTime = "081500"
    ds.AccessionNumber = "ACC123"
    ds.StudyDescription = "CT Thorax"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Lung 1.0"
    ds.InstanceNumber = 1
    ds.SpecificCharacterSet = "ISO_IR 192"
    if rows and columns:
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 0]
        ramp = (np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) * 7) % 4096
        ds.PixelData = ramp.tobytes()
    for key, value in attrs.items():
        if value is _REMOVE:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def encode(ds: Dataset, *, part10: bool = True) -> bytes:
    """Explicit VR little endian bytes, with or without the Part 10 header."""
    out = io.BytesIO()
    if part10:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.save_as(out, implicit_vr=False, little_endian=True)
    return out.getvalue()


def write(path: Path, ds: Dataset, *, part10: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(ds, part10=part10))
    return path


def series(directory: Path, count: int, **attrs: Any) -> list[Path]:
    """``count`` instances of one series (numbered 1..count) written under ``directory``."""
    study, series_uid, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for n in range(1, count + 1):
        ds = make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series_uid, InstanceNumber=n,
                          FrameOfReferenceUID=frame, ImagePositionPatient=[0, 0, float(n)], **attrs)
        paths.append(write(directory / f"IM{n:05d}.dcm", ds))
    return paths


def segmentation_of(source: Dataset, **attrs: Any) -> Dataset:
    """A SEG object (no pixels) in ``source``'s study that names ``source``'s series as its source."""
    from pydicom.sequence import Sequence

    ref = Dataset()
    ref.SeriesInstanceUID = source.SeriesInstanceUID
    return make_dataset(rows=0, columns=0, StudyInstanceUID=source.StudyInstanceUID, Modality="SEG",
                        SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4", SeriesNumber=90,
                        ReferencedSeriesSequence=Sequence([ref]), **attrs)


# How each transfer syntax is made: by pydicom, or by a DCMTK compressor from Explicit VR LE.
_DCMTK_COMPRESSORS = {
    "1.2.840.10008.1.2.4.50": ["dcmcjpeg", "+eb", "+un"],  # JPEG baseline (lossy: 8 bits, UID kept)
    "1.2.840.10008.1.2.4.70": ["dcmcjpeg", "+e1"],  # JPEG lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.80": ["dcmcjpls", "+el"],  # JPEG-LS lossless
    "1.2.840.10008.1.2.5": ["dcmcrle"],  # RLE lossless
}


def write_in(path: Path, ds: Dataset, transfer_syntax: str) -> Path:
    """Write ``ds`` as a Part 10 file in ``transfer_syntax`` (JPEG baseline needs 8-bit pixels)."""
    import subprocess

    import pydicom
    from pydicom.uid import JPEG2000Lossless

    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax in _DCMTK_COMPRESSORS:
        source = write(path.with_suffix(".explicit"), ds)
        subprocess.run([*_DCMTK_COMPRESSORS[transfer_syntax], str(source), str(path)], check=True,
                       capture_output=True)
        source.unlink()
        return path
    if transfer_syntax == JPEG2000Lossless:
        ds = pydicom.dcmread(io.BytesIO(encode(ds)))
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
        return path
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def eight_bit(ds: Dataset) -> Dataset:
    """``ds`` with 8-bit pixels (a ramp), as JPEG baseline needs."""
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (np.arange(ds.Rows * ds.Columns) % 256).astype(np.uint8).tobytes()
    return ds
