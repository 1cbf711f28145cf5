"""The P-DATA router of the node's associations (``net.receive``), fed PDUs directly."""

from __future__ import annotations

import struct

import pytest

from dicomfs.net.dimse import c_store_rsp
from dicomfs.net.receive import C_ECHO_RQ, C_STORE_RQ, Command, MessageRouter, Request, decode_command

CT = "1.2.840.10008.5.1.4.1.1.2"
_COMMAND, _LAST = 0x01, 0x02


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def command_set(field: int, message_id: int, *, sop_class: str = "", sop_uid: str = "", data_set: bool) -> bytes:
    body = b""
    if sop_class:
        body += _element(0x0002, _ui(sop_class))
    body += _element(0x0100, struct.pack("<H", field)) + _element(0x0110, struct.pack("<H", message_id))
    body += _element(0x0800, struct.pack("<H", 0x0000 if data_set else 0x0101))
    if sop_uid:
        body += _element(0x1000, _ui(sop_uid))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def item(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">LBB", len(value) + 2, context_id, control) + value


def pdu(*items: bytes) -> bytearray:
    body = b"".join(items)
    return bytearray(struct.pack(">BBL", 0x04, 0, len(body)) + body)


class Recorder:
    """Claims C-STORE and C-ECHO requests on context 1, as the node does on its accepted ones."""

    def __init__(self) -> None:
        self.served: list[tuple[Command, int, bytes]] = []

    def claim(self, command: Command, context_id: int) -> bool:
        return context_id == 1 and command.field in (C_STORE_RQ, C_ECHO_RQ)

    def serve(self, request: Request) -> None:
        self.served.append((request.command, request.context_id, request.data_set()))

    def router(self) -> MessageRouter:
        return MessageRouter(self.claim, self.serve)


def store_rq(message_id: int = 7) -> bytes:
    return command_set(C_STORE_RQ, message_id, sop_class=CT, sop_uid="1.2.3.4", data_set=True)


def test_a_store_request_in_fragments_over_several_pdus_is_served_with_its_bytes_joined() -> None:
    recorder = Recorder()
    router = recorder.router()
    assert router.feed(pdu(item(1, _COMMAND | _LAST, store_rq()), item(1, 0, b"ab"))) is None
    assert recorder.served == []  # the data set is not complete yet
    assert router.feed(pdu(item(1, 0, b"cd"))) is None
    assert router.feed(pdu(item(1, _LAST, b"ef"))) is None
    [(command, context_id, data)] = recorder.served
    assert (command.field, command.message_id, command.sop_class, command.sop_uid) == (C_STORE_RQ, 7, CT, "1.2.3.4")
    assert command.has_data_set and context_id == 1 and data == b"abcdef"
    assert router.error == ""


def test_an_echo_has_no_data_set_and_is_served_at_once() -> None:
    recorder = Recorder()
    router = recorder.router()
    assert router.feed(pdu(item(1, _COMMAND | _LAST, command_set(C_ECHO_RQ, 3, data_set=False)))) is None
    [(command, _, data)] = recorder.served
    assert command.field == C_ECHO_RQ and command.message_id == 3 and not command.has_data_set and data == b""


def test_a_message_not_claimed_is_passed_on_unchanged_and_whole() -> None:
    recorder = Recorder()
    router = recorder.router()
    find = command_set(0x0020, 9, sop_class="1.2.840.10008.5.1.4.1.2.2.1", data_set=True)
    first = pdu(item(1, _COMMAND | _LAST, find))
    assert router.feed(first) is first  # the very PDU: nothing was taken from it
    identifier = pdu(item(1, _LAST, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "))
    assert router.feed(identifier) is identifier  # the rest of pynetdicom's message follows it
    # the next request is ours again
    assert router.feed(pdu(item(1, _COMMAND | _LAST, store_rq(10)), item(1, _LAST, b"xy"))) is None
    assert [c.message_id for c, _, _ in recorder.served] == [10]


def test_a_store_on_a_context_not_claimed_goes_to_pynetdicom() -> None:
    recorder = Recorder()
    router = recorder.router()
    whole = pdu(item(3, _COMMAND | _LAST, store_rq()), item(3, _LAST, b"data"))
    assert router.feed(whole) is whole
    assert recorder.served == []


def test_a_command_split_over_two_pdus_is_passed_on_with_both_parts() -> None:
    recorder = Recorder()
    router = recorder.router()
    find = command_set(0x0020, 9, data_set=False)
    assert router.feed(pdu(item(1, _COMMAND, find[:10]))) is None  # held until its command is whole
    passed = router.feed(pdu(item(1, _COMMAND | _LAST, find[10:])))
    assert passed == pdu(item(1, _COMMAND, find[:10]), item(1, _COMMAND | _LAST, find[10:]))


def test_a_store_answered_in_the_same_pdu_as_the_next_message_keeps_the_order() -> None:
    recorder = Recorder()
    router = recorder.router()
    release_like = command_set(0x0FFF, 1, data_set=False)  # a C-CANCEL-like request of pynetdicom's
    passed = router.feed(pdu(item(1, _COMMAND | _LAST, store_rq()), item(1, _LAST, b"zz"),
                             item(1, _COMMAND | _LAST, release_like)))
    assert [d for _, _, d in recorder.served] == [b"zz"]
    assert passed == pdu(item(1, _COMMAND | _LAST, release_like))  # only what was not ours


@pytest.mark.parametrize("broken", [
    pdu(b"\x00\x00\x00\x10\x01\x03abc"),  # an item longer than its PDU
    pdu(b"\x00\x00\x00\x01\x01"),  # an item too short for its header
], ids=["overlong-item", "short-item"])
def test_a_malformed_pdu_is_an_error(broken: bytearray) -> None:
    router = Recorder().router()
    assert router.feed(broken) is None
    assert "PDV item" in router.error


def test_a_data_set_interrupted_by_another_message_is_an_error() -> None:
    recorder = Recorder()
    router = recorder.router()
    router.feed(pdu(item(1, _COMMAND | _LAST, store_rq()), item(1, 0, b"ab")))
    assert router.feed(pdu(item(1, _COMMAND | _LAST, command_set(C_ECHO_RQ, 2, data_set=False)))) is None
    assert "interrupted" in router.error and recorder.served == []
    assert router.feed(pdu(item(1, _LAST, b"cd"))) is None  # nothing is accepted any more


def test_decode_command_reads_what_a_request_is_served_by() -> None:
    command = decode_command(store_rq(5))
    assert command == Command(C_STORE_RQ, 5, CT, "1.2.3.4", True)
    assert decode_command(b"\x00\x00\x00\x01") is None  # not a whole element
    assert decode_command(_element(0x0100, b"\x01\x00")) is None  # no Message ID
    assert decode_command(b"\x08\x00\x05\x00" + b"\0" * 4) is None  # not group 0000
    # a malformed command set is never ours: it goes to pynetdicom, which refuses it
    router = Recorder().router()
    junk = pdu(item(1, _COMMAND | _LAST, b"\x00\x00\x00\x01\x99"))
    assert router.feed(junk) is junk


def test_a_store_response_carries_the_error_comment() -> None:
    encoded = c_store_rsp(7, CT, "1.2.3.4", 0xC000, "malformed DICOM: ünreadable")
    comment = encoded.index(b"\x00\x00\x02\x09")  # (0000,0902) Error Comment
    length, = struct.unpack_from("<I", encoded, comment + 4)
    assert encoded[comment + 8:comment + 8 + length] == b"malformed DICOM: ?nreadable "
    group_length, = struct.unpack_from("<I", encoded, 8)
    assert group_length == len(encoded) - 12
