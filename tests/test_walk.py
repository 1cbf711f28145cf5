"""``net.walk`` over real associations with pynetdicom C-FIND peers: one that agrees to relational
queries, and a strict one that refuses anything but hierarchical identifiers (PS3.4 C.4.1.2.1)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicomfs.config import RemoteNode
from dicomfs.net import walk

FIND = StudyRootQueryRetrieveInformationModelFind
ORDER = ("STUDY", "SERIES", "IMAGE")
LEVEL_OF = {"PatientID": "STUDY", "PatientName": "STUDY", "StudyInstanceUID": "STUDY", "StudyDate": "STUDY",
            "Modality": "SERIES", "Manufacturer": "SERIES", "SeriesInstanceUID": "SERIES",
            "SOPInstanceUID": "IMAGE", "InstanceNumber": "IMAGE"}
RECORDS = [  # one per instance: study 1 with two series, study 2 with one; names in UTF-8
    {"PatientID": "A", "PatientName": "Åström^Åsa", "StudyInstanceUID": "1.1", "StudyDate": "20240101",
     "Modality": "CT", "Manufacturer": "ACME", "SeriesInstanceUID": "1.1.1", "SOPInstanceUID": f"1.1.1.{n}",
     "InstanceNumber": str(n)}
    for n in (1, 2)
] + [
    {"PatientID": "A", "PatientName": "Åström^Åsa", "StudyInstanceUID": "1.1", "StudyDate": "20240101",
     "Modality": "MR", "Manufacturer": "OTHER", "SeriesInstanceUID": "1.1.2", "SOPInstanceUID": "1.1.2.1",
     "InstanceNumber": "1"},
    {"PatientID": "B", "PatientName": "Berg^Bo", "StudyInstanceUID": "2.1", "StudyDate": "20230101",
     "Modality": "CT", "Manufacturer": "OTHER", "SeriesInstanceUID": "2.1.1", "SOPInstanceUID": "2.1.1.1",
     "InstanceNumber": "1"},
]


@dataclass
class Peer:
    remote: RemoteNode
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (level, keys) as received


def text(value: Any) -> str:
    if value is None:
        return ""
    return "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)


def matches(record: dict[str, str], keyword: str, value: str) -> bool:
    if not value:
        return True
    if value.endswith("*"):
        return record[keyword].startswith(value[:-1])
    return record[keyword] in value.split("\\")


def answers(level: str, keys: dict[str, str], strict: bool) -> Iterator[tuple[int, Dataset | None]]:
    depth = ORDER.index(level)
    if strict:
        for upper in ORDER[:depth]:
            if not keys.get(walk.UNIQUE[upper]):
                yield 0xA900, None  # identifier does not match SOP class, as dicomfs answers
                return
        if any(ORDER.index(LEVEL_OF[k]) < depth and k != walk.UNIQUE[LEVEL_OF[k]] for k in keys):
            yield 0xA900, None  # a key above the query level that is not a unique key
            return
    seen = set()
    for record in RECORDS:
        if not all(matches(record, k, value) for k, value in keys.items()):
            continue
        unique = record[walk.UNIQUE[level]]
        if unique in seen:
            continue
        seen.add(unique)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = level
        for keyword in keys:
            if ORDER.index(LEVEL_OF[keyword]) <= depth:
                setattr(ds, keyword, record[keyword])
        yield 0xFF00, ds
    yield 0x0000, None


def serve(relational: bool) -> Iterator[Peer]:
    ae = AE(ae_title="PEER")
    ae.add_supported_context(FIND)
    peer = Peer(RemoteNode(name="peer", ae_title="PEER", host="127.0.0.1", port=0))

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier
        level = str(identifier.QueryRetrieveLevel)
        keys = {e.keyword: text(e.value) for e in identifier if e.keyword not in ("QueryRetrieveLevel",
                                                                                  "SpecificCharacterSet")}
        peer.requests.append((level, keys))
        yield from answers(level, keys, strict=not relational)

    def on_extended(event: evt.Event) -> dict[Any, bytes]:
        return {uid: b"\x01" for uid in event.app_info if uid == FIND}

    handlers: list[Any] = [(evt.EVT_C_FIND, on_find)]
    if relational:
        handlers.append((evt.EVT_SOP_EXTENDED, on_extended))
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    peer.remote.port = server.server_address[1]
    try:
        yield peer
    finally:
        server.shutdown()


@pytest.fixture
def relational_peer() -> Iterator[Peer]:
    yield from serve(relational=True)


@pytest.fixture
def strict_peer() -> Iterator[Peer]:
    yield from serve(relational=False)


def search(peer: Peer, level: str, keys: dict[str, str]) -> list[Dataset]:
    return walk.search(peer.remote, level, keys, calling_ae="DICOMFS", timeout=5)


def test_a_relational_peer_gets_one_request(relational_peer: Peer) -> None:
    found = search(relational_peer, "SERIES", {"PatientID": "A", "SeriesInstanceUID": "", "Modality": ""})
    assert sorted((ds.SeriesInstanceUID, ds.Modality) for ds in found) == [("1.1.1", "CT"), ("1.1.2", "MR")]
    assert relational_peer.requests == [("SERIES", {"PatientID": "A", "SeriesInstanceUID": "", "Modality": ""})]


def test_a_strict_peer_is_walked_study_series_image(strict_peer: Peer) -> None:
    found = search(strict_peer, "IMAGE", {"PatientName": "Åström*", "Modality": "CT", "SOPInstanceUID": "",
                                          "InstanceNumber": ""})
    assert sorted(ds.SOPInstanceUID for ds in found) == ["1.1.1.1", "1.1.1.2"]
    for ds in found:  # each answer carries what its ancestors' answers returned, decoded
        assert (str(ds.PatientName), ds.StudyInstanceUID, ds.Modality) == ("Åström^Åsa", "1.1", "CT")
    assert strict_peer.requests == [
        ("STUDY", {"PatientName": "Åström*", "StudyInstanceUID": ""}),
        ("SERIES", {"StudyInstanceUID": "1.1", "Modality": "CT", "SeriesInstanceUID": ""}),
        ("IMAGE", {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1", "SOPInstanceUID": "",
                   "InstanceNumber": ""}),
    ]


def test_a_strict_peer_with_no_upper_keys_is_walked_through_every_study(strict_peer: Peer) -> None:
    found = search(strict_peer, "SERIES", {"SeriesInstanceUID": ""})
    assert sorted(ds.SeriesInstanceUID for ds in found) == ["1.1.1", "1.1.2", "2.1.1"]
    assert [level for level, _ in strict_peer.requests] == ["STUDY", "SERIES", "SERIES"]


def test_named_upper_entities_are_not_asked_for(strict_peer: Peer) -> None:
    found = search(strict_peer, "IMAGE", {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.2",
                                          "SOPInstanceUID": ""})
    assert [ds.SOPInstanceUID for ds in found] == ["1.1.2.1"]
    assert strict_peer.requests == [("IMAGE", {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.2",
                                               "SOPInstanceUID": ""})]


def test_a_list_of_study_uids_is_asked_at_study_level_first(strict_peer: Peer) -> None:
    found = search(strict_peer, "SERIES", {"StudyInstanceUID": "1.1\\2.1", "SeriesInstanceUID": ""})
    assert len(found) == 3
    assert strict_peer.requests[0] == ("STUDY", {"StudyInstanceUID": "1.1\\2.1"})


def test_attributes_beyond_the_standard_keys_are_asked_at_the_level_given(strict_peer: Peer) -> None:
    found = walk.search(strict_peer.remote, "IMAGE", {"Manufacturer": "ACME", "SOPInstanceUID": ""},
                        calling_ae="DICOMFS", timeout=5, levels={"Manufacturer": "SERIES"})
    assert sorted(ds.SOPInstanceUID for ds in found) == ["1.1.1.1", "1.1.1.2"]
    assert [(level, "Manufacturer" in keys) for level, keys in strict_peer.requests] == [
        ("STUDY", False), ("SERIES", True), ("SERIES", True), ("IMAGE", False)]
