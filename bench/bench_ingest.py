"""C-STORE ingest: DCMTK storescu sends N synthetic 512x512 CT instances to four receivers.

Receivers, each fresh, measured in the same run: dicomfs (`serve --no-mount`), DCMTK's
`storescp` writing files (the practical limit), Orthanc (Debian package, its own
temporary configuration and storage), and pynetdicom discarding what it receives
(`bench/null_scp.py`: the ceiling of the toolkit dicomfs's node is built on).
TCP_NODELAY=1 is exported for DCMTK and Orthanc; dicomfs sets it on its sockets. Each
receiver is fed over one association, then over four parallel associations (the files
split in four).

    python -m bench.bench_ingest [--instances 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, start_orthanc, stop_process, wait_port
from bench.synth import generate

ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(files: list[Path], port: int, aet: str, associations: int) -> float:
    """Seconds for storescu to send ``files`` over ``associations`` parallel associations."""
    groups = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen(["/usr/bin/storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, g)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for g in groups]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


def run_receiver(start: Callable[[Path, int], subprocess.Popen[bytes]], scratch: Path, files: list[Path],
                 aet: str, associations: int) -> float:
    work = Path(tempfile.mkdtemp(dir=scratch))
    port = free_port()
    proc = start(work, port)
    try:
        wait_port(port)
        return send(files, port, aet, associations)
    finally:
        stop_process(proc)


def dicomfs(work: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dicomfs", "serve", "--data-dir", str(work / "data"), "--create",
                             "--no-mount", "--bind", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"])


def storescp(work: Path, port: int) -> subprocess.Popen[bytes]:
    # --fork: one process per association, as the parallel case needs
    return subprocess.Popen(["/usr/bin/storescp", "--fork", "-aet", "STORESCP", "-od", str(work), str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pynetdicom_null(work: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.null_scp", str(port)],
                            cwd=Path(__file__).resolve().parent.parent)


def orthanc(work: Path, port: int) -> subprocess.Popen[bytes]:
    return start_orthanc(work, port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="dicomfs-ingest-") as tmp:
        scratch = Path(tmp)
        files = sorted(generate(scratch / "src", instances=args.instances))
        for f in files:
            f.read_bytes()  # warm: measure the receivers, not the sender's disk
        receivers = [("dicomfs", dicomfs, "DICOMFS"), ("storescp", storescp, "STORESCP"),
                     ("orthanc", orthanc, "ORTHANC"), ("pynetdicom", pynetdicom_null, "NULLSCP")]
        rates: dict[tuple[str, int], float] = {}
        for associations in (1, 4):
            for name, start, aet in receivers:
                seconds = run_receiver(start, scratch, files, aet, associations)
                rates[name, associations] = len(files) / seconds
                print(f"  {name}, {associations} association(s): {len(files)} in {seconds:.1f} s", file=sys.stderr)
        for associations in (1, 4):
            ours = rates["dicomfs", associations]
            print(f"BENCH ingest.{associations}assoc: {ours:.0f} instances/s (ratio "
                  f"{ours / rates['storescp', associations]:.2f} vs storescp {rates['storescp', associations]:.0f}/s; "
                  f"ratio {ours / rates['orthanc', associations]:.2f} vs Orthanc {rates['orthanc', associations]:.0f}/s"
                  f"; goals: >= Orthanc and >= 0.5 of storescp)")
            floor = rates["pynetdicom", associations]
            print(f"BENCH ingest.{associations}assoc.pynetdicom_ceiling: {floor:.0f} instances/s for pynetdicom "
                  f"receiving and discarding (ratio {ours / floor:.2f} of it; "
                  f"{floor / rates['storescp', associations]:.2f} of storescp)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
