"""Import rate of ``dicomfs import`` vs a bare pydicom header-parse loop over the same files.

N (default 2,000) synthetic 512x512 CT files are generated, then, with the files in the page
cache (read once first):

- baseline: one Python process running ``pydicom.dcmread(f, stop_before_pixels=True)`` on
  each file (the least any importer must do: parse the header);
- ``dicomfs import`` into a fresh data folder, default workers (one per CPU), wall time of
  the command (start-up included, reported separately);
- the same with ``--workers 1``.

Each is repeated ``--repeat`` times (a new data folder each time) and the medians compared.
Target: dicomfs import ≥ 0.5 of the baseline rate.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom

from bench import common, synth
from bench.common import info, report

TARGET = 0.5
_STARTUP = "import dicomfs.cli, dicomfs.archive, dicomfs.ingest.files"


def parse_headers(paths: list[Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            pydicom.dcmread(path, stop_before_pixels=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2000, metavar="N")
    parser.add_argument("--per-series", type=int, default=500, metavar="N")
    parser.add_argument("--matrix", type=int, default=512, metavar="PX")
    common.add_common_options(parser)
    parser.set_defaults(repeat=3)
    args = parser.parse_args(argv)

    per_series = min(args.per_series, args.instances)
    n_series = max(1, args.instances // per_series)
    need = n_series * per_series * (args.matrix**2 * 2 + 4096) * 2.5 / 2**30
    with common.scratch(args.scratch, keep=args.keep, need_gib=need) as work:
        info(common.machine_summary(work))
        src = work / "src"
        files = synth.generate(src, series=n_series, instances=per_series, matrix=args.matrix,
                               seed=3)
        n = len(files)
        common.warm(files)

        baseline = common.timed(lambda: parse_headers(files), args.repeat)
        base_rate = n / baseline.median
        report("import.pydicom_headers", f"{base_rate:.0f} instances/s",
               baseline=f"{n} files, one process, stop_before_pixels=True")

        startup = common.timed(lambda: common.run([sys.executable, "-c", _STARTUP]), 3).median
        info(f"dicomfs start-up (interpreter + imports): {startup * 1e3:.0f} ms")

        for label, workers in (("default_workers", None), ("workers_1", 1)):
            runs = []
            for i in range(args.repeat):
                data = work / f"data-{label}-{i}"
                common.warm(files)
                runs.append(common.import_archive([src], data, workers=workers))
                stored = len(list((data / "store").glob("*/*/*.dcm")))
                if stored != n:
                    raise RuntimeError(f"import stored {stored} of {n} files")
                shutil.rmtree(data)
            median = common.Timing(runs).median
            rate = n / median
            ratio = rate / base_rate
            verdict = "met" if ratio >= TARGET else "MISSED"
            report(f"import.{label}", f"{rate:.0f} instances/s", ratio=ratio,
                   baseline=f"pydicom headers {base_rate:.0f}/s; target ≥ {TARGET}: {verdict}")

        if args.profile:
            _profile_import(src, work / "data-profile", args.profile)
    return 0


def _profile_import(src: Path, data: Path, out_dir: Path) -> None:
    """py-spy over a --workers 1 import (everything in one process, so one profile)."""
    if shutil.which("py-spy") is None:
        info("py-spy is not installed: no profile")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "import-workers1.collapsed"
    started = time.perf_counter()
    common.run(["py-spy", "record", "--format", "raw", "--rate", "250", "--output", str(output),
                "--", *common.DICOMFS, "--log-level", "WARNING", "import", str(src), "--data-dir",
                str(data), "--create", "--no-progress", "--workers", "1"])
    info(f"profiled import in {time.perf_counter() - started:.1f} s → {output}\n"
         f"{common.summarize_profile(output)}")


if __name__ == "__main__":
    sys.exit(main())
