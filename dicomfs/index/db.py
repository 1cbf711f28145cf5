"""A small apsw wrapper: typed getters, one "no such row" error, explicit transactions.

SQLite is used synchronously; callers on the trio thread must not hold a cursor across an
``await`` (every method here fully consumes its cursor before returning).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import apsw

from dicomfs.privacy import FILE_MODE

Row = tuple[Any, ...]


class NoSuchRowError(LookupError):
    """A query that must return exactly one row returned none."""


def _create_private(path: str) -> None:
    """Create the index file no wider than 0640 before SQLite does (it would use 0644):
    SQLite gives its -wal and -shm files the mode of the main file."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))


class Database:
    """One apsw connection with the pragmas every dicomfs process uses."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        flags = apsw.SQLITE_OPEN_READONLY if readonly else (
            apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        )
        self.path = os.fspath(path)
        if not readonly:
            _create_private(self.path)
        try:
            self.conn = apsw.Connection(self.path, flags=flags)
            self.conn.execute("PRAGMA schema_version").fetchall()  # SQLite opens the -shm file only now
        except apsw.CantOpenError:
            if not readonly or not os.path.isfile(self.path):
                raise
            # A WAL index on a read-only file system: no -shm can be made, so read it as it is.
            self.conn = apsw.Connection(f"file:{quote(os.path.abspath(self.path))}?immutable=1",
                                        flags=flags | apsw.SQLITE_OPEN_URI)
        # Writers from other processes (an import while the daemon serves) wait, not fail.
        self.conn.set_busy_timeout(30_000)
        if not readonly:  # a reader cannot change the journal mode; writers set WAL
            self.execute("PRAGMA journal_mode = WAL")
        self.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL is durable at checkpoint, safe on crash
        self.execute("PRAGMA foreign_keys = ON")
        self.execute("PRAGMA temp_store = MEMORY")
        self.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache per connection

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        for _ in self.conn.execute(sql, args):
            pass
        return self.conn.changes()

    def query(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        return list(self.conn.execute(sql, args))

    def iter(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Iterator[Row]:
        """Stream rows; only for synchronous code that does not await while iterating."""
        return iter(self.conn.execute(sql, args))

    def get_row(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Row:
        for row in self.conn.execute(sql, args):
            return row
        raise NoSuchRowError(sql)

    def get_val(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Any:
        return self.get_row(sql, args)[0]

    def get_int(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> int:
        """The single value of a single row, as an int (NoSuchRowError, TypeError for NULL)."""
        return int(self.get_val(sql, args))

    def get_float(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> float:
        return float(self.get_val(sql, args))

    def get_str(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> str:
        return str(self.get_val(sql, args))

    def get_val_or(self, default: Any, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Any:
        try:
            return self.get_row(sql, args)[0]
        except NoSuchRowError:
            return default

    def last_rowid(self) -> int:
        return self.conn.last_insert_rowid()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE so that a writer never fails half way on a lock upgrade."""
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap; polled by the daemon)."""
        return int(self.get_val("PRAGMA data_version"))
