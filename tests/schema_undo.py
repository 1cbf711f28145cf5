"""Take an index back to schema v6, for the tests of the upgrade to v7."""

from __future__ import annotations

import re
from typing import Any

from dicomfs.index.schema import SCHEMA_V7


def undo_schema_v7(db: Any) -> None:
    """Drop what SCHEMA_V7 created (triggers, indexes, tables, columns); inside a transaction."""
    for trigger in re.findall(r"CREATE TRIGGER (\w+)", SCHEMA_V7):
        db.execute(f"DROP TRIGGER {trigger}")
    for index in re.findall(r"CREATE INDEX (\w+)", SCHEMA_V7):
        db.execute(f"DROP INDEX {index}")
    for table in re.findall(r"CREATE TABLE (\w+)", SCHEMA_V7):
        db.execute(f"DROP TABLE {table}")
    for table, column in re.findall(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", SCHEMA_V7):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
