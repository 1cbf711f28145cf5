"""DIMSE status codes that the node answers or reads, each named once with where it is defined.

Plain ints (pynetdicom's ``Status`` holds only four of these, and extending it changes a
class every user of pynetdicom shares). The category of any code, ours or a remote's,
comes from ``pynetdicom.status.code_to_category``.
"""

from __future__ import annotations

from typing import Final

# General (PS3.7 Annex C)
SUCCESS: Final = 0x0000
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122  # Refused: SOP Class not supported
NOT_AUTHORIZED: Final = 0x0124  # Refused: Not Authorized
CANCEL: Final = 0xFE00  # Sub-operations or matching terminated by a C-CANCEL

# Storage (PS3.4 B.2.3)
OUT_OF_RESOURCES: Final = 0xA700  # Refused: Out of Resources
CANNOT_UNDERSTAND: Final = 0xC000  # Error: Cannot understand (0xCxxx)

# Query/Retrieve: C-FIND (PS3.4 C.4.1.1.4), C-MOVE (C.4.2.1.5), C-GET (C.4.3.1.4)
PENDING: Final = 0xFF00  # matches or sub-operations are continuing
PENDING_WITH_WARNING: Final = 0xFF01  # C-FIND: optional keys not supported
PENDING_CODES: Final = frozenset({PENDING, PENDING_WITH_WARNING})
IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900  # Error: Identifier does not match SOP Class
UNABLE_TO_PROCESS: Final = 0xC001  # Failed: Unable to process (0xCxxx)
