"""The README's first command, as a new user runs it: a node that other hosts cannot use.

The daemon runs in a network namespace of its own (so its default port 11112 is free, and
it has a second host across a veth pair); only its network is separate: the mount is seen
by this process. Local tools reach it on the namespace's loopback.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import MOUNT_TIMEOUT, cli_env, dcmtk, stop_daemon, wait_for

DICOMFS_COMMAND = Path(sys.executable).parent / "dicomfs"  # .venv/bin/dicomfs, as the README runs it


@dataclass
class Namespace:
    name: str
    inside: str  # the namespace's address on the veth pair (where the node can listen)
    outside: str  # this host's address on it: the "second host"

    def run(self, tool: str, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        """A DCMTK tool inside the namespace (a local tool, for the node)."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.name}", f"/usr/bin/{tool}", *map(str, args)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"})


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    name, outer, inner = f"dfs{tag}", f"dfs{tag}o", f"dfs{tag}i"
    subnet = f"10.{random.randrange(100, 250)}.{random.randrange(256)}"
    ns = Namespace(name, inside=f"{subnet}.2", outside=f"{subnet}.1")
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{ns.outside}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{ns.inside}/30", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@dataclass
class FirstRun:
    """``dicomfs serve`` with the embedded defaults: a fresh home, no configuration."""

    ns: Namespace
    home: Path
    mount: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**cli_env(), "HOME": str(self.home), "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns.name}", str(DICOMFS_COMMAND), "serve", "--mount",
                 str(self.mount)], stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: self._live() or self.proc.poll() is not None, MOUNT_TIMEOUT, "the daemon")
        assert self.proc.poll() is None, self.log()

    def _live(self) -> bool:
        try:
            return os.path.ismount(self.mount) and "patients" in os.listdir(self.mount)
        except OSError:
            return False

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        return stop_daemon(proc, self.mount)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def first_run(namespace: Namespace, tmp_path: Path) -> Iterator[FirstRun]:
    home = tmp_path / "home"
    home.mkdir()
    run = FirstRun(namespace, home, tmp_path / "mnt", tmp_path / "daemon.log")
    try:
        yield run
    finally:
        status = run.stop()
    assert status in (None, 0), run.log()
    bad = [line for line in run.log().splitlines() if "ERROR" in line or "Traceback" in line]
    assert not bad, run.log()


def _found(result: subprocess.CompletedProcess[str], text: str) -> bool:
    return result.returncode == 0 and text in result.stdout + result.stderr


def test_first_command_serves_local_tools_and_no_other_host(first_run: FirstRun, tmp_path: Path) -> None:
    ns = first_run.ns
    instance = dicomgen.write(tmp_path / "a.dcm", dicomgen.make_dataset(PatientID="FIRST"))
    first_run.start()
    assert "listening on 127.0.0.1:11112" in first_run.log()

    # Local tools may use every service.
    assert ns.run("echoscu", "127.0.0.1", "11112").returncode == 0
    stored = ns.run("storescu", "-aec", "DICOMFS", "127.0.0.1", "11112", instance)
    assert stored.returncode == 0, stored.stderr
    found = ns.run("findscu", "-S", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=FIRST",
                   "-k", "StudyInstanceUID", "127.0.0.1", "11112")
    assert _found(found, "FIRST"), found.stderr
    got = tmp_path / "got"
    got.mkdir()
    study = pydicom.dcmread(instance).StudyInstanceUID
    fetched = ns.run("getscu", "-S", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                     "-k", f"StudyInstanceUID={study}", "-od", got, "127.0.0.1", "11112")
    assert fetched.returncode == 0 and len(list(got.iterdir())) == 1, fetched.stderr

    # A second host cannot even connect.
    stranger = dcmtk("echoscu", "-to", "5", "-aec", "DICOMFS", ns.inside, "11112")
    assert stranger.returncode != 0
    assert "refused" in (stranger.stdout + stranger.stderr).lower()


def test_configured_peers_get_in_and_nobody_else(first_run: FirstRun, tmp_path: Path) -> None:
    ns = first_run.ns
    config = first_run.home / ".config" / "dicomfs" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[dicom]\nbind = "0.0.0.0"\n\n[dicom.allow]\nstore = ["CT01@{ns.outside}"]\n'
                      f'query = ["WS1@{ns.outside}"]\nretrieve = ["WS1@{ns.outside}"]\n')
    instance = dicomgen.write(tmp_path / "a.dcm", dicomgen.make_dataset(PatientID="PEERS"))
    first_run.start()
    assert f"store: CT01@{ns.outside}; query: WS1@{ns.outside}; retrieve: WS1@{ns.outside}" in first_run.log()

    stored = dcmtk("storescu", "-aet", "CT01", "-aec", "DICOMFS", ns.inside, "11112", instance)
    assert stored.returncode == 0, stored.stderr
    assert dcmtk("echoscu", "-aet", "WS1", "-aec", "DICOMFS", ns.inside, "11112").returncode == 0
    found = dcmtk("findscu", "-S", "-aet", "WS1", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "PatientID=PEERS", "-k", "StudyInstanceUID", ns.inside, "11112")
    assert _found(found, "PEERS"), found.stderr

    # An undeclared AE from the declared host, and the declared AE from an undeclared host.
    for result, who in ((dcmtk("echoscu", "-aet", "WS2", "-aec", "DICOMFS", ns.inside, "11112"),
                         f"WS2@{ns.outside}"),
                        (ns.run("echoscu", "-aet", "WS1", "-aec", "DICOMFS", "127.0.0.1", "11112"), "WS1@127.0.0.1")):
        out = result.stdout + result.stderr
        assert result.returncode != 0 and "Association Rejected" in out, out
        assert f"rejected an association from {who}: in no allow-list" in first_run.log()
    # CT01 may store, not query: the query models are not offered to it.
    query = dcmtk("findscu", "-S", "-aet", "CT01", "-aec", "DICOMFS", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "PatientID", ns.inside, "11112")
    assert query.returncode != 0 and "No Acceptable Presentation Contexts" in query.stdout + query.stderr
