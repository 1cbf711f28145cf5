"""The index schema, versioned through ``PRAGMA user_version`` with forward migrations.

Row ids come from AUTOINCREMENT columns so they are never reused: the mount derives inode
numbers from them, and the kernel may hold an inode long after its row is gone.
Text columns hold values decoded with the instance's Specific Character Set ('' when absent).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from dicomfs.index.db import Database

SCHEMA_V1 = """
CREATE TABLE patients (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_key         TEXT NOT NULL UNIQUE,  -- identity: issuer + Patient ID, or the name when the ID is empty
    patient_id          TEXT NOT NULL,         -- (0010,0020)
    issuer_of_patient_id TEXT NOT NULL,        -- (0010,0021)
    patient_name        TEXT NOT NULL,         -- (0010,0010), all component groups, decoded
    patient_birth_date  TEXT NOT NULL,         -- (0010,0030) YYYYMMDD as received
    patient_birth_time  TEXT NOT NULL,         -- (0010,0032)
    patient_sex         TEXT NOT NULL,         -- (0010,0040)
    other_patient_ids   TEXT NOT NULL,         -- (0010,1000) backslash-separated
    ethnic_group        TEXT NOT NULL,         -- (0010,2160)
    patient_comments    TEXT NOT NULL,         -- (0010,4000)
    num_studies         INTEGER NOT NULL DEFAULT 0,  -- (0020,1200), kept by triggers
    num_series          INTEGER NOT NULL DEFAULT 0,  -- (0020,1202), kept by triggers
    num_instances       INTEGER NOT NULL DEFAULT 0,  -- (0020,1204), kept by triggers
    created_at          REAL NOT NULL,         -- unix time the first instance arrived
    updated_at          REAL NOT NULL          -- unix time of the last change below this patient
);

CREATE TABLE studies (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id          INTEGER NOT NULL REFERENCES patients(id),
    study_uid           TEXT NOT NULL UNIQUE,  -- (0020,000D)
    study_date          TEXT NOT NULL,         -- (0008,0020) YYYYMMDD or ''
    study_time          TEXT NOT NULL,         -- (0008,0030) HHMMSS.FFFFFF or ''
    accession_number    TEXT NOT NULL,         -- (0008,0050)
    study_id            TEXT NOT NULL,         -- (0020,0010)
    study_description   TEXT NOT NULL,         -- (0008,1030)
    referring_physician_name TEXT NOT NULL,    -- (0008,0090)
    physicians_reading  TEXT NOT NULL,         -- (0008,1060) Name of Physician(s) Reading Study
    admitting_diagnoses TEXT NOT NULL,         -- (0008,1080) Admitting Diagnoses Description
    patient_age         TEXT NOT NULL,         -- (0010,1010) at the time of this study
    patient_size        TEXT NOT NULL,         -- (0010,1020) metres, as received
    patient_weight      TEXT NOT NULL,         -- (0010,1030) kg, as received
    institution_name    TEXT NOT NULL,         -- (0008,0080)
    num_series          INTEGER NOT NULL DEFAULT 0,  -- (0020,1206), kept by triggers
    num_instances       INTEGER NOT NULL DEFAULT 0,  -- (0020,1208), kept by triggers
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);
CREATE INDEX studies_patient ON studies(patient_id);
CREATE INDEX studies_date ON studies(study_date);
CREATE INDEX studies_accession ON studies(accession_number);

CREATE TABLE series (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id            INTEGER NOT NULL REFERENCES studies(id),
    series_uid          TEXT NOT NULL UNIQUE,  -- (0020,000E)
    modality            TEXT NOT NULL,         -- (0008,0060)
    series_number       INTEGER,               -- (0020,0011); NULL when absent or not a number
    series_description  TEXT NOT NULL,         -- (0008,103E)
    series_date         TEXT NOT NULL,         -- (0008,0021)
    series_time         TEXT NOT NULL,         -- (0008,0031)
    body_part_examined  TEXT NOT NULL,         -- (0018,0015)
    protocol_name       TEXT NOT NULL,         -- (0018,1030)
    laterality          TEXT NOT NULL,         -- (0020,0060)
    station_name        TEXT NOT NULL,         -- (0008,1010)
    manufacturer        TEXT NOT NULL,         -- (0008,0070)
    frame_of_reference_uid TEXT NOT NULL,      -- (0020,0052)
    pps_start_date      TEXT NOT NULL,         -- (0040,0244) Performed Procedure Step Start Date
    pps_start_time      TEXT NOT NULL,         -- (0040,0245)
    num_instances       INTEGER NOT NULL DEFAULT 0,  -- (0020,1209), kept by triggers
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);
CREATE INDEX series_study ON series(study_id);
CREATE INDEX series_modality ON series(modality);

CREATE TABLE instances (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    series_id           INTEGER NOT NULL REFERENCES series(id),
    sop_uid             TEXT NOT NULL UNIQUE,  -- (0008,0018)
    sop_class_uid       TEXT NOT NULL,         -- (0008,0016)
    instance_number     INTEGER,               -- (0020,0013); NULL when absent or not a number
    transfer_syntax_uid TEXT NOT NULL,         -- (0002,0010) of the stored file
    specific_character_set TEXT NOT NULL,      -- (0008,0005) as received
    content_date        TEXT NOT NULL,         -- (0008,0023)
    content_time        TEXT NOT NULL,         -- (0008,0033)
    acquisition_number  TEXT NOT NULL,         -- (0020,0012)
    image_type          TEXT NOT NULL,         -- (0008,0008) backslash-separated
    rows                INTEGER NOT NULL,      -- (0028,0010), 0 for non-images
    columns             INTEGER NOT NULL,      -- (0028,0011), 0 for non-images
    number_of_frames    INTEGER NOT NULL,      -- (0028,0008), 1 when absent
    photometric         TEXT NOT NULL,         -- (0028,0004)
    has_image           INTEGER NOT NULL,      -- 1 when the object has pixel data we render as .jpg
    file_path           TEXT NOT NULL,         -- path of the Part 10 file, relative to the store
    file_size           INTEGER NOT NULL,      -- bytes of that file
    json_size           INTEGER NOT NULL,      -- bytes of the .json view, computed at ingest
    json_version        INTEGER NOT NULL,      -- dicom_json.JSON_VERSION that json_size was computed with
    added_part10_header INTEGER NOT NULL,      -- 1 when the received bytes had no Part 10 header and got one
    duplicates_seen     INTEGER NOT NULL DEFAULT 0,  -- later arrivals of this SOP Instance UID (kept: first)
    source              TEXT NOT NULL,         -- where it came from: a file path, or a calling AE title
    received_at         REAL NOT NULL          -- unix time it was stored
);
CREATE INDEX instances_series ON instances(series_id, instance_number);
CREATE INDEX instances_sop_class ON instances(sop_class_uid);

-- One row per series touched by a committed write; the daemon polls it to refresh the mount.
-- (Schema v5 replaces it with an explicit scope; see index/changes.py.)
CREATE TABLE changes (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    series_id           INTEGER NOT NULL,
    at                  REAL NOT NULL
);

-- Count attributes (0020,120x) kept in the same transaction as the rows they count.
CREATE TRIGGER instances_after_insert AFTER INSERT ON instances BEGIN
    UPDATE series SET num_instances = num_instances + 1 WHERE id = NEW.series_id;
    UPDATE studies SET num_instances = num_instances + 1
        WHERE id = (SELECT study_id FROM series WHERE id = NEW.series_id);
    UPDATE patients SET num_instances = num_instances + 1
        WHERE id = (SELECT st.patient_id FROM series se JOIN studies st ON st.id = se.study_id
                    WHERE se.id = NEW.series_id);
END;
CREATE TRIGGER instances_after_delete AFTER DELETE ON instances BEGIN
    UPDATE series SET num_instances = num_instances - 1 WHERE id = OLD.series_id;
    UPDATE studies SET num_instances = num_instances - 1
        WHERE id = (SELECT study_id FROM series WHERE id = OLD.series_id);
    UPDATE patients SET num_instances = num_instances - 1
        WHERE id = (SELECT st.patient_id FROM series se JOIN studies st ON st.id = se.study_id
                    WHERE se.id = OLD.series_id);
END;
CREATE TRIGGER series_after_insert AFTER INSERT ON series BEGIN
    UPDATE studies SET num_series = num_series + 1 WHERE id = NEW.study_id;
    UPDATE patients SET num_series = num_series + 1
        WHERE id = (SELECT patient_id FROM studies WHERE id = NEW.study_id);
END;
CREATE TRIGGER series_after_delete AFTER DELETE ON series BEGIN
    UPDATE studies SET num_series = num_series - 1 WHERE id = OLD.study_id;
    UPDATE patients SET num_series = num_series - 1
        WHERE id = (SELECT patient_id FROM studies WHERE id = OLD.study_id);
END;
CREATE TRIGGER studies_after_insert AFTER INSERT ON studies BEGIN
    UPDATE patients SET num_studies = num_studies + 1 WHERE id = NEW.patient_id;
END;
CREATE TRIGGER studies_after_delete AFTER DELETE ON studies BEGIN
    UPDATE patients SET num_studies = num_studies - 1 WHERE id = OLD.patient_id;
END;
"""

# Remote PACS: studies listed by a saved query live there until fetched. Their instances get
# rows as soon as a series is listed, with file_path = '' until the file is local; `fetched`
# marks files retrieved on demand (the evictable cache), as opposed to received or imported.
SCHEMA_V2 = """
ALTER TABLE instances ADD COLUMN fetched INTEGER NOT NULL DEFAULT 0;
CREATE INDEX instances_not_local ON instances(series_id) WHERE file_path = '';

CREATE TABLE remote_studies (
    study_id            INTEGER PRIMARY KEY REFERENCES studies(id),
    remote              TEXT NOT NULL,         -- the remote's name in the configuration
    num_series          INTEGER,               -- (0020,1206) as the remote reported it
    num_instances       INTEGER,               -- (0020,1208) as the remote reported it
    listed_at           REAL NOT NULL,         -- last time a saved query returned this study
    series_listed_at    REAL                   -- when its series were queried (NULL: not yet)
);
CREATE INDEX remote_studies_remote ON remote_studies(remote);

CREATE TABLE remote_series (
    series_id           INTEGER PRIMARY KEY REFERENCES series(id),
    remote              TEXT NOT NULL,
    num_instances       INTEGER,               -- (0020,1209) as the remote reported it
    instances_listed_at REAL,                  -- when its instances were queried (NULL: not yet)
    complete            INTEGER NOT NULL DEFAULT 0,  -- 1 when every listed instance is local
    last_used           REAL                   -- last open of one of its files (cache eviction order)
);
"""

# Research organisation: projects group patients, studies and series; tags are KEY=VALUE on
# any level; derived data (files made from a study or series) keeps a link to its origin.
# Entities are named by (level, entity_id); `origin_uid` keeps the origin findable when its
# rows are gone.
SCHEMA_V3 = """
CREATE TABLE projects (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT NOT NULL UNIQUE,
    description         TEXT NOT NULL DEFAULT '',
    created_at          REAL NOT NULL
);
CREATE TABLE project_members (
    project_id          INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    level               TEXT NOT NULL CHECK (level IN ('patient', 'study', 'series')),
    entity_id           INTEGER NOT NULL,
    added_at            REAL NOT NULL,
    PRIMARY KEY (project_id, level, entity_id)
);
CREATE INDEX project_members_entity ON project_members(level, entity_id);

CREATE TABLE tags (
    level               TEXT NOT NULL CHECK (level IN ('patient', 'study', 'series', 'instance')),
    entity_id           INTEGER NOT NULL,
    key                 TEXT NOT NULL,
    value               TEXT NOT NULL,
    set_at              REAL NOT NULL,
    PRIMARY KEY (level, entity_id, key)
);
CREATE INDEX tags_key ON tags(key, value);

CREATE TABLE derived (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    level               TEXT NOT NULL CHECK (level IN ('study', 'series')),
    entity_id           INTEGER NOT NULL,      -- the origin's row id at that level
    origin_uid          TEXT NOT NULL,         -- Study/Series Instance UID of the origin
    name                TEXT NOT NULL,         -- file name in the origin's derived/ folder
    kind                TEXT NOT NULL DEFAULT 'other',  -- voi, stats, fit, map, dicom, other
    file_path           TEXT NOT NULL,         -- relative to <data>/derived; '' for DICOM objects in the store
    sop_uid             TEXT,                  -- a derived DICOM object (SEG, RTSTRUCT, SR, ...) in instances
    size                INTEGER NOT NULL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    UNIQUE (level, entity_id, name)
);
CREATE INDEX derived_origin ON derived(level, entity_id);

-- Queries used as folders of the mount's /query; `saved` ones (made with mkdir) are listed there.
CREATE TABLE queries (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    text                TEXT NOT NULL UNIQUE,
    saved               INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL
);
"""

# Deletion and late links. A derived item whose origin is deleted keeps its row and file, with
# the time and a description of what the origin was; a study or series of that UID arriving
# again takes it back. A derived DICOM object names the series and instances it was made
# from; those not yet in the archive when it arrived are linked when they come.
SCHEMA_V4 = """
ALTER TABLE derived ADD COLUMN origin_deleted_at REAL;  -- unix time the origin was deleted (NULL: it exists)
ALTER TABLE derived ADD COLUMN origin_description TEXT NOT NULL DEFAULT '';  -- JSON: the origin when deleted
CREATE INDEX derived_orphans ON derived(origin_uid) WHERE origin_deleted_at IS NOT NULL;

CREATE TABLE derived_sources (
    sop_uid             TEXT NOT NULL,         -- the derived DICOM object
    ref_level           TEXT NOT NULL CHECK (ref_level IN ('series', 'instance')),
    ref_uid             TEXT NOT NULL,         -- a Series or SOP Instance UID it references
    PRIMARY KEY (ref_uid, ref_level, sop_uid)
) WITHOUT ROWID;
CREATE INDEX derived_sources_object ON derived_sources(sop_uid);

-- Entities removed by a deletion, with the changes row that announced it: the mount drops
-- the names the kernel may still hold.
CREATE TABLE removals (
    seq                 INTEGER NOT NULL,      -- changes.seq
    level               TEXT NOT NULL CHECK (level IN ('patient', 'study', 'series', 'instance')),
    entity_id           INTEGER NOT NULL
);
CREATE INDEX removals_seq ON removals(seq);
"""

# The change log with an explicit scope (index/changes.py) instead of series id 0 standing for
# "everything". The table is rebuilt: a column cannot lose NOT NULL in place. Sequence numbers
# are kept, so removals still point at their change row.
SCHEMA_V5 = """
CREATE TABLE changes_v5 (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    scope               TEXT NOT NULL CHECK (scope IN ('series', 'everything')),  -- what the mount refreshes
    series_id           INTEGER,               -- the series a write touched (scope 'series'), else NULL
    at                  REAL NOT NULL          -- unix time of the write
);
INSERT INTO changes_v5 (seq, scope, series_id, at)
    SELECT seq, CASE WHEN series_id = 0 THEN 'everything' ELSE 'series' END, NULLIF(series_id, 0), at
    FROM changes ORDER BY seq;
DROP TABLE changes;
ALTER TABLE changes_v5 RENAME TO changes;
"""

# Series volumes (volumes/): what each instance's pixel data is and where it lies in the stored
# file, with its frames' geometry, as JSON (volumes.facts.InstanceFacts). Rows of an older
# FACTS_VERSION, and rows that predate this version (facts_version 0), are filled from their
# files by ``IndexWriter.refresh_volume_facts`` when the daemon starts.
SCHEMA_V6 = """
ALTER TABLE instances ADD COLUMN volume_facts TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN volume_sidecar TEXT NOT NULL DEFAULT '';  -- JSON: volumes.facts.sidecar_values
ALTER TABLE instances ADD COLUMN facts_version INTEGER NOT NULL DEFAULT 0;

-- What a series folder lists of its volumes (volumes.series.VolumeFiles), kept so that a
-- listing need not plan the series again; valid while the signature matches its instances.
CREATE TABLE volume_plans (
    series_id           INTEGER PRIMARY KEY,
    signature           TEXT NOT NULL,         -- volumes.series.signature when planned
    files               TEXT NOT NULL,         -- JSON: file names and sizes per volume, and the series.json summary
    layouts             TEXT NOT NULL          -- JSON: per volume, header and slice offsets (null: decoded)
);
"""

# Instance columns whose distinct values per series are kept in series_values (schema v7),
# by DICOM keyword; index/query_language.py reads them from study and series level.
SERIES_VALUE_COLUMNS = {
    "ImageType": "image_type", "PhotometricInterpretation": "photometric", "AcquisitionDate": "acquisition_date",
    "SequenceName": "sequence_name", "ScanningSequence": "scanning_sequence", "SequenceVariant": "sequence_variant",
    "ScanOptions": "scan_options", "MRAcquisitionType": "mr_acquisition_type",
    "ConvolutionKernel": "convolution_kernel", "ContrastBolusAgent": "contrast_bolus_agent",
}
_SERIES_VALUES_COLUMNS = ", ".join(SERIES_VALUE_COLUMNS.values())
_SERIES_VALUES_INSERT = ("INSERT OR IGNORE INTO series_values (keyword, value, series_id) "
                         + " UNION ALL ".join(f"SELECT '{k}', NEW.{c}, NEW.series_id"
                                              for k, c in SERIES_VALUE_COLUMNS.items()) + ";")

# What users search for (index/query_language.py): case-folded person names, so that
# ``ödegård*`` finds "Ödegård^Åsa" from an index, and the acquisition and geometry attributes
# of series and instances. Numbers are REAL (the first value; NULL when absent or not a
# number) so that they compare as numbers from their index; multi-valued ones are text,
# backslash-separated. Rows that predate this version are filled by ``_backfill_v7`` from
# what the index already kept (volume facts and sidecar values); attributes those never held
# (marked "new arrivals only") stay empty for them until the instance is imported again.
SCHEMA_V7 = f"""
ALTER TABLE patients ADD COLUMN patient_name_folded TEXT NOT NULL DEFAULT '';  -- cfind.fold_name(patient_name)
CREATE INDEX patients_name_folded ON patients(patient_name_folded);
ALTER TABLE studies ADD COLUMN referring_physician_name_folded TEXT NOT NULL DEFAULT '';  -- folded, as above
ALTER TABLE studies ADD COLUMN physicians_reading_folded TEXT NOT NULL DEFAULT '';        -- folded, as above

ALTER TABLE series ADD COLUMN manufacturer_model_name TEXT NOT NULL DEFAULT '';  -- (0008,1090)
ALTER TABLE series ADD COLUMN patient_position TEXT NOT NULL DEFAULT '';         -- (0018,5100)
ALTER TABLE series ADD COLUMN pps_description TEXT NOT NULL DEFAULT '';          -- (0040,0254); new arrivals only
ALTER TABLE series ADD COLUMN radiopharmaceutical TEXT NOT NULL DEFAULT '';      -- (0018,0031) in (0054,0016) item 1
ALTER TABLE series ADD COLUMN units TEXT NOT NULL DEFAULT '';                    -- (0054,1001) PET
ALTER TABLE series ADD COLUMN decay_correction TEXT NOT NULL DEFAULT '';         -- (0054,1102) PET
ALTER TABLE series ADD COLUMN reconstruction_method TEXT NOT NULL DEFAULT '';    -- (0054,1103) PET

ALTER TABLE instances ADD COLUMN slice_thickness REAL;         -- (0018,0050) mm
ALTER TABLE instances ADD COLUMN spacing_between_slices REAL;  -- (0018,0088) mm
ALTER TABLE instances ADD COLUMN pixel_spacing TEXT NOT NULL DEFAULT '';  -- (0028,0030) 'row\\column' mm, frame 1
ALTER TABLE instances ADD COLUMN echo_time REAL;               -- (0018,0081) ms (Enhanced MR: effective echo time)
ALTER TABLE instances ADD COLUMN repetition_time REAL;         -- (0018,0080) ms
ALTER TABLE instances ADD COLUMN inversion_time REAL;          -- (0018,0082) ms
ALTER TABLE instances ADD COLUMN flip_angle REAL;              -- (0018,1314) degrees
ALTER TABLE instances ADD COLUMN magnetic_field_strength REAL; -- (0018,0087) T
ALTER TABLE instances ADD COLUMN diffusion_b_value REAL;       -- (0018,9087) s/mm2, of the first frame
ALTER TABLE instances ADD COLUMN kvp REAL;                     -- (0018,0060) kV
ALTER TABLE instances ADD COLUMN xray_tube_current REAL;       -- (0018,1151) mA
ALTER TABLE instances ADD COLUMN sequence_name TEXT NOT NULL DEFAULT '';       -- (0018,0024)
ALTER TABLE instances ADD COLUMN scanning_sequence TEXT NOT NULL DEFAULT '';   -- (0018,0020) backslash-separated
ALTER TABLE instances ADD COLUMN sequence_variant TEXT NOT NULL DEFAULT '';    -- (0018,0021) backslash-separated
ALTER TABLE instances ADD COLUMN scan_options TEXT NOT NULL DEFAULT '';        -- (0018,0022) backslash-separated
ALTER TABLE instances ADD COLUMN mr_acquisition_type TEXT NOT NULL DEFAULT ''; -- (0018,0023) 2D or 3D
ALTER TABLE instances ADD COLUMN convolution_kernel TEXT NOT NULL DEFAULT '';  -- (0018,1210) backslash-separated
ALTER TABLE instances ADD COLUMN contrast_bolus_agent TEXT NOT NULL DEFAULT '';  -- (0018,0010); new arrivals only
ALTER TABLE instances ADD COLUMN acquisition_date TEXT NOT NULL DEFAULT '';    -- (0008,0022); new arrivals only
ALTER TABLE instances ADD COLUMN acquisition_time TEXT NOT NULL DEFAULT '';    -- (0008,0032)

-- Numbers searched from study and series level: (value, series_id) answers the semi-join of
-- the query language from the index alone; partial, so an instance without the attribute
-- (a CT has no echo time) costs no index entry.
CREATE INDEX instances_slice_thickness ON instances(slice_thickness, series_id) WHERE slice_thickness IS NOT NULL;
CREATE INDEX instances_echo_time ON instances(echo_time, series_id) WHERE echo_time IS NOT NULL;
CREATE INDEX instances_repetition_time ON instances(repetition_time, series_id) WHERE repetition_time IS NOT NULL;
CREATE INDEX instances_inversion_time ON instances(inversion_time, series_id) WHERE inversion_time IS NOT NULL;
CREATE INDEX instances_flip_angle ON instances(flip_angle, series_id) WHERE flip_angle IS NOT NULL;
CREATE INDEX instances_field_strength ON instances(magnetic_field_strength, series_id)
    WHERE magnetic_field_strength IS NOT NULL;
CREATE INDEX instances_b_value ON instances(diffusion_b_value, series_id) WHERE diffusion_b_value IS NOT NULL;
CREATE INDEX instances_kvp ON instances(kvp, series_id) WHERE kvp IS NOT NULL;

-- Text searched from study and series level: the distinct values of a series' instances,
-- kept by the triggers below, so that ImageType=DERIVED or SequenceName=*tse* reads a few
-- rows per series instead of every instance (query_language._DISTINCT_COLUMNS).
CREATE TABLE series_values (
    keyword             TEXT NOT NULL,         -- the DICOM keyword of an instance attribute
    value               TEXT NOT NULL,         -- one of its distinct values ('' too), whole, as in instances
    series_id           INTEGER NOT NULL,      -- series.id of instances that have it
    PRIMARY KEY (keyword, value, series_id)
) WITHOUT ROWID;
CREATE INDEX series_values_series ON series_values(series_id);
CREATE TRIGGER series_values_after_insert AFTER INSERT ON instances BEGIN
    {_SERIES_VALUES_INSERT}
END;
CREATE TRIGGER series_values_after_update AFTER UPDATE OF {_SERIES_VALUES_COLUMNS} ON instances BEGIN
    {_SERIES_VALUES_INSERT}  -- a remote placeholder filled, an upgrade's backfill
END;
CREATE TRIGGER series_values_after_delete AFTER DELETE ON series BEGIN  -- instances go only with their series
    DELETE FROM series_values WHERE series_id = OLD.id;
END;
"""


# Which transfer syntaxes the archive holds of a SOP class, in a few index probes
# (cfind.stored_syntaxes): the C-GET SCP asks it for every storage context it negotiates. The
# new index also serves what instances_sop_class served (a prefix), so that one goes. IF
# [NOT] EXISTS: an upgrade test may replay v7 onto an index that already has it.
SCHEMA_V8 = """
CREATE INDEX IF NOT EXISTS instances_sop_class_syntax ON instances(sop_class_uid, transfer_syntax_uid);
DROP INDEX IF EXISTS instances_sop_class;
"""


def _backfill_v7(db: Database) -> None:
    """Fill the v7 columns of existing rows from values the index kept: no file is opened."""
    from dicomfs.index.cfind import fold_name
    from dicomfs.parse import searchable_series_values, searchable_values

    names = db.query("SELECT id, patient_name FROM patients")
    db.conn.executemany("UPDATE patients SET patient_name_folded = ? WHERE id = ?",
                        [(fold_name(name), row_id) for row_id, name in names])
    db.conn.executemany(
        "UPDATE studies SET referring_physician_name_folded = ?, physicians_reading_folded = ? WHERE id = ?",
        [(fold_name(a), fold_name(b), row_id)
         for row_id, a, b in db.query("SELECT id, referring_physician_name, physicians_reading FROM studies")])
    first_sidecar: dict[int, str] = {}
    updates = []
    for row_id, series_id, sidecar, facts in db.query(
            "SELECT id, series_id, volume_sidecar, volume_facts FROM instances ORDER BY id"):
        if not sidecar and not facts:
            continue
        first_sidecar.setdefault(series_id, sidecar)
        values = searchable_values(json.loads(sidecar or "{}"), _first_frame(facts))
        updates.append((*values.values(), row_id))
    if updates:
        columns = list(searchable_values({}, {}))
        db.conn.executemany(f"UPDATE instances SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?", updates)
    series_updates = []
    for series_id, sidecar in first_sidecar.items():
        values = {k: v for k, v in searchable_series_values(json.loads(sidecar or "{}")).items() if v}
        if values:
            series_updates.append((values, series_id))
    for values, series_id in series_updates:
        db.execute(f"UPDATE series SET {', '.join(f'{c} = ?' for c in values)} WHERE id = ?",
                   (*values.values(), series_id))


def _first_frame(facts: str) -> dict[str, object]:
    frames = json.loads(facts).get("frames") if facts else None
    return frames[0] if frames else {}


def _upgrade_to_v7(db: Database) -> None:
    db.conn.execute(SCHEMA_V7)
    _backfill_v7(db)
    for keyword, column in SERIES_VALUE_COLUMNS.items():  # what the backfill's triggers did not see
        db.execute(f"INSERT OR IGNORE INTO series_values (keyword, value, series_id) "
                   f"SELECT DISTINCT '{keyword}', {column}, series_id FROM instances")


# Each entry upgrades the schema from version i to i + 1.
MIGRATIONS: list[Callable[[Database], None]] = [
    lambda db: db.conn.execute(SCHEMA_V1),
    lambda db: db.conn.execute(SCHEMA_V2),
    lambda db: db.conn.execute(SCHEMA_V3),
    lambda db: db.conn.execute(SCHEMA_V4),
    lambda db: db.conn.execute(SCHEMA_V5),
    lambda db: db.conn.execute(SCHEMA_V6),
    _upgrade_to_v7,
    lambda db: db.conn.execute(SCHEMA_V8),
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The index was written by a newer dicomfs; refuse rather than corrupt it."""


def migrate(db: Database) -> None:
    """Bring the index to SCHEMA_VERSION, one transaction per step."""
    version = db.get_int("PRAGMA user_version")
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"index {db.path} has schema version {version}; this dicomfs knows up to {SCHEMA_VERSION}"
        )
    for step in range(version, SCHEMA_VERSION):
        with db.transaction():
            MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")
