"""Walking a big archive: ``find -type f | wc -l`` and ``ls -lR`` through the mount vs on disk.

An archive of N instances (default 100,000) with a tiny matrix (16x16, so the disk holds
it) is generated and imported with ``dicomfs import`` (its rate is reported too). A plain
directory tree of exactly the mount's shape (same folders, same names, sparse files of the
same sizes) is made by walking the mount once. Then each command runs on both trees:

- first: the mount freshly started (nothing in the daemon's or the kernel's caches) and,
  for the native tree, dentries and inodes dropped (``drop_caches``);
- repeated: median of ``--repeat`` further runs.

Target: mount time within 3x of native.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, synth
from bench.common import info, report

TARGET = 3.0
COMMANDS = {
    "find": "find {root} -type f | wc -l",
    "ls-lR": "ls -lR {root} > /dev/null",
}


def mirror(src: Path, dst: Path) -> tuple[int, int]:
    """Recreate ``src``'s folders and files under ``dst``: empty sparse files of the same sizes."""
    n_dirs = n_files = 0
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else dst / rel
        target.mkdir(exist_ok=True)
        n_dirs += 1
        for name in dirs:
            (target / name).mkdir(exist_ok=True)
        for name in files:
            size = os.stat(os.path.join(root, name)).st_size
            fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            n_files += 1
    return n_dirs, n_files


def shape_for(instances: int, per_series: int) -> synth.Shape:
    """Patients x studies x series x instances for about ``instances`` files."""
    per_series = min(per_series, instances)
    series_total = max(1, instances // per_series)
    series_per_study = min(5, series_total)
    studies_total = max(1, series_total // series_per_study)
    studies_per_patient = min(2, studies_total)
    patients = max(1, studies_total // studies_per_patient)
    return synth.Shape(patients, studies_per_patient, series_per_study, per_series, 16)


def run_walk(command: str, root: Path) -> str:
    return common.run(command.format(root=root), shell=True, capture=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000, metavar="N")
    parser.add_argument("--per-series", type=int, default=500, metavar="N",
                        help="instances per series (default 500)")
    parser.add_argument("--matrix", type=int, default=16, metavar="PX")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes writing the synthetic files")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip walking the native tree through a minimal pyfuse3 passthrough")
    common.add_common_options(parser)
    parser.set_defaults(repeat=3)
    args = parser.parse_args(argv)
    shape = shape_for(args.instances, args.per_series)
    shape = synth.Shape(shape.patients, shape.studies, shape.series, shape.instances, args.matrix)

    need = shape.total * 3 * (args.matrix**2 * 2 + 8192) / 2**30 + 1
    with common.scratch(args.scratch, keep=args.keep, need_gib=need) as work:
        info(common.machine_summary(work))
        info(f"shape: {shape.patients} patients x {shape.studies} studies x {shape.series} series "
             f"x {shape.instances} instances = {shape.total}")
        started = time.perf_counter()
        synth.generate(work / "src", patients=shape.patients, studies=shape.studies,
                       series=shape.series, instances=shape.instances, matrix=shape.matrix,
                       seed=2, jobs=args.jobs)
        info(f"generated {shape.total} files in {time.perf_counter() - started:.0f} s")
        data = work / "data"
        common.drop_caches()
        elapsed = common.import_archive([work / "src"], data)
        report("walk.import", f"{shape.total / elapsed:.0f} instances/s",
               baseline=f"{shape.total} tiny instances in {elapsed:.1f} s, default workers")

        native = work / "native"
        mnt = work / "mnt"
        with common.mount(data, mnt):
            started = time.perf_counter()
            n_dirs, n_files = mirror(mnt, native)
            info(f"mirrored the mount: {n_dirs} folders, {n_files} files "
                 f"in {time.perf_counter() - started:.0f} s")

        for name, command in COMMANDS.items():
            # First walk: a freshly started daemon; native with dentries and inodes dropped.
            common.drop_caches()
            native_first = common.timed(lambda c=command: run_walk(c, native), 1).first
            native_again = common.timed(lambda c=command: run_walk(c, native), args.repeat)
            with common.mount(data, mnt) as daemon:
                common.drop_caches()
                with common.Profiler(args.profile, daemon, f"walk-{name}"):
                    first = common.timed(lambda c=command: run_walk(c, mnt), 1).first
                    again = common.timed(lambda c=command: run_walk(c, mnt), args.repeat)
                if name == "find":
                    counts = run_walk(command, mnt), run_walk(command, native)
                    if counts[0] != counts[1]:
                        raise RuntimeError(f"find counts differ: {counts[0]} vs {counts[1]}")
                    info(f"find counts {counts[0]} files in each tree")
            results = [("first", first, native_first),
                       ("repeated", again.median, native_again.median)]
            if args.reference:
                with common.mount_reference(native, work / "ref"):
                    common.drop_caches()
                    ref_first = common.timed(lambda c=command: run_walk(c, work / "ref"), 1).first
                    ref_again = common.timed(lambda c=command: run_walk(c, work / "ref"),
                                             args.repeat)
                results += [("first.minimal_pyfuse3", ref_first, native_first),
                            ("repeated.minimal_pyfuse3", ref_again.median, native_again.median)]
            for label, mount_s, native_s in results:
                ratio = mount_s / native_s
                if label.endswith("minimal_pyfuse3"):
                    what, verdict = "through a minimal pyfuse3 passthrough of the native tree", ""
                else:
                    what = "through the mount"
                    verdict = f", target ≤ {TARGET:.0f}: {'met' if ratio <= TARGET else 'MISSED'}"
                report(f"walk.{name}.{label}", f"{mount_s:.2f} s {what}", ratio=ratio,
                       baseline=f"native {native_s:.2f} s; time ratio{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
