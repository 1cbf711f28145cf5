"""Names of the mounted tree's entries, safe on every platform and unique within their folder.

Names come from first-seen index values only, and collisions are settled by row id
(arrival order), so a name never changes once shown: a newcomer that collides gets the
suffix, not the entity that was there first.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from dicomfs.mount.rows import InstanceRow, PatientRow, SeriesRow, StudyRow

MAX_NAME_BYTES = 255
# Room kept for a collision suffix and a view suffix such as ".json".
_BASE_BYTES = 200

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_SPACES = re.compile(r"\s+")

T = TypeVar("T")


def safe_component(text: str, *, fallback: str, max_bytes: int = _BASE_BYTES) -> str:
    """Make ``text`` a valid file name on Linux, macOS and Windows, keeping letters intact.

    Replaces separators, control and Windows-reserved characters, collapses white space,
    strips trailing dots and spaces, and cuts to a UTF-8 byte budget at a character boundary.
    """
    text = unicodedata.normalize("NFC", text.encode("utf-8", "replace").decode("utf-8"))
    text = _SPACES.sub(" ", _UNSAFE.sub("_", text)).strip()
    text = _truncate(text, max_bytes).rstrip(". ")
    if not text or set(text) <= {"."}:
        return fallback
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def entry_name(text: str, *, fallback: str) -> str:
    """A folder name for an index row: ``safe_component``, and never hidden.

    ``ls`` and file managers hide names that begin with "."; a row named ".hidden" would
    vanish from the tree. Leading dots become "_" (a collision with a real "_hidden" gets
    the usual suffix, by arrival order, so names stay unique and stable).
    """
    name = safe_component(text, fallback=fallback)
    stripped = name.lstrip(".")
    return "_" * (len(name) - len(stripped)) + stripped if stripped != name else name


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}


def _truncate(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def person_name(pn: str) -> str:
    """The alphabetic group of a DICOM PN ('DOE^JOHN=...' → 'DOE^JOHN'), else the next one."""
    for group in pn.split("="):
        if group.strip("^ "):
            return group.rstrip("^ ")
    return ""


def iso_date(da: str) -> str:
    """'20240301' → '2024-03-01'; anything else (partial, not a real date) → ''."""
    da = da.strip()
    if len(da) == 10 and da[4] == "." and da[7] == ".":
        da = da.replace(".", "")  # ACR-NEMA style
    if len(da) != 8 or not da.isdigit():
        return ""
    try:
        return datetime.date(int(da[:4]), int(da[4:6]), int(da[6:])).isoformat()
    except ValueError:
        return ""


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# Free text (names, descriptions) is cut to this many bytes so that identifiers after it
# (patient ID, accession number) always survive.
_TEXT_BYTES = 120


def _free(text: str) -> str:
    return _truncate(text, _TEXT_BYTES).rstrip()


def _ident(value: str) -> str:
    return f"[{_truncate(value, 64)}]" if value else ""


def patient_name(name: str, patient_id: str) -> str:
    """'DOE^JOHN [12345]'; the ID in brackets tells apart namesakes."""
    shown = _free(person_name(name)) or "(no name)"
    return entry_name(_join(shown, _ident(patient_id)), fallback="(no name)")


def study_name(study_date: str, description: str, accession: str, modalities: str = "") -> str:
    """'2024-03-01 CT Thorax [ACC123]'."""
    return entry_name(
        _join(
            iso_date(study_date) or "(no date)",
            _free(description or modalities) or "(no description)",
            _ident(accession),
        ),
        fallback="(study)",
    )


def dated_study_name(study_time: str, patient: str, description: str, accession: str) -> str:
    """Name inside a /dates day folder: '0815 DOE^JOHN CT Thorax [ACC123]'."""
    hhmm = study_time[:4] if len(study_time) >= 4 and study_time[:4].isdigit() else ""
    return entry_name(
        _join(hhmm, _free(person_name(patient)) or "(no name)", _free(description), _ident(accession)),
        fallback="(study)",
    )


def series_name(number: int | None, modality: str, description: str) -> str:
    """'003 CT Lung 1.0'."""
    shown = f"{number:03d}" if number is not None and number >= 0 else (str(number) if number is not None else "")
    return entry_name(_join(shown, _free(modality), _free(description)) or "(series)", fallback="(series)")


def instance_stem(number: int | None) -> str:
    """'007' for Instance Number 7; '-003' for -3; 'nonum' when absent (ties get suffixes)."""
    if number is None:
        return "nonum"
    return f"{number:03d}" if number >= 0 else f"-{-number:03d}"


def uid_name(uid: str) -> str:
    """A UID as a folder or file name (UIDs are digits and dots; anything else is made safe)."""
    if len(uid) <= 64 and _UID.fullmatch(uid):
        return uid
    return entry_name(uid, fallback="(no uid)")


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def unique_names(
    items: Sequence[T],
    base: Callable[[T], str],
    *,
    suffix: Callable[[str, int], str] | None = None,
    reserved: Iterable[str] = (),
) -> list[tuple[str, T]]:
    """Pair each item with a name unique in its folder, comparing case-insensitively.

    ``items`` must be in a stable order (row id); the first of a colliding group keeps the
    plain name and later ones get ' (2)', ' (3)', … (or what ``suffix`` makes). Names in
    ``reserved`` (files that sit beside the items) are never given out.
    """
    make = suffix or (lambda name, n: f"{name} ({n})")
    taken: set[str] = {n.casefold() for n in reserved}
    counts: dict[str, int] = {}
    out: list[tuple[str, T]] = []
    for item in items:
        name = base(item)
        key = name.casefold()
        if key in taken:
            n = counts.get(key, 1)
            while True:
                n += 1
                candidate = make(name, n)
                if candidate.casefold() not in taken:
                    break
            counts[key] = n
            name, key = candidate, candidate.casefold()
        taken.add(key)
        out.append((name, item))
    return out


# ------------------------------------------------------------------ names of index rows
# The one place that names patients, studies, series and instances: listings and summaries
# both call these, so a summary lists exactly the names of the folders beside it.

SUMMARY_NAMES = {"patient": "patient.json", "study": "study.json", "series": "series.json"}
DERIVED_NAME = "derived"
# A series volume's files (volumes.plan names them "volume" or "volume_<what separates it>"):
# instance stems are numbers or UIDs, so they never collide.
VOLUME_SUFFIXES = {0: ".nii", 1: ".json", 2: ".bval", 3: ".bvec"}  # by kinds.VolumePart
FRAMES_SUFFIX = ".frames"  # NNN.frames/: one .jpg per frame of a multi-frame instance
ORIGIN_JSON_NAME = "origin.json"
UNKNOWN_YEAR_NAME = "unknown"


def named_patients(rows: Sequence[PatientRow]) -> list[tuple[str, PatientRow]]:
    return unique_names(rows, lambda r: patient_name(r.patient_name, r.patient_id))


def study_folder_name(row: StudyRow) -> str:
    return study_name(row.study_date, row.study_description, row.accession_number, row.modalities)


def named_studies(rows: Sequence[StudyRow], style: str = "patient") -> list[tuple[str, StudyRow]]:
    """Study folders: ``patient`` (in a patient folder, beside patient.json), ``dated`` (in a
    /dates day), ``query`` (in a /query folder: the patient's name first) or ``uid``."""
    if style == "patient":
        return unique_names(rows, study_folder_name, reserved=[SUMMARY_NAMES["patient"]])
    if style == "dated":
        return unique_names(rows, lambda r: dated_study_name(r.study_time, r.patient_name, r.study_description,
                                                             r.accession_number))
    if style == "query":
        return unique_names(rows, lambda r: entry_name(
            f"{person_name(r.patient_name) or '(no name)'} {study_folder_name(r)}", fallback="(study)"))
    return unique_names(rows, lambda r: uid_name(r.study_uid))


def named_series(rows: Sequence[SeriesRow], *, by_uid: bool = False) -> list[tuple[str, SeriesRow]]:
    """Series folders in a study folder, beside study.json and derived/."""
    reserved = [SUMMARY_NAMES["study"], DERIVED_NAME]
    if by_uid:
        return unique_names(rows, lambda r: uid_name(r.series_uid), reserved=reserved)
    return unique_names(rows, lambda r: series_name(r.series_number, r.modality, r.series_description),
                        reserved=reserved)


def named_instances(rows: Sequence[InstanceRow], *, by_uid: bool = False) -> list[tuple[str, InstanceRow]]:
    """Instances of a series with their file stems ('007', '007_2', or the SOP Instance UID)."""
    if by_uid:
        return unique_names(rows, lambda r: uid_name(r.sop_uid))
    return unique_names(rows, lambda r: instance_stem(r.instance_number), suffix=lambda n, i: f"{n}_{i}")
