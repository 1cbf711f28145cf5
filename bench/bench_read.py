"""Reading a whole CT series (.dcm) through the mount vs straight from the store.

One series of N (default 2,000) 512x512 instances is generated, imported, and mounted.
The same files are then read two ways, in one Python process with ``open().read()``:
``MOUNT/patients/<patient>/<study>/<series>/NNN.dcm`` and ``DATA/store/<study>/<series>/
<sop>.dcm``. Warm: each set is read once first, then the two ways alternate for
``--repeat`` rounds and the medians are compared. Cold (for information): the page cache
is dropped before each round. ``--cat`` adds the same reads done by one ``cat`` process.

Target: warm throughput through the mount ≥ 0.8 of native.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, synth
from bench.common import info, report

TARGET_WARM = 0.8


def read_all(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


def cat_all(paths: list[Path]) -> None:
    common.run(["cat", *map(str, paths)])


def mount_files(mount_point: Path) -> list[Path]:
    """Every NNN.dcm of the patients layout, in name order (instance order)."""
    return sorted(mount_point.glob("patients/*/*/*/*.dcm"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2000, metavar="N",
                        help="instances in the series (default 2000)")
    parser.add_argument("--matrix", type=int, default=512, metavar="PX")
    parser.add_argument("--cold-repeat", type=int, default=3, metavar="N")
    parser.add_argument("--cat", action="store_true", help="also read with one cat process")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the minimal pyfuse3 passthrough mounted for comparison")
    parser.add_argument("--read-ahead-kb", type=int, default=1024, metavar="KB",
                        help="when the daemon left another read-ahead on the mount, measure again "
                             "with this one set (0: don't; default 1024)")
    common.add_common_options(parser)
    args = parser.parse_args(argv)

    need = args.instances * (args.matrix**2 * 2 + 4096) * 2.2 / 2**30  # source + store
    with common.scratch(args.scratch, keep=args.keep, need_gib=need) as work:
        info(common.machine_summary(work))
        sources = synth.generate(work / "src", instances=args.instances, matrix=args.matrix, seed=1)
        data = work / "data"
        common.import_archive([work / "src"], data)
        native = sorted((data / "store").glob("*/*/*.dcm"))
        with contextlib.ExitStack() as stack:
            daemon = stack.enter_context(common.mount(data, work / "mnt"))
            mounted = mount_files(daemon.mount_point)
            if len(mounted) != len(native) or len(native) != len(sources):
                raise RuntimeError(f"{len(sources)} generated, {len(native)} in the store, "
                                   f"{len(mounted)} .dcm in the mount")
            size = sum(p.stat().st_size for p in native)
            mib = size / 2**20
            info(f"{len(native)} files, {mib:.0f} MiB")
            reference = None
            if args.reference:
                ref = stack.enter_context(common.mount_reference(data / "store", work / "ref"))
                reference = Reference(ref, [ref.mount_point / p.relative_to(data / "store")
                                            for p in native])

            setups = [("", daemon.read_ahead_kb())]
            if args.read_ahead_kb and daemon.read_ahead_kb() != str(args.read_ahead_kb):
                setups.append((f".ra{args.read_ahead_kb}", str(args.read_ahead_kb)))
            for suffix, kb in setups:
                if suffix and not daemon.set_read_ahead_kb(int(kb)):
                    info(f"cannot set the mount's read-ahead to {kb} KB")
                    break
                if reference:
                    reference.fs.set_read_ahead_kb(int(kb))
                info(f"mount read-ahead {daemon.read_ahead_kb()} KB")
                _measure(args, daemon, native, mounted, mib, suffix, reference)

            # Opening without reading: the per-file cost of lookup + open + release.
            started = time.perf_counter()
            for path in mounted:
                with open(path, "rb"):
                    pass
            per_open = (time.perf_counter() - started) / len(mounted)
            started = time.perf_counter()
            for path in native:
                with open(path, "rb"):
                    pass
            native_open = (time.perf_counter() - started) / len(native)
            report("read.open_close", f"{per_open * 1e3:.3f} ms per file through the mount",
                   baseline=f"native {native_open * 1e3:.3f} ms")
    return 0


@dataclass(slots=True)
class Reference:
    """The store mounted with bench.minimal_fs: what any pyfuse3 file system can reach."""

    fs: common.Daemon
    files: list[Path]


def _measure(args: argparse.Namespace, daemon: common.Daemon, native: list[Path],
             mounted: list[Path], mib: float, suffix: str, reference: Reference | None) -> None:
    # Warm: every set in the page cache (each mount's own pages, and the store's).
    common.drop_caches()
    common.warm(native)
    common.warm(mounted)
    warm_native: list[float] = []
    warm_mount: list[float] = []
    warm_ref: list[float] = []
    if reference:
        common.warm(reference.files)
    with common.Profiler(args.profile, daemon, f"read-warm{suffix}"):
        for _ in range(args.repeat):
            warm_native += common.timed(lambda: read_all(native), 1).runs
            warm_mount += common.timed(lambda: read_all(mounted), 1).runs
            if reference:
                warm_ref += common.timed(lambda: read_all(reference.files), 1).runs
    _report(f"read.warm{suffix}", mib, warm_native, warm_mount, target=TARGET_WARM)
    if reference:
        _report(f"read.warm.minimal_pyfuse3{suffix}", mib, warm_native, warm_ref,
                what="through a minimal pyfuse3 passthrough")
        ratio = common.Timing(warm_ref).median / common.Timing(warm_mount).median
        info(f"dicomfs reaches {ratio:.2f} of the minimal pyfuse3 passthrough (warm)")
    files_per_s = len(native) / common.Timing(warm_mount).median
    info(f"warm through the mount: {files_per_s:.0f} files/s; "
         f"native {common.Timing(warm_native).spread()}, "
         f"mount {common.Timing(warm_mount).spread()}")

    if args.cat:
        cat_native = common.timed(lambda: cat_all(native), args.repeat).runs
        cat_mount = common.timed(lambda: cat_all(mounted), args.repeat).runs
        _report(f"read.warm.cat{suffix}", mib, cat_native, cat_mount)

    # Cold: nothing cached; the mount's reads also fetch the store's pages from disk.
    if args.cold_repeat > 0:
        cold_native: list[float] = []
        cold_mount: list[float] = []
        cold_ref: list[float] = []
        with common.Profiler(args.profile, daemon, f"read-cold{suffix}"):
            for _ in range(args.cold_repeat):
                cold_native += common.timed(lambda: read_all(native), 1,
                                            before=common.drop_caches).runs
                cold_mount += common.timed(lambda: read_all(mounted), 1,
                                           before=common.drop_caches).runs
                if reference:
                    cold_ref += common.timed(lambda: read_all(reference.files), 1,
                                             before=common.drop_caches).runs
        _report(f"read.cold{suffix}", mib, cold_native, cold_mount)
        if reference:
            _report(f"read.cold.minimal_pyfuse3{suffix}", mib, cold_native, cold_ref,
                    what="through a minimal pyfuse3 passthrough")


def _report(name: str, mib: float, native: list[float], mount: list[float], target: float = 0.0,
            what: str = "through the mount") -> None:
    native_rate = mib / common.Timing(native).median
    mount_rate = mib / common.Timing(mount).median
    verdict = ""
    if target:
        met = mount_rate / native_rate >= target
        verdict = f", target ≥ {target:.1f}: {'met' if met else 'MISSED'}"
    report(name, f"{mount_rate:.0f} MiB/s {what}", ratio=mount_rate / native_rate,
           baseline=f"native {native_rate:.0f} MiB/s{verdict}")


if __name__ == "__main__":
    sys.exit(main())
