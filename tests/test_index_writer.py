"""The index writer in process: ``IndexWriter.add_batch`` over a temporary archive, no daemon."""

from __future__ import annotations

from pathlib import Path

import dicomgen
import pytest
from pydicom.dataset import Dataset
from remotegen import list_on_remote

from dicomfs.archive import Archive, open_archive
from dicomfs.config import ProjectRule
from dicomfs.ingest.prepare import Prepared, prepare
from dicomfs.ingest.writer import Outcome


def prepared(archive: Archive, ds: Dataset, source: str = "test") -> Prepared:
    return prepare(dicomgen.encode(ds), archive.store, source=source)


def series_id(archive: Archive, ds: Dataset) -> int:
    return archive.db.get_int("SELECT id FROM series WHERE series_uid = ?", (ds.SeriesInstanceUID,))


def stored_bytes(archive: Archive, sop_uid: str) -> bytes:
    return archive.store.path(archive.db.get_str("SELECT file_path FROM instances WHERE sop_uid = ?",
                                                 (sop_uid,))).read_bytes()


def test_outcomes_and_the_first_copy_kept(archive: Archive) -> None:
    a, b = dicomgen.make_dataset(), dicomgen.make_dataset()
    first = dicomgen.encode(a)
    results = archive.writer.add_batch([prepared(archive, a), prepared(archive, b), prepared(archive, a)])
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.STORED, Outcome.IDENTICAL]
    assert {r.series_id for r in results} == {series_id(archive, a), series_id(archive, b)}

    a.StudyDescription = "changed on the way"
    [conflict] = archive.writer.add_batch([prepared(archive, a, source="OTHER@10.0.0.9")])
    assert conflict.outcome is Outcome.CONFLICT and conflict.series_id == series_id(archive, a)
    assert archive.db.get_int("SELECT duplicates_seen FROM instances WHERE sop_uid = ?", (a.SOPInstanceUID,)) == 1
    assert stored_bytes(archive, a.SOPInstanceUID) == first
    assert archive.db.get_int("SELECT count(*) FROM instances") == 2
    assert not list(archive.store.tmp_dir.iterdir())  # every temporary file consumed


def test_the_change_log_notes_each_touched_series_once_per_batch(archive: Archive) -> None:
    one = [dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.1") for _ in range(3)]
    two = [dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.2") for _ in range(2)]
    start = archive.changes.newest()
    archive.writer.add_batch([prepared(archive, ds) for ds in one + two])
    noted = [r[0] for r in archive.db.query("SELECT series_id FROM changes WHERE seq > ? ORDER BY seq", (start,))]
    assert sorted(noted) == sorted([series_id(archive, one[0]), series_id(archive, two[0])])

    again = archive.changes.newest()
    archive.writer.add_batch([prepared(archive, ds) for ds in one])  # identical copies change nothing
    assert archive.changes.newest() == again


def test_an_instance_listed_from_a_remote_becomes_local_when_it_arrives(archive: Archive) -> None:
    ds = dicomgen.make_dataset()
    instance_id = list_on_remote(archive.remote, "pacs", [ds])[ds.SOPInstanceUID]
    assert archive.db.get_row("SELECT file_path, fetched FROM instances WHERE id = ?", (instance_id,)) == ("", 0)
    assert archive.db.get_int("SELECT complete FROM remote_series") == 0

    start = archive.changes.newest()
    [result] = archive.writer.add_batch([prepared(archive, ds, source="remote pacs")])
    assert result.outcome is Outcome.STORED and result.series_id == series_id(archive, ds)
    file_path, fetched, size = archive.db.get_row(
        "SELECT file_path, fetched, file_size FROM instances WHERE id = ?", (instance_id,))
    assert file_path and fetched == 1 and size == len(dicomgen.encode(ds))
    assert stored_bytes(archive, ds.SOPInstanceUID) == dicomgen.encode(ds)
    assert archive.db.get_int("SELECT count(*) FROM instances") == 1  # the same row, filled
    assert archive.db.get_int("SELECT complete FROM remote_series") == 1
    assert archive.changes.read_since(start).series == {result.series_id}


def derived_links(archive: Archive) -> list[tuple[int, str, str]]:
    return archive.db.query("SELECT entity_id, sop_uid, name FROM derived WHERE level = 'series' ORDER BY id")


@pytest.mark.parametrize("seg_first", [False, True], ids=["source first", "seg first"])
def test_a_segmentation_is_linked_to_the_series_it_was_made_from(archive: Archive, seg_first: bool) -> None:
    source = dicomgen.make_dataset()
    seg = dicomgen.segmentation_of(source)
    order = [seg, source] if seg_first else [source, seg]
    archive.writer.add_batch([prepared(archive, order[0])])
    if seg_first:
        assert derived_links(archive) == []  # nothing to link to yet
    archive.writer.add_batch([prepared(archive, order[1])])
    assert derived_links(archive) == [(series_id(archive, source), seg.SOPInstanceUID, f"SEG_{seg.SOPInstanceUID}.dcm")]


def test_project_rules_put_arriving_studies_into_projects(tmp_path: Path) -> None:
    rules = [ProjectRule(project="THORAX", match="StudyDescription~thorax"),
             ProjectRule(project="FROM-CT1", calling_ae="CT1")]
    archive = open_archive(tmp_path / "data", rules)
    try:
        thorax = dicomgen.make_dataset(StudyDescription="CT Thorax")
        head = dicomgen.make_dataset(StudyDescription="MR Head")
        from_ct1 = dicomgen.make_dataset(StudyDescription="CT Abdomen")
        archive.writer.add_batch([prepared(archive, thorax, "/media/cd/IM1"), prepared(archive, head, "MR2@10.0.0.2"),
                                  prepared(archive, from_ct1, "CT1@10.0.0.1")])
        members = archive.db.query(
            "SELECT p.name, st.study_uid FROM project_members m JOIN projects p ON p.id = m.project_id "
            "JOIN studies st ON st.id = m.entity_id WHERE m.level = 'study' ORDER BY p.name")
        assert members == [("FROM-CT1", from_ct1.StudyInstanceUID), ("THORAX", thorax.StudyInstanceUID)]
    finally:
        archive.close()


def test_a_failing_batch_leaves_no_rows_and_no_file_the_index_names(archive: Archive) -> None:
    kept = dicomgen.make_dataset()
    archive.writer.add_batch([prepared(archive, kept)])
    before = archive.db.query("SELECT * FROM instances ORDER BY id")
    seq = archive.changes.newest()

    first, second = dicomgen.make_dataset(), dicomgen.make_dataset()
    batch = [prepared(archive, first), prepared(archive, second)]
    archive.store.discard(batch[1].temp)  # the second file is lost: moving it into the store fails mid-batch
    with pytest.raises(FileNotFoundError):
        archive.writer.add_batch(batch)

    assert archive.db.query("SELECT * FROM instances ORDER BY id") == before
    assert archive.db.get_int("SELECT count(*) FROM series") == 1
    assert archive.changes.newest() == seq  # nothing announced
    for (file_path,) in archive.db.query("SELECT file_path FROM instances"):
        assert archive.store.path(file_path).is_file()
