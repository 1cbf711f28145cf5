"""DIMSE commands encoded by hand where pynetdicom's generic path costs more than the work.

The C-STORE response is sent once per instance received, by the node (C-STORE SCP) and by
our C-GET requests (the remote's sub-operations); the C-ECHO response once per echo; the
C-FIND response once per match. pynetdicom builds each as a primitive, then a pydicom
dataset, then encodes it: ~1.5 ms of a 512x512 CT's ~10 ms, and 1.5 ms of every match of a
C-FIND. These command sets have a few fixed elements (PS3.7 9.3), so they are encoded
directly, Implicit VR Little Endian as every command set is (PS3.7 6.3.1); so are C-FIND
answers, whose elements are text and numbers from the index (``encode_elements``).
"""

from __future__ import annotations

import struct

from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

__all__ = ["c_echo_rsp", "c_find_rsp", "c_store_rsp", "encode_elements", "send_command", "send_message"]

_VERIFICATION = "1.2.840.10008.1.1"
_C_ECHO_RSP = 0x8030
_C_FIND_RSP = 0x8020
_C_STORE_RSP = 0x8001
_DATA_SET_PRESENT = 0x0000
_NO_DATA_SET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 E.2)
_DATA_FRAGMENT, _LAST_DATA_FRAGMENT = b"\x00", b"\x02"


def _element(element: int, value: bytes) -> bytes:
    """A command element (group 0000, Implicit VR Little Endian)."""
    return struct.pack("<HHI", 0, element, len(value)) + value


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value


def c_store_rsp(message_id: int, sop_class: str, sop_uid: str, status: int, comment: str = "") -> bytes:
    """The encoded command set of a C-STORE-RSP (PS3.7 9.3.1.2), with an Error Comment if given."""
    elements = [
        _element(0x0002, _ui(sop_class)),  # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", _C_STORE_RSP)),  # Command Field
        _element(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
        _element(0x0800, struct.pack("<H", _NO_DATA_SET)),  # Command Data Set Type
        _element(0x0900, struct.pack("<H", status)),  # Status
    ]
    if comment:
        elements.append(_error_comment(comment))
    elements.append(_element(0x1000, _ui(sop_uid)))  # Affected SOP Instance UID
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body  # Command Group Length first


def _error_comment(comment: str) -> bytes:
    """(0000,0902) Error Comment: LO, at most 64 characters of the default repertoire."""
    return _element(0x0902, _padded(comment[:64].encode("ascii", "replace")))


def c_echo_rsp(message_id: int) -> bytes:
    """The encoded command set of a successful C-ECHO-RSP (PS3.7 9.3.5.2)."""
    body = b"".join((
        _element(0x0002, _ui(_VERIFICATION)),  # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", _C_ECHO_RSP)),  # Command Field
        _element(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
        _element(0x0800, struct.pack("<H", _NO_DATA_SET)),  # Command Data Set Type
        _element(0x0900, struct.pack("<H", 0)),  # Status: success
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def c_find_rsp(message_id: int, sop_class: str, status: int, *, identifier: bool, comment: str = "") -> bytes:
    """The encoded command set of a C-FIND-RSP (PS3.7 9.3.2.2): a match (with its identifier),
    or the final status, with an Error Comment for a failure."""
    elements = [
        _element(0x0002, _ui(sop_class)),  # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", _C_FIND_RSP)),  # Command Field
        _element(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
        _element(0x0800, struct.pack("<H", _DATA_SET_PRESENT if identifier else _NO_DATA_SET)),
        _element(0x0900, struct.pack("<H", status)),  # Status
    ]
    if comment:
        elements.append(_error_comment(comment))
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


# Value representations by how their values are encoded (PS3.5 6.2).
_TEXT = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
_NUMBERS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d"}
_LONG_LENGTH = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def encode_elements(elements: list[tuple[int, str, object]], *, implicit: bool) -> bytes | None:
    """A Little Endian dataset of ``(tag, VR, value)``: text (UTF-8, as ISO_IR 192 says), UIDs,
    binary numbers, a list for several values, None or "" for an empty element. None when
    an element is of another kind (a sequence, say): the caller encodes with pydicom."""
    out = []
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        values = value if isinstance(value, list | tuple) else [] if value is None or value == "" else [value]
        if vr == "UI":
            raw = _ui("\\".join(str(v) for v in values)) if values else b""
        elif vr in _TEXT:
            raw = _padded("\\".join(_text(v) for v in values).encode("utf-8"))
        elif vr in _NUMBERS:
            raw = b"".join(struct.pack(_NUMBERS[vr], v) for v in values)  # type: ignore[arg-type]
        else:
            return None
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            out.append(struct.pack("<HHI", group, element, len(raw)))
        elif vr in _LONG_LENGTH:
            out.append(struct.pack("<HH2s2xI", group, element, vr.encode("ascii"), len(raw)))
        elif len(raw) <= 0xFFFF:
            out.append(struct.pack("<HH2sH", group, element, vr.encode("ascii"), len(raw)))
        else:
            return None
        out.append(raw)
    return b"".join(out)


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _padded(value: bytes) -> bytes:
    return value + b" " if len(value) % 2 else value


def send_message(assoc: Association, context_id: int, command: bytes, dataset: bytes | None) -> None:
    """Queue a command and its data set: in one PDU when both fit the peer's limit (a P-DATA-TF
    may carry several PDVs, PS3.8 9.3.5), else the data set in fragments that fit."""
    if dataset is None:
        send_command(assoc, context_id, command)
        return
    peer_max = assoc.requestor.maximum_length if assoc.is_acceptor else assoc.acceptor.maximum_length
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
    if not peer_max or len(command) + len(dataset) + 12 <= peer_max:  # two PDV headers of 6 bytes
        primitive.presentation_data_value_list.append((context_id, _LAST_DATA_FRAGMENT + dataset))
        assoc.dul.send_pdu(primitive)
        return
    assoc.dul.send_pdu(primitive)
    room = max(peer_max - 6, 1024)  # one PDV header
    for start in range(0, len(dataset), room):
        last = start + room >= len(dataset)
        fragment = P_DATA()
        fragment.presentation_data_value_list.append(
            (context_id, (_LAST_DATA_FRAGMENT if last else _DATA_FRAGMENT) + dataset[start:start + room]))
        assoc.dul.send_pdu(fragment)


def send_command(assoc: Association, context_id: int, command: bytes) -> None:
    """Queue ``command`` (at most a PDU: a response is ~150 bytes) for the DUL thread to send."""
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
    assoc.dul.send_pdu(primitive)
