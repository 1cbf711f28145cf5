"""Synthetic CT archives for the benchmarks: valid Part 10 files, fast to write.

Each instance is a CT Image Storage object in Explicit VR Little Endian with a complete
patient/study/series/instance hierarchy, 2.25 UIDs derived from the seed (the same seed
gives the same archive), Instance Numbers, geometry (ImagePositionPatient, orientation,
PixelSpacing, SliceThickness), rescale and window values, and 16-bit signed pixels: a
smooth body phantom (soft tissue, two lungs, a spine, a lesion whose size follows the
slice position) plus noise.

Speed: the phantom is drawn once per series and the noise is a window into one shared
pool, so a slice costs two array additions; the header is one pydicom dataset mutated in
place. About 2,000 512x512 files in ~10 s on one core; ``jobs`` spreads series over
processes for the 100,000-file archives.

    python -m bench.synth /var/tmp/ct --series 4 --instances 500
    python bench/synth.py /var/tmp/tiny --patients 20 --series 5 --instances 1000 \
        --matrix 16 --jobs 2

As a module: ``generate(out_dir, series=4, instances=500) -> list[Path]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

__all__ = ["Shape", "generate", "main"]

IMPLEMENTATION_CLASS_UID = "2.25.191079245432114907431960591349851470385"
RESCALE_INTERCEPT = -1024  # stored value = HU + 1024, as most scanners do
NOISE_HU = 12.0


@dataclass(frozen=True, slots=True)
class Shape:
    """How many of each level; every study has ``studies`` … every series ``instances``."""

    patients: int = 1
    studies: int = 1  # per patient
    series: int = 1  # per study
    instances: int = 100  # per series
    matrix: int = 512

    @property
    def total(self) -> int:
        return self.patients * self.studies * self.series * self.instances


def uid(rng: random.Random) -> str:
    """A 2.25 UID (ISO/IEC 9834-8: a 128-bit number), reproducible from ``rng``."""
    return f"2.25.{rng.getrandbits(128)}"


# ----------------------------------------------------------------------------- pixels


class Phantom:
    """Pixel template for one matrix size: a body cross-section drawn once, varied per slice."""

    def __init__(self, matrix: int, seed: int) -> None:
        self.matrix = n = matrix
        y, x = np.mgrid[0:n, 0:n].astype(np.float32)
        u = (x - n / 2) / (n / 2)  # -1 … 1 across the field of view
        v = (y - n / 2) / (n / 2)
        hu = np.full((n, n), -1000.0, dtype=np.float32)  # air
        body = (u / 0.85) ** 2 + (v / 0.65) ** 2
        inside = body < 1
        texture = 20.0 * np.cos(6 * u) * np.sin(4 * v)
        hu[inside] = 40.0 + texture[inside]  # soft tissue
        for cx in (-0.38, 0.38):  # lungs
            hu[((u - cx) / 0.28) ** 2 + ((v + 0.05) / 0.42) ** 2 < 1] = -830.0
        hu[(u / 0.11) ** 2 + ((v - 0.45) / 0.11) ** 2 < 1] = 700.0  # vertebral body
        hu[(u / 0.2) ** 2 + ((v + 0.12) / 0.2) ** 2 < 1] = 35.0  # heart
        self.base = (hu - RESCALE_INTERCEPT).astype(np.int16)
        # Lesion: a sphere centred in one lung, drawn per slice from the squared distance.
        self.lesion_r2 = ((u - 0.35) ** 2 + (v + 0.1) ** 2).astype(np.float32)
        rng = np.random.default_rng(seed)
        pool = n * n + 8191
        self.noise = rng.normal(0.0, NOISE_HU, size=pool).astype(np.int16)
        self.rng = random.Random(seed)

    def slice(self, z: float, out: np.ndarray) -> np.ndarray:
        """Pixels of the slice at relative position ``z`` (0 … 1) into ``out`` (int16)."""
        n2 = self.matrix * self.matrix
        offset = self.rng.randrange(0, len(self.noise) - n2)
        np.add(self.base.ravel(), self.noise[offset:offset + n2], out=out.ravel())
        radius = 0.12 * max(0.0, 1.0 - ((z - 0.5) / 0.25) ** 2) ** 0.5
        if radius > 0:
            out[self.lesion_r2 < radius * radius] += 900  # lung (-830) → soft tissue (~70)
        return out


# ----------------------------------------------------------------------------- headers


def _template(matrix: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "dicomfs bench"
    ds.InstitutionName = "Synthetic Hospital"
    ds.StationName = "SYNTH01"
    ds.BodyPartExamined = "CHEST"
    ds.ProtocolName = "Thorax routine"
    ds.ReferringPhysicianName = "WHO^REFERS"
    ds.KVP = "120"
    ds.SliceThickness = "1.0"
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = matrix
    ds.Columns = matrix
    fov = 350.0
    ds.PixelSpacing = [f"{fov / matrix:.6g}", f"{fov / matrix:.6g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "DICOMFS_BENCH"
    return meta


_GIVEN = ["ADA", "ALAN", "GRACE", "EDSGER", "BARBARA", "DONALD", "FRANCES", "KEN", "LYNN"]
_FAMILY = ["LOVELACE", "TURING", "HOPPER", "DIJKSTRA", "LISKOV", "KNUTH", "ALLEN", "THOMPSON"]


def _patient(ds: Dataset, p: int, rng: random.Random) -> None:
    ds.PatientName = f"{_FAMILY[p % len(_FAMILY)]}^{_GIVEN[p % len(_GIVEN)]}^^^{p:05d}"
    ds.PatientID = f"SYN{p:06d}"
    ds.IssuerOfPatientID = "DICOMFS-BENCH"
    birth = datetime.date(1940, 1, 1) + datetime.timedelta(days=rng.randrange(0, 60 * 365))
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "FM"[p % 2]


def _study(ds: Dataset, p: int, s: int, rng: random.Random) -> None:
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randrange(0, 5 * 365))
    ds.StudyInstanceUID = uid(rng)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = f"{8 + rng.randrange(10):02d}{rng.randrange(60):02d}00"
    ds.AccessionNumber = f"A{p:05d}{s:03d}"
    ds.StudyID = str(s + 1)
    ds.StudyDescription = "CT Thorax"
    ds.PatientAge = f"{rng.randrange(20, 90):03d}Y"


def _series(ds: Dataset, number: int, rng: random.Random) -> None:
    ds.SeriesInstanceUID = uid(rng)
    ds.FrameOfReferenceUID = uid(rng)
    ds.SeriesNumber = number
    ds.SeriesDescription = f"Thorax 1.0 {'B30f' if number % 2 else 'B70f'}"
    ds.SeriesTime = ds.StudyTime
    ds.AcquisitionNumber = 1


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class _SeriesJob:
    out_dir: str
    shape: Shape
    seed: int
    patient: int
    study: int
    series: int


def _write_series(job: _SeriesJob) -> list[Path]:
    """Write one series; depends only on (seed, patient, study, series), so any process may."""
    shape = job.shape
    # Levels above the series get their own generator so every series agrees on them.
    p_rng = random.Random(f"{job.seed}/{job.patient}")
    s_rng = random.Random(f"{job.seed}/{job.patient}/{job.study}")
    se_rng = random.Random(f"{job.seed}/{job.patient}/{job.study}/{job.series}")
    ds = _template(shape.matrix)
    _patient(ds, job.patient, p_rng)
    _study(ds, job.patient, job.study, s_rng)
    _series(ds, job.series + 1, se_rng)
    phantom = Phantom(shape.matrix, se_rng.getrandbits(32))
    pixels = np.empty((shape.matrix, shape.matrix), dtype=np.int16)
    folder = Path(job.out_dir, f"p{job.patient:04d}", f"st{job.study:03d}", f"se{job.series:03d}")
    folder.mkdir(parents=True, exist_ok=True)
    z0 = -0.5 * shape.instances
    paths = []
    for i in range(shape.instances):
        sop_uid = uid(se_rng)
        ds.file_meta = _file_meta(sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = i + 1
        z = z0 + i * 1.0
        ds.ImagePositionPatient = ["-175", "-175", f"{z:.1f}"]
        ds.SliceLocation = f"{z:.1f}"
        ds.ContentTime = ds.StudyTime
        ds.PixelData = phantom.slice(i / max(shape.instances - 1, 1), pixels).tobytes()
        path = folder / f"IM{i + 1:06d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def generate(
    out_dir: str | Path, *, patients: int = 1, studies: int = 1, series: int = 1,
    instances: int = 100, matrix: int = 512, seed: int = 0, jobs: int = 1,
) -> list[Path]:
    """Write ``patients x studies x series x instances`` files below ``out_dir``; return them.

    Files are ``out_dir/pPPPP/stSSS/seEEE/IM000001.dcm``, in instance order within a series.
    """
    shape = Shape(patients, studies, series, instances, matrix)
    todo = [
        _SeriesJob(str(out_dir), shape, seed, p, s, e)
        for p in range(patients) for s in range(studies) for e in range(series)
    ]
    if jobs <= 1 or len(todo) == 1:
        return [path for job in todo for path in _write_series(job)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        return [path for paths in pool.map(_write_series, todo) for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.synth",
        description="Write a synthetic CT archive (Part 10, Explicit VR Little Endian).",
    )
    parser.add_argument("out_dir", type=Path, help="output folder (created)")
    parser.add_argument("--patients", type=int, default=1, metavar="N")
    parser.add_argument("--studies", type=int, default=1, metavar="N", help="per patient")
    parser.add_argument("--series", type=int, default=1, metavar="N", help="per study")
    parser.add_argument("--instances", type=int, default=100, metavar="N", help="per series")
    parser.add_argument("--matrix", type=int, default=512, metavar="PX",
                        help="rows = columns (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="writer processes")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    paths = generate(
        args.out_dir, patients=args.patients, studies=args.studies, series=args.series,
        instances=args.instances, matrix=args.matrix, seed=args.seed, jobs=args.jobs,
    )
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {size / 2**20:.1f} MiB, in {elapsed:.1f} s "
          f"({len(paths) / elapsed:.0f} files/s) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
