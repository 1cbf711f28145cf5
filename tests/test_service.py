"""The systemd unit: it verifies, and the daemon speaks the sd_notify protocol it declares."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import dicomgen
from conftest import DICOMFS, cli_env, free_port, run_cli, wait_for

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


# ------------------------------------------------------------------ the shipped unit under a real systemd

BOOT = r"""
set -e
mount -t tmpfs tmpfs /run
mount --rbind /sys /sys && mount -o remount,ro,bind /sys
mkdir -p /run/systemd/system/dicomfs.service.d
cp {unit} /run/systemd/system/dicomfs.service
cp {dropin} /run/systemd/system/dicomfs.service.d/test.conf
printf '[Unit]\nDefaultDependencies=no\nWants=dicomfs.service\n' > /run/systemd/system/dicomfs-test.target
for u in {masked}; do ln -s /dev/null /run/systemd/system/$u; done
export container=dicomfs-test
exec /lib/systemd/systemd --system --unit=dicomfs-test.target --log-target=console
"""
# Nothing but the unit under test may run: no journal (it would write to /var/log), no udev,
# no tmpfiles, no services of this machine.
MASKED = ("systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket "
          "systemd-journald-audit.socket systemd-tmpfiles-setup.service systemd-tmpfiles-clean.timer "
          "systemd-udevd.service systemd-udev-trigger.service systemd-timesyncd.service systemd-pstore.service "
          "getty.target console-getty.service orthanc.service postgresql.service")
CGROUPS = Path("/sys/fs/cgroup")


class Systemd:
    """A systemd as PID 1 of private pid, mount and network namespaces, managing only dicomfs.service."""

    def __init__(self, work: Path, unit: Path, dropin: Path) -> None:
        self.cgroup = f"dicomfs-test-{os.getpid()}"
        for hierarchy in ("systemd", "unified"):  # its cgroups go below ours, not beside the machine's
            (CGROUPS / hierarchy / self.cgroup).mkdir()
        script = work / "boot.sh"
        script.write_text(BOOT.format(unit=unit, dropin=dropin, masked=MASKED))
        move = " && ".join(f"echo $$ > {CGROUPS / h / self.cgroup / 'cgroup.procs'}" for h in ("systemd", "unified"))
        self.log = open(work / "systemd.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["sh", "-c", f"{move} && exec unshare --fork --pid --mount --net --mount-proc --propagation private "
                         f"sh {script}"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._child() is not None, 10, "systemd to start")

    def _child(self) -> int | None:
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def run(self, *args: str | os.PathLike[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        """A command inside the namespaces (systemctl, ls of the mount)."""
        pid = self._child()
        return subprocess.run(["nsenter", "-t", str(pid), "-p", "-m", "-n", *map(str, args)],
                              capture_output=True, text=True, timeout=30, check=check)

    def main_pid(self) -> int:
        out = self.run("systemctl", "show", "-p", "MainPID", "--value", "dicomfs.service").stdout.strip()
        return int(out or 0)

    def lists(self, folder: Path) -> list[str]:
        result = self.run("ls", "-1", folder)
        return result.stdout.splitlines() if result.returncode == 0 else []

    def stop(self) -> None:
        if self._child() is not None:
            self.run("systemctl", "stop", "dicomfs.service")
            os.kill(self._child() or 0, signal.SIGKILL)  # the namespace's PID 1: everything in it goes
        self.proc.wait(timeout=30)
        self.log.close()
        for hierarchy in CGROUPS.iterdir():
            root = hierarchy / self.cgroup
            if root.is_dir():
                wait_for(lambda root=root: not (root / "cgroup.procs").read_text().strip(), 10, "an empty cgroup")
                for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    folder.rmdir()
                root.rmdir()


def test_systemd_brings_the_mount_back_after_sigkill(tmp_path: Path) -> None:
    data, mount = tmp_path / "data", tmp_path / "mnt"
    data.mkdir(mode=0o700)
    run_cli("import", "--data-dir", data, *dicomgen.series(tmp_path / "in", 3))
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{data}"\n[mount]\npath = "{mount}"\n[dicom]\nbind = "127.0.0.1"\n'
                      f"port = {free_port()}\n")
    unit = tmp_path / "dicomfs.service"
    installed = str(Path(sys.executable).parent / "dicomfs")
    unit.write_text(UNIT.read_text().replace("/opt/dicomfs/.venv/bin/dicomfs", installed)
                    .replace("/etc/dicomfs/config.toml", str(config)))
    dropin = tmp_path / "test.conf"  # only what this test needs: no boot dependencies, a log file to read
    dropin.write_text(f"[Unit]\nDefaultDependencies=no\n[Service]\nStandardOutput=append:{tmp_path / 'daemon.log'}\n"
                      f"StandardError=append:{tmp_path / 'daemon.log'}\n")
    systemd = Systemd(tmp_path, unit, dropin)
    try:
        wait_for(lambda: "patients" in systemd.lists(mount), 30, "the service's mount")
        assert (data / "daemon.pid").exists() and (data / "index.sqlite-wal").exists()
        wide = [p for p in [data, *data.rglob("*")] if stat.S_IMODE(p.stat().st_mode) & 0o077]
        assert wide == []  # everything the service made is private to its user
        first = systemd.main_pid()
        assert systemd.run("systemctl", "kill", "-s", "SIGKILL", "dicomfs.service").returncode == 0
        wait_for(lambda: systemd.main_pid() not in (0, first) and "patients" in systemd.lists(mount), 30,
                 "systemd to restart the daemon and the mount to answer")
        assert "DOE^JOHN [12345]" in systemd.lists(mount / "patients")
        shown = systemd.run("systemctl", "show", "-p", "NRestarts", "--value", "dicomfs.service").stdout
        assert int(shown) == 1
        log = (tmp_path / "daemon.log").read_text()
        assert "is a stale mount left by a killed daemon; unmounting it" in log
        # A mistake in the configuration (exit status 2) is not restarted in a loop.
        config.write_text('log_level = "VERBOSE"\n' + config.read_text())
        systemd.run("systemctl", "restart", "dicomfs.service")
        wait_for(lambda: systemd.run("systemctl", "is-active", "dicomfs.service").stdout.strip() == "failed", 20,
                 "the service to fail")
        assert "log_level 'VERBOSE' is not one of DEBUG, INFO, WARNING, ERROR" in (tmp_path / "daemon.log").read_text()
        time.sleep(3)  # a restart that must NOT happen: wait longer than RestartSec=2, then look
        assert systemd.run("systemctl", "is-active", "dicomfs.service").stdout.strip() == "failed"
        assert int(systemd.run("systemctl", "show", "-p", "NRestarts", "--value", "dicomfs.service").stdout) == 0
    finally:
        systemd.stop()
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
