"""Remote listing rows and the fetched-data cache in process: ``RemoteRows`` over a temporary archive."""

from __future__ import annotations

import dicomgen
from remotegen import list_on_remote

from dicomfs.archive import Archive
from dicomfs.ingest.prepare import prepare
from dicomfs.parse import patient_values, study_values
from dicomfs.remote.rows import Evicted, InstanceState, RemoteSeriesRef, RemoteStudy


def test_a_listing_announces_new_studies_only(archive: Archive) -> None:
    ds = dicomgen.make_dataset()
    found = RemoteStudy(patient_values(ds), study_values(ds), 1, 2)
    start = archive.changes.newest()
    assert archive.remote.add_studies("pacs", [found]) == 1
    assert archive.changes.read_since(start).everything
    again = archive.changes.newest()
    assert archive.remote.add_studies("pacs", [found]) == 0  # listed again by the next refresh
    assert archive.changes.newest() == again
    assert archive.remote.studies_per_remote() == [("pacs", 1)]
    study_id = archive.db.get_int("SELECT id FROM studies")
    assert archive.remote.unlisted_study(study_id) is not None  # its series: when its folder is entered


def test_what_an_open_reads_of_a_listed_instance(archive: Archive) -> None:
    ds = dicomgen.make_dataset()
    instance_id = list_on_remote(archive.remote, "pacs", [ds])[ds.SOPInstanceUID]
    series_id = archive.db.get_int("SELECT id FROM series")
    assert archive.remote.instance(instance_id) == InstanceState(ds.SOPInstanceUID, "", series_id, "pacs")
    assert archive.remote.series_ref(series_id) == RemoteSeriesRef("pacs", ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert archive.remote.unlisted_series(series_id) is None  # its instances are listed
    assert archive.remote.missing(series_id) == 1
    assert archive.remote.sop_classes(series_id) == [ds.SOPClassUID]


def test_eviction_takes_fetched_files_only_and_a_pull_keeps_them(archive: Archive) -> None:
    fetched, received = dicomgen.make_dataset(SeriesInstanceUID="1.2.3.1"), dicomgen.make_dataset()
    ids = list_on_remote(archive.remote, "pacs", [fetched])
    archive.writer.add_batch([prepare(dicomgen.encode(ds), archive.store, source="test") for ds in (fetched, received)])
    series_id = archive.db.get_int("SELECT series_id FROM instances WHERE id = ?", (ids[fetched.SOPInstanceUID],))
    size = len(dicomgen.encode(fetched))
    assert archive.remote.fetched_bytes() == size
    [cached] = archive.remote.fetched_series()
    assert (cached.series_id, cached.size) == (series_id, size)

    archive.remote.keep_study(received.StudyInstanceUID)  # another study: changes nothing here
    assert archive.remote.fetched_bytes() == size
    start = archive.changes.newest()
    file_path = archive.db.get_str("SELECT file_path FROM instances WHERE id = ?", (ids[fetched.SOPInstanceUID],))
    assert archive.remote.evict_series(series_id) == Evicted([file_path], size)
    assert archive.changes.read_since(start).series == {series_id}
    assert archive.remote.instance(ids[fetched.SOPInstanceUID]).file_path == ""
    assert archive.remote.fetched_bytes() == 0
    assert archive.db.get_int("SELECT count(*) FROM instances WHERE file_path != ''") == 1  # the received one

    archive.writer.add_batch([prepare(dicomgen.encode(fetched), archive.store, source="test")])  # fetched again
    archive.remote.keep_study(fetched.StudyInstanceUID)  # pulled: no longer cache
    assert archive.remote.fetched_series() == []
    assert archive.remote.evict_series(series_id) == Evicted([], 0)


def test_a_series_partly_fetched_is_counted(archive: Archive) -> None:
    datasets = [dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.1") for _ in range(2)]
    list_on_remote(archive.remote, "pacs", datasets)
    assert archive.remote.partly_fetched() == 0
    archive.writer.add_batch([prepare(dicomgen.encode(datasets[0]), archive.store, source="test")])
    assert archive.remote.partly_fetched() == 1
    archive.writer.add_batch([prepare(dicomgen.encode(datasets[1]), archive.store, source="test")])
    assert archive.remote.partly_fetched() == 0
