"""C-STORE ingest and association latency: dicomfs against DCMTK storescp, Orthanc and pynetdicom.

DCMTK storescu sends N synthetic 512x512 CT instances to each receiver, fresh for each run,
over 1, 4 and 8 parallel associations (the files split evenly). Receivers, in the same run:
dicomfs (`serve` with its mount), DCMTK's `storescp --fork` writing files (the practical
limit), Orthanc (Debian package, its own temporary configuration and storage), and
pynetdicom discarding what it receives (`bench/null_scp.py`: the ceiling of the toolkit
dicomfs's node is built on). TCP_NODELAY=1 is exported for DCMTK and Orthanc; dicomfs sets
it on its sockets.

Also measured on dicomfs: its resident memory (the daemon and its parser processes, summed,
sampled every 0.2 s), and, in a fifth run over 4 associations, a reader that walks the mount
and reads every file it finds: its errors and its longest wait for one listing or read (the
rates above come from runs without it, as the peers have no reader either). Before
the sends, each receiver answers `echoscu` (median of --echoes round trips, one association
each): dicomfs against storescp is the association latency figure.

    python -m bench.bench_ingest [--instances 2000] [--echoes 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, start_orthanc, stop_process, wait_port
from bench.synth import generate

ENV = {**os.environ, "TCP_NODELAY": "1"}
ASSOCIATIONS = (1, 4, 8)


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


def echo_ms(port: int, aet: str, count: int) -> float:
    """Median milliseconds of an ``echoscu`` run (process start, association, C-ECHO, release)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        subprocess.run(["/usr/bin/echoscu", "-aec", aet, "127.0.0.1", str(port)], env=ENV, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (the parser processes), in MiB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total / 1024


@dataclass
class Watch:
    """Samples a receiver's memory, and (for dicomfs with a mount) walks and reads the mount."""

    pid: int
    mount: Path | None = None
    peak_rss: float = 0.0
    errors: list[str] = field(default_factory=list)
    longest_wait: float = 0.0
    files_read: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Watch:
        self._threads = [threading.Thread(target=self._sample, daemon=True)]
        if self.mount is not None:
            self._threads.append(threading.Thread(target=self._read, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, tree_rss_mib(self.pid))

    def _read(self) -> None:
        assert self.mount is not None
        seen: set[Path] = set()
        last = time.perf_counter()

        def done() -> None:
            nonlocal last
            now = time.perf_counter()
            self.longest_wait = max(self.longest_wait, now - last)
            last = now

        while not self._stop.is_set():
            try:
                for folder, _, names in os.walk(self.mount / "patients"):
                    done()
                    for name in names:
                        path = Path(folder) / name
                        if name.endswith(".dcm") and path not in seen:
                            with open(path, "rb") as f:
                                f.read()
                            seen.add(path)
                            self.files_read += 1
                            done()
                        if self._stop.is_set():
                            return
            except OSError as exc:
                self.errors.append(str(exc))
            time.sleep(0.05)


def run_receiver(start: Callable[[Path, int], tuple[subprocess.Popen[bytes], Path | None]], scratch: Path,
                 files: list[Path], aet: str, associations: int, echoes: int, reader: bool = False,
                 ) -> tuple[float, float | None, Watch]:
    """(seconds to send, echo milliseconds or None, what the watch saw)."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    port = free_port()
    proc, mount = start(work, port)
    try:
        wait_port(port)
        if mount is not None:
            deadline = time.monotonic() + 60
            while not (mount / "patients").is_dir() and time.monotonic() < deadline:
                time.sleep(0.05)
        echo = echo_ms(port, aet, echoes) if echoes else None
        with Watch(proc.pid, mount if reader else None) as watch:
            seconds = send(files, port, aet, associations)
        return seconds, echo, watch
    finally:
        stop_process(proc)


def dicomfs(work: Path, port: int) -> tuple[subprocess.Popen[bytes], Path | None]:
    mount = work / "mnt"
    proc = subprocess.Popen([sys.executable, "-m", "dicomfs", "serve", "--data-dir", str(work / "data"), "--create",
                             "--mount", str(mount), "--bind", "127.0.0.1", "--port", str(port),
                             "--log-level", "WARNING"])
    return proc, mount


def storescp(work: Path, port: int) -> tuple[subprocess.Popen[bytes], Path | None]:
    # --fork: one process per association, as the parallel case needs
    return subprocess.Popen(["/usr/bin/storescp", "--fork", "-aet", "STORESCP", "-od", str(work), str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), None


def pynetdicom_null(work: Path, port: int) -> tuple[subprocess.Popen[bytes], Path | None]:
    return subprocess.Popen([sys.executable, "-m", "bench.null_scp", str(port)],
                            cwd=Path(__file__).resolve().parent.parent), None


def orthanc(work: Path, port: int) -> tuple[subprocess.Popen[bytes], Path | None]:
    return start_orthanc(work, port), None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--echoes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="dicomfs-ingest-") as tmp:
        scratch = Path(tmp)
        files = sorted(generate(scratch / "src", instances=args.instances))
        for f in files:
            f.read_bytes()  # warm: measure the receivers, not the sender's disk
        receivers = [("dicomfs", dicomfs, "DICOMFS"), ("storescp", storescp, "STORESCP"),
                     ("orthanc", orthanc, "ORTHANC"), ("pynetdicom", pynetdicom_null, "NULLSCP")]
        rates: dict[tuple[str, int], float] = {}
        echoes: dict[str, float] = {}
        watches: dict[int, Watch] = {}
        for associations in ASSOCIATIONS:
            for name, start, aet in receivers:
                seconds, echo, watch = run_receiver(start, scratch, files, aet, associations,
                                                    args.echoes if associations == 1 else 0)
                rates[name, associations] = len(files) / seconds
                if echo is not None:
                    echoes[name] = echo
                if name == "dicomfs":
                    watches[associations] = watch
                print(f"  {name}, {associations} association(s): {len(files)} in {seconds:.1f} s", file=sys.stderr)
        seconds, _, four = run_receiver(dicomfs, scratch, files, "DICOMFS", 4, 0, reader=True)
        print(f"  dicomfs, 4 associations and a reader on the mount: {len(files)} in {seconds:.1f} s "
              f"({len(files) / seconds:.0f}/s)", file=sys.stderr)
        for associations in ASSOCIATIONS:
            ours = rates["dicomfs", associations]
            print(f"BENCH ingest.{associations}assoc: {ours:.0f} instances/s (ratio "
                  f"{ours / rates['storescp', associations]:.2f} vs storescp {rates['storescp', associations]:.0f}/s; "
                  f"ratio {ours / rates['orthanc', associations]:.2f} vs Orthanc {rates['orthanc', associations]:.0f}/s"
                  f"; goals: >= Orthanc, and >= 0.5 of storescp on 4)")
            floor = rates["pynetdicom", associations]
            print(f"BENCH ingest.{associations}assoc.pynetdicom_ceiling: {floor:.0f} instances/s for pynetdicom "
                  f"receiving and discarding (ratio {ours / floor:.2f} of it; "
                  f"{floor / rates['storescp', associations]:.2f} of storescp)")
        print(f"BENCH ingest.8vs4: {rates['dicomfs', 8] / rates['dicomfs', 4]:.2f} (8 associations against 4; "
              "goal >= 1)")
        peak = max(w.peak_rss for w in [*watches.values(), four])
        print(f"BENCH ingest.memory: {peak:.0f} MiB peak resident, daemon and parser processes (goal < 300)")
        print(f"BENCH ingest.reader: {len(four.errors)} errors, longest wait {four.longest_wait:.2f} s over "
              f"{four.files_read} files read through the mount during a 4-association run ({len(files) / seconds:.0f} "
              "instances/s with it; goal: 0, < 1 s)")
        for error in four.errors[:5]:
            print(f"  reader error: {error}", file=sys.stderr)
        print(f"BENCH echo: {echoes['dicomfs']:.1f} ms (ratio {echoes['dicomfs'] / echoes['storescp']:.2f} vs "
              f"storescp {echoes['storescp']:.1f} ms; Orthanc {echoes['orthanc']:.1f} ms, pynetdicom "
              f"{echoes['pynetdicom']:.1f} ms; goal <= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
