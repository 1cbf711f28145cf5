"""Crash recovery as documented: after SIGKILL the plain command serves again, and nothing is lost.

Each test kills a real daemon (idle, while storescu sends, while a reader streams from the
mount), restarts it with the same command, and checks that the mount answers and that the
index and the store agree.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import DICOMFS, Daemon, cli_env, run_cli, wait_for

PATIENT = "DOE^JOHN [12345]"
SERIES = Path("patients") / PATIENT / "2024-03-01 CT Thorax [ACC123]" / "003 CT Lung 1.0"


def kill_hard(daemon: Daemon) -> int:
    """SIGKILL: no handler runs, the mount is left dead, the pid file stays behind."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    daemon.proc = None
    daemon.expected_errors.append("stale mount")
    return pid


def assert_index_and_store_agree(data_dir: Path) -> list[str]:
    """Every indexed instance has its whole file; no temporary is left; SQLite finds no damage.

    Returns the indexed SOP Instance UIDs.
    """
    assert not list((data_dir / "store" / ".tmp").glob("*.part")), "temporaries left after start"
    with sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT sop_uid, file_path, file_size FROM instances WHERE file_path != ''").fetchall()
    for sop_uid, file_path, size in rows:
        path = data_dir / "store" / file_path
        assert path.is_file(), f"indexed {sop_uid} has no file"
        assert path.stat().st_size == size
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == sop_uid
    return [sop for sop, _, _ in rows]


def test_kill_when_idle_then_the_plain_command_serves_again(daemon: Daemon, data_dir: Path,
                                                            tmp_path: Path) -> None:
    sources = dicomgen.series(tmp_path / "in", 5)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    daemon.start()
    pid = kill_hard(daemon)
    with pytest.raises(OSError) as dead:
        os.listdir(daemon.mount)
    assert dead.value.errno == errno.ENOTCONN
    status = run_cli("status", "--data-dir", data_dir).stdout
    assert f"daemon: not running (stale pid file from pid {pid})" in status
    daemon.start()
    assert [p.read_bytes() for p in sorted((daemon.mount / SERIES).glob("*.dcm"))] == \
        [p.read_bytes() for p in sources]
    assert len(assert_index_and_store_agree(data_dir)) == 5
    assert f"the daemon before (pid {pid}) did not stop cleanly" in daemon.log()


def test_kill_mid_ingest_loses_nothing_a_sender_was_told_succeeded(daemon: Daemon, data_dir: Path,
                                                                   tmp_path: Path) -> None:
    sources = dicomgen.series(tmp_path / "in", 400, rows=64, columns=64)
    sop_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sources]
    daemon.start()
    sender = subprocess.Popen(
        ["/usr/bin/storescu", "-v", "-aec", "DICOMFS", "-aet", "MODALITY", "127.0.0.1", str(daemon.port), *sources],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TCP_NODELAY": "1"})
    assert sender.stdout is not None
    acknowledged = 0
    output = []
    for line in sender.stdout:
        output.append(line)
        if "Received Store Response (Success)" in line:
            acknowledged += 1
            if acknowledged == 40:
                kill_hard(daemon)
                break
    rest, _ = sender.communicate(timeout=60)
    acknowledged += rest.count("Received Store Response (Success)")
    assert sender.returncode != 0, "the sender should have lost its peer:\n" + "".join(output) + rest
    assert 40 <= acknowledged < len(sources)
    daemon.start()
    indexed = set(assert_index_and_store_agree(data_dir))
    assert set(sop_uids[:acknowledged]) <= indexed  # storescu sends in order; every Success is kept
    listed = {p.name for p in (daemon.mount / SERIES).glob("*.dcm")}
    assert len(listed) == len(indexed)
    for path in (data_dir / "store").rglob("*.dcm"):  # indexed or not, no file in the store is partial
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID in sop_uids and len(ds.PixelData) == 64 * 64 * 2, path
    # The sender sends the rest again, as a real modality would: all arrive, none twice.
    again = subprocess.run(["/usr/bin/storescu", "-aec", "DICOMFS", "-aet", "MODALITY", "127.0.0.1",
                            str(daemon.port), *sources], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TCP_NODELAY": "1"})
    assert again.returncode == 0, again.stderr
    assert sorted(assert_index_and_store_agree(data_dir)) == sorted(sop_uids)


def test_kill_during_four_association_ingest_loses_nothing_a_sender_was_told_succeeded(
        daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    """Four senders at once: answers are given per group commit, so a kill falls between
    the transactions of several senders; each sender's acknowledged instances are kept."""
    sources = dicomgen.series(tmp_path / "in", 400, rows=64, columns=64)
    groups = [sources[i::4] for i in range(4)]
    daemon.start()
    env = {**os.environ, "TCP_NODELAY": "1"}
    senders = [subprocess.Popen(["/usr/bin/storescu", "-v", "-aec", "DICOMFS", "-aet", f"MODALITY{i}", "127.0.0.1",
                                 str(daemon.port), *group], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env) for i, group in enumerate(groups)]
    acknowledged = [0] * 4
    enough = threading.Event()
    lock = threading.Lock()

    def follow(i: int) -> None:
        out = senders[i].stdout
        assert out is not None
        for line in out:
            if "Received Store Response (Success)" in line:
                with lock:
                    acknowledged[i] += 1
                    if sum(acknowledged) >= 120:
                        enough.set()

    readers = [threading.Thread(target=follow, args=(i,)) for i in range(4)]
    for reader in readers:
        reader.start()
    assert enough.wait(120), f"the senders did not get far: {acknowledged}"
    kill_hard(daemon)
    for sender, reader in zip(senders, readers, strict=True):
        sender.wait(timeout=60)
        reader.join(timeout=60)
    assert all(sender.returncode != 0 for sender in senders), "every sender should have lost its peer"
    assert all(count > 0 for count in acknowledged), acknowledged
    daemon.start()
    indexed = set(assert_index_and_store_agree(data_dir))
    for group, count in zip(groups, acknowledged, strict=True):  # each sender sends in order
        told = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in group[:count]}
        assert told <= indexed, f"{len(told - indexed)} acknowledged instances are missing"
    for path in (data_dir / "store").rglob("*.dcm"):  # indexed or not, no file in the store is partial
        assert len(pydicom.dcmread(path).PixelData) == 64 * 64 * 2, path


def test_kill_mid_read_then_the_mount_answers_again(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    sources = dicomgen.series(tmp_path / "in", 40, rows=256, columns=256)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    daemon.start()
    series_dir = daemon.mount / SERIES
    started, failed = threading.Event(), []

    def stream() -> None:
        try:
            while True:
                for path in sorted(series_dir.glob("*.dcm")):
                    with open(path, "rb") as f:
                        while f.read(16384):
                            started.set()
        except OSError as exc:
            failed.append(exc.errno)

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert started.wait(20)
    kill_hard(daemon)
    reader.join(20)
    assert not reader.is_alive(), "a reader of a dead mount must fail, not hang"
    assert failed and failed[0] in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED)
    daemon.start()
    assert [p.read_bytes() for p in sorted(series_dir.glob("*.dcm"))] == [p.read_bytes() for p in sources]
    assert len(assert_index_and_store_agree(data_dir)) == 40


def test_a_live_daemon_is_refused_by_data_dir_and_by_mount_point(daemon: Daemon, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    same_archive = run_cli("serve", "--data-dir", data_dir, "--mount", tmp_path / "other", "--no-dicom",
                           check=False, timeout=60)
    assert same_archive.returncode == 2
    assert same_archive.stderr.strip() == (f"dicomfs: the archive {data_dir} is already served by dicomfs pid {pid}: "
                                           f"stop it first (kill {pid}), or give another --data-dir")
    other = tmp_path / "other-archive"
    run_cli("init", other)
    same_mount = run_cli("serve", "--data-dir", other, "--mount", daemon.mount, "--no-dicom",
                         check=False, timeout=60)
    assert same_mount.returncode == 2
    assert same_mount.stderr.strip().splitlines()[-1] == (
        f"dicomfs: {daemon.mount} is already mounted by dicomfs pid {pid}: stop it first (kill {pid}), "
        "or give --mount another folder")
    assert "patients" in os.listdir(daemon.mount)  # the refusals left the live mount alone


def test_status_checks_that_the_recorded_pid_is_a_dicomfs_daemon(daemon: Daemon, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "in", 3)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    daemon.start()
    assert daemon.proc is not None
    status = run_cli("status", "--data-dir", data_dir).stdout
    assert f"daemon: running, pid {daemon.proc.pid}" in status
    assert f"mount point: {daemon.mount}" in status
    assert f"DICOM node: DICOMFS@127.0.0.1:{daemon.port}" in status
    assert "holds: 1 patients, 1 studies, 1 series, 3 local instances" in status
    daemon.stop()
    # A pid file left by a crash whose pid now belongs to another program, lock not held.
    (data_dir / "daemon.pid").write_text(f"{os.getpid()}\nmount={daemon.mount}\ndicom=off\n")
    status = run_cli("status", "--data-dir", data_dir).stdout
    assert f"daemon: not running (stale pid file from pid {os.getpid()})" in status
    daemon.start()  # and it never blocks a start
    assert "patients" in os.listdir(daemon.mount)


def test_serve_logs_which_archive_it_serves(daemon: Daemon, data_dir: Path, tmp_path: Path) -> None:
    daemon.start("--no-dicom")
    log = daemon.log()
    assert log.count(f"{data_dir} is an empty folder: making it a new archive") == 1
    assert f"archive {data_dir} (new): 0 patients, 0 studies, 0 series, 0 local instances (0 bytes)" in log
    assert f"mount point: {daemon.mount}" in log and "DICOM node: off" in log


def test_a_second_start_while_stopping_waits_for_nothing_stale(daemon: Daemon, data_dir: Path) -> None:
    """A clean stop removes its pid file; the next start finds no trace of it."""
    daemon.start()
    assert daemon.stop() == 0
    assert not (data_dir / "daemon.pid").exists()
    proc = subprocess.run([*DICOMFS, "status", "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=60, env=cli_env())
    assert "daemon: not running\n" in proc.stdout + "\n" and "stale" not in proc.stdout
    wait_for(lambda: not os.path.ismount(daemon.mount), 5, "the unmount")
