"""The DICOM node's requesting side: echo, query (C-FIND) and retrieve (C-GET, C-MOVE) from remote PACS.

Every call opens one association, makes one request and releases it. Every way a remote can
fail us (no connection, rejection, abort, silence, a failure status) becomes a ``RemoteError``
naming the remote, the operation and the reason; no step (connect, association, each
response, each read or write on the socket) waits longer than ``timeout``.

C-GET is the fetch path, so it is tuned. Pulling 500 CT slices (512x512) from Orthanc on
loopback (2-core machine): a plain pynetdicom requestor 2.6-3.0 s, this one 1.0-1.2 s, DCMTK
getscu 0.4-0.5 s. What was removed, per instance:
- waiting on Nagle and on 16 KiB PDUs: TCP_NODELAY, and PDUs of unlimited size (2.2 s);
- pynetdicom's C-STORE answer path (event machinery, a pydicom dataset encoded for a fixed
  seven-element response): ``_StoreReplier`` encodes it directly;
- pynetdicom's DUL thread polling (it sleeps 1 ms whenever idle): ``_Socket`` makes it wait
  in ``select`` on the socket and on a wake-up socket written after each C-STORE response.
  Each of these two alone gains ~0.3 s; together they take 2.2 s to 1.0-1.2 s;
- PDUs appended 4 KiB at a time and extra copies: one buffer per PDU, one copy of the
  received dataset (into the bytes handed to ``on_instance``);
- pynetdicom's assembly and decoding of each C-STORE request, and its hand-over to the
  thread that iterates the C-GET responses: the requests are taken from the P-DATA stream
  in the DUL thread (``net.receive``, ``_Socket.route``) and answered there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, build_context, build_role
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE, SOPClassExtendedNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import code_to_category
from pynetdicom.transport import AddressInformation, AssociationSocket

from dicomfs.config import RemoteNode
from dicomfs.errors import UserError
from dicomfs.net.dimse import c_store_rsp, send_command
from dicomfs.net.receive import C_STORE_RQ, Claim, Command, MessageRouter, Request, p_data_tf
from dicomfs.net.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PENDING_CODES, SOP_CLASS_NOT_SUPPORTED, SUCCESS
from dicomfs.parse import part10_header

__all__ = ["LEVELS", "Finder", "RemoteError", "RemoteRefusedError", "RemoteTimeoutError", "RetrieveResult", "echo",
           "find", "finder", "get", "move"]

log = logging.getLogger(__name__)
_config.LOG_HANDLER_LEVEL = "none"

LEVELS = ("STUDY", "SERIES", "IMAGE")  # Study Root (PS3.4 C.6.2)
MAX_CONTEXTS = 128  # presentation context ids are the odd numbers 1..255 (PS3.8 9.3.2.2)
_A_ASSOCIATE_RJ = 0x03  # PDU types (PS3.8 9.3.4, 9.3.8)
_A_ABORT = 0x07
_DUL_EXIT_TIMEOUT = 2.0  # seconds; it ends within a poll interval of being told to
_RELATIONAL = b"\x01"  # C-FIND extended negotiation, byte 1: relational queries (PS3.4 C.5.1.1.1)


class RemoteError(Exception):
    """A remote PACS could not do what we asked: message names the remote, the operation and the status/reason."""

    def __init__(self, remote: RemoteNode, operation: str, reason: str, status: int | None = None,
                 result: RetrieveResult | None = None) -> None:
        where = f"{remote.name or remote.ae_title} ({remote.ae_title}@{remote.host}:{remote.port})"
        code = f" [status 0x{status:04X}]" if status is not None else ""
        super().__init__(f"{operation} on {where} failed: {reason}{code}")
        self.remote = remote.name or remote.ae_title
        self.status = status
        self.result = result  # the sub-operation counts of a failed C-GET/C-MOVE, when the remote sent them


class RemoteTimeoutError(RemoteError):
    """The remote did not answer within the timeout (frozen, overloaded, or a firewall dropping packets)."""


class RemoteRefusedError(RemoteError, UserError):
    """The remote rejected the association over an AE title: a setting to fix, here or on the remote."""


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    """Sub-operation counts and the final C-GET/C-MOVE status (0x0000 success or 0xB000 warning)."""

    completed: int
    failed: int
    warning: int
    status: int

    def with_unkept(self, unkept: int) -> RetrieveResult:
        """The remote counted as completed ``unkept`` instances we could not store: count them failed."""
        if not unkept:
            return self
        return replace(self, completed=max(self.completed - unkept, 0), failed=self.failed + unkept)


def echo(remote: RemoteNode, *, calling_ae: str, timeout: float) -> None:
    """C-ECHO: the remote answers DICOM at all."""
    with _association(remote, "C-ECHO", [build_context(Verification)], calling_ae, timeout) as assoc:
        _check_final(remote, "C-ECHO", assoc, assoc.send_c_echo())


def find(remote: RemoteNode, level: str, keys: dict[str, str], *, calling_ae: str, timeout: float) -> list[Dataset]:
    """Study Root C-FIND at ``level``: the identifiers of all matches (one request, as given).

    ``keys`` maps DICOM keywords to match values; ``""`` asks for the attribute to be returned.
    Answers are decoded per their own Specific Character Set. A query with non-ASCII values
    is sent as UTF-8 (ISO_IR 192) unless ``keys`` names a character set. ``net.walk`` asks at
    any level of a peer that answers hierarchical queries only.
    """
    _identifier(level, keys)  # a bad request is refused before connecting
    with finder(remote, calling_ae=calling_ae, timeout=timeout) as session:
        return session.find(level, keys)


class Finder:
    """C-FIND requests on one established association; ``relational`` if the peer agreed to them."""

    def __init__(self, remote: RemoteNode, assoc: Association) -> None:
        self.remote = remote
        self.assoc = assoc
        accepted = assoc.acceptor.sop_class_extended.get(StudyRootQueryRetrieveInformationModelFind, b"")
        self.relational = accepted[:1] == _RELATIONAL
        self.requests = 0  # C-FIND requests sent

    def find(self, level: str, keys: dict[str, str]) -> list[Dataset]:
        """One Study Root C-FIND: the identifiers of all matches."""
        identifier = _identifier(level, keys)
        self.requests += 1
        matches: list[Dataset] = []
        model = StudyRootQueryRetrieveInformationModelFind
        for status, answer in self.assoc.send_c_find(identifier, model):
            if status and status.Status in PENDING_CODES:
                if answer is None:
                    log.warning("%s: a C-FIND answer could not be decoded; skipped", self.remote.name)
                else:
                    matches.append(answer)
                continue
            _check_final(self.remote, "C-FIND", self.assoc, status)
        return matches


@contextlib.contextmanager
def finder(remote: RemoteNode, *, calling_ae: str, timeout: float) -> Iterator[Finder]:
    """An association for C-FIND that proposes relational queries (the peer may decline)."""
    proposal = SOPClassExtendedNegotiation()
    proposal.sop_class_uid = StudyRootQueryRetrieveInformationModelFind
    proposal.service_class_application_information = _RELATIONAL
    contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    with _association(remote, "C-FIND", contexts, calling_ae, timeout, [proposal]) as assoc:
        yield Finder(remote, assoc)


def get(
    remote: RemoteNode, level: str, keys: dict[str, str], *, calling_ae: str, timeout: float,
    sop_classes: Iterable[str], on_instance: Callable[[bytes], None],
) -> RetrieveResult:
    """Study Root C-GET: the remote sends the matching instances back on this association.

    Each instance reaches ``on_instance`` as Part 10 bytes: our File Meta Information, then
    exactly the dataset bytes received, in the transfer syntax the remote stores (see
    ``_storage_contexts``). It runs in the calling thread, one instance at a time; if it
    raises, that C-STORE is answered with a failure status (0xA700 for an ``OSError``, else
    0xC000) and the remote counts it as failed; the remote's next C-STORE waits for that answer.
    """
    model = StudyRootQueryRetrieveInformationModelGet
    identifier = _identifier(level, keys)
    classes = list(dict.fromkeys(str(uid) for uid in sop_classes))
    contexts = [build_context(model), *_storage_contexts(classes)]
    roles = [build_role(uid, scp_role=True) for uid in classes]  # we are the Storage SCP on this association
    with _association(remote, "C-GET", contexts, calling_ae, timeout, roles) as assoc:
        replier = _StoreReplier(assoc, remote, on_instance)
        assoc._c_store_scp = replier  # type: ignore[method-assign]
        assoc.dul.socket.route(replier.claims, replier.answer)  # type: ignore[union-attr]
        return _retrieve_result(remote, "C-GET", assoc, assoc.send_c_get(identifier, model), replier.counted)


def move(
    remote: RemoteNode, level: str, keys: dict[str, str], *, destination_ae: str, calling_ae: str, timeout: float
) -> RetrieveResult:
    """Study Root C-MOVE: the remote sends the matching instances to ``destination_ae``, which it must know."""
    model = StudyRootQueryRetrieveInformationModelMove
    identifier = _identifier(level, keys)
    with _association(remote, "C-MOVE", [build_context(model)], calling_ae, timeout) as assoc:
        responses = assoc.send_c_move(identifier, destination_ae, model)
        return _retrieve_result(remote, f"C-MOVE to {destination_ae}", assoc, responses)


# ----------------------------------------------------------------------------- requests and answers


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    if level not in LEVELS:
        raise ValueError(f"query level must be one of {', '.join(LEVELS)}, not {level!r}")
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"not a DICOM keyword: {keyword!r}")
        setattr(ds, keyword, value)
    if "SpecificCharacterSet" not in keys and not all(str(value).isascii() for value in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _storage_contexts(sop_classes: list[str]) -> list[PresentationContext]:
    """Storage contexts that let a C-GET remote send every instance in the transfer syntax it stores.

    An acceptor picks one transfer syntax per context, so a single context per class offering
    them all would let the remote pick one and transcode everything else. Each class gets
    such a context (so it is accepted at all), then, while context ids last, one context per
    transfer syntax, uncompressed first, in turns across the classes.
    """
    budget = MAX_CONTEXTS - 1  # the retrieve model takes one
    if not sop_classes:
        raise ValueError("a C-GET needs at least one SOP class to accept")
    if len(sop_classes) > budget:
        raise ValueError(f"at most {budget} SOP classes fit in one association, not {len(sop_classes)}")
    contexts = [build_context(uid, ALL_TRANSFER_SYNTAXES) for uid in sop_classes]
    uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    syntaxes = uncompressed + [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in uncompressed]
    for syntax in syntaxes:
        for uid in sop_classes:
            if len(contexts) == budget:
                return contexts
            contexts.append(build_context(uid, syntax))
    return contexts


def _retrieve_result(
    remote: RemoteNode, operation: str, assoc: Association, responses: Iterator[tuple[Dataset, Dataset | None]],
    counted: Callable[[], tuple[int, int]] | None = None,
) -> RetrieveResult:
    """The final response's counts; a C-GET remote that leaves them out gets ours (completed, failed)."""
    for status, _ in responses:
        if status and status.Status in PENDING_CODES:
            continue
        if not status or "Status" not in status:
            raise _silent(remote, operation, assoc)
        completed, failed = counted() if counted else (0, 0)
        result = RetrieveResult(
            completed=int(status.get("NumberOfCompletedSuboperations", completed) or 0),
            failed=int(status.get("NumberOfFailedSuboperations", failed) or 0),
            warning=int(status.get("NumberOfWarningSuboperations") or 0),
            status=int(status.Status),
        )
        _check_final(remote, operation, assoc, status, result)
        return result
    raise RemoteError(remote, operation, "the remote sent no final response")


def _check_final(remote: RemoteNode, operation: str, assoc: Association, status: Dataset,
                 result: RetrieveResult | None = None) -> None:
    """Raise unless ``status`` is a success or warning response."""
    if not status or "Status" not in status:
        raise _silent(remote, operation, assoc)
    code = int(status.Status)
    category = code_to_category(code)
    if category in ("Success", "Warning"):
        return
    comment = str(status.get("ErrorComment", "")).strip()
    reason = f"{category.lower()} status" + (f" ({comment})" if comment else "")
    raise RemoteError(remote, operation, reason, code, result)


def _silent(remote: RemoteNode, operation: str, assoc: Association) -> RemoteError:
    """The error for an association or a request that got no answer."""
    reason = _silence(assoc)
    timed_out = reason.startswith("no answer") or reason.startswith("cannot connect: timed out")
    return (RemoteTimeoutError if timed_out else RemoteError)(remote, operation, reason)


def _silence(assoc: Association) -> str:
    """Why an association or a request got no answer."""
    sock = assoc.dul.socket
    if isinstance(sock, _Socket):
        if sock.tcp.connect_error is not None:
            error = sock.tcp.connect_error
            return f"cannot connect: {error.strerror or error or 'timed out'} (is it running, at that host and port?)"
        if sock.peer_aborted:
            return "the remote aborted the association"
        if sock.peer_closed:
            return "the remote closed the connection"
    return f"no answer within {assoc.acse_timeout:g} s"


# ----------------------------------------------------------------------------- C-STORE on a C-GET


class _StoreReplier:
    """Keeps each instance a C-GET brings (``on_instance``) and answers its C-STORE.

    The requests are taken from the P-DATA stream in the DUL thread (``net.receive``;
    ``_Socket.route``), so pynetdicom neither assembles nor decodes them; one it passes on
    after all comes to ``__call__``, which stands in for ``Association._c_store_scp``. The
    C-STORE-RSP (PS3.7 9.3.1.2) is encoded by hand either way.
    """

    def __init__(self, assoc: Association, remote: RemoteNode, on_instance: Callable[[bytes], None]) -> None:
        self.assoc = assoc
        self.remote = remote
        self.on_instance = on_instance
        self.kept = 0
        self.refused = 0

    def counted(self) -> tuple[int, int]:
        return self.kept, self.refused

    def claims(self, command: Command, context_id: int) -> bool:
        return command.field == C_STORE_RQ and command.has_data_set and self.assoc.is_established

    def answer(self, request: Request) -> bytes:
        """Keep the instance; the encoded C-STORE-RSP."""
        command = request.command
        context = self.assoc._accepted_cx.get(request.context_id)
        if context is None or context.abstract_syntax != command.sop_class:
            status = SOP_CLASS_NOT_SUPPORTED
        else:
            status = self._keep(command.sop_class, command.sop_uid, str(context.transfer_syntax[0]), request)
        if status == SUCCESS:
            self.kept += 1
        else:
            self.refused += 1
        return c_store_rsp(command.message_id, command.sop_class, command.sop_uid, status)

    def __call__(self, request: C_STORE) -> None:
        context_id = int(request._context_id or 0)
        command = Command(C_STORE_RQ, int(request.MessageID or 0), str(request.AffectedSOPClassUID),
                          str(request.AffectedSOPInstanceUID), request.DataSet is not None)
        with (request.DataSet or io.BytesIO()).getbuffer() as dataset:
            response = self.answer(Request(command, context_id, [dataset]))
        send_command(self.assoc, context_id, response)  # dul.send_pdu, which wakes the DUL thread (``_Socket``)

    def _keep(self, sop_class: str, sop_uid: str, transfer_syntax: str, request: Request) -> int:
        header = part10_header(sop_class, sop_uid, transfer_syntax, source_ae=self.remote.ae_title)
        try:
            self.on_instance(request.data_set(header))  # the one copy of the received bytes
        except OSError as exc:
            log.error("cannot keep %s from %s: %s", sop_uid, self.remote.name, exc)
            return OUT_OF_RESOURCES
        except ValueError as exc:  # not usable DICOM (NotDicomError, InvalidInstanceError)
            log.warning("cannot keep %s from %s: %s", sop_uid, self.remote.name, exc)
            return CANNOT_UNDERSTAND
        except Exception:
            log.exception("cannot keep %s from %s", sop_uid, self.remote.name)
            return CANNOT_UNDERSTAND
        return SUCCESS


# ----------------------------------------------------------------------------- associations


class _TcpSocket(socket.socket):
    """Keeps the reason a connect failed: pynetdicom logs it and drops it."""

    connect_error: OSError | None = None

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self.connect_error = exc
            raise


class _Socket(AssociationSocket):
    """pynetdicom's requestor socket, made prompt, and able to say why an association went quiet.

    pynetdicom's DUL thread polls: when nothing is pending it sleeps 1 ms and looks again,
    so every PDU waits up to 1 ms in each direction. Here it blocks in ``select`` on the
    socket and on a wake-up socket written after each PDU queued to be sent; its timers and
    the order to stop wait at most ``POLL``. (Polling every 1 ms cost retrieve workers that
    wait for an instance to be indexed ~5% of a core each.)
    """

    POLL = 0.01

    def __init__(self, assoc: Association, address: AddressInformation, timeout: float) -> None:
        self.timeout = timeout
        self.tcp: _TcpSocket
        self.last_received = 0.0  # time.monotonic() of the last complete read
        self.peer_aborted = False  # an A-ABORT came
        self.rejection: A_ASSOCIATE | None = None  # the A-ASSOCIATE-RJ that came, decoded
        self._header = b""  # the last PDU type and length read
        self.peer_closed = False  # the connection closed before we had waited `timeout` for it
        self._waker, self._wakee = socket.socketpair()
        self._waker.setblocking(False)
        self._wakee.setblocking(False)
        super().__init__(assoc, address=address)
        assoc.dul._run_loop_delay = 0  # the waiting is done in ready()
        queue_pdu = assoc.dul.send_pdu

        def send_pdu(primitive: Any) -> None:
            queue_pdu(primitive)
            self.wake()

        assoc.dul.send_pdu = send_pdu  # type: ignore[method-assign]
        kill_dul = assoc.dul.kill_dul

        def kill() -> None:
            kill_dul()
            self.wake()

        assoc.dul.kill_dul = kill  # type: ignore[method-assign]

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        """As pynetdicom's, plus TCP_NODELAY, and a socket that keeps the reason a connect failed."""
        sock = _TcpSocket(socket.AF_INET if address.is_ipv4 else socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by the connection
        sock.bind(address.as_tuple)
        self.tcp = sock
        return sock

    def connect(self, primitive: Any) -> None:
        super().connect(primitive)
        if self._is_connected and self.socket is not None:
            self.socket.settimeout(self.timeout)  # pynetdicom clears it: a stalled peer must not block a read
            self.last_received = time.monotonic()

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or not self._is_connected:
            time.sleep(self.POLL)
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted already: the raw socket may have nothing more to say
        try:
            readable, _, _ = select.select([sock, self._wakee], [], [], self.POLL)
            if self._wakee in readable:
                self._wakee.recv(4096)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport closed, as pynetdicom does
            return False
        return sock in readable

    def recv(self, nr_bytes: int, prefix: bytes = b"") -> bytearray:
        """Fill one buffer in place (pynetdicom appends 4 KiB reads), after ``prefix``; short only
        if the peer closed."""
        assert self.socket is not None
        start = len(prefix)
        buffer = bytearray(start + nr_bytes)
        buffer[:start] = prefix
        with memoryview(buffer) as view:
            done = start
            while done < len(buffer):
                count = self.socket.recv_into(view[done:])
                if not count:
                    break
                done += count
        now = time.monotonic()
        if done < len(buffer):
            # after our own give-up (we abort after `timeout` of silence) the close is no news
            self.peer_closed |= now - self.last_received < self.timeout
            return buffer[:done]
        self.last_received = now
        # pynetdicom reads each PDU's type and length first, then its body
        if self._header[:1] == bytes([_A_ASSOCIATE_RJ]):
            self.rejection = _decoded_rejection(self._header + buffer[start:])
        self._header = bytes(buffer) if nr_bytes == 6 and not prefix else b""
        if self._header[:1] == bytes([_A_ABORT]):
            self.peer_aborted = True
        return buffer

    def route(self, claims: Claim, answer: Callable[[Request], bytes]) -> None:
        """From now on, P-DATA goes through a router before pynetdicom sees it (``_read_pdu``):
        the requests ``claims`` takes get ``answer``'s response."""

        def serve(request: Request) -> None:
            self.send(p_data_tf(request.context_id, 0x03, answer(request)))

        self._router = MessageRouter(claims, serve)
        self.assoc.dul._read_pdu_data = self._read_pdu  # type: ignore[method-assign]

    def _read_pdu(self) -> None:
        """The DUL's ``_read_pdu_data``, with the requests the router takes answered here: in the
        DUL thread, the one that writes to the socket, before the next PDU is read."""
        dul = self.assoc.dul
        header = self.recv(6)
        if len(header) < 6:
            dul.event_queue.put("Evt17")  # transport closed
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if not 0x01 <= pdu_type <= 0x07:
            dul.event_queue.put("Evt19")  # unrecognised PDU: A-ABORT
            return
        pdu = self.recv(length, prefix=header)
        if len(pdu) < 6 + length:
            dul.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and dul.state_machine.current_state == "Sta6":
            passed = self._router.feed(pdu)
            if self._router.error:
                log.warning("aborted the association with %s: %s", self.assoc.acceptor.ae_title, self._router.error)
                dul.event_queue.put("Evt19")
                return
            if passed is None:
                return
            pdu = passed
        try:
            decoded, event = dul._decode_pdu(pdu)
        except Exception:
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(decoded)

    def wake(self) -> None:
        """Bring the DUL thread out of ``select``: there is something to send."""
        with contextlib.suppress(OSError):  # BlockingIOError: full of wake-ups already
            self._waker.send(b"\0")

    def dispose(self) -> None:
        """Close every socket; only once the DUL thread has ended (pynetdicom leaves some open)."""
        for sock in (self._waker, self._wakee, self.tcp, self.socket):
            if sock is not None:
                sock.close()


def _decoded_rejection(pdu: bytes) -> A_ASSOCIATE | None:
    """An A-ASSOCIATE-RJ PDU as pynetdicom's primitive (which names result, source and reason)."""
    rj = A_ASSOCIATE_RJ()
    try:
        rj.decode(pdu)
    except (ValueError, struct.error):
        return None
    return rj.to_primitive()


class _AE(AE):
    """An AE whose associations use ``_Socket``."""

    def __init__(self, ae_title: str, timeout: float) -> None:
        super().__init__(ae_title=ae_title)
        self.timeout = timeout

    def _create_socket(self, assoc: Association, address: AddressInformation, tls_args: Any) -> _Socket:
        sock = _Socket(assoc, address, self.timeout)
        sock.tls_args = tls_args
        return sock


def _tls_args(remote: RemoteNode, operation: str) -> tuple[ssl.SSLContext, str] | None:
    """The client side of DICOM TLS (PS3.15 BCP 195): the node's certificate checked, ours if set."""
    if not remote.tls:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=remote.ca or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if remote.cert:
            context.load_cert_chain(remote.cert, remote.key)
    except (OSError, ssl.SSLError) as exc:
        raise RemoteError(remote, operation, f"cannot read its TLS files: {exc}") from None
    return context, remote.host


@contextlib.contextmanager
def _association(
    remote: RemoteNode, operation: str, contexts: list[PresentationContext], calling_ae: str, timeout: float,
    ext_neg: list[Any] | None = None,
) -> Iterator[Association]:
    """An established association: released after the block, aborted if it raised."""
    ae = _AE(calling_ae, timeout)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(
        remote.host, remote.port, contexts=contexts, ae_title=remote.ae_title, max_pdu=0, ext_neg=ext_neg,
        tls_args=_tls_args(remote, operation),
    )
    try:
        if not assoc.is_established:
            raise _refusal(remote, operation, assoc)
        try:
            yield assoc
        except BaseException:
            if assoc.is_established:
                assoc.abort()
            raise
        if assoc.is_established:
            assoc.release()
    finally:
        _dispose(assoc)


def _dispose(assoc: Association) -> None:
    """Close the association's sockets once its DUL thread has ended (it is told to stop on every path)."""
    if assoc.dul.is_alive():
        assoc.dul.join(_DUL_EXIT_TIMEOUT)
    sock = assoc.dul.socket
    if isinstance(sock, _Socket) and not assoc.dul.is_alive():
        sock.dispose()
    elif isinstance(sock, _Socket):
        log.warning("association with %s: its DUL thread did not end; sockets left open", assoc.acceptor.ae_title)


def _refusal(remote: RemoteNode, operation: str, assoc: Association) -> RemoteError:
    """Why an association was not established, as the error to raise.

    A remote that rejects and at once closes can beat pynetdicom's association thread to its
    check of the transport: it then aborts without looking at the rejection, which the
    socket has kept. A rejection over an AE title (PS3.8 9.3.4: source service user,
    reasons 3 and 7) is a setting to fix: ``RemoteRefusedError``.
    """
    rj = assoc.acceptor.primitive if assoc.is_rejected else None
    sock = assoc.dul.socket
    if rj is None and isinstance(sock, _Socket):
        rj = sock.rejection
    if rj is None:
        return _silent(remote, operation, assoc)
    if rj.result_source == 1 and rj.diagnostic == 7:
        return RemoteRefusedError(remote, operation, f"association rejected: called AE title not recognised "
                                  f"(the remote is not {remote.ae_title!r}: correct the ae_title of remote "
                                  f"{remote.name or remote.ae_title})")
    if rj.result_source == 1 and rj.diagnostic == 3:
        calling = str(assoc.requestor.ae_title).strip()
        return RemoteRefusedError(remote, operation, f"association rejected: calling AE title not recognised "
                                  f"(declare our AE title {calling!r} on the remote, or set [dicom] ae_title to "
                                  f"one it knows)")
    return RemoteError(remote, operation, f"association rejected ({rj.result_str}, {rj.source_str}: {rj.reason_str})")
