"""C-STORE and C-ECHO requests taken from an association's P-DATA stream as it is read.

pynetdicom hands every received PDU through its state machine to its DIMSE provider,
which copies the fragments into a message, decodes the command set with pydicom, and
queues a primitive for the association thread (which sleeps 1 ms every turn). For a
512x512 CT that is ~3 ms of the ~5 ms pynetdicom takes per instance. A C-STORE request
needs none of it: its command set has a few fixed elements (PS3.7 9.3.1.1) and its data
set is kept as received. So ``MessageRouter`` splits the stream, in the thread that reads
it, into messages we serve there (C-STORE and C-ECHO requests) and everything else, which
goes on to pynetdicom unchanged. Messages on an association without asynchronous
operations come one at a time (PS3.7 10.1), so the two never overlap.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["C_ECHO_RQ", "C_STORE_RQ", "Claim", "Command", "MessageRouter", "Request", "decode_command", "p_data_tf"]

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
_NO_DATA_SET = 0x0101
_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)


@dataclass(frozen=True, slots=True)
class Command:
    """What a request's command set says (group 0000, Implicit VR Little Endian, PS3.7 E)."""

    field: int
    message_id: int
    sop_class: str
    sop_uid: str
    has_data_set: bool
    move_originator: str = ""


@dataclass(slots=True)
class Request:
    """A request served by us: its command, its presentation context, its data set's fragments."""

    command: Command
    context_id: int
    fragments: list[memoryview] = field(default_factory=list)

    def data_set(self, prefix: bytes = b"") -> bytes:
        """The data set's bytes after ``prefix``, in one copy."""
        return b"".join((prefix, *self.fragments))


def decode_command(encoded: bytes | bytearray) -> Command | None:
    """The elements a request is served by; None when the command set is malformed."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(encoded)
    while offset + 8 <= end:
        group, element, length = struct.unpack_from("<HHI", encoded, offset)
        offset += 8
        if group != 0 or offset + length > end:
            return None
        values[element] = bytes(encoded[offset:offset + length])
        offset += length
    if offset != end or 0x0100 not in values or 0x0110 not in values:
        return None
    try:
        field_, = struct.unpack("<H", values[0x0100])
        message_id, = struct.unpack("<H", values[0x0110])
        data_set_type, = struct.unpack("<H", values.get(0x0800, b"\x01\x01"))
        return Command(field_, message_id, _text(values.get(0x0002, b"")), _text(values.get(0x1000, b"")),
                       data_set_type != _NO_DATA_SET, _text(values.get(0x1030, b"")))
    except (struct.error, UnicodeDecodeError):
        return None


def _text(value: bytes) -> str:
    return value.decode("ascii").rstrip("\0 ")


def p_data_tf(context_id: int, control: int, value: bytes) -> bytes:
    """An encoded P-DATA-TF PDU with one PDV item (PS3.8 9.3.5)."""
    return struct.pack(">BBLLBB", 0x04, 0, len(value) + 6, len(value) + 2, context_id, control) + value


# Decides, for a request whose command set is complete, whether we serve it ourselves.
Claim = Callable[[Command, int], bool]
Serve = Callable[[Request], None]


class MessageRouter:
    """One association's P-DATA stream, split between our requests and pynetdicom's messages.

    ``feed`` takes each received P-DATA-TF PDU and returns the encoded PDU to pass on to
    pynetdicom (the same object when nothing of it was ours, None when all of it was);
    a request we ``claim`` is given to ``serve`` when its last fragment is in.
    """

    def __init__(self, claim: Claim, serve: Serve) -> None:
        self._claim = claim
        self._serve = serve
        self._command = bytearray()  # the command set being assembled
        self._held: list[memoryview] = []  # its PDV items, until we know whose message it is
        self._ours: Request | None = None  # the request whose data set is arriving
        self._theirs = False  # a message of pynetdicom's is arriving: pass it on whole
        self.error = ""  # set when the stream breaks the rules; nothing more is accepted then

    def feed(self, pdu: bytearray) -> bytearray | bytes | None:
        """Route the PDV items of ``pdu``; what is not ours comes back to be passed on. After a
        violation of the rules, ``error`` says which, and the caller must abort."""
        if self.error:
            return None
        view = memoryview(pdu)
        passed: list[memoryview] = []
        carried = bool(self._held)  # items of an earlier PDU may be passed on with this one's
        items, offset, end = 0, 6, len(pdu)
        while offset < end and not self.error:
            length = int.from_bytes(view[offset:offset + 4], "big") if offset + 6 <= end else 0
            if length < 2 or offset + 4 + length > end:
                self.error = f"a PDV item of {length} bytes where {end - offset - 4} remain"
                break
            self._item(view[offset:offset + 4 + length], passed)
            items += 1
            offset += 4 + length
        if self.error or not passed:
            return None
        if len(passed) == items and not carried:
            return pdu
        body = b"".join(passed)
        return struct.pack(">BBL", 0x04, 0, len(body)) + body

    def _item(self, item: memoryview, passed: list[memoryview]) -> None:
        context_id, control = item[4], item[5]
        value = item[6:]
        if self._theirs:
            passed.append(item)
            if not control & _COMMAND and control & _LAST:
                self._theirs = False
            return
        request = self._ours
        if request is not None:
            if control & _COMMAND or context_id != request.context_id:
                self.error = "a C-STORE data set interrupted by another message"
                return
            request.fragments.append(value)
            if control & _LAST:
                self._ours = None
                self._serve(request)
            return
        self._held.append(item)
        if not control & _COMMAND:  # a data set before its command: pynetdicom's to refuse
            self._pass_held(passed, more=False)
            return
        self._command += value
        if not control & _LAST:
            return
        command = decode_command(self._command)
        if command is None or not self._claim(command, context_id):
            self._pass_held(passed, more=command is None or command.has_data_set)
            return
        self._held.clear()
        self._command.clear()
        request = Request(command, context_id)
        if command.has_data_set:
            self._ours = request
        else:
            self._serve(request)

    def _pass_held(self, passed: list[memoryview], *, more: bool) -> None:
        passed.extend(self._held)
        self._held.clear()
        self._command.clear()
        self._theirs = more
