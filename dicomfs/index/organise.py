"""Projects and tags: the research organisation kept beside the DICOM hierarchy.

Selections name entities by UID (Study/Series Instance UID; Patient ID at patient level) or
by a query in the archive's language (``dicomfs.index.query_language``). Every change adds a
change of scope "everything" to the change log, which makes a running mount rebuild what it shows.
Deleting a project never touches images: only its memberships go.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from dicomfs.index.changes import ChangeLog
from dicomfs.index.db import Database, NoSuchRowError

LEVELS = ("patient", "study", "series", "instance")
_TABLE = {"patient": "patients", "study": "studies", "series": "series", "instance": "instances"}
_UID_COLUMN = {"patient": "patient_id", "study": "study_uid", "series": "series_uid", "instance": "sop_uid"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TAG_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class OrganiseError(ValueError):
    """A request about projects or tags that cannot be carried out; the message is for the user."""


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    description: str
    members: dict[str, int]  # level → how many


def select(db: Database, level: str, selectors: list[str]) -> list[int]:
    """Row ids at ``level`` named by UIDs or queries; an error names what matched nothing."""
    if level not in LEVELS:
        raise OrganiseError(f"level must be one of {', '.join(LEVELS)}")
    ids: list[int] = []
    for selector in selectors:
        if _is_query(selector):
            from dicomfs.index import query_language

            found = query_language.run(db, selector, level)
        else:
            found = [r[0] for r in db.query(
                f"SELECT id FROM {_TABLE[level]} WHERE {_UID_COLUMN[level]} = ?", (selector.strip(),))]
        if not found:
            raise OrganiseError(f"no {level} matches {selector!r}")
        ids.extend(i for i in found if i not in ids)
    return ids


def _is_query(selector: str) -> bool:
    return any(c in selector for c in "=<>~:() ") or selector.strip().lower().startswith("not")


def _changed(db: Database) -> None:
    ChangeLog(db).note_everything()


# ------------------------------------------------------------------ projects

def create_project(db: Database, name: str, description: str = "") -> None:
    if not _NAME_RE.fullmatch(name):
        raise OrganiseError(f"project name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, "
                            "starting with a letter or digit)")
    with db.transaction():
        if db.query("SELECT 1 FROM projects WHERE name = ?", (name,)):
            raise OrganiseError(f"project {name!r} exists already")
        db.execute("INSERT INTO projects (name, description, created_at) VALUES (?, ?, ?)",
                   (name, description, time.time()))
        _changed(db)


def delete_project(db: Database, name: str) -> None:
    with db.transaction():
        project_id = _project_id(db, name)
        db.execute("DELETE FROM project_members WHERE project_id = ?", (project_id,))
        db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        _changed(db)


def add_members(db: Database, name: str, level: str, ids: list[int]) -> int:
    if level == "instance":
        raise OrganiseError("projects hold patients, studies and series, not single instances")
    with db.transaction():
        project_id = _project_id(db, name)
        now = time.time()
        added = sum(db.execute(
            "INSERT OR IGNORE INTO project_members (project_id, level, entity_id, added_at) VALUES (?, ?, ?, ?)",
            (project_id, level, entity_id, now)) for entity_id in ids)
        _changed(db)
    return added


def remove_members(db: Database, name: str, level: str, ids: list[int]) -> int:
    with db.transaction():
        project_id = _project_id(db, name)
        removed = sum(db.execute(
            "DELETE FROM project_members WHERE project_id = ? AND level = ? AND entity_id = ?",
            (project_id, level, entity_id)) for entity_id in ids)
        _changed(db)
    return removed


def list_projects(db: Database) -> list[Project]:
    projects = []
    for project_id, name, description in db.query("SELECT id, name, description FROM projects ORDER BY name"):
        counts = dict(db.query("SELECT level, count(*) FROM project_members WHERE project_id = ? GROUP BY level",
                               (project_id,)))
        projects.append(Project(name, description, counts))
    return projects


def _project_id(db: Database, name: str) -> int:
    try:
        return db.get_int("SELECT id FROM projects WHERE name = ?", (name,))
    except NoSuchRowError:
        raise OrganiseError(f"no project named {name!r}") from None


def projects_of(db: Database, level: str, entity_id: int) -> list[str]:
    """Projects that hold this entity directly (for the .json views)."""
    return [r[0] for r in db.query(
        "SELECT p.name FROM project_members m JOIN projects p ON p.id = m.project_id "
        "WHERE m.level = ? AND m.entity_id = ? ORDER BY p.name", (level, entity_id))]


# ------------------------------------------------------------------ tags

def parse_tag(text: str, *, with_value: bool = True) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not _TAG_KEY_RE.fullmatch(key):
        raise OrganiseError(f"tag {text!r}: the key must start with a letter and use letters, digits, '_', '.' "
                            "or '-' (at most 64)")
    if with_value and not sep:
        raise OrganiseError(f"tag {text!r}: expected KEY=VALUE, e.g. diagnosis=AD")
    return key, value


def set_tag(db: Database, level: str, ids: list[int], key: str, value: str) -> None:
    with db.transaction():
        now = time.time()
        for entity_id in ids:
            db.execute("INSERT INTO tags (level, entity_id, key, value, set_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (level, entity_id, key) DO UPDATE SET value = excluded.value, "
                       "set_at = excluded.set_at", (level, entity_id, key, value, now))
        _changed(db)


def unset_tag(db: Database, level: str, ids: list[int], key: str) -> int:
    with db.transaction():
        removed = sum(db.execute("DELETE FROM tags WHERE level = ? AND entity_id = ? AND key = ?",
                                 (level, entity_id, key)) for entity_id in ids)
        _changed(db)
    return removed


def uid_of(db: Database, level: str, entity_id: int) -> str:
    """How users name the entity: its UID (Patient ID for patients)."""
    return db.get_str(f"SELECT {_UID_COLUMN[level]} FROM {_TABLE[level]} WHERE id = ?", (entity_id,))


def tags_of(db: Database, level: str, entity_id: int) -> dict[str, str]:
    return dict(db.query("SELECT key, value FROM tags WHERE level = ? AND entity_id = ? ORDER BY key",
                         (level, entity_id)))
