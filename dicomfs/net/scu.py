"""The DICOM node's requesting side: echo, query (C-FIND) and retrieve (C-GET, C-MOVE) from remote PACS.

Every call opens one association, does one request and releases it. Every way a remote can
fail us (no connection, rejection, abort, silence, a failure status) becomes a ``RemoteError``
naming the remote, the operation and the reason; nothing waits longer than ``timeout`` for
any one step (connect, association, each response).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import code_to_category

from dicomfs.config import RemoteNode
from dicomfs.parse import part10_header

__all__ = ["LEVELS", "RemoteError", "RetrieveResult", "echo", "find", "get", "move"]

log = logging.getLogger(__name__)
_config.LOG_HANDLER_LEVEL = "none"

LEVELS = ("STUDY", "SERIES", "IMAGE")  # Study Root (PS3.4 C.6.2)
MAX_CONTEXTS = 128  # presentation context ids are odd numbers 1..255 (PS3.8 9.3.2.2)

# Status codes (PS3.4 B.2.3, C.4)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_PENDING = {0xFF00, 0xFF01}


class RemoteError(Exception):
    """A remote PACS could not do what we asked: message names the remote, the operation and the status/reason."""

    def __init__(self, remote: RemoteNode, operation: str, reason: str, status: int | None = None) -> None:
        where = f"{remote.name or remote.ae_title} ({remote.ae_title}@{remote.host}:{remote.port})"
        code = f" [status 0x{status:04X}]" if status is not None else ""
        super().__init__(f"{operation} on {where} failed: {reason}{code}")
        self.remote = remote.name or remote.ae_title
        self.status = status


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    """Sub-operation counts and the final C-GET/C-MOVE status (success 0x0000 or warning 0xB000)."""

    completed: int
    failed: int
    warning: int
    status: int


def echo(remote: RemoteNode, *, calling_ae: str, timeout: float) -> None:
    """C-ECHO: the remote answers DICOM at all."""
    with _association(remote, "C-ECHO", [build_context(Verification)], calling_ae, timeout) as assoc:
        status = assoc.send_c_echo()
        _check_final(remote, "C-ECHO", assoc, status)


def find(
    remote: RemoteNode, level: str, keys: dict[str, str], *, calling_ae: str, timeout: float
) -> list[Dataset]:
    """Study Root C-FIND at ``level``: the identifiers of all matches, text decoded per their character set.

    ``keys`` maps DICOM keywords to match values; ``""`` asks for the attribute to be returned.
    """
    identifier = _identifier(level, keys)
    matches: list[Dataset] = []
    with _association(remote, "C-FIND", [build_context(StudyRootQueryRetrieveInformationModelFind)],
                      calling_ae, timeout) as assoc:
        for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in _PENDING:
                if answer is not None:
                    matches.append(answer)
                continue
            _check_final(remote, "C-FIND", assoc, status)
    return matches


def get(
    remote: RemoteNode, level: str, keys: dict[str, str], *, calling_ae: str, timeout: float,
    sop_classes: Iterable[str], on_instance: Callable[[bytes], None],
) -> RetrieveResult:
    """Study Root C-GET: the remote sends the matching instances back on this association.

    Each instance reaches ``on_instance`` as Part 10 bytes: our File Meta Information and then
    exactly the dataset bytes received, in the transfer syntax the remote stores (storage
    contexts are proposed for every transfer syntax, see ``_storage_contexts``). It runs in the
    calling thread; if it raises, that C-STORE is answered with a failure status and counted
    as failed by the remote.
    """
    identifier = _identifier(level, keys)
    classes = list(dict.fromkeys(str(uid) for uid in sop_classes))
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet), *_storage_contexts(classes)]
    roles = [build_role(uid, scp_role=True) for uid in classes]
    handler = (evt.EVT_C_STORE, _store_handler, [remote, on_instance])
    with _association(remote, "C-GET", contexts, calling_ae, timeout, roles, [handler]) as assoc:
        import os
        if os.environ.get("FAST"):
            assoc._c_store_scp = _StoreReplier(assoc, remote, on_instance)
        responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        return _retrieve_result(remote, "C-GET", assoc, responses)


def move(
    remote: RemoteNode, level: str, keys: dict[str, str], *, destination_ae: str, calling_ae: str, timeout: float
) -> RetrieveResult:
    """Study Root C-MOVE: the remote sends the matching instances to ``destination_ae`` (which it must know)."""
    identifier = _identifier(level, keys)
    with _association(remote, "C-MOVE", [build_context(StudyRootQueryRetrieveInformationModelMove)],
                      calling_ae, timeout) as assoc:
        responses = assoc.send_c_move(identifier, destination_ae, StudyRootQueryRetrieveInformationModelMove)
        return _retrieve_result(remote, f"C-MOVE to {destination_ae}", assoc, responses)


# ----------------------------------------------------------------------------- requests


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    if level not in LEVELS:
        raise ValueError(f"query level must be one of {', '.join(LEVELS)}, not {level!r}")
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"not a DICOM keyword: {keyword!r}")
        setattr(ds, keyword, value)
    if "SpecificCharacterSet" not in keys and not all(value.isascii() for value in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so non-ASCII match values can be sent
    return ds


def _storage_contexts(sop_classes: list[str]) -> list[PresentationContext]:
    """C-GET storage contexts that let the remote send every instance in the transfer syntax it stores.

    An acceptor picks one transfer syntax per context, so one context per class listing all
    of them would let the remote choose one and transcode the rest. Each class gets a context
    offering all transfer syntaxes (so it is accepted at all), then, while ids last, one
    context per single transfer syntax, taken in turns across classes.
    """
    budget = MAX_CONTEXTS - 1  # the query/retrieve model takes one
    if not sop_classes:
        raise ValueError("get() needs at least one SOP class to accept")
    if len(sop_classes) > budget:
        raise ValueError(f"at most {budget} SOP classes fit in one association, not {len(sop_classes)}")
    contexts = [build_context(uid, ALL_TRANSFER_SYNTAXES) for uid in sop_classes]
    for syntax in _single_syntaxes():
        for uid in sop_classes:
            if len(contexts) == budget:
                return contexts
            contexts.append(build_context(uid, syntax))
    return contexts


def _single_syntaxes() -> Iterator[str]:
    """Uncompressed first: what most archives store."""
    yield ExplicitVRLittleEndian
    yield ImplicitVRLittleEndian
    yield from (ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian))


def _store_handler(event: evt.Event, remote: RemoteNode, on_instance: Callable[[bytes], None]) -> int:
    request = event.request
    header = part10_header(
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID, event.context.transfer_syntax,
        source_ae=remote.ae_title,
    )
    try:
        on_instance(header + event.encoded_dataset(include_meta=False))
    except OSError as exc:
        log.error("cannot keep %s from %s: %s", request.AffectedSOPInstanceUID, remote.name, exc)
        return OUT_OF_RESOURCES
    except Exception:
        log.exception("cannot keep %s from %s", request.AffectedSOPInstanceUID, remote.name)
        return CANNOT_UNDERSTAND
    return SUCCESS


def _retrieve_result(
    remote: RemoteNode, operation: str, assoc: Association, responses: Iterator[tuple[Dataset, Dataset | None]]
) -> RetrieveResult:
    for status, _identifier in responses:
        if status and status.Status in _PENDING:
            continue
        _check_final(remote, operation, assoc, status)
        return RetrieveResult(
            completed=int(status.get("NumberOfCompletedSuboperations", 0)),
            failed=int(status.get("NumberOfFailedSuboperations", 0)),
            warning=int(status.get("NumberOfWarningSuboperations", 0)),
            status=int(status.Status),
        )
    raise RemoteError(remote, operation, "no final response")


def _check_final(remote: RemoteNode, operation: str, assoc: Association, status: Dataset | None) -> None:
    """Raise unless ``status`` is a success or warning response."""
    if not status or "Status" not in status:
        reason = "association aborted" if assoc.is_aborted else f"no response within {assoc.dimse_timeout:g}s"
        raise RemoteError(remote, operation, reason)
    code = int(status.Status)
    category = code_to_category(code)
    if category in ("Success", "Warning"):
        return
    comment = status.get("ErrorComment", "")
    raise RemoteError(remote, operation, f"{category.lower()} status{': ' + comment if comment else ''}", code)


# ----------------------------------------------------------------------------- associations


class _NoDelayAE(AE):
    """An AE whose sockets send each PDU at once (TCP_NODELAY)."""


class _Associated:
    """Context manager: an established association, released (or aborted) on the way out."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc

    def __enter__(self) -> Association:
        return self.assoc

    def __exit__(self, *exc: object) -> None:
        if self.assoc.is_established:
            if exc[0] is None:
                self.assoc.release()
            else:
                self.assoc.abort()


def _association(
    remote: RemoteNode, operation: str, contexts: list[PresentationContext], calling_ae: str, timeout: float,
    ext_neg: list[Any] | None = None, handlers: list[Any] | None = None,
) -> _Associated:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    handlers = [*(handlers or []), (evt.EVT_CONN_OPEN, _on_connect, [timeout])]
    assoc = ae.associate(
        remote.host, remote.port, contexts=contexts, ae_title=remote.ae_title, max_pdu=0,
        ext_neg=ext_neg, evt_handlers=handlers,
    )
    if assoc.is_established:
        return _Associated(assoc)
    raise RemoteError(remote, operation, _refusal(assoc))


def _on_connect(event: evt.Event, timeout: float) -> None:
    sock = event.assoc.dul.socket.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)  # pynetdicom clears it after connecting; a stalled peer must not block a read


def _refusal(assoc: Association) -> str:
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return f"association rejected ({rj.result_str}, {rj.source_str}: {rj.reason_str})"
    if assoc.is_aborted:
        return "association aborted"
    return "no connection or no answer to the association request"


import struct
from pynetdicom.pdu_primitives import P_DATA


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def _uid(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value


class _StoreReplier:
    def __init__(self, assoc, remote, on_instance):
        self.assoc, self.remote, self.on_instance = assoc, remote, on_instance

    def __call__(self, req) -> None:
        cx_id = req._context_id
        context = self.assoc._accepted_cx.get(cx_id)
        sop_class, sop_uid = req.AffectedSOPClassUID, req.AffectedSOPInstanceUID
        if context is None or context.abstract_syntax != sop_class:
            status = 0x0122
        else:
            header = part10_header(sop_class, sop_uid, context.transfer_syntax[0], source_ae=self.remote.ae_title)
            try:
                self.on_instance(b"".join((header, req.DataSet.getbuffer())))
                status = SUCCESS
            except OSError:
                status = OUT_OF_RESOURCES
            except Exception:
                status = CANNOT_UNDERSTAND
        body = b"".join((
            _element(0x0002, _uid(sop_class)), _element(0x0100, b"\x01\x80"),
            _element(0x0120, struct.pack("<H", req.MessageID)), _element(0x0800, b"\x01\x01"),
            _element(0x0900, struct.pack("<H", status)), _element(0x1000, _uid(sop_uid)),
        ))
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((cx_id, b"\x03" + _element(0x0000, struct.pack("<I", len(body))) + body))
        self.assoc.dul.send_pdu(primitive)
