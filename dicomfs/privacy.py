"""Who may read the archive on disk: its owner only, or the group the configuration names.

Patient data must not be one folder away from every local user. One mechanism covers every
writer (the store, SQLite and its -wal/-shm files, worker processes, derived files, caches,
the pid and status files): the process umask, set once at start by ``restrict``. Owner only
gives 0700 folders and 0600 files; with ``group = "NAME"`` the data directory belongs to that
group and is setgid, so everything created below inherits the group, with 0750/0640. Places
that create files pass explicit modes as a ceiling (0640 files, 0750 folders), which the umask
narrows to the policy.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from pathlib import Path

from dicomfs.errors import UserError

log = logging.getLogger(__name__)

FILE_MODE = 0o640  # the most a created file may get; the umask takes the group part away unless configured
DIR_MODE = 0o750

# What an archive holds at its top: checked at every start for modes wider than the policy.
_TOP_ENTRIES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "store", "derived", "cache",
                "daemon.pid", "daemon-status.json")


class GroupError(UserError):
    """The configured group does not exist or cannot be given to the archive."""


def umask_for(group: str | None) -> int:
    return 0o027 if group else 0o077


def restrict(group: str | None) -> None:
    """Set the process umask: every file this process (and its children) creates is private."""
    os.umask(umask_for(group))


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise GroupError(f"group {name!r} (setting 'group') does not exist: create it (groupadd {name}) "
                         "or remove the setting") from None


def make_data_dir(path: Path, group: str | None) -> None:
    """Create the data directory (and missing parents) with the archive's modes."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if group:
        give_group(path, group)
    else:
        os.chmod(path, 0o700)


def give_group(path: Path, group: str) -> None:
    """The data directory belongs to ``group`` and is setgid, so what is created in it inherits the group."""
    gid = group_id(group)
    info = path.stat()
    try:
        if info.st_gid != gid:
            os.chown(path, -1, gid)
        if stat.S_IMODE(info.st_mode) != 0o2750:
            os.chmod(path, 0o2750)
    except PermissionError:
        raise GroupError(f"cannot give {path} to group {group!r}: run dicomfs as a member of {group!r} "
                         f"(or as root), or remove the setting 'group'") from None


def wider_than_policy(data_dir: Path, group: str | None) -> list[Path]:
    """Entries at the top of the archive that others (or, without a group, the group) may read."""
    forbidden = stat.S_IRWXO | (0 if group else stat.S_IRWXG)
    found = []
    for path in (data_dir, *(data_dir / name for name in _TOP_ENTRIES)):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & forbidden:
            found.append(path)
    return found


def warn_if_wide(data_dir: Path, group: str | None) -> None:
    """One warning naming the paths and the fix; the files are not changed behind the user's back."""
    wide = wider_than_policy(data_dir, group)
    if not wide:
        return
    who = "users outside the group" if group else "other users"
    fix = f"chmod -R o-rwx {data_dir}" if group else f"chmod -R go-rwx {data_dir}"
    shown = ", ".join(f"{p} ({stat.S_IMODE(p.stat().st_mode):04o})" for p in wide[:3])
    more = f" and {len(wide) - 3} more" if len(wide) > 3 else ""
    log.warning("the archive %s is readable by %s: %s%s; to fix it run: %s", data_dir, who, shown, more, fix)
