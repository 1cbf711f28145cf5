"""The index (SQLite through apsw): schema, typed access, the change log, C-FIND matching, the query language."""
