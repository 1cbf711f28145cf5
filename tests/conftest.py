"""Fixtures: real archives, real daemons on real FUSE mounts, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from orthanc import Orthanc

from dicomfs.archive import Archive, open_archive

DICOMFS = [sys.executable, "-m", "dicomfs"]
MOUNT_TIMEOUT = 20.0


def cli_env() -> dict[str, str]:
    """The environment for dicomfs processes: no user configuration leaks into tests."""
    env = {k: v for k, v in os.environ.items() if k != "DICOMFS_CONFIG"}
    env["XDG_CONFIG_HOME"] = "/nonexistent/dicomfs-tests"
    return env


def run_cli(
    *args: str | os.PathLike[str], check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``dicomfs ARGS`` as a separate process, as a user would."""
    proc = subprocess.run(
        [*DICOMFS, *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env=cli_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dicomfs {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel picks it; no fixed test ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk(tool: str, *args: str | os.PathLike[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool by absolute path (pynetdicom puts same-named apps on PATH)."""
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK stalls ~45 ms per object without it
    return subprocess.run([f"/usr/bin/{tool}", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_daemon(proc: subprocess.Popen[bytes] | None, mount: Path) -> int | None:
    """SIGTERM, then wait; returns the exit status. Falls back to kill + lazy unmount."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if os.path.ismount(mount):
        subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False)
    return None if proc is None else proc.returncode


@dataclass
class Daemon:
    """A ``dicomfs serve`` process with its mount; ``stop()`` checks its log for surprises."""

    data_dir: Path
    mount: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    expected_errors: list[str] = field(default_factory=list)
    port: int = 0  # the DICOM node's port, chosen at start

    def start(self, *extra: str) -> Daemon:
        with contextlib.suppress(OSError):  # a stale mount left by a killed daemon: the daemon must cope
            self.mount.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*DICOMFS, "serve", "--data-dir", str(self.data_dir), "--mount", str(self.mount),
                 "--bind", "127.0.0.1", "--port", str(self.port), *extra],
                stdout=log, stderr=subprocess.STDOUT, env=cli_env(),
            )
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Without a mount, ready is when the daemon says so: its port accepts connections
        # (into the backlog) a moment before the node is set up and logs who may use it.
        ready = (lambda: self._listening() and "serving without a mount" in self.log()[start:]) \
            if "--no-mount" in extra else self._live
        wait_for(lambda: ready() or self.proc.poll() is not None, MOUNT_TIMEOUT, "the daemon")
        if self.proc.poll() is not None:
            raise AssertionError(f"dicomfs serve exited {self.proc.returncode}:\n{self.log()}")
        return self

    def _live(self) -> bool:
        """Mounted and answering (a stale mount left by a killed daemon is a mount point too)."""
        try:
            return os.path.ismount(self.mount) and "patients" in os.listdir(self.mount)
        except OSError:
            return False

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM, then wait; returns the exit status. Falls back to kill + lazy unmount."""
        proc, self.proc = self.proc, None
        return stop_daemon(proc, self.mount)

    def unexpected_errors(self) -> list[str]:
        bad = []
        for line in self.log().splitlines():
            if ("ERROR" in line or "Traceback" in line or "CRITICAL" in line) and not any(
                e in line for e in self.expected_errors
            ):
                bad.append(line)
        return bad


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty archive folder, made as ``dicomfs init`` would (a missing --data-dir is an error)."""
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def daemon(tmp_path: Path, data_dir: Path) -> Iterator[Daemon]:
    """A daemon (not yet started: call ``daemon.start()``) whose log must stay clean."""
    d = Daemon(data_dir=data_dir, mount=tmp_path / "mnt", log_path=tmp_path / "daemon.log")
    try:
        yield d
    finally:
        status = d.stop()
    assert status in (None, 0), f"daemon exited {status}:\n{d.log()}"
    assert not d.unexpected_errors(), "daemon logged errors:\n" + "\n".join(d.unexpected_errors())


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder that every user may enter, with a control file that every user may read.

    pytest's own temporary folders are private to root: a test of what another user can
    read must start from a folder that user can reach, or it passes whatever dicomfs does.
    """
    base = Path(tempfile.mkdtemp(prefix="dicomfs-safety-", dir="/tmp"))
    os.chmod(base, 0o755)
    control = base / "control.txt"
    control.write_text("public")
    os.chmod(control, 0o644)
    assert reads_as_nobody(control), "the test cannot tell a private file from a public one"
    try:
        yield base
    finally:
        shutil.rmtree(base)


def reads_as_nobody(path: Path, regid: str = "nogroup") -> bool:
    cmd = ["setpriv", "--reuid=nobody", f"--regid={regid}", "--clear-groups", "cat", str(path)]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0



@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    """pydicom's bundled test files (a varied, real-world-like corpus)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).parent


def copy_testdata(names: list[str], dest: Path) -> list[Path]:
    from pydicom.data import get_testdata_file

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        src = Path(get_testdata_file(name))
        out.append(Path(shutil.copy(src, dest / src.name)))
    return out


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """An Orthanc PACS, not yet started: set ``modalities`` or ``options`` if needed, then ``start()``.

    Stopped at teardown, where it must exit cleanly.
    """
    server = Orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        status = server.stop()
    assert status in (None, 0), f"Orthanc exited {status}:\n{server.log()}"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """A new, empty archive in process (its index writer, store and remote rows)."""
    a = open_archive(tmp_path / "data")
    yield a
    a.close()
