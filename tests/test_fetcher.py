"""Fetch-on-open in process: the real ``Fetcher``, gateway, group index and writer over a temporary
archive; only the network is replaced (``scu.get`` by a fake PACS that sends from its own thread,
the retrieve workers running as threads of this process)."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dicomgen
import pytest
import trio
from pydicom.dataset import Dataset
from remotegen import list_on_remote

from dicomfs.archive import Archive
from dicomfs.config import DicomSettings, RemoteNode
from dicomfs.index.db import Database
from dicomfs.ingest.gateway import IndexGateway
from dicomfs.net import scu
from dicomfs.remote.fetch import Fetcher, FetchError
from dicomfs.remote.retrieve import Plan

TIMEOUT = 5.0  # the remote's timeout; tests that wait for a timeout set their own


class FakePacs:
    """Stands in for ``scu.get``: sends what it holds that matches the keys, as a remote would.

    ``gate``: a retrieve of more than one instance sends instances up to ``hold_before``, then
    waits for the gate. ``fail``: the next retrieve raises it instead. An IMAGE-level
    retrieve names a list of SOP Instance UIDs (PS3.4 C.4.3.2.1), as the fetcher's parts do.
    """

    def __init__(self, datasets: list[Dataset]) -> None:
        self.data = {str(ds.SOPInstanceUID): (str(ds.SeriesInstanceUID), dicomgen.encode(ds)) for ds in datasets}
        self.calls: list[tuple[str, str]] = []  # (level, SOP Instance UID or Series Instance UID)
        self.gate = threading.Event()
        self.gate.set()
        self.hold_before: str | None = None
        self.hold_alone = False  # hold ``hold_before`` even when it is asked for alone
        self.fail: Exception | None = None
        self.indexed: Callable[[str], bool] | None = None  # asked as each C-STORE is answered
        self.answered: list[tuple[str, bool]] = []  # (SOP Instance UID, was it indexed by then)

    def get(self, remote: RemoteNode, level: str, keys: dict[str, str], *, calling_ae: str, timeout: float,
            sop_classes: list[str], on_instance: Callable[[bytes], None]) -> scu.RetrieveResult:
        self.calls.append((level, keys.get("SOPInstanceUID") or keys["SeriesInstanceUID"]))
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        sent = 0
        asked = keys.get("SOPInstanceUID", "").split("\\")
        matches = [(sop_uid, data) for sop_uid, (series_uid, data) in self.data.items()
                   if series_uid == keys["SeriesInstanceUID"] and (level == "SERIES" or sop_uid in asked)]
        for sop_uid, data in matches:
            if sop_uid == self.hold_before and (len(matches) > 1 or self.hold_alone):
                self.gate.wait()
            on_instance(data)  # returns when we would answer the C-STORE
            self.answered.append((sop_uid, self.indexed is not None and self.indexed(sop_uid)))
            sent += 1
        return scu.RetrieveResult(completed=sent, failed=0, warning=0, status=0)


@pytest.fixture
def settings() -> DicomSettings:
    return DicomSettings(remotes=[RemoteNode(name="pacs", ae_title="PACS", host="127.0.0.1", port=1,
                                             timeout=TIMEOUT)], refresh_minutes=0)


def serve(archive: Archive, settings: DicomSettings, pacs: FakePacs, monkeypatch: pytest.MonkeyPatch,
          body: Callable[[Fetcher], Awaitable[None]]) -> None:
    """Run ``body`` with a running fetcher wired as the daemon wires it, then stop everything."""
    monkeypatch.setattr(scu, "get", pacs.get)

    async def main() -> None:
        fetcher = Fetcher(settings, archive.remote, archive.store, IndexGateway(archive.writer), in_process=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            with trio.fail_after(30):
                await body(fetcher)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pacs.gate.set()  # an abandoned fake retrieve may still wait for it


async def retrieves_done(fetcher: Fetcher) -> None:
    """Until the retrieves in flight have ended (and the cache was enforced after them)."""
    while fetcher.retrievals:
        await trio.sleep(0.005)


def local(archive: Archive, instance_id: int) -> bool:
    file_path = archive.db.get_str("SELECT file_path FROM instances WHERE id = ?", (instance_id,))
    return bool(file_path) and archive.store.path(file_path).is_file()


def test_concurrent_opens_share_one_retrieve_of_the_series(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = [dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", InstanceNumber=n)
                for n in range(1, 5)]
    ids = list_on_remote(archive.remote, "pacs", datasets)
    pacs = FakePacs(datasets)
    pacs.gate.clear()
    pacs.hold_before = datasets[0].SOPInstanceUID  # the series-level answer waits until every open waits

    async def body(fetcher: Fetcher) -> None:
        async with trio.open_nursery() as opens:
            for _ in range(3):
                for instance_id in ids.values():
                    opens.start_soon(fetcher.make_local, instance_id)
            while len(pacs.calls) < 2:  # the opened instance alone, and the rest
                await trio.sleep(0.005)
            assert len(fetcher.retrievals) == 1
            pacs.gate.set()
        await retrieves_done(fetcher)
        for instance_id in ids.values():
            await fetcher.make_local(instance_id)  # local now: no retrieve

    serve(archive, settings, pacs, monkeypatch, body)
    alone, rest = sorted(pacs.calls, key=lambda call: len(call[1]))
    assert alone[0] == rest[0] == "IMAGE"
    assert alone[1] in ids  # the opened instance alone on one association, the rest on another
    assert sorted(rest[1].split("\\")) == sorted(set(ids) - {alone[1]})
    assert all(local(archive, instance_id) for instance_id in ids.values())


def test_each_c_store_is_answered_only_once_its_instance_is_durable_and_indexed(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = [dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", InstanceNumber=n)
                for n in range(1, 21)]
    ids = list_on_remote(archive.remote, "pacs", datasets)
    pacs = FakePacs(datasets)
    reader = Database(archive.db.path, readonly=True)  # another connection: sees only what was committed

    def indexed(sop_uid: str) -> bool:
        file_path = reader.get_str("SELECT file_path FROM instances WHERE sop_uid = ?", (sop_uid,))
        return bool(file_path) and archive.store.path(file_path).is_file()

    pacs.indexed = indexed

    async def body(fetcher: Fetcher) -> None:
        await fetcher.make_local(next(iter(ids.values())))
        await retrieves_done(fetcher)

    try:
        serve(archive, settings, pacs, monkeypatch, body)
    finally:
        reader.close()
    assert len(pacs.answered) == len(datasets)
    assert all(was_indexed for _, was_indexed in pacs.answered), pacs.answered
    assert sorted(level for level, _ in pacs.calls) == ["IMAGE"] * len(pacs.calls)  # parts, never the series
    assert len(pacs.calls) >= 2


def test_the_rest_of_a_series_is_asked_for_in_reading_order_from_the_opened_file() -> None:
    missing = [f"1.{n}" for n in range(1, 101)]
    plan = Plan.of(missing, "1.41", associations=4)
    assert plan.parts[0] == ["1.41"]
    asked = [uid for part in plan.parts[1:] for uid in part]
    assert asked == missing[41:] + missing[:40]  # from there on, then the files before it
    assert all(8 <= len(part) <= 64 for part in plan.parts[1:-1])  # the last one: what is left
    assert plan.take() == ["1.41"]
    plan.promote("1.20")  # an open waits for it: its part is asked for next
    promoted = plan.take()
    assert promoted is not None and "1.20" in promoted
    rest = [uid for part in plan.parts for uid in part]
    assert sorted(rest + promoted) == sorted(asked)


def test_each_open_wakes_when_its_own_instance_arrives(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = (dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", InstanceNumber=n)
               for n in range(1, 4))
    ids = list_on_remote(archive.remote, "pacs", [a, b, c])
    pacs = FakePacs([a, b, c])
    pacs.gate.clear()
    pacs.hold_before = c.SOPInstanceUID
    opened: list[str] = []
    filled: list[str] = []

    async def body(fetcher: Fetcher) -> None:
        fetcher.on_filled = lambda results: filled.extend(r.sop_uid for r in results)

        async def open_(ds: Dataset) -> None:
            await fetcher.make_local(ids[ds.SOPInstanceUID])
            opened.append(ds.SOPInstanceUID)

        async with trio.open_nursery() as opens:
            opens.start_soon(open_, a)
            await trio.sleep(0.05)
            opens.start_soon(open_, c)
            while not filled or b.SOPInstanceUID not in filled:  # a came, then b with the series
                await trio.sleep(0.005)
            await trio.sleep(0.05)
            assert opened == [a.SOPInstanceUID]  # c's open still waits, for c alone
            assert not local(archive, ids[c.SOPInstanceUID])
            pacs.gate.set()
        assert opened == [a.SOPInstanceUID, c.SOPInstanceUID]

    serve(archive, settings, pacs, monkeypatch, body)
    assert {b.SOPInstanceUID, c.SOPInstanceUID} <= set(filled)  # fetched alongside: the mount is told


def test_a_failed_retrieve_gives_eio_with_the_reason_and_the_next_open_retries(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = dicomgen.make_dataset()
    instance_id = list_on_remote(archive.remote, "pacs", [ds])[ds.SOPInstanceUID]
    pacs = FakePacs([ds])
    pacs.fail = scu.RemoteError(settings.remotes[0], "C-GET", "association rejected (rejected-permanent)")

    async def body(fetcher: Fetcher) -> None:
        with pytest.raises(FetchError) as failed:
            await fetcher.make_local(instance_id)
        assert failed.value.errno == errno.EIO
        assert "association rejected" in str(failed.value)
        await retrieves_done(fetcher)
        await fetcher.make_local(instance_id)

    serve(archive, settings, pacs, monkeypatch, body)
    assert [level for level, _ in pacs.calls] == ["IMAGE", "IMAGE"]
    assert local(archive, instance_id)


def test_a_remote_that_never_answers_gives_etimedout_within_the_timeout(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.remotes[0].timeout = 0.5
    ds = dicomgen.make_dataset()
    instance_id = list_on_remote(archive.remote, "pacs", [ds])[ds.SOPInstanceUID]
    pacs = FakePacs([ds])
    pacs.gate.clear()  # released only at teardown
    pacs.hold_before = ds.SOPInstanceUID
    pacs.hold_alone = True
    waited: list[float] = []

    async def body(fetcher: Fetcher) -> None:
        started = time.monotonic()
        with pytest.raises(FetchError) as failed:
            await fetcher.make_local(instance_id)
        waited.append(time.monotonic() - started)
        assert failed.value.errno == errno.ETIMEDOUT

    serve(archive, settings, pacs, monkeypatch, body)
    assert 0.5 <= waited[0] < 2.0
    assert not local(archive, instance_id)


def test_the_least_recently_used_fetched_series_is_evicted_never_the_one_just_fetched(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two, three = (dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID=f"1.2.3.{n}")
                       for n in (1, 2, 3))
    ids = list_on_remote(archive.remote, "pacs", [one, two, three])
    id1, id2, id3 = (ids[ds.SOPInstanceUID] for ds in (one, two, three))
    pacs = FakePacs([one, two, three])
    sizes = [len(dicomgen.encode(ds)) for ds in (one, two, three)]
    settings.cache_mb = (sum(sizes) - 1) / 2**20  # any two fit, not all three
    series = {instance_id: archive.db.get_int("SELECT series_id FROM instances WHERE id = ?", (instance_id,))
              for instance_id in (id1, id2, id3)}
    file_of: dict[int, Path] = {}

    async def fetch(fetcher: Fetcher, instance_id: int) -> None:
        await fetcher.make_local(instance_id)
        await retrieves_done(fetcher)
        file_of[instance_id] = archive.store.path(
            archive.db.get_str("SELECT file_path FROM instances WHERE id = ?", (instance_id,)))

    async def evicted(instance_id: int) -> None:
        while archive.db.get_str("SELECT file_path FROM instances WHERE id = ?", (instance_id,)) \
                or file_of[instance_id].exists():
            await trio.sleep(0.005)

    async def body(fetcher: Fetcher) -> None:
        await fetch(fetcher, id1)
        await fetch(fetcher, id2)
        await trio.sleep(0.01)
        fetcher.touch(series[id1])  # one of its files opened again: two is now the least recently used
        await fetch(fetcher, id3)
        await evicted(id2)
        assert local(archive, id1) and local(archive, id3)

        settings.cache_mb = 0  # nothing fits: all but what was just fetched go
        await fetch(fetcher, id2)
        await evicted(id1)
        await evicted(id3)
        assert local(archive, id2)

    serve(archive, settings, pacs, monkeypatch, body)
    assert archive.db.get_int("SELECT complete FROM remote_series WHERE series_id = ?", (series[id2],)) == 1
    assert archive.db.get_int("SELECT complete FROM remote_series WHERE series_id = ?", (series[id1],)) == 0
    assert [level for level, _ in pacs.calls] == ["IMAGE"] * 4


class StuckOnce(FakePacs):
    """The first retrieve hangs until ``gate`` opens, then fails as a remote that timed out would."""

    def get(self, remote: RemoteNode, level: str, keys: dict[str, str], **kwargs: object) -> scu.RetrieveResult:
        if not self.calls:
            self.calls.append((level, keys.get("SOPInstanceUID") or keys["SeriesInstanceUID"]))
            self.gate.wait()
            raise scu.RemoteError(remote, "C-GET", f"no answer within {remote.timeout:g} s")
        return super().get(remote, level, keys, **kwargs)  # type: ignore[arg-type]


def test_an_open_after_a_timeout_asks_the_remote_again(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen remote: each open waits its own timeout; once the remote is back, the next open
    gets the file from a new retrieve, even while the stuck one is still failing."""
    settings.remotes[0].timeout = 0.5
    ds = dicomgen.make_dataset()
    instance_id = list_on_remote(archive.remote, "pacs", [ds])[ds.SOPInstanceUID]
    pacs = StuckOnce([ds])
    pacs.gate.clear()
    waited: list[float] = []

    async def timed_out_open(fetcher: Fetcher) -> None:
        started = time.monotonic()
        with pytest.raises(FetchError) as failed:
            await fetcher.make_local(instance_id)
        assert failed.value.errno == errno.ETIMEDOUT
        waited.append(time.monotonic() - started)

    async def body(fetcher: Fetcher) -> None:
        await timed_out_open(fetcher)
        await timed_out_open(fetcher)  # the first retrieve is still stuck: a full timeout again, not an early EIO
        assert len(pacs.calls) == 1
        async with trio.open_nursery() as opens:
            opens.start_soon(fetcher.make_local, instance_id)  # joins the stuck retrieve
            await trio.sleep(0.05)
            pacs.gate.set()  # which now fails: the open asks again, and gets the file
        assert local(archive, instance_id)

    serve(archive, settings, pacs, monkeypatch, body)
    assert all(0.5 <= w < 1.5 for w in waited), waited
    assert [level for level, _ in pacs.calls] == ["IMAGE", "IMAGE"]


def test_opens_that_joined_a_failing_retrieve_share_one_new_retrieve(
        archive: Archive, settings: DicomSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = [dicomgen.make_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", InstanceNumber=n)
                for n in (1, 2)]
    ids = list_on_remote(archive.remote, "pacs", datasets)
    pacs = StuckOnce(datasets)
    pacs.gate.clear()

    first = next(iter(ids.values()))

    async def first_open() -> None:  # answered by the retrieve it started
        with pytest.raises(FetchError) as failed:
            await fetcher_of[0].make_local(first)
        assert failed.value.errno == errno.EIO and "no answer within" in str(failed.value)

    fetcher_of: list[Fetcher] = []

    async def body(fetcher: Fetcher) -> None:
        fetcher_of.append(fetcher)
        async with trio.open_nursery() as opens:
            opens.start_soon(first_open)
            await trio.sleep(0.05)
            for instance_id in [*ids.values()] * 3:  # later opens join the stuck retrieve
                opens.start_soon(fetcher.make_local, instance_id)
            await trio.sleep(0.05)
            pacs.gate.set()
        await retrieves_done(fetcher)

    serve(archive, settings, pacs, monkeypatch, body)
    assert all(local(archive, instance_id) for instance_id in ids.values())
    # the opened one alone, stuck (so the rest was never asked for); then one new retrieve:
    # the instance its first open waits for alone, then the other
    assert [level for level, _ in pacs.calls] == ["IMAGE", "IMAGE", "IMAGE"]
    assert pacs.calls[0][1] == archive.db.get_str("SELECT sop_uid FROM instances WHERE id = ?", (first,))
    assert sorted(sop for _, sop in pacs.calls[1:]) == sorted(ids)
