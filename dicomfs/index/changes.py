"""The change log: how every writer of the index tells a running mount what to refresh.

Each committed write adds rows to ``changes`` in its own transaction: one per series it
touched (scope ``series``), or one saying that anything may have changed (scope
``everything``: projects, tags, remote listings, deletions). A deletion also names the
patients, studies and series it removed (``removals``), because the kernel may hold their
names long after any listing.

The mount reads the log with ``read_since``. Writes made in the daemon's own process wake it
at once through ``subscribe``; writes by other processes (``dicomfs import`` while mounted,
``dicomfs tag``) are found by polling, which costs one ``PRAGMA data_version`` per interval.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dicomfs.index.db import Database

__all__ = ["ChangeLog", "Changes", "Scope"]


class Scope(enum.StrEnum):
    """What a change row asks the mount to refresh."""

    SERIES = "series"  # what shows this series (and its study, patient, date and project folders)
    EVERYTHING = "everything"  # anything may have changed: drop every cached listing


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed after one sequence number, up to and including ``seq``."""

    seq: int
    series: frozenset[int] = frozenset()
    everything: bool = False
    removed: frozenset[tuple[str, int]] = frozenset()  # (level, row id) of deleted entities

    @property
    def empty(self) -> bool:
        return not (self.series or self.everything or self.removed)


class ChangeLog:
    """Writes and reads the ``changes`` and ``removals`` tables of one connection.

    ``note_*`` run inside the caller's transaction, so a change is announced exactly when
    the write it describes commits.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each note made through this log (on the writing thread,
        inside the transaction: it must only schedule work, e.g. set a ``trio.Event``)."""
        self._listeners.append(listener)

    def note_series(self, series_ids: Iterable[int], at: float | None = None) -> None:
        at = time.time() if at is None else at
        rows = [(Scope.SERIES.value, series_id, at) for series_id in series_ids]
        if not rows:
            return
        self.db.conn.executemany("INSERT INTO changes (scope, series_id, at) VALUES (?, ?, ?)", rows)
        self._notify()

    def note_everything(self, at: float | None = None) -> int:
        """Returns the sequence number of the new row."""
        at = time.time() if at is None else at
        self.db.execute("INSERT INTO changes (scope, series_id, at) VALUES (?, NULL, ?)", (Scope.EVERYTHING.value, at))
        seq = self.db.last_rowid()
        self._notify()
        return seq

    def note_removal(self, removed: Iterable[tuple[str, int]], at: float | None = None) -> None:
        """Entities a deletion removed: refresh everything, and drop their names."""
        seq = self.note_everything(at)
        self.db.conn.executemany("INSERT INTO removals (seq, level, entity_id) VALUES (?, ?, ?)",
                                 [(seq, level, entity_id) for level, entity_id in removed])

    def newest(self) -> int:
        return self.db.get_int("SELECT coalesce(max(seq), 0) FROM changes")

    def read_since(self, seq: int) -> Changes:
        """Everything noted after ``seq`` (``Changes.seq`` is where to read from next time)."""
        rows = self.db.query("SELECT seq, scope, series_id FROM changes WHERE seq > ? ORDER BY seq", (seq,))
        if not rows:
            return Changes(seq)
        removed = frozenset(
            (level, entity_id) for level, entity_id in self.db.query(
                "SELECT level, entity_id FROM removals WHERE seq > ? AND seq <= ?", (seq, rows[-1][0])))
        return Changes(
            seq=rows[-1][0],
            series=frozenset(series_id for _, scope, series_id in rows if scope == Scope.SERIES),
            everything=any(scope == Scope.EVERYTHING for _, scope, _ in rows),
            removed=removed,
        )

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
