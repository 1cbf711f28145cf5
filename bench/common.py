"""What every benchmark needs: a scratch folder, a mounted daemon, cache control, timing, output.

Every helper that starts something is a context manager that stops it on the way out,
exceptions included: the daemon (SIGTERM, then SIGKILL, then ``fusermount3 -u -z``), the
profiler, the scratch folder.

Result lines have one shape so that ``run_all.sh`` (or a person) can grep them::

    BENCH read.warm: 1234 MiB/s (ratio 0.81 vs native 1523 MiB/s)
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Daemon",
    "Profiler",
    "Timing",
    "add_common_options",
    "drop_caches",
    "import_archive",
    "machine_summary",
    "mount",
    "mount_reference",
    "report",
    "scratch",
    "summarize_profile",
    "timed",
    "warm",
]

DEFAULT_SCRATCH = Path("/var/tmp")
MOUNT_TIMEOUT = 60.0
# The command to run; e.g. DICOMFS_BENCH_CMD="python -m dicomfs" with PYTHONPATH set to
# benchmark another checkout than the installed one.
DICOMFS = shlex.split(os.environ.get("DICOMFS_BENCH_CMD", "dicomfs"))


# ----------------------------------------------------------------------------- output


def report(name: str, figure: str, *, ratio: float | None = None, baseline: str = "") -> str:
    """Print and return ``BENCH <name>: <figure> (ratio X.XX vs <baseline>)``."""
    line = f"BENCH {name}: {figure}"
    if ratio is not None:
        line += f" (ratio {ratio:.2f} vs {baseline})"
    elif baseline:
        line += f" ({baseline})"
    print(line, flush=True)
    return line


def info(message: str) -> None:
    """Progress and context, kept apart from the BENCH lines."""
    print(f"  {message}", file=sys.stderr, flush=True)


def machine_summary(*paths: Path) -> str:
    """CPU, memory, kernel, Python and the file systems under ``paths``: the run's conditions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    parts = [
        f"{os.cpu_count()} x {cpu}", f"{mem_gib:.0f} GiB RAM", f"kernel {platform.release()}",
        f"Python {platform.python_version()}", f"load {load}",
    ]
    for path in paths:
        parts.append(f"{path}: {_fs_type(path)}")
    with contextlib.suppress(Exception):
        import pyfuse3

        parts.append(f"pyfuse3 {pyfuse3.__version__}")
    return ", ".join(parts)


def _fs_type(path: Path) -> str:
    path = path.resolve()
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            _, where, fstype, *_ = line.split()
            if str(path).startswith(where) and len(where) > len(best):
                best, kind = where, fstype
    return kind


def add_common_options(parser: object) -> None:
    """Options every bench accepts: scratch location, repetitions, keep, profile."""
    add = parser.add_argument  # type: ignore[attr-defined]
    add("--scratch", type=Path, default=DEFAULT_SCRATCH, metavar="DIR",
        help=f"where the temporary archive goes (default {DEFAULT_SCRATCH})")
    add("--repeat", type=int, default=5, metavar="N", help="repetitions per measurement (median)")
    add("--keep", action="store_true", help="keep the scratch folder (for inspection)")
    add("--profile", type=Path, metavar="DIR",
        help="record the daemon with py-spy during measurements; collapsed stacks go to DIR")


# ----------------------------------------------------------------------------- timing


@dataclass(slots=True)
class Timing:
    """Durations of repeated runs, in seconds."""

    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def first(self) -> float:
        return self.runs[0]

    def spread(self) -> str:
        """'min … max' in ms, to judge noise."""
        return f"{min(self.runs) * 1e3:.1f}…{max(self.runs) * 1e3:.1f} ms"


def timed(fn: Callable[[], object], repeat: int = 5, *, before: Callable[[], object] | None = None,
          ) -> Timing:
    """Run ``fn`` ``repeat`` times; ``before`` runs untimed before each (e.g. drop_caches)."""
    timing = Timing()
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        fn()
        timing.runs.append(time.perf_counter() - started)
    return timing


def run(cmd: Sequence[str] | str, *, shell: bool = False, capture: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, failing loudly with its error output."""
    result = subprocess.run(
        cmd, shell=shell, text=True, env=env,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{cmd!r} exited with {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


# ----------------------------------------------------------------------------- caches


_drop_warned = False


def drop_caches() -> bool:
    """Write back, drop the page cache, dentries and inodes (root only); False if refused."""
    global _drop_warned
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        if not _drop_warned:
            info(f"cannot drop caches ({exc.strerror}): cold figures are not cold")
            _drop_warned = True
        return False
    return True


def warm(paths: Sequence[Path | str]) -> int:
    """Read every file once (fills the page cache); returns the bytes read."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


# ----------------------------------------------------------------------------- scratch space


@contextlib.contextmanager
def scratch(parent: Path = DEFAULT_SCRATCH, *, keep: bool = False, need_gib: float = 0.0,
            ) -> Iterator[Path]:
    """A fresh folder under ``parent``, removed afterwards unless ``keep``."""
    parent.mkdir(parents=True, exist_ok=True)
    free_gib = shutil.disk_usage(parent).free / 2**30
    if free_gib < need_gib:
        raise RuntimeError(
            f"{parent} has {free_gib:.1f} GiB free; this bench needs ~{need_gib:.1f} GiB")
    path = Path(tempfile.mkdtemp(prefix="dicomfs-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            info(f"kept {path}")
        else:
            _unmount_below(path)
            shutil.rmtree(path, ignore_errors=True)


def _unmount_below(path: Path) -> None:
    """Never rmtree through a live FUSE mount: release any mount left under ``path``."""
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    for target in targets:
        if target.startswith(str(path) + "/"):
            subprocess.run(["fusermount3", "-u", "-z", target], check=False,
                           stderr=subprocess.DEVNULL)


def _isolated_env() -> dict[str, str]:
    """Environment for dicomfs commands: no user configuration file leaks into a run."""
    env = dict(os.environ)
    env.pop("DICOMFS_CONFIG", None)
    env["XDG_CONFIG_HOME"] = str(Path(tempfile.gettempdir()) / "dicomfs-bench-no-config")
    env["TCP_NODELAY"] = "1"
    return env


# ----------------------------------------------------------------------------- dicomfs


def import_archive(paths: Sequence[Path], data_dir: Path, *, workers: int | None = None) -> float:
    """``dicomfs import`` of ``paths`` into ``data_dir``; returns the wall time in seconds."""
    cmd = [*DICOMFS, "--log-level", "WARNING", "import", *map(str, paths),
           "--data-dir", str(data_dir), "--create", "--no-progress"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    result = run(cmd, capture=True, env=_isolated_env())
    elapsed = time.perf_counter() - started
    info(f"dicomfs import: {result.stdout.strip()} in {elapsed:.1f} s")
    return elapsed


@dataclass(slots=True)
class Daemon:
    """A running ``dicomfs serve``; ``mount_point`` is mounted while the context is open."""

    process: subprocess.Popen[bytes]
    mount_point: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _bdi(self) -> Path | None:
        with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == str(self.mount_point):
                    return Path(f"/sys/class/bdi/{fields[2]}/read_ahead_kb")
        return None

    def read_ahead_kb(self) -> str:
        """The kernel read-ahead of this mount, as the daemon left it."""
        path = self._bdi()
        with contextlib.suppress(OSError):
            return path.read_text().strip() if path else "?"
        return "?"

    def set_read_ahead_kb(self, kb: int) -> bool:
        """Set the mount's kernel read-ahead (root only); False when refused."""
        path = self._bdi()
        try:
            if path is None:
                return False
            path.write_text(str(kb))
        except OSError:
            return False
        return self.read_ahead_kb() == str(kb)


@contextlib.contextmanager
def mount(data_dir: Path, mount_point: Path, *, log_level: str = "WARNING",
          extra: Sequence[str] = ()) -> Iterator[Daemon]:
    """Start ``dicomfs serve`` on ``mount_point``, wait until it is mounted, stop it afterwards."""
    cmd = [*DICOMFS, "--log-level", log_level, "serve", "--data-dir", str(data_dir), "--create",
           "--mount", str(mount_point), *extra]
    with _mounted(cmd, mount_point, data_dir.parent / f"serve-{mount_point.name}.log") as daemon:
        yield daemon


@contextlib.contextmanager
def mount_reference(source: Path, mount_point: Path) -> Iterator[Daemon]:
    """Mount ``source`` with the minimal pyfuse3 passthrough (``bench.minimal_fs``)."""
    cmd = [sys.executable, "-m", "bench.minimal_fs", str(source), str(mount_point)]
    log_path = mount_point.parent / f"minimal-{mount_point.name}.log"
    with _mounted(cmd, mount_point, log_path, cwd=Path(__file__).resolve().parent.parent) as fs:
        yield fs


@contextlib.contextmanager
def _mounted(cmd: list[str], mount_point: Path, log_path: Path, cwd: Path | None = None,
             ) -> Iterator[Daemon]:
    mount_point.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=_isolated_env(), cwd=cwd,
        )
    daemon = Daemon(process, mount_point, log_path)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mount_point):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{cmd[0]} exited with {process.returncode}:\n{daemon.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mount_point} not mounted after {MOUNT_TIMEOUT:.0f} s")
            time.sleep(0.02)
        yield daemon
    finally:
        _stop(daemon)
    warnings = [line for line in daemon.log_tail(200).splitlines()
                if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    if warnings:
        info(f"log {log_path} has {len(warnings)} warning/error lines, e.g. {warnings[0]}")


def _stop(daemon: Daemon) -> None:
    process = daemon.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            info(f"dicomfs serve (pid {process.pid}) ignored SIGTERM for 30 s; killing it")
            process.kill()
            process.wait(timeout=10)
    if os.path.ismount(daemon.mount_point) or _is_dead_mount(daemon.mount_point):
        subprocess.run(["fusermount3", "-u", "-z", str(daemon.mount_point)], check=False)


def _is_dead_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return True
    return False


# ----------------------------------------------------------------------------- Orthanc


def start_orthanc(work: Path, dicom_port: int, aet: str = "ORTHANC",
                  modalities: dict[str, list[object]] | None = None) -> subprocess.Popen[bytes]:
    """Debian's Orthanc with its own configuration and storage under ``work`` (loopback only)."""
    import json

    work.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    (work / "orthanc.json").write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "DicomAet": aet, "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "DicomServerEnabled": True, "HttpServerEnabled": True, "StorageCompression": False, "Plugins": [],
        "DicomCheckCalledAet": False, "ConcurrentJobs": 2, "AuthenticationEnabled": False,
        "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True, "DicomModalities": modalities or {},
    }))
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK inside Orthanc stalls ~45 ms per object without it
    return subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ----------------------------------------------------------------------------- profiling


class Profiler:
    """``py-spy record`` on a process for the duration of a ``with`` block (no-op if disabled)."""

    def __init__(self, out_dir: Path | None, daemon: Daemon | None, name: str,
                 rate: int = 250) -> None:
        self.out_dir = out_dir
        self.daemon = daemon
        self.name = name
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None
        self.output: Path | None = None

    def __enter__(self) -> Profiler:
        if self.out_dir is None or self.daemon is None:
            return self
        if shutil.which("py-spy") is None:
            info("py-spy is not installed (pip install py-spy): no profile")
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.output = self.out_dir / f"{self.name}.collapsed"
        self.process = subprocess.Popen(
            ["py-spy", "record", "--pid", str(self.daemon.pid), "--format", "raw", "--rate",
             str(self.rate), "--threads", "--subprocesses", "--output", str(self.output), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach before the measurement starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.output is not None and self.output.exists():
            info(f"profile {self.output}:\n{summarize_profile(self.output)}")


def summarize_profile(path: Path, top: int = 15) -> str:
    """Top functions by own samples and by inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "    (no samples)"
    lines = [f"    {total} samples; own time:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("    inclusive:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    """Wait until something accepts connections on a loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")
