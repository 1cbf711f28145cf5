"""The node's listening side: a DICOM port that strangers cannot starve or exhaust.

pynetdicom gives every connection an association thread and a DUL thread, counts every
connection against ``maximum_associations`` from the moment it is accepted, waits the
whole ACSE timeout for an A-ASSOCIATE-RQ, performs the TLS handshake in the accepting
thread, and buffers whatever PDU length a peer declares. Here, by subclassing its server,
request handler, association and DUL (the package itself is left alone):

- A connection is *pending* until its A-ASSOCIATE-RQ has arrived whole. Pending
  connections are bounded separately (``max_pending``; the oldest is dropped first) and
  each must complete its TLS handshake and its request within ``association_timeout``.
- Junk is screened before pynetdicom builds anything for it: the first PDU header is
  awaited without polling (``select`` with ``SO_RCVLOWAT``) and must announce an
  A-ASSOCIATE-RQ of sane size, or the connection gets an A-ABORT and is closed.
- Only associations past their request hold one of the ``max_associations`` slots.
- Every PDU length is checked before a byte of its body is read: an A-ASSOCIATE-RQ of
  more than ``MAX_ASSOCIATE_RQ``, a P-DATA of more than the maximum PDU size we advertise,
  or a DIMSE message beyond ``max_object_mb`` aborts the association. So an association
  holds at most one PDU plus the message being assembled.
- C-STORE and C-ECHO requests are taken from the P-DATA stream by the DUL thread as it
  reads it (``net.receive``) and answered there, with responses encoded by hand
  (``net.dimse``); so is every C-FIND response (``on_find`` gives the matches encoded).
  Every other message takes pynetdicom's own path.
- Neither of an association's two threads polls. pynetdicom's DUL thread sleeps 1 ms
  whenever it finds nothing to do, and its association thread sleeps 1 ms every turn, so
  each message waits for both in each direction. Here the DUL thread waits in ``select``
  on the socket and on a wake-up socket written whenever something is queued for sending,
  and the association thread waits on an event set whenever a message is queued for it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicomfs.net.dimse import c_echo_rsp, c_find_rsp, c_store_rsp, send_command, send_message
from dicomfs.net.receive import C_ECHO_RQ, C_STORE_RQ, Command, MessageRouter, Request, p_data_tf

log = logging.getLogger(__name__)

# What the node does with a received instance: a status, and an error comment for a failure.
StoreReply = tuple[int, str]
StoreHandler = Callable[[Association, Request, PresentationContext], StoreReply]
# How the node answers a C-FIND: (status, encoded identifier of a match, error comment)...
FindHandler = Callable[[Association, C_FIND, PresentationContext], Iterator[tuple[int, "bytes | None", str]]]
_PROCESSING_FAILURE = 0xC211  # what pynetdicom answers when a C-STORE handler raises
_VERIFICATION = "1.2.840.10008.1.1"
_FIND_FAILURE = 0xC311  # and when a C-FIND handler does

# The largest A-ASSOCIATE-RQ accepted: 128 presentation contexts with every transfer syntax,
# extended negotiation and two 64 KiB user identity fields stay well below it.
MAX_ASSOCIATE_RQ = 1 << 20
_SMALL_PDU = 1024  # A-RELEASE-RQ/RP and A-ABORT carry 4 bytes
_RECV_CHUNK = 1 << 20
_IDLE_TURN = 0.05  # seconds an idle connection's threads wait before they look at their timers again


def _a_abort(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (PS3.8 9.3.8): 2 unexpected PDU, 6 invalid value."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)


@dataclass(frozen=True, slots=True)
class Limits:
    association_timeout: float  # connect (and TLS handshake) to a complete A-ASSOCIATE-RQ
    network_timeout: float  # a stalled PDU, once associated
    max_pdu: int  # what we advertise and accept for P-DATA; 0: no advertised limit
    max_object: int  # bytes of one DIMSE message (command or data set)

    def refusal(self, pdu_type: int, length: int, pending: bool) -> str | None:
        """Why a PDU with this header is refused, before its body is read; None if it is not."""
        if pending:
            if pdu_type != 0x01:
                return f"its first PDU is not an A-ASSOCIATE-RQ (type 0x{pdu_type:02X})"
            if length > MAX_ASSOCIATE_RQ:
                return f"an A-ASSOCIATE-RQ of {length} bytes (at most {MAX_ASSOCIATE_RQ} accepted)"
            return None
        if pdu_type == 0x04:
            if self.max_pdu and length > self.max_pdu:
                return f"a P-DATA PDU of {length} bytes, more than the {self.max_pdu} we advertised (max_pdu)"
            if length > self.max_object + _SMALL_PDU:
                return f"a P-DATA PDU of {length} bytes, more than max_object_mb"
            return None
        if pdu_type in (0x01, 0x02, 0x03):
            return f"an A-ASSOCIATE PDU of {length} bytes on an association" if length > MAX_ASSOCIATE_RQ else None
        if pdu_type in (0x05, 0x06, 0x07):
            return f"a PDU of type 0x{pdu_type:02X} and {length} bytes" if length > _SMALL_PDU else None
        return f"a PDU of unknown type 0x{pdu_type:02X}"


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, while it matters to the admission."""

    sock: socket.socket  # replaced by its TLS socket after the handshake
    host: str
    deadline: float  # monotonic time by which its A-ASSOCIATE-RQ must be complete
    dropped: bool = False

    def drop(self) -> None:
        """Wake whatever thread reads it: shutdown, not close (the reader owns the descriptor)."""
        self.dropped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Admission:
    """Who holds a place on the port: pending connections, and established associations."""

    max_pending: int
    max_associations: int
    _pending: dict[Connection, None] = field(default_factory=dict)  # in arrival order
    _established: set[Association] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def arrived(self, connection: Connection) -> None:
        """Register a new connection; the oldest pending one makes room if all places are taken."""
        with self._lock:
            self._pending[connection] = None
            evicted = []
            while len(self._pending) > self.max_pending:
                oldest = next(iter(self._pending))
                del self._pending[oldest]
                evicted.append(oldest)
        for oldest in evicted:
            log.info("dropped a connection from %s: %d others are waiting to associate (max_pending)",
                     oldest.host, self.max_pending)
            oldest.drop()

    def requested(self, connection: Connection) -> None:
        with self._lock:
            self._pending.pop(connection, None)

    def claim(self, assoc: Association) -> bool:
        """A slot for an association whose request arrived; False when all are taken."""
        with self._lock:
            if len(self._established) >= self.max_associations:
                return False
            self._established.add(assoc)
            return True

    def gone(self, connection: Connection, assoc: Association | None) -> None:
        with self._lock:
            self._pending.pop(connection, None)
            self._established.discard(assoc)  # type: ignore[arg-type]

    def drop_pending(self) -> None:
        with self._lock:
            pending, self._pending = list(self._pending), {}
        for connection in pending:
            connection.drop()

    @property
    def counts(self) -> tuple[int, int]:
        """(pending connections, established associations), for tests and status."""
        with self._lock:
            return len(self._pending), len(self._established)


class _IdleTimeoutIsOurs(logging.Filter):
    """pynetdicom logs an idle peer's timeout as an ERROR; ``GuardedDUL`` logs it as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = isinstance(threading.current_thread(), GuardedAssociation)  # the reactor runs in its thread
        return not (ours and record.getMessage() == "Network timeout reached")


logging.getLogger("pynetdicom.association").addFilter(_IdleTimeoutIsOurs())


class _WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake`` after each ``put``: its reader waits instead of polling it."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Wakeup:
    """A socket pair: a thread blocked in ``select`` on ``fileno()`` returns when ``set`` is called."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def set(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: enough wake-ups are waiting already
            self._writer.send(b"\0")

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            while self._reader.recv(4096):
                pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class GuardedDUL(DULServiceProvider):
    """pynetdicom's upper layer, with every PDU length checked before its body is read,
    waiting in ``select`` rather than polling."""

    def __init__(self, assoc: GuardedAssociation) -> None:
        super().__init__(assoc)
        self._wakeup = _Wakeup()
        self.to_provider_queue = _WakingQueue(self._wakeup.set)  # what the association sends
        self._run_loop_delay = 0  # the waiting is done in _wait_for_work
        self.connection = assoc.connection
        self.limits = assoc.limits
        self.admission = assoc.admission
        self._requested = False  # the A-ASSOCIATE-RQ has arrived whole
        self._refused = False  # an A-ABORT was sent for a violation: close, read nothing more
        self._woken = False
        self._idle_reported = False
        self._message_bytes = [0, 0]  # bytes of the data set [0] and command [1] being assembled
        self.node_assoc = assoc
        self._router = MessageRouter(assoc.claims, self._serve)

    def _read_pdu_data(self) -> None:
        pending = not self._requested
        header = bytearray(6)
        if not self._receive(header, 0, pending):
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        refusal = self.limits.refusal(pdu_type, length, pending)
        pdu = header
        if refusal is None:
            pdu = bytearray(6 + length)  # one buffer for the whole PDU, filled in place
            pdu[:6] = header
            if not self._receive(pdu, 6, pending):
                return
            if pdu_type == 0x04:
                refusal = self._count_fragments(pdu, 6)
        if refusal is not None:
            self._refuse(refusal, pending)
            return
        if pdu_type == 0x04 and self.state_machine.current_state == "Sta6":
            passed = self._router.feed(pdu)  # our requests are served on the way
            if self._router.error:
                self._refuse(self._router.error, pending)
                return
            if passed is None:
                return
            pdu = passed
        try:
            decoded, event = self._decode_pdu(pdu)
        except Exception as exc:
            self._refuse(f"an undecodable PDU of type 0x{pdu_type:02X} ({exc})", pending)
            return
        if pending:
            self._requested = True
            self.admission.requested(self.connection)
            self._raw.settimeout(self.limits.network_timeout)
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    @property
    def _raw(self) -> socket.socket:
        return self.socket.socket  # type: ignore[union-attr,return-value]

    def _receive(self, buffer: bytearray, start: int, pending: bool) -> bool:
        """Fill ``buffer`` from ``start``; False when the transport ended (then reported closed)."""
        view = memoryview(buffer)
        got, size = start, len(buffer)
        try:
            while got < size:
                if pending:
                    remaining = self.connection.deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self._raw.settimeout(remaining)
                count = self._raw.recv_into(view[got:], min(size - got, _RECV_CHUNK))
                if count == 0:
                    break
                got += count
        except TimeoutError:
            if pending:
                log.info("dropped a connection from %s: no complete A-ASSOCIATE-RQ within %g s "
                         "(association_timeout)", self.connection.host, self.limits.association_timeout)
            else:
                log.warning("aborted the association from %s: a PDU stalled for %g s (network_timeout)",
                            self.connection.host, self.limits.network_timeout)
        except (OSError, ValueError, AttributeError):
            pass  # reset, or closed under us (a dropped pending connection): the transport is gone
        finally:
            view.release()
        if got == size:
            return True
        self.event_queue.put("Evt17")
        return False

    def _count_fragments(self, pdu: bytearray, offset: int) -> str | None:
        """Bound the DIMSE message being assembled from this P-DATA's fragments (PS3.8 E.2)."""
        while offset + 6 <= len(pdu):
            item_length = int.from_bytes(pdu[offset:offset + 4], "big")
            control = pdu[offset + 5]
            kind = control & 0x01  # 1: command, 0: data set
            self._message_bytes[kind] += max(item_length - 2, 0)
            if self._message_bytes[kind] > self.limits.max_object:
                return f"a DIMSE message of more than {self.limits.max_object} bytes (max_object_mb)"
            if control & 0x02:  # the last fragment of its message
                self._message_bytes[kind] = 0
            offset += 4 + item_length
        return None

    def _serve(self, request: Request) -> None:
        """Answer a request the router took, here: its response goes out before the next PDU
        is read, and this thread is the one that writes to the socket."""
        self.socket.send(p_data_tf(request.context_id, 0x03, self.node_assoc.answer(request)))  # type: ignore[union-attr]

    def _refuse(self, reason: str, pending: bool) -> None:
        what = "a connection" if pending else "the association"
        log.warning("aborted %s from %s: %s", what, self.connection.host, reason)
        self._refused = True
        self.event_queue.put("Evt19")  # the state machine sends the A-ABORT

    def _is_transport_event(self) -> bool:
        state = self.state_machine.current_state
        if self._refused and state == "Sta13":
            self.socket.close()  # type: ignore[union-attr]  # the rest of an oversized PDU stays unread
            return True
        if state != "Sta13" and self.event_queue.empty() and self.to_provider_queue.empty():
            self._wait_for_work()
        return super()._is_transport_event()

    def _wait_for_work(self) -> None:
        """Block until the peer sends, something is queued to send, or a turn of the timers:
        pynetdicom polls every millisecond, and many idle connections polling (pending ones
        too) would take the CPU that real associations need."""
        raw = self._raw
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return
        waiting = [self._wakeup] if raw is None or raw.fileno() < 0 else [raw, self._wakeup]
        with contextlib.suppress(OSError, ValueError):
            select.select(waiting, [], [], _IDLE_TURN)
        self._wakeup.clear()

    def idle_timer_expired(self) -> bool:
        expired = super().idle_timer_expired()
        if expired and not self._idle_reported:
            self._idle_reported = True
            log.warning("aborted the association from %s: idle for %g s (network_timeout)", self.connection.host,
                        self.limits.network_timeout)
        return expired

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self._wakeup.close()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wakeup.set()
            if threading.current_thread() is not self and self.is_alive():
                self.join()
            return True
        return False

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wakeup.set()
        if not self._requested and not self._woken:
            # The association thread waits for an A-ASSOCIATE-RQ that will not come: wake it
            # now (None is what its timeout gives) rather than after the whole timeout.
            self._woken = True
            self.to_user_queue.put(None)  # type: ignore[arg-type]


class _ReactorGate(threading.Event):
    """pynetdicom's reactor checkpoint, which the association thread passes once per turn.

    Passing it now also waits, while no message is queued for the thread, until one is
    (``work`` is set by the queues) or a turn of the timers has passed.
    """

    def __init__(self, assoc: GuardedAssociation) -> None:
        super().__init__()
        self.set()
        self.work = threading.Event()
        self._assoc = assoc

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        assoc = self._assoc
        self.work.clear()
        if assoc.dimse.msg_queue.empty() and assoc.dul.to_user_queue.empty() and not assoc._kill:
            self.work.wait(_IDLE_TURN)
        return passed


class GuardedAssociation(Association):
    """An acceptor association that uses ``GuardedDUL`` and gives its place back when it ends."""

    def __init__(self, ae: ApplicationEntity, connection: Connection, limits: Limits, admission: Admission,
                 on_store: StoreHandler, on_find: FindHandler) -> None:
        self.connection = connection
        self.limits = limits
        self.admission = admission
        self.on_store = on_store
        self.on_find = on_find
        super().__init__(ae, MODE_ACCEPTOR)
        self.dul = GuardedDUL(self)
        gate = self._reactor_checkpoint = _ReactorGate(self)
        self.dimse.msg_queue = _WakingQueue(gate.work.set)  # requests for this thread to serve
        self.dul.to_user_queue = _WakingQueue(gate.work.set)  # release and abort requests
        self.acse_timeout = limits.association_timeout  # also the DUL's ARTIM timer
        self.network_timeout = self.network_timeout  # onto the new DUL's idle timer

    def claims(self, command: Command, context_id: int) -> bool:
        """Whether the DUL thread serves this request itself (``answer``): a well-formed C-STORE
        or C-ECHO request on an accepted context while the association is not being released.
        Anything else, pynetdicom validates and answers."""
        context = self._accepted_cx.get(context_id)
        if context is None or self._sent_release or not self.is_established:
            return False
        if command.field == C_ECHO_RQ:
            return not command.has_data_set and context.abstract_syntax == _VERIFICATION
        return command.field == C_STORE_RQ and command.has_data_set and bool(command.sop_class and command.sop_uid)

    def answer(self, request: Request) -> bytes:
        """The encoded response to a C-ECHO (always success) or a C-STORE request (``on_store``)."""
        command = request.command
        if command.field == C_ECHO_RQ:
            return c_echo_rsp(command.message_id)
        try:
            status, comment = self.on_store(self, request, self._accepted_cx[request.context_id])
        except Exception:
            log.exception("C-STORE failed")
            status, comment = _PROCESSING_FAILURE, "the archive failed to store it"
        return c_store_rsp(command.message_id, command.sop_class, command.sop_uid, status, comment)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """What the router passed on (``claims`` said no): a C-FIND is answered by hand, the
        rest by pynetdicom."""
        context = self._accepted_cx.get(context_id)
        if context is not None and isinstance(msg, C_FIND) and not self._sent_release and msg.is_valid_request:
            self._serve_find(msg, context_id, context)
            return
        super()._serve_request(msg, context_id)

    def _serve_find(self, msg: C_FIND, context_id: int, context: PresentationContext) -> None:
        message_id, sop_class = int(msg.MessageID or 0), str(msg.AffectedSOPClassUID)
        self.dimse.cancel_req = {}  # as pynetdicom: a C-CANCEL from before this request is not for it
        try:
            for status, identifier, comment in self.on_find(self, msg, context):
                if not self.is_established:
                    return
                rsp = c_find_rsp(message_id, sop_class, status, identifier=identifier is not None, comment=comment)
                send_message(self, context_id, rsp, identifier)
        except Exception:
            log.exception("C-FIND failed")
            send_command(self, context_id, c_find_rsp(message_id, sop_class, _FIND_FAILURE, identifier=False,
                                                     comment="the query failed"))

    def kill(self) -> None:
        self._reactor_checkpoint.work.set()  # type: ignore[attr-defined]
        super().kill()

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self.admission.gone(self.connection, self)


class _RequestHandler(RequestHandler):
    server: NodeAssociationServer

    def handle(self) -> None:
        server = self.server
        host = str(self.client_address[0])
        connection = Connection(self.request, host, time.monotonic() + server.limits.association_timeout)
        server.admission.arrived(connection)
        if server.ssl_context is not None:
            admitted = self._handshake(connection, server.ssl_context)
        else:
            admitted = self._screen(connection, server.limits)
        if not admitted:
            server.admission.gone(connection, None)
            return
        assoc = self._associate(connection)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _screen(self, connection: Connection, limits: Limits) -> bool:
        """Wait, without polling, for the first PDU header; refuse junk before pynetdicom
        builds an association (two threads, polling every millisecond) for it.

        The header is only peeked at (the association reads it again); SO_RCVLOWAT makes
        ``select`` wait for all six bytes, or the end of the connection.
        """
        sock = connection.sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 6)
            readable, _, _ = select.select([sock], [], [], max(connection.deadline - time.monotonic(), 0))
            if not readable:
                log.info("dropped a connection from %s: no A-ASSOCIATE-RQ within %g s (association_timeout)",
                         connection.host, limits.association_timeout)
            else:
                header = sock.recv(6, socket.MSG_PEEK)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                if len(header) == 6:  # fewer: the peer closed, or the admission dropped it
                    pdu_type, _, length = struct.unpack(">BBL", header)
                    refusal = limits.refusal(pdu_type, length, pending=True)
                    if refusal is None:
                        return True
                    log.warning("aborted a connection from %s: %s", connection.host, refusal)
                    sock.sendall(_a_abort(0x02 if pdu_type != 0x01 else 0x06))
        except (OSError, ValueError):
            pass  # reset by the peer, or dropped by the admission
        sock.close()
        return False

    def _handshake(self, connection: Connection, context: ssl.SSLContext) -> bool:
        """TLS in this connection's own thread, bounded by the association timeout."""
        raw = connection.sock
        try:
            raw.settimeout(max(connection.deadline - time.monotonic(), 0.001))
            connection.sock = context.wrap_socket(raw, server_side=True)
            return True
        except (OSError, ValueError) as exc:
            log.info("dropped a connection from %s: TLS handshake failed (%s)", connection.host,
                     "timed out" if isinstance(exc, TimeoutError) else exc)
            raw.close()
            return False

    def _associate(self, connection: Connection) -> GuardedAssociation:
        """As pynetdicom's own handler does, with our association class and limits."""
        server, ae = self.server, self.ae
        assoc = GuardedAssociation(ae, connection, server.limits, server.admission, server.on_store, server.on_find)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"  # pynetdicom finds its threads by name
        assoc.set_socket(AssociationSocket(assoc, client_socket=connection.sock))
        assoc.acceptor.maximum_length = server.limits.max_pdu
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        # Shared, not copied: negotiation only reads them (pynetdicom deep-copies ~1,000 contexts
        # per association, 2-3 ms of an echo's ~12); a filter replaces the list, never an item.
        assoc.acceptor.supported_contexts = server.contexts
        assoc.requestor.address_info = AddressInformation.from_tuple(self.client_address)
        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:  # type: ignore[misc]
                    assoc.bind(event, handler, args)
        return assoc


class NodeAssociationServer(ThreadedAssociationServer):
    """Accepts quickly (TCP_NODELAY, a deep backlog, no handshake here) and admits with limits."""

    request_queue_size = 128  # a burst of connections must not overflow the listen backlog
    daemon_threads = True

    def __init__(self, *args: Any, limits: Limits, admission: Admission, on_store: StoreHandler,
                 on_find: FindHandler, **kwargs: Any) -> None:
        self.limits = limits
        self.admission = admission
        self.on_store = on_store
        self.on_find = on_find
        super().__init__(*args, request_handler=_RequestHandler, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        # Without TCP_NODELAY each object stalls ~45 ms (docs/dicom.md).
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address
