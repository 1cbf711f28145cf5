"""The change log in process: scopes, removals, reading since a sequence number, listeners, upgrade."""

from __future__ import annotations

from pathlib import Path

from dicomfs.index.changes import ChangeLog, Changes, Scope
from dicomfs.index.db import Database
from dicomfs.index.schema import MIGRATIONS, SCHEMA_VERSION, migrate


def _log(tmp_path: Path) -> ChangeLog:
    db = Database(tmp_path / "index.sqlite")
    migrate(db)
    return ChangeLog(db)


def test_series_everything_and_removals_read_back_since_a_sequence_number(tmp_path: Path) -> None:
    log = _log(tmp_path)
    assert log.newest() == 0
    assert log.read_since(0) == Changes(0) and log.read_since(0).empty
    with log.db.transaction():
        log.note_series([3, 4])
    first = log.read_since(0)
    assert first.series == {3, 4} and not first.everything and not first.removed
    with log.db.transaction():
        log.note_removal([("study", 7), ("series", 9)])
        log.note_series([5])
    later = log.read_since(first.seq)
    assert later.seq == log.newest() > first.seq
    assert later.series == {5} and later.everything
    assert later.removed == {("study", 7), ("series", 9)}
    assert log.read_since(later.seq).empty
    assert log.db.query("SELECT scope, series_id FROM changes ORDER BY seq") == [
        ("series", 3), ("series", 4), ("everything", None), ("series", 5)]
    log.db.close()


def test_listeners_hear_every_note_and_a_rolled_back_write_leaves_no_row(tmp_path: Path) -> None:
    log = _log(tmp_path)
    heard: list[int] = []
    log.subscribe(lambda: heard.append(log.newest()))
    with log.db.transaction():
        log.note_series([1])
    with log.db.transaction():
        log.note_everything()
    assert len(heard) == 2
    try:
        with log.db.transaction():
            log.note_series([2])
            raise RuntimeError("the write failed")
    except RuntimeError:
        pass
    assert log.read_since(0).series == {1}
    log.db.close()


def test_an_index_with_series_zero_for_everything_is_upgraded(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    for step in range(4):  # schema v4: changes.series_id 0 stood for "everything"
        with db.transaction():
            MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")
    with db.transaction():
        db.execute("INSERT INTO changes (series_id, at) VALUES (12, 1.0), (0, 2.0), (13, 3.0)")
        db.execute("INSERT INTO removals (seq, level, entity_id) VALUES (2, 'study', 5)")
    migrate(db)
    assert db.get_val("PRAGMA user_version") == SCHEMA_VERSION == 8
    assert db.query("SELECT seq, scope, series_id, at FROM changes ORDER BY seq") == [
        (1, Scope.SERIES, 12, 1.0), (2, Scope.EVERYTHING, None, 2.0), (3, Scope.SERIES, 13, 3.0)]
    log = ChangeLog(db)
    assert log.read_since(1) == Changes(3, frozenset({13}), True, frozenset({("study", 5)}))
    with db.transaction():
        log.note_series([14])
    assert log.newest() == 4  # sequence numbers go on after the rebuilt table's last
    db.close()
