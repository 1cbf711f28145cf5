"""Private data on disk: another local user reads nothing of the archive, unless a group is named.

The archives here live in a folder every user may traverse (pytest's own temporary folders
are private to root, which would make these tests pass whatever dicomfs does); a control
file in the same folder shows that ``nobody`` does get in where modes allow it.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest
from conftest import Daemon, dcmtk, reads_as_nobody, run_cli, wait_for

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def lists_as_nobody(path: Path) -> bool:
    return subprocess.run([*NOBODY, "ls", str(path)], capture_output=True, timeout=30).returncode == 0


def wider_than(root: Path, allowed_files: int, allowed_dirs: int) -> list[str]:
    """Everything under ``root`` (itself included) whose mode exceeds the allowed bits."""
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        allowed = allowed_dirs if path.is_dir() else allowed_files
        if mode & ~allowed:
            bad.append(f"{path} {mode:04o}")
    return bad


def stored_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "store").rglob("*.dcm"))


def test_nobody_reads_nothing_after_import_and_derive(open_folder: Path, tmp_path: Path) -> None:
    data_dir = open_folder / "archive"
    sources = dicomgen.series(tmp_path / "in", 3)
    run_cli("init", data_dir)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    study_uid = __import__("pydicom").dcmread(sources[0]).StudyInstanceUID
    (tmp_path / "roi.csv").write_text("x,y\n1,2\n")
    run_cli("derive", "add", "--level", "study", study_uid, tmp_path / "roi.csv", "--data-dir", data_dir)
    derived = list((data_dir / "derived").rglob("roi.csv"))
    assert derived and len(stored_files(data_dir)) == 3
    assert wider_than(data_dir, 0o600, 0o700) == []
    for path in (data_dir, data_dir / "store", data_dir / "derived"):
        assert not lists_as_nobody(path), path
    # Even a file whose folders were opened up stays private by its own mode.
    for path in (stored_files(data_dir)[0], derived[0]):
        for folder in path.parents:
            if folder == open_folder:
                break
            os.chmod(folder, 0o755)
    assert lists_as_nobody(stored_files(data_dir)[0].parent)
    for path in (stored_files(data_dir)[0], data_dir / "index.sqlite", derived[0]):
        assert not reads_as_nobody(path), path


def test_nobody_reads_nothing_the_daemon_received(open_folder: Path, tmp_path: Path) -> None:
    data_dir = open_folder / "archive"
    data_dir.mkdir(mode=0o700)
    daemon = Daemon(data_dir=data_dir, mount=tmp_path / "mnt", log_path=tmp_path / "daemon.log")
    sources = dicomgen.series(tmp_path / "in", 4)
    try:
        daemon.start()
        sent = dcmtk("storescu", "-aec", "DICOMFS", "127.0.0.1", daemon.port, *sources)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(stored_files(data_dir)) == 4, 5, "the stored files")
        wal = data_dir / "index.sqlite-wal"
        assert wal.exists() and (data_dir / "index.sqlite-shm").exists()  # while the daemon runs
        assert wider_than(data_dir, 0o600, 0o700) == []
        for path in [data_dir, *(data_dir / n for n in ("store", "daemon.pid"))]:
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) | (0o755 if path.is_dir() else 0))
        os.chmod(stored_files(data_dir)[0].parent, 0o755)
        os.chmod(stored_files(data_dir)[0].parent.parent, 0o755)
        assert lists_as_nobody(stored_files(data_dir)[0].parent)
        for path in (stored_files(data_dir)[0], data_dir / "index.sqlite", wal, data_dir / "daemon.pid"):
            assert not reads_as_nobody(path), path
    finally:
        assert daemon.stop() == 0


@pytest.fixture
def readers_group() -> Iterator[str]:
    name = f"dfsreaders{os.getpid()}"
    subprocess.run(["groupadd", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False, timeout=30)


def test_a_configured_group_reads_and_others_do_not(open_folder: Path, tmp_path: Path, readers_group: str) -> None:
    data_dir = open_folder / "archive"
    config = tmp_path / "config.toml"
    config.write_text(f'group = "{readers_group}"\n')
    dicomgen.series(tmp_path / "in", 2)
    run_cli("--config", config, "import", "--create", "--data-dir", data_dir, tmp_path / "in")
    gid = grp.getgrnam(readers_group).gr_gid
    info = data_dir.stat()
    assert info.st_gid == gid and info.st_mode & stat.S_ISGID
    assert wider_than(data_dir, 0o640, 0o2750) == []
    for path in [data_dir, *data_dir.rglob("*")]:
        assert path.stat().st_gid == gid, path
    stored = stored_files(data_dir)[0]
    assert reads_as_nobody(stored, regid=readers_group)
    assert reads_as_nobody(data_dir / "index.sqlite", regid=readers_group)
    assert not reads_as_nobody(stored)


def test_an_archive_with_wider_modes_gets_one_warning_naming_the_fix(data_dir: Path, tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "in", 1)
    run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "index.sqlite", 0o644)
    result = run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    warnings = [line for line in result.stderr.splitlines() if "readable by" in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(f"the archive {data_dir} is readable by other users: {data_dir} (0755), "
                                f"{data_dir / 'index.sqlite'} (0644); to fix it run: chmod -R go-rwx {data_dir}")
    os.chmod(data_dir, 0o700)
    os.chmod(data_dir / "index.sqlite", 0o600)
    assert "readable by" not in run_cli("import", "--data-dir", data_dir, tmp_path / "in").stderr


def test_an_empty_folder_made_by_hand_becomes_a_private_archive(tmp_path: Path) -> None:
    made = tmp_path / "by-hand"
    made.mkdir(mode=0o755)
    os.chmod(made, 0o755)  # as `mkdir` with the usual umask leaves it
    dicomgen.series(tmp_path / "in", 1)
    result = run_cli("import", "--data-dir", made, tmp_path / "in")
    assert "making it a new archive" in result.stderr and "readable by" not in result.stderr
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
