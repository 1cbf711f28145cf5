"""Who may use the node, and what the port admits: the decisions, in process."""

from __future__ import annotations

import re
import socket
import threading

import pytest

from dicomfs.config import AllowSettings, DicomSettings, RemoteNode
from dicomfs.net import peers
from dicomfs.net.acceptor import MAX_ASSOCIATE_RQ, Admission, Connection, Limits


def _settings(**allow: list[str]) -> DicomSettings:
    return DicomSettings(allow=AllowSettings(**allow))


def test_loopback_with_empty_lists_admits_every_local_caller() -> None:
    policy = peers.build_policy(_settings(), loopback=True)
    assert all(policy.may(group, "ANY", "127.0.0.1") for group in peers.GROUPS)


def test_beyond_loopback_empty_lists_admit_nobody() -> None:
    policy = peers.build_policy(_settings(store=["CT01"]), loopback=False)
    assert policy.may("store", "CT01", "10.0.0.7")
    assert not policy.may("query", "CT01", "10.0.0.7")
    assert not policy.may("retrieve", "WS1", "10.0.0.7")
    assert policy.describe() == "store: CT01; query: nobody; retrieve: nobody"


def test_allow_any_opens_only_the_empty_lists() -> None:
    settings = _settings(query=["WS1"])
    settings.allow_any = True
    policy = peers.build_policy(settings, loopback=False)
    assert policy.may("store", "STRANGER", "203.0.113.9")
    assert not policy.may("query", "STRANGER", "203.0.113.9")


def test_non_empty_lists_apply_on_loopback_too() -> None:
    policy = peers.build_policy(_settings(store=["MODALITY@127.0.0.1"]), loopback=True)
    assert policy.may("store", "MODALITY", "127.0.0.1")
    assert not policy.may("store", "MODALITY", "127.0.0.2")
    assert not policy.may("store", "INTRUDER", "127.0.0.1")
    assert policy.may("query", "INTRUDER", "127.0.0.1")  # empty on loopback: local tools


@pytest.mark.parametrize(("entry", "ae", "host", "admitted"), [
    ("WS1", "WS1", "192.0.2.4", True),
    ("WS1", "WS2", "192.0.2.4", False),
    ("WS1@192.0.2.4", "WS1", "192.0.2.5", False),
    ("WS1@192.0.2.0/24", "WS1", "192.0.2.200", True),
    ("*", "ANYONE", "198.51.100.1", True),
    ("*@192.0.2.0/28", "ANYONE", "192.0.2.15", True),
    ("*@192.0.2.0/28", "ANYONE", "192.0.2.16", False),
    ("WS1@192.0.2.4", "WS1", "::ffff:192.0.2.4", True),  # a dual-stack socket's view of IPv4
    ("WS1@2001:db8::/32", "WS1", "2001:db8::1", True),
    ("WS1@localhost", "WS1", "127.0.0.1", True),
])
def test_rules(entry: str, ae: str, host: str, admitted: bool) -> None:
    policy = peers.build_policy(_settings(query=[entry]), loopback=False)
    assert policy.may("query", ae, host) is admitted


def test_remotes_may_store_but_not_query() -> None:
    settings = _settings(query=["WS1"])
    settings.remotes = [RemoteNode(name="pacs", ae_title="PACS", host="192.0.2.10", port=104)]
    policy = peers.build_policy(settings, loopback=False)
    assert policy.may("store", "PACS", "192.0.2.10")
    assert not policy.may("store", "PACS", "192.0.2.11")
    assert not policy.may("query", "PACS", "192.0.2.10")


def test_bad_entries_are_one_line_errors() -> None:
    with pytest.raises(peers.PeerError, match=r"\[dicom.allow\] store: entry '@10.0.0.1' has no AE title"):
        peers.build_policy(_settings(store=["@10.0.0.1"]), loopback=True)
    with pytest.raises(peers.PeerError, match=re.escape("host 'no-such-host.invalid' does not resolve")):
        peers.build_policy(_settings(query=["WS1@no-such-host.invalid"]), loopback=True)


def test_an_opening_without_declared_peers_is_refused() -> None:
    settings = DicomSettings(bind="0.0.0.0")
    with pytest.raises(peers.PeerError) as refused:
        peers.check_opening(settings, loopback=False)
    message = str(refused.value)
    assert "0.0.0.0:11112" in message and "[dicom.allow]" in message and "allow_any = true" in message
    assert "bind 127.0.0.1" in message and "\n" not in message
    peers.check_opening(settings, loopback=True)
    settings.allow_any = True
    peers.check_opening(settings, loopback=False)
    peers.check_opening(_settings(retrieve=["WS1"]), loopback=False)


def test_loopback_addresses() -> None:
    assert peers.listens_on_loopback_only("127.0.0.1")
    assert peers.listens_on_loopback_only("localhost")
    assert not peers.listens_on_loopback_only("0.0.0.0")
    assert not peers.listens_on_loopback_only("::")
    with pytest.raises(peers.PeerError, match=re.escape("cannot listen on 'no-such-host.invalid': no such address")):
        peers.listens_on_loopback_only("no-such-host.invalid")


LIMITS = Limits(association_timeout=5, network_timeout=60, max_pdu=1 << 20, max_object=1 << 30)


@pytest.mark.parametrize(("pdu_type", "length", "pending", "refused"), [
    (0x01, 300, True, None),
    (0x01, MAX_ASSOCIATE_RQ + 1, True, "an A-ASSOCIATE-RQ of"),
    (0x01, 0xFFFFFFFF, True, "an A-ASSOCIATE-RQ of 4294967295 bytes"),
    (0x04, 100, True, "its first PDU is not an A-ASSOCIATE-RQ (type 0x04)"),
    (0x47, 0x4554202F, True, "its first PDU is not an A-ASSOCIATE-RQ (type 0x47)"),  # "GET /"
    (0x04, 1 << 20, False, None),
    (0x04, (1 << 20) + 1, False, "more than the 1048576 we advertised"),
    (0x04, 0xFFFFFFFF, False, "a P-DATA PDU of 4294967295 bytes"),
    (0x05, 4, False, None),
    (0x07, 1 << 20, False, "a PDU of type 0x07"),
    (0x09, 4, False, "unknown type 0x09"),
])
def test_pdu_headers_are_judged_before_their_body(pdu_type: int, length: int, pending: bool,
                                                    refused: str | None) -> None:
    reason = LIMITS.refusal(pdu_type, length, pending)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_without_an_advertised_limit_a_pdu_is_bounded_by_the_object_size() -> None:
    unlimited = Limits(association_timeout=5, network_timeout=60, max_pdu=0, max_object=1 << 20)
    assert unlimited.refusal(0x04, 1 << 20, False) is None
    assert unlimited.refusal(0x04, 1 << 24, False) is not None


def _connection() -> tuple[Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    return Connection(ours, "127.0.0.1", deadline=0.0), theirs


def test_the_oldest_pending_connection_makes_room() -> None:
    admission = Admission(max_pending=3, max_associations=16)
    pairs = [_connection() for _ in range(5)]
    try:
        for connection, _ in pairs:
            admission.arrived(connection)
        assert [c.dropped for c, _ in pairs] == [True, True, False, False, False]
        assert pairs[0][1].recv(1) == b""  # the peer of a dropped connection sees it closed
        assert admission.counts == (3, 0)
        admission.requested(pairs[2][0])
        assert admission.counts == (2, 0)
    finally:
        for ours, theirs in pairs:
            ours.sock.close()
            theirs.close()


def test_only_established_associations_take_slots() -> None:
    admission = Admission(max_pending=64, max_associations=2)
    first, second, third = object(), object(), object()
    assert admission.claim(first) and admission.claim(second)  # type: ignore[arg-type]
    assert not admission.claim(third)  # type: ignore[arg-type]
    connection, theirs = _connection()
    try:
        admission.gone(connection, first)  # type: ignore[arg-type]
        assert admission.claim(third)  # type: ignore[arg-type]
    finally:
        connection.sock.close()
        theirs.close()


def test_claims_from_many_threads_never_exceed_the_limit() -> None:
    admission = Admission(max_pending=64, max_associations=5)
    won: list[bool] = []
    threads = [threading.Thread(target=lambda: won.append(admission.claim(object()))) for _ in range(50)]  # type: ignore[arg-type]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert won.count(True) == 5
