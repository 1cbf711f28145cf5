"""What the index holds about remote PACS: listed studies, series and instances, and the cache.

A remote study, series or instance gets its index rows when a listing finds it; an
instance's row names no file (``file_path = ''``) until it arrives, when the index writer
fills it. Fetched files are cache (``fetched = 1``): evicted least recently used first,
unless a pull kept them. Every write notes what it changed in the change log, so the mount
shows it; the fetcher and ``dicomfs status`` read through the typed rows here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database
from dicomfs.ingest import entities

__all__ = ["Evicted", "FetchedSeries", "InstanceState", "RemoteRows", "RemoteSeries", "RemoteSeriesRef",
           "RemoteStudy", "RemoteStudyRef"]


@dataclass(frozen=True, slots=True)
class RemoteStudy:
    """A study as a remote PACS answered a STUDY-level C-FIND: index columns and its counts."""

    patient: dict[str, Any]
    study: dict[str, Any]
    num_series: int | None
    num_instances: int | None


@dataclass(frozen=True, slots=True)
class RemoteSeries:
    """A series as a remote PACS answered a SERIES-level C-FIND."""

    series: dict[str, Any]
    num_instances: int | None


@dataclass(frozen=True, slots=True)
class RemoteStudyRef:
    """Where to ask for a study's series."""

    remote: str
    study_uid: str


@dataclass(frozen=True, slots=True)
class RemoteSeriesRef:
    """Where to ask for a series' instances, or to retrieve them."""

    remote: str
    study_uid: str
    series_uid: str


@dataclass(frozen=True, slots=True)
class InstanceState:
    """What an open needs to know of an instance that may not be local."""

    sop_uid: str
    file_path: str  # '' until the instance is local
    series_id: int
    remote: str | None  # the remote its series was listed from; None for a series only received


@dataclass(frozen=True, slots=True)
class FetchedSeries:
    """A series with fetched (evictable) files: how much they take and when one was last opened."""

    series_id: int
    size: int
    last_used: float  # 0 when never opened since it was listed


@dataclass(frozen=True, slots=True)
class Evicted:
    """The files an eviction took out of the index, for the caller to delete, and their bytes."""

    files: list[str]
    size: int


# Columns of an instance that is listed but not local; what a C-FIND answer gives overrides them.
_PLACEHOLDER: dict[str, Any] = {
    "sop_class_uid": "", "transfer_syntax_uid": "", "specific_character_set": "", "content_date": "",
    "content_time": "", "acquisition_number": "", "image_type": "", "rows": 0, "columns": 0, "number_of_frames": 1,
    "photometric": "", "has_image": 0, "file_path": "", "file_size": 0, "json_size": 0, "json_version": 0,
    "added_part10_header": 0,
}


class RemoteRows:
    """Reads and writes the remote listings and the fetched-data cache of one connection."""

    def __init__(self, db: Database, changes: ChangeLog | None = None) -> None:
        self.db = db
        self.changes = changes or ChangeLog(db)

    # ------------------------------------------------------------------ listings

    def add_studies(self, remote: str, studies: Iterable[RemoteStudy]) -> int:
        """Record studies a saved query found on ``remote``; returns how many were new."""
        now = time.time()
        new = 0
        with self.db.transaction():
            for found in studies:
                patient_id = entities.upsert(self.db, "patients", "patient_key", found.patient, now)
                before = self.db.query("SELECT 1 FROM studies WHERE study_uid = ?", (found.study["study_uid"],))
                study_id = entities.upsert(self.db, "studies", "study_uid", {**found.study, "patient_id": patient_id},
                                           now)
                new += not before
                self.db.execute(
                    "INSERT INTO remote_studies (study_id, remote, num_series, num_instances, listed_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (study_id) DO UPDATE SET remote = excluded.remote, "
                    "num_series = excluded.num_series, num_instances = excluded.num_instances, "
                    "listed_at = excluded.listed_at",
                    (study_id, remote, found.num_series, found.num_instances, now),
                )
            if new:
                self.changes.note_everything(now)  # above any series: the mount rebuilds all
        return new

    def add_series(self, remote: str, study_id: int, series: Iterable[RemoteSeries]) -> list[int]:
        """Record a study's series as the remote listed them; returns their ids."""
        now = time.time()
        ids = []
        with self.db.transaction():
            for found in series:
                series_id = entities.upsert(self.db, "series", "series_uid", {**found.series, "study_id": study_id},
                                            now)
                self.db.execute(
                    "INSERT INTO remote_series (series_id, remote, num_instances) VALUES (?, ?, ?) "
                    "ON CONFLICT (series_id) DO UPDATE SET num_instances = excluded.num_instances",
                    (series_id, remote, found.num_instances),
                )
                self.changes.note_series([series_id], now)
                ids.append(series_id)
            self.db.execute("UPDATE remote_studies SET series_listed_at = ? WHERE study_id = ?", (now, study_id))
        return ids

    def study_listing(self, study_id: int) -> tuple[RemoteStudyRef, float | None] | None:
        """A remote study and when its series were listed (None: not yet); None if not remote."""
        rows = self.db.query(
            "SELECT r.remote, st.study_uid, r.series_listed_at FROM remote_studies r "
            "JOIN studies st ON st.id = r.study_id WHERE r.study_id = ?", (study_id,))
        if not rows:
            return None
        remote, study_uid, listed_at = rows[0]
        return RemoteStudyRef(remote, study_uid), listed_at

    def series_listed(self, study_id: int) -> None:
        """The study's series were asked for now (a failed re-listing waits as long as a good one)."""
        self.db.execute("UPDATE remote_studies SET series_listed_at = ? WHERE study_id = ?", (time.time(), study_id))

    def add_instances(self, remote: str, series_id: int, instances: Iterable[dict[str, Any]]) -> None:
        """Rows for a remote series' instances; file_path '' until each is fetched."""
        now = time.time()
        with self.db.transaction():
            for values in instances:
                row = {**_PLACEHOLDER, **values, "series_id": series_id, "source": f"remote {remote}",
                       "received_at": now}
                self.db.execute(
                    f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                    "ON CONFLICT (sop_uid) DO NOTHING",
                    tuple(row.values()),
                )
            self.db.execute("UPDATE remote_series SET instances_listed_at = ? WHERE series_id = ?", (now, series_id))
            entities.note_remote_progress(self.db, series_id)
            self.changes.note_series([series_id], now)

    def unlisted_study(self, study_id: int) -> RemoteStudyRef | None:
        """The remote study whose series are not listed yet; None if listed or not remote."""
        rows = self.db.query(
            "SELECT r.remote, st.study_uid FROM remote_studies r JOIN studies st ON st.id = r.study_id "
            "WHERE r.study_id = ? AND r.series_listed_at IS NULL", (study_id,))
        return RemoteStudyRef(*rows[0]) if rows else None

    def unlisted_series(self, series_id: int) -> RemoteSeriesRef | None:
        """The remote series whose instances are not listed yet; None if listed or not remote."""
        rows = self.db.query(
            "SELECT r.remote, st.study_uid, se.series_uid FROM remote_series r "
            "JOIN series se ON se.id = r.series_id JOIN studies st ON st.id = se.study_id "
            "WHERE r.series_id = ? AND r.instances_listed_at IS NULL", (series_id,))
        return RemoteSeriesRef(*rows[0]) if rows else None

    def studies_per_remote(self) -> list[tuple[str, int]]:
        """(remote, studies listed) for each remote, by name."""
        return [(str(name), int(count)) for name, count in self.db.query(
            "SELECT remote, count(*) FROM remote_studies GROUP BY remote ORDER BY remote")]

    # ------------------------------------------------------------------ fetching

    def instance(self, instance_id: int) -> InstanceState:
        """Raises NoSuchRowError for an unknown id."""
        sop_uid, file_path, series_id, remote = self.db.get_row(
            "SELECT i.sop_uid, i.file_path, i.series_id, r.remote FROM instances i "
            "LEFT JOIN remote_series r ON r.series_id = i.series_id WHERE i.id = ?", (instance_id,))
        return InstanceState(sop_uid, file_path, series_id, remote)

    def series_ref(self, series_id: int) -> RemoteSeriesRef:
        """Where to retrieve a remote series from (NoSuchRowError if it is not remote)."""
        return RemoteSeriesRef(*self.db.get_row(
            "SELECT r.remote, st.study_uid, se.series_uid FROM remote_series r "
            "JOIN series se ON se.id = r.series_id JOIN studies st ON st.id = se.study_id "
            "WHERE r.series_id = ?", (series_id,)))

    def missing(self, series_id: int) -> int:
        """How many of the series' listed instances are not local."""
        return self.db.get_int("SELECT count(*) FROM instances WHERE series_id = ? AND file_path = ''", (series_id,))

    def missing_uids(self, series_id: int) -> list[str]:
        """The SOP Instance UIDs of the series' instances that are not local, in reading order."""
        return [str(uid) for (uid,) in self.db.query(
            "SELECT sop_uid FROM instances WHERE series_id = ? AND file_path = '' ORDER BY instance_number, id",
            (series_id,))]

    def sop_classes(self, series_id: int) -> list[str]:
        """The SOP classes a listing named for the series (what a C-GET must accept)."""
        return [str(uid) for (uid,) in self.db.query(
            "SELECT DISTINCT sop_class_uid FROM instances WHERE series_id = ? AND sop_class_uid != ''",
            (series_id,))]

    def mark_used(self, series_id: int, at: float) -> None:
        """One of the series' files is being opened (cache eviction goes by last use)."""
        self.db.execute("UPDATE remote_series SET last_used = ? WHERE series_id = ?", (at, series_id))

    # ------------------------------------------------------------------ the cache of fetched files

    def fetched_bytes(self) -> int:
        return self.db.get_int("SELECT coalesce(sum(file_size), 0) FROM instances WHERE fetched = 1")

    def fetched_series(self) -> list[FetchedSeries]:
        return [FetchedSeries(series_id, int(size), float(last_used)) for series_id, size, last_used in self.db.query(
            "SELECT i.series_id, sum(i.file_size), coalesce(r.last_used, 0) FROM instances i "
            "LEFT JOIN remote_series r ON r.series_id = i.series_id WHERE i.fetched = 1 GROUP BY i.series_id")]

    def partly_fetched(self) -> int:
        """Listed remote series with some instances local and some not."""
        return self.db.get_int(
            "SELECT count(*) FROM remote_series WHERE complete = 0 AND instances_listed_at IS NOT NULL "
            "AND series_id IN (SELECT series_id FROM instances WHERE file_path != '')")

    def keep_study(self, study_uid: str) -> None:
        """Pulled on purpose: its fetched files are no longer cache, never evicted."""
        with self.db.transaction():
            self.db.execute(
                "UPDATE instances SET fetched = 0 WHERE fetched = 1 AND series_id IN ("
                "  SELECT se.id FROM series se JOIN studies st ON st.id = se.study_id WHERE st.study_uid = ?)",
                (study_uid,),
            )

    def evict_series(self, series_id: int) -> Evicted:
        """Return a fetched series to the not-yet-local state; returns the files to delete.

        Only fetched files go: anything received or imported stays. The caller deletes the
        files after this commits, so a crash in between leaves unindexed files, never rows
        that name missing files.
        """
        now = time.time()
        with self.db.transaction():
            rows = self.db.query(
                "SELECT file_path, file_size FROM instances WHERE series_id = ? AND fetched = 1 AND file_path != ''",
                (series_id,))
            self.db.execute(
                "UPDATE instances SET file_path = '', file_size = 0, json_size = 0, json_version = 0, "
                "has_image = 0, fetched = 0 WHERE series_id = ? AND fetched = 1", (series_id,))
            entities.note_remote_progress(self.db, series_id)
            self.changes.note_series([series_id], now)
        return Evicted([str(path) for path, _ in rows], sum(int(size) for _, size in rows))
