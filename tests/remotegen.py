"""Remote listings for in-process tests: the rows a remote PACS's C-FIND answers would give."""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicomfs.parse import instance_values, patient_values, series_values, study_values
from dicomfs.remote.rows import RemoteRows, RemoteSeries, RemoteStudy


def list_on_remote(rows: RemoteRows, remote: str, datasets: list[Dataset]) -> dict[str, int]:
    """List ``datasets`` (any studies and series) as ``remote`` has them; SOP Instance UID → instance id."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    for group in by_series.values():
        first = group[0]
        rows.add_studies(remote, [RemoteStudy(patient_values(first), study_values(first), None, None)])
        study_id = rows.db.get_int("SELECT id FROM studies WHERE study_uid = ?", (first.StudyInstanceUID,))
        rows.add_series(remote, study_id, [RemoteSeries(series_values(first), len(group))])
        series_id = rows.db.get_int("SELECT id FROM series WHERE series_uid = ?", (first.SeriesInstanceUID,))
        rows.add_instances(remote, series_id, [
            {k: v for k, v in instance_values(ds).items() if v not in ("", None)} for ds in group])
    return {str(ds.SOPInstanceUID): rows.db.get_int("SELECT id FROM instances WHERE sop_uid = ?",
                                                    (ds.SOPInstanceUID,)) for ds in datasets}
