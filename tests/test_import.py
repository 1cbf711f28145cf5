"""Import: store + index, duplicates, bad input, DICOMDIR media, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import dicomgen
import pydicom
import pytest
from conftest import DICOMFS, cli_env, run_cli, wait_for
from pydicom.fileset import FileSet

from dicomfs.archive import Archive, open_archive
from dicomfs.index.db import Database
from dicomfs.ingest import entities
from dicomfs.ingest.files import run_import


@pytest.fixture
def archive(data_dir: Path):
    a = open_archive(data_dir)
    yield a
    a.close()


def stored_bytes(archive: Archive, sop_uid: str) -> bytes:
    relpath = archive.db.get_val("SELECT file_path FROM instances WHERE sop_uid = ?", (sop_uid,))
    return (archive.store.root / relpath).read_bytes()


def test_import_stores_exact_bytes_and_counts(archive: Archive, tmp_path: Path) -> None:
    paths = dicomgen.series(tmp_path / "in", 4)
    report = run_import(archive, [tmp_path / "in"], workers=1)
    assert report.counts["stored"] == 4 and report.ok
    for path in paths:
        assert stored_bytes(archive, pydicom.dcmread(path).SOPInstanceUID) == path.read_bytes()
    counts = archive.db.get_row("SELECT num_studies, num_series, num_instances FROM patients")
    assert counts == (1, 1, 4)
    assert archive.db.get_val("SELECT num_instances FROM series") == 4


def test_reimport_is_idempotent(archive: Archive, tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "in", 3)
    run_import(archive, [tmp_path / "in"], workers=1)
    changes = archive.db.get_val("SELECT count(*) FROM changes")
    report = run_import(archive, [tmp_path / "in"], workers=1)
    assert report.counts["identical"] == 3 and report.counts["stored"] == 0
    assert archive.db.get_val("SELECT count(*) FROM instances") == 3
    assert archive.db.get_val("SELECT sum(duplicates_seen) FROM instances") == 0
    assert archive.db.get_val("SELECT count(*) FROM changes") == changes
    assert not list(archive.store.tmp_dir.iterdir())


def test_conflicting_duplicate_keeps_the_first_copy(archive: Archive, tmp_path: Path, caplog) -> None:
    first = dicomgen.make_dataset(StudyDescription="first")
    second = dicomgen.make_dataset(SOPInstanceUID=first.SOPInstanceUID, StudyDescription="second")
    a = dicomgen.write(tmp_path / "a" / "x.dcm", first)
    dicomgen.write(tmp_path / "b" / "x.dcm", second)
    run_import(archive, [tmp_path / "a"], workers=1)
    report = run_import(archive, [tmp_path / "b"], workers=1)
    assert report.counts["conflict"] == 1 and report.ok
    assert stored_bytes(archive, first.SOPInstanceUID) == a.read_bytes()
    assert archive.db.get_val("SELECT duplicates_seen FROM instances") == 1
    assert archive.db.get_val("SELECT study_description FROM studies") == "first"
    assert "kept the first copy" in caplog.text


def test_bare_dataset_gets_a_part10_header(archive: Archive, tmp_path: Path) -> None:
    ds = dicomgen.make_dataset()
    raw = dicomgen.encode(ds, part10=False)
    (tmp_path / "bare").write_bytes(raw)
    report = run_import(archive, [tmp_path / "bare"], workers=1)
    assert report.counts["stored"] == 1
    stored = stored_bytes(archive, ds.SOPInstanceUID)
    assert stored[128:132] == b"DICM" and stored.endswith(raw)
    reread = pydicom.dcmread(archive.store.root / archive.db.get_val("SELECT file_path FROM instances"))
    assert reread.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert reread.PatientName == "DOE^JOHN"
    assert archive.db.get_val("SELECT added_part10_header FROM instances") == 1


def test_bad_files_are_reported_and_nothing_else_changes(archive: Archive, tmp_path: Path) -> None:
    good = dicomgen.write(tmp_path / "in" / "good.dcm", dicomgen.make_dataset())
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "empty.dcm").write_bytes(b"")
    (tmp_path / "in" / "random.bin").write_bytes(os.urandom(4096))
    truncated = dicomgen.encode(dicomgen.make_dataset(rows=64, columns=64))
    (tmp_path / "in" / "truncated.dcm").write_bytes(truncated[: len(truncated) // 2])
    dicomgen.write(tmp_path / "in" / "nosop.dcm", dicomgen.make_dataset(SOPInstanceUID=dicomgen.REMOVE))
    dicomgen.write(tmp_path / "in" / "nostudy.dcm", dicomgen.make_dataset(StudyInstanceUID=dicomgen.REMOVE))
    (tmp_path / "in" / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    report = run_import(archive, [tmp_path / "in"], workers=1)
    assert report.counts["stored"] == 1
    reasons = dict((Path(p).name, r) for p, r in report.rejected)
    assert set(reasons) == {"truncated.dcm", "nosop.dcm", "nostudy.dcm", "garbage.dcm"}
    assert "StudyInstanceUID" in reasons["nostudy.dcm"]
    assert "malformed" in reasons["truncated.dcm"] or "truncated" in reasons["truncated.dcm"]
    assert {Path(p).name for p, _ in report.skipped} == {"notes.txt", "empty.dcm", "random.bin"}
    assert archive.db.get_val("SELECT count(*) FROM instances") == 1
    assert stored_bytes(archive, pydicom.dcmread(good).SOPInstanceUID) == good.read_bytes()
    assert not list(archive.store.tmp_dir.iterdir())


def test_cli_import_summary_and_exit_status(data_dir: Path, tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "in", 2)
    (tmp_path / "in" / "readme.txt").write_text("hello")
    ok = run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    assert "imported 2" in ok.stdout and "skipped 1" in ok.stdout
    dicomgen.write(tmp_path / "bad" / "x.dcm", dicomgen.make_dataset(SeriesInstanceUID=dicomgen.REMOVE))
    bad = run_cli("import", "--data-dir", data_dir, tmp_path / "bad", check=False)
    assert bad.returncode == 1
    assert "rejected" in bad.stderr and "SeriesInstanceUID" in bad.stderr
    missing = run_cli("import", "--data-dir", data_dir, tmp_path / "nope", check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_each_rejection_is_one_line_above_the_progress_bar(data_dir: Path, tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "in", 3)
    for name in ("a.dcm", "b.dcm"):
        dicomgen.write(tmp_path / "in" / name, dicomgen.make_dataset(SeriesInstanceUID=dicomgen.REMOVE))
    result = run_cli("import", "--progress", "--data-dir", data_dir, tmp_path / "in", check=False)
    assert result.returncode == 1 and "imported 3" in result.stdout and "rejected 2" in result.stdout
    lines = result.stderr.replace("\r", "\n").splitlines()
    for name in ("a.dcm", "b.dcm"):
        mentions = [line for line in lines if name in line]
        assert len(mentions) == 1, result.stderr  # once, not once in the log and again at the end
        assert "SeriesInstanceUID" in mentions[0] and "file" not in mentions[0].split(name)[-1], mentions[0]
    assert any("100%" in line and "5/5" in line for line in lines), result.stderr  # the bar itself is there


def test_failed_batch_leaves_the_archive_as_it_was(archive: Archive, tmp_path: Path, monkeypatch) -> None:
    dicomgen.series(tmp_path / "old", 2)
    run_import(archive, [tmp_path / "old"], workers=1)
    before = archive.db.query("SELECT * FROM instances ORDER BY id")
    dicomgen.series(tmp_path / "new", 3)
    calls = {"n": 0}
    original = entities.upsert

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(entities, "upsert", failing)
    with pytest.raises(OSError):
        run_import(archive, [tmp_path / "new"], workers=1)
    assert archive.db.query("SELECT * FROM instances ORDER BY id") == before
    assert archive.db.get_val("SELECT count(*) FROM studies") == 1
    assert not list(archive.store.tmp_dir.iterdir())
    assert len(list(archive.store.root.rglob("*.dcm"))) == 2  # a file the failed batch had placed is gone


def test_dicomdir_media_are_read_through_their_directory(archive: Archive, tmp_path: Path) -> None:
    fileset = FileSet()
    sops = []
    for n in range(3):
        ds = dicomgen.make_dataset(InstanceNumber=n + 1)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        fileset.add(ds)
        sops.append(ds.SOPInstanceUID)
    fileset.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").exists()
    report = run_import(archive, [tmp_path / "cd" / "DICOMDIR"], workers=1)
    assert report.counts["stored"] == 3 and report.ok
    report = run_import(archive, [tmp_path / "cd"], workers=1)  # the folder: DICOMDIR itself is skipped
    assert report.counts["identical"] == 3
    assert [Path(p).name for p, _ in report.skipped] == ["DICOMDIR"]


def test_specific_character_sets_are_decoded(archive: Archive) -> None:
    from pydicom.data import get_charset_files

    files = [Path(f) for f in get_charset_files("chr*.dcm")]
    report = run_import(archive, files, workers=1)
    assert report.counts["stored"] >= 10
    names = {r[0] for r in archive.db.query("SELECT patient_name FROM patients")}
    assert "Yamada^Tarou=山田^太郎=やまだ^たろう" in names  # ISO 2022 IR 87
    assert "Hong^Gildong=洪^吉洞=홍^길동" in names  # ISO 2022 IR 149
    assert "Buc^Jérôme" in names  # Latin-1
    assert "Διονυσιος" in names  # Greek
    assert "Люкceмбypг" in names  # Cyrillic
    assert "שרון^דבורה" in names  # Hebrew
    assert any("قباني^لنزار" in n for n in names)  # Arabic
    assert "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう" in names  # ISO 2022 IR 13 + IR 87
    assert "Wang^XiaoDong=王^小東" in names  # UTF-8 (ISO_IR 192)
    assert "Wang^XiaoDong=王^小东" in names  # GB18030


def test_parallel_import_uses_worker_processes(archive: Archive, tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "in", 80)
    report = run_import(archive, [tmp_path / "in"], workers=2, batch=16)
    assert report.counts["stored"] == 80
    assert archive.db.get_val("SELECT count(DISTINCT instance_number) FROM instances") == 80


def test_import_killed_midway_leaves_a_consistent_archive(data_dir: Path, tmp_path: Path) -> None:
    paths = dicomgen.series(tmp_path / "in", 600, rows=64, columns=64)
    run_cli("import", "--data-dir", data_dir, paths[0])  # creates the index
    proc = subprocess.Popen([*DICOMFS, "import", "--data-dir", str(data_dir), "--workers", "1",
                             str(tmp_path / "in")], env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = Database(data_dir / "index.sqlite")
    try:
        wait_for(lambda: db.get_val("SELECT count(*) FROM instances") > 100, 60, "the import to be under way")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    indexed = db.query("SELECT file_path, file_size FROM instances")
    assert 100 < len(indexed) < 600
    for relpath, size in indexed:  # everything the index holds is complete on disk
        assert (data_dir / "store" / relpath).stat().st_size == size
    db.close()
    again = run_cli("import", "--data-dir", data_dir, tmp_path / "in")
    assert "rejected 0" in again.stdout
    archive = open_archive(data_dir)
    try:
        assert archive.db.get_val("SELECT count(*) FROM instances") == 600
        assert not list(archive.store.tmp_dir.iterdir())
    finally:
        archive.close()
