"""Loading a series as one volume through the mount vs loading its loose Part 10 files.

For each series size (default a 300- and a 2,000-slice 512x512 CT), one series is generated,
imported and mounted; then, in one run:

- **warm load**: ``nibabel.load(volume.nii).dataobj.get_unscaled()`` read whole through the
  mount, against the loose files loaded with pydicom (read all, sort by position along the
  normal, stack), both from the page cache. Target ≥ 10x. For information: the same NIfTI
  bytes loaded from a native file.
- **first read** (caches dropped, never read through this mount before): open → first byte,
  and the whole volume read, against dcm2niix converting the same loose files (caches
  dropped too). Targets: ≥ 1x, first byte < 50 ms.
- **memory**: the daemon's resident memory before and after the whole volume was read.
  Target: grows by < 100 MiB.
- **listing**: building a series folder's listing in process (the layout model over the
  archive's index) with and without the volume files. Target: < 5 % more. For
  information, ``ls -l`` of the folder on a fresh mount.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, synth
from bench.common import info, report

TARGET_WARM = 10.0
TARGET_FIRST = 1.0
TARGET_FIRST_BYTE_MS = 50.0
TARGET_RSS_MIB = 100.0
TARGET_LISTING = 1.05


def load_volume(path: Path) -> object:
    import nibabel as nib
    import numpy as np

    image = nib.load(str(path), mmap=False)
    return np.asarray(image.dataobj.get_unscaled())


def load_loose(paths: list[Path]) -> object:
    """What a careful script does with loose files: read all, order along the normal, stack."""
    import numpy as np
    import pydicom

    slices = [pydicom.dcmread(p) for p in paths]
    row, column = np.array(slices[0].ImageOrientationPatient[:3], float), np.array(
        slices[0].ImageOrientationPatient[3:], float)
    normal = np.cross(row, column)
    slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    return np.stack([ds.pixel_array for ds in slices], axis=-1)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def first_byte_and_whole(path: Path) -> tuple[float, float]:
    started = time.perf_counter()
    with open(path, "rb") as f:
        f.read(352)
        first = time.perf_counter() - started
        while f.read(1 << 20):
            pass
    return first, time.perf_counter() - started


def listing_cost(data: Path, repeat: int) -> dict[str, float]:
    """Seconds to build the largest series folder's listing in a fresh model: without volume
    files, with them as kept in the index, and right after the series changed (planned again)."""
    from dicomfs.index.db import Database
    from dicomfs.mount.kinds import Kind, inode_of
    from dicomfs.mount.layouts import LAYOUTS, SeriesVolumeFiles
    from dicomfs.mount.model import Model, SeriesFile
    from dicomfs.volumes.plan import SeriesPlan
    from dicomfs.volumes.series import VolumeFiles

    class NoVolumes(SeriesFile):
        kinds = SeriesVolumeFiles.kinds

        def entries(self, series_id: int, instances: object) -> list:  # type: ignore[override]
            return []

    db = Database(data / "index.sqlite")
    try:
        series_id = db.get_int("SELECT id FROM series ORDER BY num_instances DESC LIMIT 1")
        folder = inode_of(Kind.PATIENT_SERIES, series_id)
        without = [layout if layout is not SeriesVolumeFiles else NoVolumes for layout in LAYOUTS]
        times: dict[str, list[float]] = {"without": [], "kept": [], "changed": []}
        for _ in range(repeat):
            for label in times:
                model = Model(db, layouts=without if label == "without" else LAYOUTS)
                if label == "without":  # series.json then says nothing about volumes either
                    model.volume_files = lambda _id: VolumeFiles([], SeriesPlan([]).summary())  # type: ignore[method-assign]
                if label == "changed":
                    db.execute("DELETE FROM volume_plans")
                started = time.perf_counter()
                model.children(folder)
                times[label].append(time.perf_counter() - started)
        return {label: common.Timing(runs).median for label, runs in times.items()}
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="300,2000", help="slices per series, comma-separated")
    parser.add_argument("--matrix", type=int, default=512, metavar="PX")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    need = sum(sizes) * (args.matrix**2 * 2 + 4096) * 4.5 / 2**30  # sources, store, NIfTI copies
    with common.scratch(args.scratch, keep=args.keep, need_gib=need) as work:
        info(common.machine_summary(work))
        data = work / "data"
        sources: dict[int, list[Path]] = {}
        for number, size in enumerate(sizes):
            sources[size] = synth.generate(work / f"src{size}", instances=size, matrix=args.matrix, seed=10 + number)
        common.import_archive([work / f"src{size}" for size in sizes], data)
        costs = listing_cost(data, args.repeat)
        report("volume.listing", f"{costs['kept'] * 1e3:.1f} ms to list the {max(sizes)}-slice series folder",
               ratio=costs["kept"] / costs["without"],
               baseline=f"without volume files {costs['without'] * 1e3:.1f} ms, target < {TARGET_LISTING:.2f}")
        report("volume.listing.after_change", f"{costs['changed'] * 1e3:.1f} ms when the series was just changed",
               ratio=costs["changed"] / costs["without"], baseline="without volume files (planned again)")
        with common.mount(data, work / "mnt") as daemon:
            volumes = {}
            for size in sizes:
                found = [p for p in (daemon.mount_point / "patients").glob("*/*/*/volume.nii")
                         if len(list(p.parent.glob("*.dcm"))) == size]
                if len(found) != 1:
                    raise RuntimeError(f"no volume.nii for the {size}-slice series: {found}")
                volumes[size] = found[0]
            started = time.perf_counter()
            common.run(["ls", "-l", str(volumes[max(sizes)].parent)], capture=True)
            info(f"ls -l of the {max(sizes)}-slice series folder on a fresh mount: "
                 f"{(time.perf_counter() - started) * 1e3:.0f} ms")
            for size in sizes:
                _measure(args, daemon, size, volumes[size], sources[size], work)
    return 0


def _measure(args: argparse.Namespace, daemon: common.Daemon, size: int, volume: Path, loose: list[Path],
             work: Path) -> None:
    name = f"volume.{size}"
    # First read: nothing cached anywhere, this volume never read through this mount.
    common.drop_caches()
    rss_before = rss_mib(daemon.pid)
    first_byte, first_whole = first_byte_and_whole(volume)
    rss_after = rss_mib(daemon.pid)
    out = work / f"dcm2niix{size}"
    out.mkdir(exist_ok=True)
    common.drop_caches()
    started = time.perf_counter()
    subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "ref", "-o", str(out), str(loose[0].parent)],
                   check=True, capture_output=True)
    dcm2niix = time.perf_counter() - started
    mib = volume.stat().st_size / 2**20
    report(f"{name}.first_read", f"{first_whole:.2f} s for {mib:.0f} MiB ({mib / first_whole:.0f} MiB/s)",
           ratio=dcm2niix / first_whole, baseline=f"dcm2niix on the loose files {dcm2niix:.2f} s, "
           f"target ≥ {TARGET_FIRST:.1f}")
    report(f"{name}.first_byte", f"{first_byte * 1e3:.1f} ms", baseline=f"target < {TARGET_FIRST_BYTE_MS:.0f} ms")
    report(f"{name}.daemon_rss", f"grew {rss_after - rss_before:.0f} MiB while {mib:.0f} MiB were read "
           f"({rss_before:.0f} → {rss_after:.0f} MiB)", baseline=f"target < {TARGET_RSS_MIB:.0f} MiB")

    # Warm: both from the page cache; they alternate.
    native_copy = work / f"native{size}.nii"
    shutil.copyfile(volume, native_copy)
    common.warm([volume, native_copy, *loose])
    mount_runs: list[float] = []
    loose_runs: list[float] = []
    native_runs: list[float] = []
    for _ in range(max(args.repeat // 2, 2)):
        mount_runs += common.timed(lambda: load_volume(volume), 1).runs
        loose_runs += common.timed(lambda: load_loose(loose), 1).runs
        native_runs += common.timed(lambda: load_volume(native_copy), 1).runs
    info(f"{name} warm runs: mount {common.Timing(mount_runs).spread()}, loose {common.Timing(loose_runs).spread()}, "
         f"native {common.Timing(native_runs).spread()}")
    mount_time = common.Timing(mount_runs).median
    loose_time = common.Timing(loose_runs).median
    native_time = common.Timing(native_runs).median
    report(f"{name}.warm", f"{mount_time:.3f} s to load the volume through the mount",
           ratio=loose_time / mount_time, baseline=f"pydicom on the loose files {loose_time:.2f} s, "
           f"target ≥ {TARGET_WARM:.0f}x")
    report(f"{name}.warm.native_nifti", f"{native_time:.3f} s from a native file",
           ratio=native_time / mount_time, baseline="the mount's share of native speed")
    with contextlib.suppress(OSError):
        native_copy.unlink()
    os.sync()


if __name__ == "__main__":
    sys.exit(main())
