"""``dicomfs remote ...``: manage remote PACS in the configuration, query them, pull studies.

The TOML configuration is the one source of truth for remote nodes: ``add`` and ``remove``
edit it (comments kept) and a running daemon reads it at its next start. What a remote
*has* (studies, series, instances listed by queries) lives in the index.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

import tomlkit

from dicomfs import config
from dicomfs.archive import Archive
from dicomfs.commands.output import print_table
from dicomfs.config import RemoteNode, Settings
from dicomfs.errors import UserError
from dicomfs.ingest.pipeline import StorePipeline
from dicomfs.net import scu, walk
from dicomfs.remote import catalog, terms


class CommandError(UserError):
    """A remote command that cannot be carried out; the message is for the user."""


def read_terms(given: str | list[str], level: str, warn: TextIO) -> terms.RemoteTerms:
    """Command-line or saved terms as C-FIND keys; one line on ``warn`` for the old form."""
    found = terms.parse(given, level)
    if found.legacy:
        shown = given if isinstance(given, str) else " ".join(given)
        print(f"dicomfs: warning: {terms.deprecation(shown, found)}", file=warn)
    return found


# ------------------------------------------------------------------ the configuration file

def config_path(settings: Settings, given: Path | None) -> Path:
    """The file ``add``/``remove`` edit: --config, the file loaded, or the default location."""
    if given:
        return given
    if settings.source:
        return settings.source
    return config.default_config_path() or Path(
        os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "dicomfs" / "config.toml"


def add(path: Path, remote: RemoteNode, settings: Settings) -> None:
    if settings.dicom.remote(remote.name):
        raise CommandError(f"a remote named {remote.name!r} exists already (remove it first)")
    for saved in remote.listing:
        read_terms(saved, "STUDY", sys.stderr)  # refuse a bad saved query now, not at the daemon's next start
    doc = _load(path)
    dicom = doc.setdefault("dicom", tomlkit.table())
    remotes = dicom.setdefault("remotes", tomlkit.aot())
    table = tomlkit.table()
    for key in ("name", "ae_title", "host", "port", "retrieve", "timeout"):
        table[key] = getattr(remote, key)
    if remote.listing:
        table["listing"] = remote.listing
    remotes.append(table)
    _save(path, doc)


def remove(path: Path, name: str) -> None:
    doc = _load(path)
    remotes = doc.get("dicom", {}).get("remotes", [])
    kept = [r for r in remotes if r.get("name") != name]
    if len(kept) == len(remotes):
        raise CommandError(f"no remote named {name!r} in {path}")
    remotes.clear()
    for table in kept:
        remotes.append(table)
    _save(path, doc)


def _load(path: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    except tomlkit.exceptions.TOMLKitError as exc:
        raise CommandError(f"{path} is not valid TOML: {exc}") from exc


def _save(path: Path, doc: tomlkit.TOMLDocument) -> None:
    """Write atomically, then check that the result still loads as a configuration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(tomlkit.dumps(doc))
    try:
        config.load(Path(temp))
    except config.ConfigError as exc:
        os.unlink(temp)
        raise CommandError(f"refusing to write an invalid configuration: {exc}") from exc
    os.replace(temp, path)


# ------------------------------------------------------------------ asking a remote

_COLUMNS = {
    "STUDY": ("PatientName", "PatientID", "StudyDate", "ModalitiesInStudy", "StudyDescription",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyInstanceUID"),
    "SERIES": ("SeriesNumber", "Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances",
               "SeriesInstanceUID", "StudyInstanceUID"),
    "IMAGE": ("InstanceNumber", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"),
}


def query(remote: RemoteNode, level: str, given: list[str], calling_ae: str, as_json: bool, out: TextIO,
          warn: TextIO) -> int:
    """C-FIND at ``level``, walking the hierarchy where the remote needs it; prints the answers."""
    match = read_terms(given, level, warn)
    columns = _COLUMNS[level]
    keys = {**dict.fromkeys(columns, ""), **match.keys}
    answers = walk.search(remote, level, keys, calling_ae=calling_ae, timeout=remote.timeout, levels=match.levels)
    rows = [{c: _text(ds.get(c)) for c in columns} for ds in answers]
    if as_json:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        print_table(rows, columns, out)
    return len(rows)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)



def refresh(archive: Archive, remote: RemoteNode, calling_ae: str) -> int:
    """Run the remote's saved queries now; returns the number of new studies."""
    if not remote.listing:
        raise CommandError(f"remote {remote.name!r} has no saved queries (its 'listing' setting is empty)")
    new = 0
    for saved in remote.listing:
        studies = catalog.find_studies(remote, read_terms(saved, "STUDY", sys.stderr).keys, calling_ae)
        new += archive.remote.add_studies(remote.name, studies)
    return new


def pull(archive: Archive, remote: RemoteNode, study_uid: str, series_uid: str | None, settings: Settings,
         progress: bool | None) -> scu.RetrieveResult:
    """Retrieve a study (or one series) into the archive now; it is kept, not cached."""
    from tqdm import tqdm

    calling_ae = settings.dicom.ae_title
    level, keys = ("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}) if series_uid \
        else ("STUDY", {"StudyInstanceUID": study_uid})
    studies = catalog.find_studies(remote, {"StudyInstanceUID": study_uid}, calling_ae)
    if not studies:
        raise CommandError(f"remote {remote.name} has no study {study_uid}")
    archive.remote.add_studies(remote.name, studies)
    found = walk.search(remote, "IMAGE", {**keys, "SOPClassUID": "", "SOPInstanceUID": ""},
                        calling_ae=calling_ae, timeout=remote.timeout)
    if not found:
        raise CommandError(f"remote {remote.name} lists no instances for {series_uid or study_uid}")
    bar = tqdm(total=len(found), unit="instance", disable=not (sys.stderr.isatty() if progress is None else progress))
    try:
        if remote.retrieve == "move":  # the daemon's node receives them
            result = scu.move(remote, level, keys, destination_ae=calling_ae, calling_ae=calling_ae,
                              timeout=remote.timeout)
        else:
            sop_classes = sorted({str(ds.get("SOPClassUID", "")) for ds in found} - {""})
            pipeline = StorePipeline(archive.store, archive.writer.add_batch, source=f"remote {remote.name}",
                                     on_stored=bar.update)
            try:
                result = scu.get(remote, level, keys, calling_ae=calling_ae, timeout=remote.timeout,
                                 sop_classes=sop_classes, on_instance=pipeline.put)
            finally:
                pipeline.close()
            result = result.with_unkept(pipeline.failed)
    finally:
        bar.close()
    archive.remote.keep_study(study_uid)
    return result
