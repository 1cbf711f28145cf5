"""Tools that scan a series folder: dcm2niix and SimpleITK on the mount vs on the original files.

One series of N (default 200) 512x512 CT instances is generated, imported and mounted. Its
folder in the mount (``patients/<patient>/<study>/<series>/``, the default layout, where
every ``NNN.dcm`` has ``NNN.json`` and ``NNN.jpg`` beside it) and the folder of the
generated files are then given to:

- ``dcm2niix -o OUT -z n`` (Debian's package), a fresh output folder each time;
- SimpleITK (``pip install SimpleITK``): ``ImageSeriesReader.GetGDCMSeriesFileNames(folder)``
  then ``Execute()``, in this process.

First scan: a freshly started daemon on the same archive (nothing rendered, nothing in the
mount's page cache; the store's pages are warm, as are the originals'). Warm: the same tool
again on that mount. The page cache is not dropped (``--cold`` adds first scans after
``drop_caches``, originals cold too). Rounds alternate original, first, warm; medians are
compared.

Target: first scan and warm ≤ 1.3x the time on the original files, for both tools.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, synth
from bench.common import info, report

TARGET = 1.3
DCM2NIIX = "/usr/bin/dcm2niix"


def dcm2niix(folder: Path) -> None:
    """dcm2niix into a fresh temporary folder; checks that it wrote one volume."""
    with tempfile.TemporaryDirectory(prefix="dicomfs-bench-nii-") as out:
        common.run([DCM2NIIX, "-z", "n", "-o", out, str(folder)])
        if not list(Path(out).glob("*.nii")):
            raise RuntimeError(f"dcm2niix wrote no volume for {folder}")


def simpleitk(folder: Path) -> None:
    """GDCM's series file names of the folder, then one volume read of them."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    if not names:
        raise RuntimeError(f"GDCM found no series in {folder}")
    reader.SetFileNames(names)
    image = reader.Execute()
    if image.GetSize()[2] != len(names):
        raise RuntimeError(f"SimpleITK read {image.GetSize()} from {len(names)} files")


TOOLS: dict[str, Callable[[Path], None]] = {"dcm2niix": dcm2niix, "simpleitk": simpleitk}


def series_folder(mount_point: Path) -> Path:
    """The one series folder of the patients layout."""
    folders = sorted({p.parent for p in mount_point.glob("patients/*/*/*/*.dcm")})
    if len(folders) != 1:
        raise RuntimeError(f"expected one series folder in {mount_point}, found {len(folders)}")
    return folders[0]


def seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200, metavar="N")
    parser.add_argument("--matrix", type=int, default=512, metavar="PX")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {', '.join(TOOLS)}")
    parser.add_argument("--cold", action="store_true", help="also first scans with the page cache dropped")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    for tool in tools:
        if tool not in TOOLS:
            parser.error(f"unknown tool {tool!r}")
    if "dcm2niix" in tools and not Path(DCM2NIIX).exists():
        parser.error(f"{DCM2NIIX} is missing (apt-get install dcm2niix)")

    need = args.instances * (args.matrix**2 * 2 + 4096) * 2.5 / 2**30
    with common.scratch(args.scratch, keep=args.keep, need_gib=need) as work:
        info(common.machine_summary(work))
        sources = synth.generate(work / "src", instances=args.instances, matrix=args.matrix, seed=5)
        original = sources[0].parent
        data = work / "data"
        common.import_archive([work / "src"], data)
        mounts = _Mounts(data, work, args.profile)
        for tool in tools:
            _measure(tool, TOOLS[tool], original, mounts, args)
    return 0


class _Mounts:
    """Fresh daemons on one archive, one after another."""

    def __init__(self, data: Path, work: Path, profile: Path | None) -> None:
        self.data, self.work, self.profile = data, work, profile
        self.count = 0

    @contextlib.contextmanager
    def fresh(self, name: str) -> Iterator[Path]:
        self.count += 1
        with common.mount(self.data, self.work / f"mnt{self.count}", extra=["--no-dicom"]) as daemon, \
                common.Profiler(self.profile, daemon, f"{name}-{self.count}"):
            if self.count == 1:
                info(f"mount read-ahead {daemon.read_ahead_kb()} KB")
            yield series_folder(daemon.mount_point)
        shutil.rmtree(self.work / f"mnt{self.count}", ignore_errors=True)


def _measure(name: str, tool: Callable[[Path], None], original: Path, mounts: _Mounts,
             args: argparse.Namespace) -> None:
    tool(original)  # warms the originals' pages and the tool itself (SimpleITK's import)
    native: list[float] = []
    first: list[float] = []
    warm: list[float] = []
    for _ in range(args.repeat):
        native.append(seconds(lambda: tool(original)))
        with mounts.fresh(name) as folder:
            first.append(seconds(lambda folder=folder: tool(folder)))
            warm.append(seconds(lambda folder=folder: tool(folder)))
    base = common.Timing(native)
    for label, runs in (("first", first), ("warm", warm)):
        timing = common.Timing(runs)
        ratio = timing.median / base.median
        verdict = "met" if ratio <= TARGET else "MISSED"
        report(f"tools.{name}.{label}", f"{timing.median:.2f} s on the mount's series folder",
               ratio=ratio, baseline=f"original files {base.median:.2f} s, target ≤ {TARGET:.1f}: {verdict}")
        info(f"{name} {label}: mount {timing.spread()}, original {base.spread()}")
    if args.cold:
        cold_native: list[float] = []
        cold_first: list[float] = []
        for _ in range(args.repeat):
            common.drop_caches()
            cold_native.append(seconds(lambda: tool(original)))
            with mounts.fresh(name) as folder:
                common.drop_caches()
                cold_first.append(seconds(lambda folder=folder: tool(folder)))
        timing, base = common.Timing(cold_first), common.Timing(cold_native)
        report(f"tools.{name}.cold", f"{timing.median:.2f} s on the mount's series folder",
               ratio=timing.median / base.median, baseline=f"original files cold {base.median:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
