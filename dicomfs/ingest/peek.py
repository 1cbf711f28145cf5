"""The UIDs that name an instance's file, read from its encoded dataset without pydicom.

The node places a received file at its final path while the parser still reads it, so the
fsync that makes it durable covers its name too (``Store.place_early``). The path needs the
SOP Instance, Study Instance and Series Instance UIDs: this walks the top-level element
headers of a Little Endian dataset (sequences skipped item by item) up to (0020,000E), in
tens of microseconds where pydicom takes about a millisecond. Anything unexpected gives
None, and the file is placed the ordinary way, after parsing; the parser's UIDs are always
checked against these.
"""

from __future__ import annotations

import struct

__all__ = ["PeekedUids", "peek_uids"]

PeekedUids = tuple[str, str, str]  # (study, series, SOP instance)

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_SOP_UID, _STUDY_UID, _SERIES_UID = 0x00080018, 0x0020000D, 0x0020000E
_UINT16 = struct.Struct("<HH")


class _Odd(Exception):
    """Bytes this walker does not follow: the caller falls back to parsing first."""


def peek_uids(data: bytes | memoryview, start: int, *, implicit: bool) -> PeekedUids | None:
    """The three UIDs from the dataset that begins at ``start`` (after the file meta)."""
    found: dict[int, str] = {}
    try:
        pos = start
        while pos + 8 <= len(data):
            tag, length, pos = _header(data, pos, implicit)
            if tag > _SERIES_UID:
                break
            if tag in (_SOP_UID, _STUDY_UID, _SERIES_UID):
                if length == _UNDEFINED or pos + length > len(data):
                    raise _Odd
                found[tag] = bytes(data[pos:pos + length]).rstrip(b"\0 ").decode("ascii")
            pos = _skip_sequence(data, pos, implicit) if length == _UNDEFINED else pos + length
    except (_Odd, UnicodeDecodeError, struct.error):
        return None
    if len(found) != 3 or not all(found.values()):
        return None
    return found[_STUDY_UID], found[_SERIES_UID], found[_SOP_UID]


def _header(data: bytes | memoryview, pos: int, implicit: bool) -> tuple[int, int, int]:
    """(tag, value length, where the value starts) of the element at ``pos``."""
    group, element = _UINT16.unpack_from(data, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # item and delimiter tags have no VR in any syntax
        return tag, int.from_bytes(data[pos + 4:pos + 8], "little"), pos + 8
    vr = bytes(data[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        return tag, int.from_bytes(data[pos + 8:pos + 12], "little"), pos + 12
    if not vr.isalpha():
        raise _Odd
    return tag, int.from_bytes(data[pos + 6:pos + 8], "little"), pos + 8


def _skip_sequence(data: bytes | memoryview, pos: int, implicit: bool, depth: int = 0) -> int:
    """Past an undefined-length sequence whose first item starts at ``pos``."""
    if depth > 16:
        raise _Odd
    while pos + 8 <= len(data):
        tag, length, pos = _header(data, pos, implicit)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Odd
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements, to the item delimiter
            tag, length, pos = _header(data, pos, implicit)
            if tag == _ITEM_END:
                break
            pos = _skip_sequence(data, pos, implicit, depth + 1) if length == _UNDEFINED else pos + length
    raise _Odd


_IMPLICIT = "1.2.840.10008.1.2"
_NOT_WALKED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}  # deflated; big endian


def peek_part10(data: bytes | memoryview) -> PeekedUids | None:
    """``peek_uids`` of a Part 10 file: its file meta (Explicit VR Little Endian) says where
    the dataset starts and how it is encoded."""
    if bytes(data[128:132]) != b"DICM":
        return None
    syntax = None
    pos = 132
    try:
        while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
            tag, length, value = _header(data, pos, implicit=False)
            if tag == 0x00020010:
                syntax = bytes(data[value:value + length]).rstrip(b"\0 ").decode("ascii")
            pos = value + length
    except (_Odd, UnicodeDecodeError, struct.error):
        return None
    if syntax is None or syntax in _NOT_WALKED:
        return None
    return peek_uids(data, pos, implicit=syntax == _IMPLICIT)
