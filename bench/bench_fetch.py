"""Fetch on open: a remote 512x512 CT series read through the mount vs DCMTK ``getscu``.

Series of N synthetic instances (default 500 and 2,000, one series each) are stored in Orthanc
(Debian package, its own temporary configuration, TCP_NODELAY=1). Baseline, same run:
``/usr/bin/getscu`` retrieving the series from that Orthanc into a folder, interleaved with
the dicomfs runs (medians of --repeat pairs; the pairwise ratios give the spread). dicomfs, fresh each run:
``dicomfs serve`` with the Orthanc as a remote whose saved query names the study, the series
folder listed (timed apart: two C-FINDs), then

- first byte: ``open()`` of the first instance to its first byte (the series retrieve starts
  on that open; the open waits only for its own instance);
- whole series: from that ``open()`` until every instance has been read to its end through
  the mount, in instance order.

    python -m bench.bench_fetch [--instances 500,2000] [--repeat 3] [--retrieve get|move] [--associations N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, synth
from bench.common import info, report

ENV = {**os.environ, "TCP_NODELAY": "1"}


def upload(http_port: int, paths: list[Path]) -> None:
    for path in paths:
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/instances", data=path.read_bytes(),
                                         method="POST", headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


def orthanc_http_port(work: Path) -> int:
    return int(json.loads((work / "orthanc.json").read_text())["HttpPort"])


def wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def getscu(port: int, study: str, series: str, out: Path) -> float:
    out.mkdir(parents=True)
    started = time.perf_counter()
    common.run(["/usr/bin/getscu", "-S", "-aec", "ORTHANC", "-k", "QueryRetrieveLevel=SERIES",
                "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}", "-od", str(out),
                "127.0.0.1", str(port)], env=ENV)
    return time.perf_counter() - started


def read_through_mount(files: list[Path]) -> tuple[float, float, int]:
    """(first byte, whole series) in seconds from the first open, and the bytes read."""
    started = time.perf_counter()
    total = 0
    with open(files[0], "rb") as f:
        first = f.read(1)
        first_byte = time.perf_counter() - started
        total += len(first) + len(f.read())
    for path in files[1:]:
        with open(path, "rb") as f:
            total += len(f.read())
    return first_byte, time.perf_counter() - started, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=_sizes, default=[500, 2000], metavar="N[,N...]",
                        help="series sizes, each its own series in the same Orthanc (default 500,2000)")
    parser.add_argument("--retrieve", choices=["get", "move"], default="get")
    parser.add_argument("--associations", type=int, default=0, metavar="N",
                        help="the remote's associations setting (default: dicomfs's own default)")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    repeat = max(args.repeat, 1)

    with common.scratch(args.scratch, keep=args.keep) as work:
        info(common.machine_summary(work))
        orthanc_port, node_port = common.free_port(), common.free_port()
        orthanc = common.start_orthanc(work / "orthanc", orthanc_port,
                                       modalities={"dicomfs": ["DICOMFS", "127.0.0.1", node_port]})
        try:
            http = orthanc_http_port(work / "orthanc")
            wait_http(http)
            series: list[tuple[int, dict[str, str]]] = []
            for seed, count in enumerate(args.instances, start=7):
                files = sorted(synth.generate(work / f"src{count}", instances=count, seed=seed))
                started = time.perf_counter()
                upload(http, files)
                info(f"uploaded {len(files)} instances to Orthanc in {time.perf_counter() - started:.1f} s")
                series.append((count, _uids(files[0])))
            for count, uids in series:
                baseline, runs = [], []
                for i in range(repeat):  # interleaved: the machine's other load falls on both alike
                    baseline.append(getscu(orthanc_port, uids["study"], uids["series"], work / f"getscu{count}-{i}"))
                    info(f"{count}: getscu {baseline[-1]:.2f} s")
                    runs.append(_dicomfs_run(work / f"run{count}-{i}", orthanc_port, node_port, uids, args, count))
                _report(count, baseline, runs, args.retrieve)
        finally:
            common.stop_process(orthanc)
    return 0


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _report(count: int, baseline: list[float], runs: list[tuple[float, float, float, int]], retrieve: str) -> None:
    base = statistics.median(baseline)
    first_byte = statistics.median(r[0] for r in runs)
    whole = statistics.median(r[1] for r in runs)
    listing = statistics.median(r[2] for r in runs)
    ratios = sorted(r[1] / b for r, b in zip(runs, baseline, strict=True))
    spread = f"; pairwise {ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else ""
    mib = runs[0][3] / 2**20
    report(f"fetch.{retrieve}.{count}.whole_series", f"{whole:.2f} s for {count} instances ({mib:.0f} MiB) "
           f"read through the mount from the first open", ratio=whole / base,
           baseline=f"getscu {base:.2f} s (median of {len(baseline)}{spread}); goal <= 1.3")
    report(f"fetch.{retrieve}.{count}.first_byte", f"{first_byte * 1e3:.0f} ms from open() to the first byte",
           ratio=first_byte / base, baseline="of getscu's whole series; goal: well under 100 ms")
    report(f"fetch.{retrieve}.{count}.listing", f"{listing * 1e3:.0f} ms to list the remote study's series "
           "folder the first time (series and instance C-FINDs)")


def _uids(path: Path) -> dict[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID), "patient": str(ds.PatientID)}


def _dicomfs_run(work: Path, orthanc_port: int, node_port: int, uids: dict[str, str],
                 args: argparse.Namespace, count: int) -> tuple[float, float, float, int]:
    work.mkdir(parents=True)
    config = work / "dicomfs.toml"
    config.write_text(
        f'[dicom]\nport = {node_port}\nbind = "127.0.0.1"\nrefresh_minutes = 0\n'
        f'[[dicom.remotes]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc_port}\n'
        f'retrieve = "{args.retrieve}"\ntimeout = 120\nlisting = ["StudyInstanceUID={uids["study"]}"]\n'
        + (f"associations = {args.associations}\n" if args.associations else ""))
    with common.mount(work / "data", work / "mnt", log_level="INFO", extra=["--config", str(config)]) as daemon:
        patients = daemon.mount_point / "patients"
        deadline = time.monotonic() + 30
        while not any(patients.iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the remote study did not appear:\n{daemon.log_tail()}")
            time.sleep(0.05)
        started = time.perf_counter()
        [series] = [p for p in patients.glob("*/*/*/") if p.name != "derived"]  # the study's derived/ folder
        files = sorted(series.glob("*.dcm"))
        listing = time.perf_counter() - started
        if len(files) != count:
            raise RuntimeError(f"{len(files)} instances listed, expected {count}")
        with common.Profiler(args.profile, daemon, f"fetch-{work.name}"):
            first_byte, whole, size = read_through_mount(files)
        for line in daemon.log_path.read_text().splitlines():
            if "retrieved:" in line:  # the retrieve alone, as the daemon timed it
                info(f"{work.name}: daemon: {line.split('remote pacs: ')[-1]}")
    info(f"{work.name}: first byte {first_byte * 1e3:.0f} ms, whole series {whole:.2f} s, "
         f"listing {listing * 1e3:.0f} ms")
    return first_byte, whole, listing, size


if __name__ == "__main__":
    sys.exit(main())
