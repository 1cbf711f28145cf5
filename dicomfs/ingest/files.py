"""``dicomfs import``: files and folders (DICOMDIR media included) → store and index.

Parsing and the durable temporary write run in worker processes; the index is written by
this process alone, in batches, so a failed or interrupted import changes nothing that was
already in the archive.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dicomfs.archive import Archive
from dicomfs.ingest.prepare import Batch, Prepared, prepare
from dicomfs.ingest.writer import Outcome
from dicomfs.parse import InvalidInstanceError, NotDicomError, quiet_pydicom
from dicomfs.store import Store

log = logging.getLogger(__name__)

_IN_PROCESS_BELOW = 32  # starting worker processes costs more than parsing this many files


@dataclass(slots=True)
class ImportReport:
    counts: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected

    def summary(self) -> str:
        c = self.counts
        return (
            f"imported {c['stored']}, duplicates {c['identical'] + c['conflict']} "
            f"({c['conflict']} with different content, first copy kept), "
            f"skipped {len(self.skipped)} (not DICOM), rejected {len(self.rejected)}"
        )


@dataclass(frozen=True, slots=True)
class _Read:
    """What a worker made of one file: an instance to index, or why not."""

    path: str
    prepared: Prepared | None = None
    skipped: str = ""
    rejected: str = ""


def find_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file below ``paths``; a DICOMDIR given by name yields what it references."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif path.name.upper() == "DICOMDIR":
            yield from _dicomdir_files(path)
        else:
            yield path


def _dicomdir_files(dicomdir: Path) -> Iterator[Path]:
    """Files a DICOMDIR references, resolved case-insensitively (ISO 9660 media vary)."""
    try:
        ds = pydicom.dcmread(dicomdir)
        records = ds.DirectoryRecordSequence
    except Exception as exc:
        log.warning("%s: not a readable DICOMDIR (%s); importing its folder instead", dicomdir, exc)
        yield from find_files([dicomdir.parent])
        return
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        resolved = _resolve_case_insensitive(dicomdir.parent, parts)
        if resolved is not None:
            yield resolved
        else:
            log.warning("%s references %s, which is missing", dicomdir, "/".join(parts))


def _resolve_case_insensitive(base: Path, parts: list[str]) -> Path | None:
    current = base
    for part in parts:
        exact = current / part
        if exact.exists():
            current = exact
            continue
        try:
            matches = [p for p in current.iterdir() if p.name.upper() == part.upper()]
        except OSError:
            return None
        if not matches:
            return None
        current = matches[0]
    return current


def _read(path: str, store_root: str) -> _Read:
    """Worker: read, validate, write a durable temporary copy. Never raises."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return _Read(path, rejected=f"cannot read: {exc.strerror}")
    try:
        return _Read(path, prepare(raw, Store(store_root), source=path))
    except NotDicomError as exc:
        return _Read(path, skipped=str(exc))
    except InvalidInstanceError as exc:
        return _Read(path, rejected=str(exc))
    except OSError as exc:
        return _Read(path, rejected=f"cannot store: {exc.strerror}")
    except Exception as exc:  # a parser bug must not end the import
        return _Read(path, rejected=f"unexpected error: {type(exc).__name__}: {exc}")


def run_import(archive: Archive, paths: list[Path], *, workers: int = 0, batch: int = 64,
               progress: bool | None = None) -> ImportReport:
    files = [str(p) for p in find_files(paths)]
    report = ImportReport()
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(files), unit="file", disable=(not sys.stderr.isatty()) if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True)
    pending: Batch = []

    def flush() -> None:
        if not pending:
            return
        try:
            for result in archive.writer.add_batch(pending):
                report.counts[_COUNT_KEY[result.outcome]] += 1
        finally:
            for prepared in pending:
                archive.store.discard(prepared.temp)
            pending.clear()

    try:
        # Log lines (rejections, conflicts) go above the bar instead of through it.
        with logging_redirect_tqdm(), _executor(workers, len(files)) as pool:
            for read in pool.map(_read, files, [str(archive.store.root)] * len(files), chunksize=8):
                bar.update(1)
                if read.skipped:
                    report.skipped.append((read.path, read.skipped))
                elif read.rejected:
                    report.rejected.append((read.path, read.rejected))
                    log.warning("rejected %s: %s", read.path, read.rejected)
                else:
                    assert read.prepared is not None
                    pending.append(read.prepared)
                    if len(pending) >= batch:
                        flush()
            flush()
    finally:
        bar.close()
        archive.store.clean_temporaries()
    return report


_COUNT_KEY = {Outcome.STORED: "stored", Outcome.IDENTICAL: "identical", Outcome.CONFLICT: "conflict"}


class _InProcess(concurrent.futures.Executor):
    def map(self, fn, *iterables, timeout=None, chunksize=1):  # type: ignore[no-untyped-def, override]
        return map(fn, *iterables)


def _executor(workers: int, n_files: int) -> concurrent.futures.Executor:
    if workers <= 1 or n_files < _IN_PROCESS_BELOW:
        return _InProcess()
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("forkserver"), initializer=quiet_pydicom
    )
