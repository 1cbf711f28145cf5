"""Plain-text tables for the commands that print query results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    """Left-aligned columns under their names; None prints as an empty cell."""
    text = [{c: "" if r.get(c) is None else str(r[c]) for c in columns} for r in rows]
    widths = {c: max([len(c), *(len(r[c]) for r in text)]) for c in columns}
    out.write("  ".join(c.ljust(widths[c]) for c in columns).rstrip() + "\n")
    for r in text:
        out.write("  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() + "\n")


_PLURALS = {"patient": "patients", "study": "studies", "series": "series", "instance": "instances",
            "image": "images"}


def counted(n: int, level: str) -> str:
    """``counted(12, "study")`` is "12 studies", ``counted(1, "study")`` "1 study"."""
    return f"{n} {level if n == 1 else _PLURALS.get(level, level + 's')}"
