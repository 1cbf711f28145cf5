"""DIMSE commands encoded by hand where pynetdicom's generic path costs more than the work.

The C-STORE response is sent once per instance received, by the node (C-STORE SCP) and by
our C-GET requests (the remote's sub-operations). pynetdicom builds it as a primitive, then
a pydicom dataset, then encodes it: ~1.5 ms of a 512x512 CT's ~10 ms. The command set has
six fixed elements (PS3.7 9.3.1.2), so it is encoded directly, Implicit VR Little Endian as
every command set is (PS3.7 6.3.1).
"""

from __future__ import annotations

import struct

from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

__all__ = ["c_store_rsp", "send_command"]

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 E.2)


def _element(element: int, value: bytes) -> bytes:
    """A command element (group 0000, Implicit VR Little Endian)."""
    return struct.pack("<HHI", 0, element, len(value)) + value


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value


def c_store_rsp(message_id: int, sop_class: str, sop_uid: str, status: int) -> bytes:
    """The encoded command set of a C-STORE-RSP without a data set."""
    body = b"".join((
        _element(0x0002, _ui(sop_class)),  # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", _C_STORE_RSP)),  # Command Field
        _element(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
        _element(0x0800, struct.pack("<H", _NO_DATA_SET)),  # Command Data Set Type
        _element(0x0900, struct.pack("<H", status)),  # Status
        _element(0x1000, _ui(sop_uid)),  # Affected SOP Instance UID
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body  # Command Group Length first


def send_command(assoc: Association, context_id: int, command: bytes) -> None:
    """Queue ``command`` (at most a PDU: a response is ~150 bytes) for the DUL thread to send."""
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
    assoc.dul.send_pdu(primitive)
