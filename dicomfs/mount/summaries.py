"""Contents of ``patient.json``, ``study.json``, ``series.json`` and ``/orphans/*/origin.json``.

Each lists its level's attributes (DICOM keywords), its children under the names the mount
gives them, and the research organisation of the level: tags, projects, derived data with
its origin. Children are named by ``naming``, as the folders are, so that the names a summary
lists are the names of the folders beside it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dicomfs.index import organise
from dicomfs.index.db import Database, NoSuchRowError
from dicomfs.mount import naming, rows
from dicomfs.mount.kinds import Kind, orphan_origin, volume_of
from dicomfs.mount.rows import InstanceRow
from dicomfs.views.summary import summary_json

if TYPE_CHECKING:
    from dicomfs.mount.model import Model


def make(model: Model, kind: Kind, row_id: int) -> bytes:
    """The bytes of the generated file ``kind`` of entity ``row_id`` (NoSuchRowError if it is gone)."""
    if kind is Kind.PATIENT_JSON:
        return patient_summary(model.db, row_id)
    if kind is Kind.STUDY_JSON:
        return study_summary(model.db, row_id)
    if kind is Kind.SERIES_JSON:
        return series_summary(model.db, row_id, naming.named_instances(rows.instances_of(model.db, row_id)),
                              model.volume_files(row_id).summary)
    if kind is Kind.VOLUME_TEXT:
        return volume_text(model, row_id)
    if kind is Kind.ORPHAN_JSON:
        return orphan_summary(model.db, *orphan_origin(row_id))
    raise NoSuchRowError(kind)


def patient_summary(db: Database, patient_id: int) -> bytes:
    p = row_dict(db, "patients", patient_id)
    named = naming.named_studies(rows.studies(db, "WHERE st.patient_id = ?", (patient_id,)))
    children = [
        {"name": n, "StudyInstanceUID": r.study_uid, "StudyDate": r.study_date, "StudyDescription":
         r.study_description, "AccessionNumber": r.accession_number,
         "ModalitiesInStudy": r.modalities.split("\\") if r.modalities else []}
        for n, r in named
    ]
    return summary_json("PATIENT", {**_patient_attributes(p), **organisation(db, "patient", patient_id)},
                        "Studies", children)

def study_summary(db: Database, study_id: int) -> bytes:
    s = row_dict(db, "studies", study_id)
    p = row_dict(db, "patients", s["patient_id"])
    series = rows.series_of(db, study_id)
    children = [
        {"name": n, "SeriesInstanceUID": r.series_uid, "SeriesNumber": r.series_number, "Modality": r.modality,
         "SeriesDescription": r.series_description, "NumberOfSeriesRelatedInstances": r.num_instances}
        for n, r in naming.named_series(series)
    ]
    modalities = sorted({r.modality for r in series if r.modality})
    sop_classes = [r[0] for r in db.query(
        "SELECT DISTINCT i.sop_class_uid FROM instances i JOIN series se ON se.id = i.series_id "
        "WHERE se.study_id = ? ORDER BY 1", (study_id,))]
    attributes = {
        **_patient_attributes(p),
        **_study_attributes(s),
        "ModalitiesInStudy": modalities,
        "SOPClassesInStudy": sop_classes,
        **organisation(db, "study", study_id),
    }
    remote = db.query(
        "SELECT r.remote, r.num_series, r.num_instances, r.series_listed_at, "
        "  (SELECT count(*) FROM instances i JOIN series se ON se.id = i.series_id "
        "   WHERE se.study_id = r.study_id AND i.file_path != '') "
        "FROM remote_studies r WHERE r.study_id = ?",
        (study_id,),
    )
    if remote:
        name, num_series, num_instances, listed, local = remote[0]
        attributes["Remote"] = {"name": name, "NumberOfSeriesThere": num_series,
                                "NumberOfInstancesThere": num_instances, "LocalInstances": local,
                                "Complete": num_instances is not None and local >= num_instances,
                                "SeriesListed": listed is not None}
    return summary_json("STUDY", attributes, "Series", children)

def no_jpg_reason(r: InstanceRow) -> str:
    """Why an instance has no .jpg view, from what the index keeps (import decided it)."""
    if not r.local:
        return "not fetched yet"
    if not r.rows or not r.columns:
        return "no image: no pixel data"
    return f"pixel data that cannot be decoded or rendered (transfer syntax {r.transfer_syntax_uid or 'unknown'})"


def series_summary(db: Database, series_id: int, named: list[tuple[str, InstanceRow]],
                   volume: dict[str, Any] | None = None) -> bytes:
    """``named``: the series' instances with the names its folder gives them; ``volume``: what
    its volumes are, or why there are none (``volumes.plan.SeriesPlan.summary``)."""
    se = row_dict(db, "series", series_id)
    s = row_dict(db, "studies", se["study_id"])
    children = [
        {"name": f"{stem}.dcm", "SOPInstanceUID": r.sop_uid, "SOPClassUID": r.sop_class_uid,
         "InstanceNumber": r.instance_number, "size": r.file_size, "jpg": f"{stem}.jpg" if r.has_image else None,
         **({} if r.has_image else {"no_jpg_reason": no_jpg_reason(r)}), "local": bool(r.local)}
        for stem, r in named
    ]
    attributes = {
        "PatientID": db.get_val("SELECT patient_id FROM patients WHERE id = ?", (s["patient_id"],)),
        "StudyInstanceUID": s["study_uid"],
        "SeriesInstanceUID": se["series_uid"],
        "Modality": se["modality"],
        "SeriesNumber": se["series_number"],
        "SeriesDescription": se["series_description"],
        "SeriesDate": se["series_date"],
        "SeriesTime": se["series_time"],
        "BodyPartExamined": se["body_part_examined"],
        "ProtocolName": se["protocol_name"],
        "Laterality": se["laterality"],
        "StationName": se["station_name"],
        "Manufacturer": se["manufacturer"],
        "FrameOfReferenceUID": se["frame_of_reference_uid"],
        "NumberOfSeriesRelatedInstances": se["num_instances"],
        "InstitutionName": s["institution_name"],
        "ManufacturerModelName": se["manufacturer_model_name"],
        "PatientPosition": se["patient_position"],
        "PerformedProcedureStepDescription": se["pps_description"],
        **({"Radiopharmaceutical": se["radiopharmaceutical"], "Units": se["units"],
            "DecayCorrection": se["decay_correction"], "ReconstructionMethod": se["reconstruction_method"]}
           if se["modality"] in ("PT", "NM") else {}),
        **acquisition(db, series_id, volume),
        **organisation(db, "series", series_id),
    }
    if volume is not None:
        attributes["Volume"] = volume
    remote = db.query(
        "SELECT remote, num_instances, complete, instances_listed_at FROM remote_series WHERE series_id = ?",
        (series_id,),
    )
    if remote:
        name, count, complete, listed = remote[0]
        local = sum(1 for _, r in named if r.local)
        attributes["Remote"] = {"name": name, "NumberOfInstancesThere": count, "LocalInstances": local,
                                "Complete": bool(complete), "InstancesListed": listed is not None}
    return summary_json("SERIES", attributes, "Instances", children)

# Instance columns shown in series.json: (keyword, column, kind) with kind number, numbers
# (backslash-separated numbers), list (backslash-separated text) or text.
_ACQUISITION = (
    ("ImageType", "image_type", "list"), ("Rows", "rows", "number"), ("Columns", "columns", "number"),
    ("PixelSpacing", "pixel_spacing", "numbers"), ("SliceThickness", "slice_thickness", "number"),
    ("SpacingBetweenSlices", "spacing_between_slices", "number"),
    ("AcquisitionDate", "acquisition_date", "text"), ("AcquisitionTime", "acquisition_time", "text"),
    ("EchoTime", "echo_time", "number"), ("RepetitionTime", "repetition_time", "number"),
    ("InversionTime", "inversion_time", "number"), ("FlipAngle", "flip_angle", "number"),
    ("MagneticFieldStrength", "magnetic_field_strength", "number"),
    ("DiffusionBValue", "diffusion_b_value", "number"), ("SequenceName", "sequence_name", "text"),
    ("ScanningSequence", "scanning_sequence", "list"), ("SequenceVariant", "sequence_variant", "list"),
    ("ScanOptions", "scan_options", "list"), ("MRAcquisitionType", "mr_acquisition_type", "text"),
    ("KVP", "kvp", "number"), ("XRayTubeCurrent", "xray_tube_current", "number"),
    ("ConvolutionKernel", "convolution_kernel", "list"), ("ContrastBolusAgent", "contrast_bolus_agent", "text"),
)
_NOT_LISTED_WHEN_VARYING = frozenset({"AcquisitionDate", "AcquisitionTime"})  # one per slice: not worth a list
_VARYING_MAX = 32


def acquisition(db: Database, series_id: int, volume: dict[str, Any] | None) -> dict[str, Any]:
    """Geometry and acquisition values of the series' first image (by instance number), from
    the index alone; ``ValuesThatVary`` lists the distinct values of those that differ across
    its images (multi-echo, mixed kernels), at most 32 each."""
    columns = ", ".join(column for _, column, _ in _ACQUISITION)
    found = db.query(f"SELECT {columns}, number_of_frames FROM instances "
                     "WHERE series_id = ? AND rows > 0 ORDER BY instance_number, id", (series_id,))
    if not found:
        return {}
    out: dict[str, Any] = {}
    varying: dict[str, list[Any]] = {}
    for index, (keyword, _, kind) in enumerate(_ACQUISITION):
        values = [_shown(row[index], kind) for row in found]
        present = [v for v in values if v not in (None, "", [])]
        if not present:
            continue
        out[keyword] = present[0]
        distinct = list({json.dumps(v): v for v in present}.values())
        if len(distinct) > 1 and keyword not in _NOT_LISTED_WHEN_VARYING:
            distinct.sort(key=(lambda v: v) if kind == "number" else json.dumps)
            varying[keyword] = distinct[:_VARYING_MAX]
    orientation = _orientation(db.get_val_or("", "SELECT volume_facts FROM instances WHERE series_id = ? AND rows > 0 "
                                             "ORDER BY instance_number, id LIMIT 1", (series_id,)))
    if orientation is not None:
        out["ImageOrientationPatient"] = orientation
    out["NumberOfFrames"] = sum(row[-1] for row in found)
    volumes = (volume or {}).get("Volumes") or []
    if volumes:
        out["NumberOfSlices"] = volumes[0]["Dimensions"][2]
    if varying:
        out["ValuesThatVary"] = varying
    return out


def _shown(value: Any, kind: str) -> Any:
    if kind == "number" or value is None:
        return value
    if kind == "numbers":
        try:
            return [float(v) for v in str(value).split("\\")] if value else None
        except ValueError:
            return None
    if kind == "list":
        return str(value).split("\\") if value else []
    return value


def _orientation(facts: str) -> list[float] | None:
    """ImageOrientationPatient of the first frame, from the volume facts kept at ingest."""
    if not facts:
        return None
    try:
        frames = json.loads(facts).get("frames") or [{}]
        orientation = frames[0].get("orientation")
    except (ValueError, AttributeError):
        return None
    return [round(float(v), 6) for v in orientation] if orientation else None


def volume_text(model: Model, packed: int) -> bytes:
    """A volume's sidecar, .bval or .bvec (NoSuchRowError when the series has no such file now)."""
    from dicomfs.volumes.series import text_file

    series_id, number, part = volume_of(packed)
    volumes = model.volumes(series_id).plan.volumes
    data = text_file(model.db, volumes[number], part, series_id) if number < len(volumes) else None
    if data is None:
        raise NoSuchRowError(packed)
    return data


def organisation(db: Database, level: str, row_id: int) -> dict[str, Any]:
    """Tags, projects and derived data of this level's entity (each level shows its own)."""
    found: dict[str, Any] = {"Tags": organise.tags_of(db, level, row_id),
                             "Projects": organise.projects_of(db, level, row_id)}
    if level in ("study", "series"):
        found["Derived"] = [
            {"name": f"{naming.DERIVED_NAME}/{name}", "kind": kind, "size": size,
             "origin": {"level": level, "uid": uid}, "created": created, "updated": updated, "SOPInstanceUID": sop_uid}
            for name, kind, size, uid, created, updated, sop_uid in db.query(
                "SELECT name, kind, size, origin_uid, created_at, updated_at, sop_uid FROM derived "
                "WHERE level = ? AND entity_id = ? ORDER BY name", (level, row_id))]
    return found

def row_dict(db: Database, table: str, row_id: int) -> dict[str, Any]:
    cursor = db.conn.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,))
    names = [d[0] for d in cursor.getdescription()]
    for row in cursor:
        return dict(zip(names, row, strict=True))
    raise NoSuchRowError(table)


def _patient_attributes(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "PatientName": p["patient_name"],
        "PatientID": p["patient_id"],
        "IssuerOfPatientID": p["issuer_of_patient_id"],
        "PatientBirthDate": p["patient_birth_date"],
        "PatientSex": p["patient_sex"],
        "OtherPatientIDs": p["other_patient_ids"],
        "NumberOfPatientRelatedStudies": p["num_studies"],
        "NumberOfPatientRelatedSeries": p["num_series"],
        "NumberOfPatientRelatedInstances": p["num_instances"],
    }


def _study_attributes(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "StudyInstanceUID": s["study_uid"],
        "StudyDate": s["study_date"],
        "StudyTime": s["study_time"],
        "AccessionNumber": s["accession_number"],
        "StudyID": s["study_id"],
        "StudyDescription": s["study_description"],
        "ReferringPhysicianName": s["referring_physician_name"],
        "InstitutionName": s["institution_name"],
        "PatientAge": s["patient_age"],
        "NumberOfStudyRelatedSeries": s["num_series"],
        "NumberOfStudyRelatedInstances": s["num_instances"],
    }


def orphan_summary(db: Database, level: str, entity_id: int) -> bytes:
    """``origin.json`` of an /orphans folder: what the deleted origin was, and what was made from it."""
    rows = db.query(
        "SELECT name, kind, size, origin_uid, created_at, updated_at, sop_uid, origin_deleted_at, origin_description "
        "FROM derived WHERE origin_deleted_at IS NOT NULL AND level = ? AND entity_id = ? ORDER BY id",
        (level, entity_id))
    if not rows:
        raise NoSuchRowError("derived")
    deleted_at = max(r[7] for r in rows)
    origin = {"level": level, "uid": rows[0][3], "deleted": True,
              "deleted_at": datetime.fromtimestamp(deleted_at, UTC).isoformat(timespec="seconds"),
              "was": json.loads(rows[0][8] or "{}")}
    children = [{"name": name, "kind": kind, "size": size, "created": created, "updated": updated,
                 "SOPInstanceUID": sop_uid} for name, kind, size, _, created, updated, sop_uid, _, _ in rows]
    return summary_json("ORPHANED DERIVED DATA", {"Origin": origin}, "Derived", children)
