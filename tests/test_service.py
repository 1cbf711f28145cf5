"""The systemd unit: it verifies, and the daemon speaks the sd_notify protocol it declares."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import DICOMFS, cli_env, free_port, wait_for

UNIT = Path(__file__).parent.parent / "systemd" / "dicomfs.service"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # The shipped ExecStart names /opt/dicomfs; point it at this installation to verify.
    text = UNIT.read_text().replace("/opt/dicomfs/.venv/bin/dicomfs", str(Path(sys.executable).parent / "dicomfs"))
    unit = tmp_path / "dicomfs.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "dicomfs.service" in line]
    assert result.returncode == 0 and not problems, result.stderr
    assert "Type=notify" in text


def test_daemon_notifies_ready_and_stopping(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        mount = tmp_path / "mnt"
        (tmp_path / "data").mkdir()
        proc = subprocess.Popen(
            [*DICOMFS, "serve", "--data-dir", str(tmp_path / "data"), "--mount", str(mount),
             "--bind", "127.0.0.1", "--port", str(free_port())],
            env={**cli_env(), "NOTIFY_SOCKET": address}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            assert sock.recv(256) == b"READY=1"
            assert os.path.ismount(mount)  # ready means mounted
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(256) == b"STOPPING=1"
            assert proc.wait(timeout=30) == 0
            wait_for(lambda: not os.path.ismount(mount), 5, "the unmount")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if os.path.ismount(mount):
                subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False)
