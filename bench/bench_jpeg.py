"""First read of a generated ``.jpg`` through the mount vs DCMTK ``dcmj2pnm +oj``.

A series of N (default 100) 512x512 CT slices is imported and mounted. Every instance's
``NNN.jpg`` is opened and read to the end exactly once (a first read: nothing of it is in
the kernel's cache, nor rendered before), timing open → last byte; the median over the
instances is compared with the median of ``/usr/bin/dcmj2pnm +oj +Wi 1`` (JPEG, the file's
first VOI window) converting the same stored files, one process per file as a user would
run it. Reported for information as well:

- the render alone, in process (``dicomfs.views.render_view``): what the mount adds to it;
- cold first reads (page cache dropped before each): the stored file comes from disk;
- a second open and read of the same .jpg (its bytes may be in the kernel's page cache).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, synth
from bench.common import info, report

DCMJ2PNM = "/usr/bin/dcmj2pnm"  # by absolute path: pynetdicom puts look-alike tools on PATH


def first_read(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    return time.perf_counter() - started, len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100, metavar="N",
                        help="slices; each is read once (default 100)")
    parser.add_argument("--cold", type=int, default=10, metavar="N",
                        help="how many of them to read with the page cache dropped first")
    parser.add_argument("--matrix", type=int, default=512, metavar="PX")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    cold = min(args.cold, args.instances // 2)

    with common.scratch(args.scratch, keep=args.keep) as work:
        info(common.machine_summary(work))
        synth.generate(work / "src", instances=args.instances, matrix=args.matrix, seed=4)
        data = work / "data"
        common.import_archive([work / "src"], data)
        with common.mount(data, work / "mnt") as daemon:
            jpgs = sorted(daemon.mount_point.glob("patients/*/*/*/*.jpg"))
            dcms = [p.with_suffix(".dcm") for p in jpgs]
            # The stored file behind each NNN.jpg, for dcmj2pnm and the in-process render.
            stored = _stored_paths(data, dcms)
            if len(jpgs) != args.instances:
                raise RuntimeError(f"{len(jpgs)} .jpg in the mount, expected {args.instances}")
            common.warm(list(stored.values()))

            warm_set, cold_set = jpgs[cold:], jpgs[:cold]
            mount_times: list[float] = []
            sizes: list[int] = []
            with common.Profiler(args.profile, daemon, "jpeg-first-read"):
                for path in warm_set:
                    elapsed, size = first_read(path)
                    mount_times.append(elapsed)
                    sizes.append(size)
            listed = [p.stat().st_size for p in warm_set]
            if sizes != listed:
                bad = sum(a != b for a, b in zip(sizes, listed, strict=True))
                info(f"WARNING: {bad} .jpg files read a size different from the listed st_size")
            again = [first_read(p)[0] for p in warm_set]
            cold_times = []
            for path in cold_set:
                common.drop_caches()
                cold_times.append(first_read(path)[0])

            dcmtk_times = []
            out = work / "dcmtk.jpg"
            for path in warm_set:
                src = stored[path.with_suffix(".dcm")]
                started = time.perf_counter()
                common.run([DCMJ2PNM, "+oj", "+Wi", "1", str(src), str(out)])
                dcmtk_times.append(time.perf_counter() - started)
            dcmtk_size = out.stat().st_size

            render_times = _render_in_process([stored[p.with_suffix(".dcm")] for p in warm_set])

        mount_ms = statistics.median(mount_times) * 1e3
        dcmtk_ms = statistics.median(dcmtk_times) * 1e3
        report("jpeg.first_read", f"{mount_ms:.1f} ms median (open → last byte, "
               f"{len(mount_times)} slices, {statistics.median(sizes) / 1024:.0f} KiB)",
               ratio=mount_ms / dcmtk_ms,
               baseline=f"dcmj2pnm +oj {dcmtk_ms:.1f} ms median, {dcmtk_size / 1024:.0f} KiB; "
                        f"time ratio, lower is better")
        if render_times:
            render_ms = statistics.median(render_times) * 1e3
            report("jpeg.render_in_process", f"{render_ms:.1f} ms median",
                   baseline=f"the mount adds {mount_ms - render_ms:.1f} ms")
        report("jpeg.second_read", f"{statistics.median(again) * 1e3:.2f} ms median",
               baseline="the same .jpg opened and read again")
        if cold_times:
            report("jpeg.first_read_cold", f"{statistics.median(cold_times) * 1e3:.1f} ms median",
                   baseline=f"{len(cold_times)} slices, page cache dropped before each")
    return 0


def _stored_paths(data: Path, dcms: list[Path]) -> dict[Path, Path]:
    """Map each mounted NNN.dcm to its file in the store (matched by SOP Instance UID)."""
    import pydicom

    by_uid = {p.stem: p for p in (data / "store").glob("*/*/*.dcm")}
    result = {}
    for dcm in dcms:
        ds = pydicom.dcmread(dcm, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        result[dcm] = by_uid[str(ds.SOPInstanceUID)]
    return result


def _render_in_process(paths: list[Path]) -> list[float]:
    """The view function alone, in this process, on the same stored files."""
    try:
        from dicomfs.views.render import render_view
    except ImportError as exc:
        info(f"cannot import dicomfs.views ({exc}): no in-process render figure")
        return []
    times = []
    for path in paths:
        started = time.perf_counter()
        render_view("jpg", path)
        times.append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    sys.exit(main())
