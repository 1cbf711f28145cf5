"""The DICOM port under abuse, end to end: junk connections, oversized PDUs, a real sender."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dicomgen
import pytest
from conftest import Daemon, dcmtk, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification

ADDRESS = "127.0.0.1"


def _hung_up(sock: socket.socket) -> bool:
    """The node closed the connection (a reset, when it left our bytes unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _store(daemon: Daemon, paths: list[Path]) -> float:
    start = time.monotonic()
    result = dcmtk("storescu", "-aet", "MODALITY", "-aec", "DICOMFS", ADDRESS, daemon.port, *paths)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    return elapsed


class Junk:
    """Threads that keep connections open against the node until ``stop``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.connections = 0
        self.errors: list[BaseException] = []

    def run(self, count: int, behaviour: Callable[[], None]) -> None:
        def loop() -> None:
            try:
                while not self.stop.is_set():
                    behaviour()
                    self.connections += 1
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

        for _ in range(count):
            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _connect(self) -> socket.socket:
        return socket.create_connection((ADDRESS, self.port), timeout=10)

    def idle(self) -> None:
        """Connect and say nothing until the node hangs up."""
        with contextlib.suppress(OSError), self._connect() as sock:
            sock.recv(1)

    def garbage(self) -> None:
        with contextlib.suppress(OSError), self._connect() as sock:
            sock.sendall(b"\x47" + os.urandom(4095))  # not a PDU type: "G", as in "GET / HTTP/1.1"
            sock.recv(1)
        self.stop.wait(0.02)

    def connect_and_close(self) -> None:
        with contextlib.suppress(OSError):
            self._connect().close()
        self.stop.wait(0.02)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)
        assert not self.errors, self.errors


def _oversized_request(port: int, sent: list[int]) -> None:
    """An A-ASSOCIATE-RQ declaring 4 GiB, followed by as much of it as the node will take."""
    chunk = bytes(1 << 16)
    with socket.create_connection((ADDRESS, port), timeout=10) as sock, contextlib.suppress(OSError):
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
        while sent[0] < 1 << 32:
            sock.sendall(chunk)
            sent[0] += len(chunk)


@contextlib.contextmanager
def _peak_rss(pid: int) -> Iterator[list[float]]:
    peak = [_rss_mib(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], _rss_mib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def test_junk_connections_and_a_4gib_pdu_do_not_starve_a_real_sender(daemon: Daemon, tmp_path: Path) -> None:
    normal = dicomgen.series(tmp_path / "a", 60, rows=128, columns=128, PatientID="NORMAL")
    under_attack = dicomgen.series(tmp_path / "b", 60, rows=128, columns=128, PatientID="ATTACKED")
    daemon.start("--no-mount")
    baseline = _store(daemon, normal)
    assert daemon.proc is not None
    pid = daemon.proc.pid

    junk = Junk(daemon.port)
    sent = [0]
    with _peak_rss(pid) as peak:
        oversized = threading.Thread(target=_oversized_request, args=(daemon.port, sent), daemon=True)
        oversized.start()
        junk.run(20, junk.idle)
        junk.run(15, junk.garbage)
        junk.run(15, junk.connect_and_close)
        wait_for(lambda: junk.connections >= 50, 10, "junk connections to come and go")
        try:
            attacked = _store(daemon, under_attack)
        finally:
            junk.join()
        oversized.join(timeout=10)
        assert not oversized.is_alive(), "the 4 GiB request is still being read"

    assert attacked <= baseline + 2.0, f"storescu took {attacked:.2f} s under attack, {baseline:.2f} s normally"
    assert peak[0] < 300, f"the daemon reached {peak[0]:.0f} MiB"
    assert sent[0] < 64 << 20, f"the node read {sent[0]} bytes of a PDU it should have refused"
    assert "aborted a connection from 127.0.0.1: an A-ASSOCIATE-RQ of 4294967295 bytes" in daemon.log()
    assert "its first PDU is not an A-ASSOCIATE-RQ (type 0x47)" in daemon.log()
    stored = list((daemon.data_dir / "store").rglob("*.dcm"))
    assert len(stored) == 120
    print(f"storescu of 60 instances: {baseline:.2f} s normally, {attacked:.2f} s under attack; "
          f"peak RSS {peak[0]:.0f} MiB; {junk.connections} junk connections")


def test_a_pdata_pdu_beyond_the_advertised_maximum_aborts_the_association(daemon: Daemon) -> None:
    daemon.start("--no-mount")
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(ADDRESS, daemon.port, ae_title="DICOMFS")
    try:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 1 << 20  # what the node advertises
        raw = assoc.dul.socket.socket
        with contextlib.suppress(OSError):
            raw.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
            for _ in range(64):
                raw.sendall(bytes(1 << 16))
        wait_for(lambda: assoc.is_aborted, 5, "the node to abort the association")
    finally:
        if assoc.is_established:
            assoc.abort()
    assert ("aborted the association from 127.0.0.1: a P-DATA PDU of 4294967295 bytes, more than the 1048576 "
            "we advertised") in daemon.log()
    echo = dcmtk("echoscu", "-aec", "DICOMFS", ADDRESS, daemon.port)  # the node itself is unharmed
    assert echo.returncode == 0, echo.stderr


@pytest.mark.parametrize(("sent", "logged"), [
    (b"\x01\x00", "no A-ASSOCIATE-RQ within 1 s"),  # half a PDU header, then nothing
    (struct.pack(">BBL", 0x01, 0, 200) + bytes(10), "no complete A-ASSOCIATE-RQ within 1 s"),  # half a request
], ids=["partial-header", "partial-request"])
def test_a_stalled_connection_is_dropped_after_the_association_timeout(daemon: Daemon, tmp_path: Path, sent: bytes,
                                                                       logged: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nassociation_timeout = 1.0\n")
    daemon.start("--no-mount", "--config", str(config))
    with socket.create_connection((ADDRESS, daemon.port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(sent)
        assert _hung_up(sock)
        waited = time.monotonic() - start
    assert 0.8 <= waited <= 3.0, waited
    wait_for(lambda: logged in daemon.log(), 2, "the log line")


def test_pending_connections_beyond_max_pending_drop_the_oldest(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nmax_pending = 4\nassociation_timeout = 30.0\n")
    daemon.start("--no-mount", "--config", str(config))
    idle = [socket.create_connection((ADDRESS, daemon.port), timeout=10) for _ in range(10)]
    try:
        for sock in idle[:6]:  # the six oldest made room for the four newest, then for echoscu
            assert _hung_up(sock)
        echo = dcmtk("echoscu", "-aec", "DICOMFS", ADDRESS, daemon.port)
        assert echo.returncode == 0, echo.stderr
    finally:
        for sock in idle:
            sock.close()
    assert "others are waiting to associate (max_pending)" in daemon.log()


def test_only_established_associations_count_against_max_associations(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nmax_associations = 2\n")
    daemon.start("--no-mount", "--config", str(config))
    idle = [socket.create_connection((ADDRESS, daemon.port), timeout=10) for _ in range(8)]
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    held = [ae.associate(ADDRESS, daemon.port, ae_title="DICOMFS") for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        third = dcmtk("echoscu", "-v", "-aec", "DICOMFS", ADDRESS, daemon.port)
        out = third.stdout + third.stderr
        assert third.returncode != 0 and "Local Limit Exceeded" in out, out
        held.pop().release()
        echo = dcmtk("echoscu", "-aec", "DICOMFS", ADDRESS, daemon.port)
        assert echo.returncode == 0, echo.stderr  # eight idle connections hold no slot
    finally:
        for assoc in held:
            assoc.release()
        for sock in idle:
            sock.close()
    assert "all 2 associations are in use (max_associations)" in daemon.log()


def test_an_object_beyond_max_object_mb_aborts_its_association(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nmax_object_mb = 0.5\n")
    small = dicomgen.write(tmp_path / "small.dcm", dicomgen.make_dataset(rows=256, columns=256))  # 128 KiB
    large = dicomgen.write(tmp_path / "large.dcm", dicomgen.make_dataset(rows=1024, columns=512))  # 1 MiB
    daemon.start("--no-mount", "--config", str(config))
    refused = dcmtk("storescu", "-aec", "DICOMFS", ADDRESS, daemon.port, large)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "a DIMSE message of more than 524288 bytes (max_object_mb)" in daemon.log()
    stored = dcmtk("storescu", "-aec", "DICOMFS", ADDRESS, daemon.port, small)
    assert stored.returncode == 0, stored.stderr
    assert len(list((daemon.data_dir / "store").rglob("*.dcm"))) == 1


def test_a_pdu_that_stalls_midway_aborts_after_the_network_timeout(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nnetwork_timeout = 1.0\n")
    daemon.start("--no-mount", "--config", str(config))
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(ADDRESS, daemon.port, ae_title="DICOMFS")
    try:
        assert assoc.is_established
        assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 100) + bytes(10))  # 10 of 100 bytes
        wait_for(lambda: assoc.is_aborted, 5, "the node to abort the association")
    finally:
        if assoc.is_established:
            assoc.abort()
    assert "aborted the association from 127.0.0.1: a PDU stalled for 1 s (network_timeout)" in daemon.log()
