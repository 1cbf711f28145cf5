"""What a remote PACS has, as index values: saved queries → studies, then series and instances.

Network only (C-FIND through ``net.scu``; saved queries are read by ``remote.terms``), no
database: callers hand the results to ``RemoteRows`` (``remote.rows``), on whichever thread
writes the index. Each level is asked for only when a user gets there, so an ``ls`` never
walks a whole PACS.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from dicomfs.config import RemoteNode
from dicomfs.net import scu
from dicomfs.parse import InvalidInstanceError, instance_values, patient_values, series_values, study_values
from dicomfs.remote.rows import RemoteSeries, RemoteStudy

log = logging.getLogger(__name__)

STUDY_KEYS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = (
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
    "BodyPartExamined", "ProtocolName", "NumberOfSeriesRelatedInstances",
)
IMAGE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")


def find_studies(remote: RemoteNode, match: dict[str, str], calling_ae: str) -> list[RemoteStudy]:
    """The studies ``match`` (C-FIND keys, e.g. ``terms.parse(saved).keys``) finds."""
    answers = scu.find(remote, "STUDY", _keys(STUDY_KEYS, match), calling_ae=calling_ae, timeout=remote.timeout)
    studies = []
    for ds in answers:
        try:
            studies.append(RemoteStudy(patient_values(ds), study_values(ds),
                                       _count(ds, "NumberOfStudyRelatedSeries"),
                                       _count(ds, "NumberOfStudyRelatedInstances")))
        except InvalidInstanceError as exc:
            log.warning("remote %s: skipped a study answer: %s", remote.name, exc)
    return studies


def find_series(remote: RemoteNode, study_uid: str, calling_ae: str) -> list[RemoteSeries]:
    match = {"StudyInstanceUID": study_uid}
    answers = scu.find(remote, "SERIES", _keys(SERIES_KEYS, match), calling_ae=calling_ae, timeout=remote.timeout)
    series = []
    for ds in answers:
        try:
            series.append(RemoteSeries(series_values(ds), _count(ds, "NumberOfSeriesRelatedInstances")))
        except InvalidInstanceError as exc:
            log.warning("remote %s: skipped a series answer: %s", remote.name, exc)
    return series


def find_instances(remote: RemoteNode, study_uid: str, series_uid: str, calling_ae: str) -> list[dict[str, Any]]:
    match = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    answers = scu.find(remote, "IMAGE", _keys(IMAGE_KEYS, match), calling_ae=calling_ae, timeout=remote.timeout)
    instances = []
    for ds in answers:
        try:
            values = instance_values(ds)
        except InvalidInstanceError as exc:
            log.warning("remote %s: skipped an instance answer: %s", remote.name, exc)
            continue
        instances.append({k: v for k, v in values.items() if v not in ("", None)})
    return instances


def _keys(returned: tuple[str, ...], match: dict[str, str]) -> dict[str, str]:
    return {**dict.fromkeys(returned, ""), **match}


def _count(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
