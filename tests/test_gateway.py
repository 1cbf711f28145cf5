"""The index gateway in process: batches written on the trio loop, then its listeners told."""

from __future__ import annotations

import threading

import dicomgen
import pytest
import trio

from dicomfs.archive import Archive
from dicomfs.ingest.gateway import IndexGateway
from dicomfs.ingest.prepare import Batch, prepare
from dicomfs.ingest.writer import Ingested, Outcome


def batch_of(archive: Archive, count: int) -> Batch:
    return [prepare(dicomgen.encode(dicomgen.make_dataset()), archive.store, source="test") for _ in range(count)]


def test_listeners_are_told_after_the_batch_is_written(archive: Archive) -> None:
    batch = batch_of(archive, 2)
    heard: list[tuple[list[Ingested], int]] = []

    def listener(results: list[Ingested]) -> None:  # sees the rows: the batch has committed
        count = archive.db.get_int("SELECT count(*) FROM instances WHERE file_path != ''")
        heard.append((results, count))

    async def main() -> list[Ingested]:
        gateway = IndexGateway(archive.writer)
        gateway.listen(listener)
        return gateway.index(batch)

    results = trio.run(main)
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.STORED]
    assert heard == [(results, 2)]


def test_threads_submit_to_the_loop_and_get_the_results_or_the_error(archive: Archive) -> None:
    batch = batch_of(archive, 3)
    listened_on: list[int] = []

    async def main() -> tuple[int, list[Ingested]]:
        gateway = IndexGateway(archive.writer)
        gateway.listen(lambda results: listened_on.append(threading.get_ident()))
        results = await trio.to_thread.run_sync(gateway.submit_from_thread, batch)
        lost = batch_of(archive, 1)
        archive.store.discard(lost[0].temp)
        with pytest.raises(FileNotFoundError):  # the writer's error reaches the submitting thread
            await trio.to_thread.run_sync(gateway.submit_from_thread, lost)
        return threading.get_ident(), results

    loop_thread, results = trio.run(main)
    assert [r.sop_uid for r in results] == [p.parsed.sop_uid for p in batch]
    assert listened_on == [loop_thread]  # on the loop, and not for the batch that failed
    assert archive.db.get_int("SELECT count(*) FROM instances") == 3


def test_after_the_loop_has_ended_a_submit_fails_plainly(archive: Archive) -> None:
    async def main() -> IndexGateway:
        return IndexGateway(archive.writer)

    gateway = trio.run(main)
    batch = batch_of(archive, 1)
    with pytest.raises(trio.RunFinishedError):  # what the node's C-STORE handler turns into a failure status
        gateway.submit_from_thread(batch)
    assert archive.db.get_int("SELECT count(*) FROM instances") == 0


def _submit_while_the_loop_is_busy(archive: Archive, batches: list[Batch]) -> tuple[IndexGateway, list[object]]:
    """Every batch submitted from its own thread while the loop is held up, then the loop let go:
    what each thread got back (its results, or the exception it raised)."""
    outcomes: list[object] = [None] * len(batches)

    async def main() -> IndexGateway:
        gateway = IndexGateway(archive.writer)
        token = trio.lowlevel.current_trio_token()
        handed_over = threading.Semaphore(0)
        real_run_sync_soon = token.run_sync_soon

        def counted(fn: object, *args: object) -> None:  # the loop's own queue, watched
            real_run_sync_soon(fn, *args)  # type: ignore[arg-type]
            if args:
                handed_over.release()

        gateway._token = type("Token", (), {"run_sync_soon": staticmethod(counted)})()  # type: ignore[assignment]

        def submit(i: int) -> None:
            try:
                outcomes[i] = gateway.submit_from_thread(batches[i])
            except Exception as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(batches))]
        for thread in threads:
            thread.start()
        for _ in threads:  # the loop is held here until every thread has handed its batch over
            handed_over.acquire(timeout=30)
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
        return gateway

    return trio.run(main), outcomes


def test_batches_from_several_threads_are_written_in_one_transaction(archive: Archive) -> None:
    batches = [batch_of(archive, 2) for _ in range(4)]
    gateway, outcomes = _submit_while_the_loop_is_busy(archive, batches)
    assert gateway.groups == 1
    for batch, results in zip(batches, outcomes, strict=True):  # each thread gets its own results
        assert isinstance(results, list)
        assert [r.sop_uid for r in results] == [p.parsed.sop_uid for p in batch]
        assert {r.outcome for r in results} == {Outcome.STORED}
    assert archive.db.get_int("SELECT count(*) FROM instances") == 8


def test_a_failing_batch_in_a_group_fails_alone(archive: Archive) -> None:
    batches = [batch_of(archive, 2) for _ in range(3)]
    archive.store.discard(batches[1][1].temp)  # its file is gone: that batch cannot be written
    gateway, outcomes = _submit_while_the_loop_is_busy(archive, batches)
    assert gateway.groups == 1
    assert isinstance(outcomes[1], FileNotFoundError)
    for i in (0, 2):
        assert [r.outcome for r in outcomes[i]] == [Outcome.STORED] * 2  # type: ignore[attr-defined]
    assert archive.db.get_int("SELECT count(*) FROM instances") == 4
    assert sorted(p.name for p in (archive.store.root).rglob("*.dcm")) == sorted(
        f"{p.parsed.sop_uid}.dcm" for i in (0, 2) for p in batches[i])  # nothing of the failed batch stays
