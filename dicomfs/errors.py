"""The one error type for mistakes a person can make and fix: one line, exit status 2.

A wrong setting, a port in use, a path that is not an archive: each is raised as a
``UserError`` whose text names what is wrong and what to do. The command line prints it
as ``dicomfs: <text>`` and exits with 2, never with a traceback. Everything else is a
defect or an outside failure and keeps its own type.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can correct: the message says what is wrong and what to do."""


def user_errors(exc: BaseException) -> list[UserError] | None:
    """The user errors inside ``exc`` (through trio's exception groups), or None when any
    leaf is something else: a mix is reported as the defect it contains."""
    if isinstance(exc, UserError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[UserError] = []
        for inner in exc.exceptions:
            leaves = user_errors(inner)
            if leaves is None:
                return None
            found.extend(leaves)
        return found
    return None
