"""Instances going out as C-STORE sub-operations of our C-GET and C-MOVE: the stored bytes.

Each instance is sent exactly as stored (the dataset bytes after the file meta, read from
the file in PDU-sized chunks) whenever the peer accepted its stored transfer syntax for its
SOP class. Otherwise it is converted losslessly, if it can be: re-encoded between Implicit
VR, Explicit VR and Deflated Explicit VR Little Endian, or decompressed to one of them.
Compressing is never done; an instance that only a compression would let through fails,
with the reason logged (pynetdicom counts it as a failed sub-operation).

Where the peer's choice is made:

- C-GET: the requestor proposes storage contexts with the SCP role, before we know what it
  will ask for. ``order_for_sending`` ranks the transfer syntaxes for each such SOP class
  by what the archive holds of it: those that every stored instance of the class can take
  (as stored or converted) first, then those some are stored in, then Explicit VR Little
  Endian before Implicit (as DCMTK does), compressed syntaxes last.
- C-MOVE: we propose, so ``move_contexts`` gives each stored (SOP class, transfer syntax)
  its own context, plus one uncompressed context per SOP class to convert into.

pynetdicom's C-GET/C-MOVE service code sends what the handler yields with
``Association.send_c_store`` and accepts only datasets, which it would re-encode.
``StoredDataset`` is what the handler yields; ``sends_stored_bytes`` makes an association's
``send_c_store`` turn it into the stored file (sent unchanged) or a converted dataset.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Collection, Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)

# What a stored instance can be converted into without loss, in order of preference.
CONVERSION_TARGETS: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_PREFERENCE = [*CONVERSION_TARGETS, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in CONVERSION_TARGETS)]
_RANK = {ts: rank for rank, ts in enumerate(_PREFERENCE)}
MAX_CONTEXTS = 128  # the most presentation contexts one association carries (PS3.8 9.3.2.2)


class NotSendable(ValueError):
    """The peer accepted no transfer syntax this instance can be sent in without loss."""


class StoredDataset(Dataset):
    """A stored instance to send, by reference: its UIDs, file and stored transfer syntax.

    It holds only the SOP Class and Instance UIDs (pynetdicom lists the latter on failure);
    the content is read when it is sent.
    """

    def __init__(self, sop_class_uid: str, sop_instance_uid: str, path: Path, transfer_syntax: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.stored_path = path
        self.stored_syntax = UID(transfer_syntax)


def order_for_sending(stored: Collection[str]) -> list[str]:
    """Every transfer syntax, best first, for sending a SOP class whose instances are stored
    in these transfer syntaxes: first those every stored instance can be sent in (as stored
    or converted), then those some are stored in, then by our preference."""
    if not stored:
        return list(_PREFERENCE)

    def key(ts: str) -> tuple[bool, bool, int]:
        fails_some = ts not in CONVERSION_TARGETS and any(s != ts for s in stored)
        return fails_some, ts not in stored, _RANK[ts]

    return sorted(_PREFERENCE, key=key)


def move_contexts(stored: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts to propose for sending instances of these (SOP class, transfer syntax) pairs.

    One context per pair, so the peer can accept each stored syntax on its own, and one
    [Explicit, Implicit] context per SOP class for what it refuses. When that is more than
    an association carries, one context per SOP class with its stored syntaxes first.
    """
    by_class: dict[str, list[str]] = {}
    for sop_class, syntax in stored:
        wanted = by_class.setdefault(sop_class, [])
        if syntax and syntax not in wanted:
            wanted.append(syntax)
    fallback = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    contexts = []
    for sop_class, wanted in by_class.items():
        contexts += [build_context(sop_class, [ts]) for ts in wanted]
        if not set(fallback) <= set(wanted):
            contexts.append(build_context(sop_class, fallback))
    if len(contexts) <= MAX_CONTEXTS:
        return contexts
    return [build_context(sop_class, [*wanted, *(ts for ts in fallback if ts not in wanted)])
            for sop_class, wanted in list(by_class.items())[:MAX_CONTEXTS]]


def accepted_syntaxes(assoc: Association, sop_class: str) -> list[UID]:
    """The transfer syntaxes the peer accepted for us to send instances of ``sop_class``."""
    return [cx.transfer_syntax[0] for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.as_scu]


def what_to_send(assoc: Association, item: StoredDataset) -> Path | Dataset:
    """The stored file, when the peer accepted its transfer syntax; else a lossless conversion.

    Raises ``NotSendable`` (with the reason, logged) when there is none.
    """
    if not item.stored_path.is_file():  # pynetdicom would say only "No such file"
        reason = f"{item.SOPInstanceUID}: its file {item.stored_path} is missing"
        log.error("cannot read an instance for a retrieve: %s", reason)
        raise NotSendable(reason)
    accepted = accepted_syntaxes(assoc, item.SOPClassUID)
    if item.stored_syntax in accepted:
        return item.stored_path
    target = next((ts for ts in CONVERSION_TARGETS if ts in accepted), None)
    peer = str(assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title).strip()
    if target is None:
        what = f"only {', '.join(ts.name for ts in accepted)}, which we do not compress into" if accepted \
            else "no transfer syntax"
        reason = (f"{item.SOPInstanceUID} is stored as {item.stored_syntax.name}; {peer} accepted {what} "
                  f"for {UID(item.SOPClassUID).name}")
        log.warning("not sent: %s", reason)
        raise NotSendable(reason)
    try:
        converted = convert(item.stored_path, target)
    except Exception as exc:
        reason = f"{item.SOPInstanceUID} is stored as {item.stored_syntax.name} and cannot be converted to " \
                 f"{target.name} for {peer}: {exc}"
        log.warning("not sent: %s", reason)
        raise NotSendable(reason) from exc
    log.debug("sending %s to %s as %s (stored as %s, which it did not accept)", item.SOPInstanceUID, peer,
              target.name, item.stored_syntax.name)
    return converted


def convert(path: Path, target: str) -> Dataset:
    """The instance at ``path`` in ``target`` (an uncompressed syntax), decompressed if need be.

    The SOP Instance UID is kept: no information is lost. The result is read back from its
    encoding, so that pynetdicom sends it as encoded, without a second conversion.
    """
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(target)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def _send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    if isinstance(dataset, StoredDataset):
        dataset = what_to_send(self, dataset)
    return Association.send_c_store(self, dataset, *args, **kwargs)


def sends_stored_bytes(assoc: Association) -> None:
    """Make ``assoc.send_c_store`` send a ``StoredDataset`` as its stored bytes (or converted).

    An instance attribute, not a subclass: pynetdicom builds C-MOVE sub-associations itself.
    pynetdicom sends a file path's dataset bytes unchanged when ``STORE_SEND_CHUNKED_DATASET``
    is set (``NodeServer`` sets it).
    """
    assoc.send_c_store = types.MethodType(_send_c_store, assoc)  # type: ignore[method-assign]
