"""The DICOM node's acceptor side: associations and their allow-lists, and the services
Verification (C-ECHO), Storage (C-STORE), and Query/Retrieve (C-FIND, C-GET, C-MOVE).

Who may do what is decided in ``peers`` (resolved once at start); the port's defences
(pending connections, timeouts, PDU limits) are in ``acceptor``.

pynetdicom runs every association in its own thread. The C-STORE handler prepares the
received bytes there (slow work, off the event loop) and submits the instance to the trio
loop, which alone writes the index: data flows one way, and no SQLite writer runs in a
thread. Queries and retrieves read the index through a read-only connection per thread.
"""

from __future__ import annotations

import copy
import errno
import functools
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import apsw
import trio
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import AddressInformation, AssociationSocket

from dicomfs.config import DicomSettings
from dicomfs.errors import UserError
from dicomfs.index import cfind
from dicomfs.index.db import Database
from dicomfs.ingest.parsers import ParserPool
from dicomfs.ingest.prepare import SWITCH_INTERVAL, discard, prepare
from dicomfs.ingest.writer import Submit
from dicomfs.net import outgoing, peers
from dicomfs.net.acceptor import Admission, Limits, NodeAssociationServer, StoreReply
from dicomfs.net.dimse import encode_elements
from dicomfs.net.receive import Request
from dicomfs.net.status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    IDENTIFIER_DOES_NOT_MATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from dicomfs.parse import InvalidInstanceError, NotDicomError, part10_header
from dicomfs.store import Store

log = logging.getLogger(__name__)


class NodeError(UserError):
    """The node cannot listen where it is told to."""


class _NodeAE(AE):
    """Our AE: its own requests (C-MOVE sub-associations) send stored instances as stored."""

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        outgoing.sends_stored_bytes(assoc)  # the one place pynetdicom shows us the new association
        return super()._create_socket(assoc, address, tls_args)


class NodeServer:
    """The listening application entity; ``start`` binds, ``stop`` ends every association."""

    def __init__(self, settings: DicomSettings, store: Store, submit: Submit, index_path: Path) -> None:
        self.settings = settings
        self.store = store
        self.submit = submit
        self.index_path = index_path
        self._local = threading.local()
        # One writer per association that can be open, so no store waits for another's fsync.
        self.writers = ThreadPoolExecutor(settings.max_associations, thread_name_prefix="dicom-writer")
        self.parsers: ParserPool | None = None  # started with the node
        self._storing = 0  # C-STOREs being prepared now, over all associations
        self._storing_lock = threading.Lock()
        self._server: NodeAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self.admission = Admission(settings.max_pending, settings.max_associations)
        self.loopback = peers.listens_on_loopback_only(settings.bind)
        self.policy = peers.build_policy(settings, self.loopback)
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        s = self.settings
        _config.LOG_HANDLER_LEVEL = "none"
        _config.STORE_SEND_CHUNKED_DATASET = True  # a stored file goes out as its bytes (net/outgoing.py)
        ae = _NodeAE(ae_title=s.ae_title)
        # Established associations are counted by our Admission; pynetdicom's own count
        # includes connections that never associate, so it must never bite.
        ae.maximum_associations = 1 << 20
        ae.maximum_pdu_size = s.max_pdu
        ae.network_timeout = s.network_timeout
        ae.acse_timeout = s.network_timeout  # our own requests (C-MOVE sub-associations)
        ae.dimse_timeout = s.network_timeout
        ae.require_called_aet = s.check_called_ae
        ae.add_supported_context(Verification)
        for model in (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
                      PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet,
                      PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove):
            ae.add_supported_context(model)
        for context in AllStoragePresentationContexts:
            # scp_role: a C-GET requestor acts as Storage SCP on this association; for what we
            # send, each association gets its own order (_order_for_sending)
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)

        return ae

    def start(self) -> None:
        s = self.settings
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, _handle_association_request, [self]),
            (evt.EVT_C_GET, _handle_get, [self]),
            (evt.EVT_C_MOVE, _handle_move, [self]),
        ]
        limits = Limits(association_timeout=s.association_timeout, network_timeout=s.network_timeout,
                        max_pdu=s.max_pdu, max_object=int(s.max_object_mb * 2**20))
        try:
            self._server = self.ae.make_server(
                (s.bind, s.port), ae_title=s.ae_title, evt_handlers=handlers, server_class=NodeAssociationServer,
                ssl_context=self._ssl_context(), limits=limits, admission=self.admission,
                on_store=self.store_instance, on_find=self.answer_find,
            )
        except OSError as exc:
            raise NodeError(_listen_problem(s.bind, s.port, exc)) from None
        try:  # after binding, so that an address that cannot work is named first
            peers.check_opening(s, self.loopback)
        except peers.PeerError:
            self._server.server_close()
            self._server = None
            raise
        if s.parse_workers:
            self.parsers = ParserPool(s.parse_workers)
        sys.setswitchinterval(SWITCH_INTERVAL)  # see ingest.prepare
        self._thread = threading.Thread(target=self._server.serve_forever, name="dicom-acceptor", daemon=True)
        self._thread.start()
        self.ae._servers.append(self._server)  # as AE.start_server does; shutdown() expects it
        tls = " with TLS" if self.settings.tls.cert else ""
        log.info("DICOM node %s listening on %s:%d%s; %s", s.ae_title, s.bind, self._server.server_address[1], tls,
                 self.policy.describe())
        if not self.loopback and s.allow_any:
            log.warning("the DICOM node on %s:%d admits any AE from any host to every service whose allow-list "
                        "is empty (allow_any = true)", s.bind, s.port)
        elif not self.loopback and not tls:
            log.info("the DICOM node is reachable from other hosts without TLS: see docs/dicom.md")

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if not (tls.cert and tls.key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
        try:
            context.load_cert_chain(tls.cert, tls.key)
            if tls.ca:
                context.load_verify_locations(tls.ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise NodeError(f"cannot use the TLS files of [dicom.tls] (cert {tls.cert}, key {tls.key}"
                            f"{', ca ' + tls.ca if tls.ca else ''}): {getattr(exc, 'strerror', None) or exc}; "
                            "give PEM files this user can read") from None
        return context

    def stop(self) -> None:
        """Stop listening and end open associations (blocking: call from a worker thread)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self.admission.drop_pending()  # they end on their own; an A-ABORT is not valid before a request
        for assoc in list(self.ae.active_associations):
            if assoc.is_established:
                assoc.abort()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.writers.shutdown(wait=True)
        if self.parsers is not None:
            self.parsers.close()
        log.info("DICOM node stopped")

    def reader(self) -> Database:
        """This association thread's read-only index connection (opened once per thread)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = Database(self.index_path, readonly=True)
        return db

    def permits(self, group: str, event: evt.Event) -> bool:
        return self._permits(group, event.assoc)

    def _permits(self, group: str, assoc: Association) -> bool:
        calling = assoc.requestor.ae_title.strip()
        host = assoc.requestor.address
        ok = self.policy.may(group, calling, host)
        if not ok:
            log.warning("refused %s request from %s@%s: not in the %s allow-list", group, calling, host, group)
        return ok

    def answer_find(self, assoc: Association, request: C_FIND, context: PresentationContext) -> Iterator[FindAnswer]:
        return _answer_find(self, assoc, request, context)

    def store_instance(self, assoc: Association, request: Request, context: PresentationContext) -> StoreReply:
        """Store exactly the received bytes; answer success only once durable and indexed.

        Called, for every C-STORE request, in the thread that reads the association. The
        durable write (mostly waiting for fsync) runs in a writer thread while this thread,
        or a parser process, parses the same bytes (``prepare`` with the node's writers).
        """
        if not self._permits("store", assoc):
            return NOT_AUTHORIZED, "not in the store allow-list"
        calling = assoc.requestor.ae_title.strip()
        source = f"{calling}@{assoc.requestor.address}"
        command = request.command
        header = part10_header(command.sop_class, command.sop_uid, str(context.transfer_syntax[0]), calling)
        data = request.data_set(header)  # the one copy of the received bytes
        with self._storing_lock:
            self._storing += 1
            alone = self._storing == 1
        try:
            # One sender at a time: parsed here, sooner than a worker answers. Several: in the
            # workers, where they do not compete for this process's interpreter lock.
            prepared = prepare(data, self.store, source=source, received=True, writer=self.writers,
                               parsers=None if alone else self.parsers)
        except (NotDicomError, InvalidInstanceError) as exc:
            log.warning("refused C-STORE from %s: %s", source, exc)
            return CANNOT_UNDERSTAND, str(exc)
        except OSError as exc:
            log.error("cannot store an instance from %s: %s", source, exc)
            return OUT_OF_RESOURCES, f"cannot store: {exc.strerror}"
        finally:
            with self._storing_lock:
                self._storing -= 1
        try:
            self.submit([prepared])
        except trio.RunFinishedError:
            discard(self.store, prepared)
            return OUT_OF_RESOURCES, "the archive is shutting down"
        except (apsw.FullError, OSError) as exc:  # a full disk: expected, and said in one line
            discard(self.store, prepared)
            log.error("cannot index an instance from %s: %s", source, exc)
            return OUT_OF_RESOURCES, f"cannot index: {exc}"
        except Exception as exc:
            discard(self.store, prepared)
            log.exception("cannot index an instance from %s", source)
            return OUT_OF_RESOURCES, f"cannot index: {exc}"
        return SUCCESS, ""


def _listen_problem(bind: str, port: int, exc: OSError) -> str:
    where = f"cannot listen for DICOM on {bind}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"{where}: {bind} does not resolve; give --bind an address of this host"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use (another dicomfs or DICOM node?); choose another with --port, " \
               "or run without the node with --no-dicom"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {bind} is not an address of this host; give --bind an address of this host " \
               "(127.0.0.1 for local tools only, 0.0.0.0 for every interface)"
    if exc.errno == errno.EACCES and port < 1024:
        return f"{where}: ports below 1024 need privileges; use a port from 1024 up (e.g. --port 11112), " \
               "or grant the daemon CAP_NET_BIND_SERVICE"
    return f"{where}: {exc.strerror or exc}"


# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognized
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)
# A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation), local limit exceeded
_REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
_QUERY_MODELS = {PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind}
_RETRIEVE_MODELS = {PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet,
                    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove}


def _handle_association_request(event: evt.Event, node: NodeServer) -> None:
    """Apply the allow-lists before negotiation: refuse unknown peers, offer only their services.

    A peer in no allow-list gets A-ASSOCIATE-RJ (calling AE title not recognized). Otherwise
    the presentation contexts of the service groups it may not use are not offered, so its
    proposals for them are rejected. Storage stays offered to retrieve-only peers, whose
    C-GET needs it; a C-STORE from them is refused per request (0x0124).
    """
    assoc = event.assoc
    calling = str(assoc.requestor.primitive.calling_ae_title).strip()  # ae_title is set only later
    host = assoc.requestor.address
    may = {group: node.policy.may(group, calling, host) for group in peers.GROUPS}
    if not any(may.values()):
        log.warning("rejected an association from %s@%s: in no allow-list", calling, host)
        assoc.acse.send_reject(*_REJECT_CALLING_AE)
        assoc.kill()  # as pynetdicom's own rejections: waits until the DUL has sent the A-ASSOCIATE-RJ
        return
    if not node.admission.claim(assoc):
        log.warning("rejected an association from %s@%s: all %d associations are in use (max_associations)",
                    calling, host, node.settings.max_associations)
        assoc.acse.send_reject(*_REJECT_LOCAL_LIMIT)
        assoc.kill()
        return
    if may["retrieve"]:
        _order_for_sending(assoc, node)
    if all(may.values()):
        return
    dropped: set[str] = set()
    if not may["query"]:
        dropped |= _QUERY_MODELS
    if not may["retrieve"]:
        dropped |= _RETRIEVE_MODELS
    keep_storage = may["store"] or may["retrieve"]
    assoc.acceptor.supported_contexts = [
        context for context in assoc.acceptor.supported_contexts
        if context.abstract_syntax not in dropped
        and (keep_storage or context.abstract_syntax in _QUERY_MODELS | _RETRIEVE_MODELS | {Verification})
    ]


def _order_for_sending(assoc: Association, node: NodeServer) -> None:
    """For the storage contexts a C-GET requestor proposes with the SCP role, accept the
    transfer syntax in which the archive's instances of that SOP class go out best
    (``outgoing.order_for_sending``): pynetdicom takes the first of our list it proposed.
    """
    roles = assoc.requestor.role_selection
    classes = [uid for uid, role in roles.items() if role.scp_role]
    if not classes:
        return
    outgoing.sends_stored_bytes(assoc)
    stored = cfind.stored_syntaxes(node.reader(), classes)
    contexts = []
    for context in assoc.acceptor.supported_contexts:
        if context.abstract_syntax in roles and context.scp_role:
            context = copy.copy(context)
            context._transfer_syntax = outgoing.order_for_sending(stored.get(context.abstract_syntax, set()))
        contexts.append(context)
    assoc.acceptor.supported_contexts = contexts


_QUERY_CONTROL = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
_MULTI_VALUED = {"ModalitiesInStudy", "SOPClassesInStudy", "OtherPatientIDs"}


FindAnswer = tuple[int, bytes | None, str]  # (status, encoded identifier of a match, error comment)


def _answer_find(node: NodeServer, assoc: Association, request: C_FIND,
                 context: PresentationContext) -> Iterator[FindAnswer]:
    """C-FIND SCP, Patient Root and Study Root, hierarchical (PS3.4 C.4.1): every match, then
    the final status. Matches are encoded here, not by pynetdicom (``dimse.encode_elements``)."""
    if not node._permits("query", assoc):
        yield NOT_AUTHORIZED, None, "not in the query allow-list"
        return
    syntax = UID(context.transfer_syntax[0])
    deflated = syntax == DeflatedExplicitVRLittleEndian
    try:
        identifier = decode(request.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, deflated)
        patient_root = request.AffectedSOPClassUID == PatientRootQueryRetrieveInformationModelFind
        level = cfind.Level(str(identifier.get("QueryRetrieveLevel", "")).strip())
        requested = {e.keyword: e.value for e in identifier if e.keyword and e.keyword not in _QUERY_CONTROL}
        q = cfind.build(level, requested, patient_root=patient_root, fold_names=node.settings.fold_names)
    except (ValueError, cfind.QueryError) as exc:
        yield IDENTIFIER_DOES_NOT_MATCH, None, str(exc)
        return
    except Exception as exc:  # an identifier that does not decode
        yield IDENTIFIER_DOES_NOT_MATCH, None, f"cannot read the identifier: {exc}"
        return
    unknown = [e for e in identifier if e.keyword not in _QUERY_CONTROL and e.keyword not in q.returned]
    retrieve_ae = node.settings.ae_title if "RetrieveAETitle" in identifier else ""
    message_id = int(request.MessageID or 0)
    try:
        for row in cfind.run(node.reader(), q):
            if assoc.dimse.cancel_req.pop(message_id, None) is not None:
                yield CANCEL, None, ""
                return
            elements = _answer_elements(level, row, unknown, retrieve_ae)
            encoded = None if deflated or not syntax.is_little_endian else \
                encode_elements(elements, implicit=syntax.is_implicit_VR)
            if encoded is None:  # not plain text and numbers, or not little endian: pydicom encodes it
                encoded = encode(_answer(level, row, unknown, retrieve_ae), syntax.is_implicit_VR,
                                 syntax.is_little_endian, deflated)
            yield PENDING, encoded, ""
    except Exception as exc:
        log.exception("C-FIND failed")
        yield UNABLE_TO_PROCESS, None, f"query failed: {exc}"
        return
    yield SUCCESS, None, ""


_PATIENT_ROOT_RETRIEVE = (PatientRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelMove)


def _retrieve_set(event: evt.Event, node: NodeServer) -> list[cfind.StoredInstance]:
    identifier = event.identifier
    patient_root = event.request.AffectedSOPClassUID in _PATIENT_ROOT_RETRIEVE
    level = cfind.Level(str(identifier.get("QueryRetrieveLevel", "")).strip())
    keys = {e.keyword: e.value for e in identifier if e.keyword}
    return cfind.retrieve_set(node.reader(), level, keys, patient_root=patient_root)


def _sub_operations(
    event: evt.Event, node: NodeServer, instances: list[cfind.StoredInstance]
) -> Iterator[tuple[int, Any]]:
    """Yield each stored instance for a C-STORE sub-operation, by reference (sent as stored:
    net/outgoing.py); stop on cancel."""
    for instance in instances:
        if event.is_cancelled:
            yield CANCEL, None
            return
        path = node.store.path(instance.file_path)
        yield PENDING, outgoing.StoredDataset(instance.sop_class_uid, instance.sop_uid, path,
                                              instance.transfer_syntax_uid)


def _handle_get(event: evt.Event, node: NodeServer) -> Iterator[Any]:
    """C-GET SCP: sends the instances back over the same association (PS3.4 C.4.3)."""
    if not node.permits("retrieve", event):
        yield 1
        yield _failure(NOT_AUTHORIZED, "not in the retrieve allow-list"), None
        return
    try:
        instances = _retrieve_set(event, node)
    except (ValueError, cfind.QueryError) as exc:
        yield 1  # with 0 pynetdicom answers Success before reading our status
        yield _failure(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    yield len(instances)
    yield from _sub_operations(event, node, instances)


def _handle_move(event: evt.Event, node: NodeServer) -> Iterator[Any]:
    """C-MOVE SCP: sends the instances to a destination known in the configuration only."""
    destination = event.move_destination
    name = (destination.decode("ascii", "replace") if isinstance(destination, bytes) else str(destination)).strip()
    if not node.permits("retrieve", event):
        yield None, None
        return
    remote = node.settings.remote_by_ae(name)
    if remote is None:
        log.warning("refused C-MOVE to unknown destination %r", name)
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    try:
        instances = _retrieve_set(event, node)
    except (ValueError, cfind.QueryError) as exc:
        yield remote.host, remote.port, {"ae_title": remote.ae_title}
        yield 1  # with 0 pynetdicom answers Success before reading our status
        yield _failure(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    # Propose exactly what will be sent: each stored (SOP class, transfer syntax) on its own.
    contexts = outgoing.move_contexts((i.sop_class_uid, i.transfer_syntax_uid) for i in instances)
    yield remote.host, remote.port, {"ae_title": remote.ae_title, "contexts": contexts}
    yield len(instances)
    yield from _sub_operations(event, node, instances)


def _answer_elements(level: Any, row: dict[str, Any], unknown: list[Any], retrieve_ae: str,
                     ) -> list[tuple[int, str, object]]:
    """A match as (tag, VR, value): the index's values, in UTF-8."""
    elements: list[tuple[int, str, object]] = [
        (0x00080005, "CS", "ISO_IR 192"),  # Specific Character Set: the index holds decoded text
        (0x00080052, "CS", level.value),  # Query/Retrieve Level
    ]
    for keyword, value in row.items():
        if keyword in _MULTI_VALUED and isinstance(value, str):
            value = [v for v in value.split("\\") if v]
        elements.append((*_tag_and_vr(keyword), value))
    for element in unknown:  # requested but not kept by the index: answered empty
        elements.append((int(element.tag), element.VR, None))
    if retrieve_ae:
        elements.append((0x00080054, "AE", retrieve_ae))
    return elements


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    return int(tag_for_keyword(keyword)), dictionary_VR(keyword)  # type: ignore[arg-type]


def _answer(level: Any, row: dict[str, Any], unknown: list[Any], retrieve_ae: str) -> Dataset:
    """A match as a pydicom dataset, for what ``encode_elements`` does not encode."""
    ds = Dataset()
    for tag, vr, value in _answer_elements(level, row, unknown, retrieve_ae):
        ds.add_new(tag, vr, value if value not in ("", []) else None)
    return ds


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds
