"""The query language: every operator and value form, level semantics and errors, on a real index."""

from __future__ import annotations

import doctest
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomfs.archive import open_archive
from dicomfs.index import query_language
from dicomfs.index.cfind import fold_name
from dicomfs.index.db import Database
from dicomfs.index.query_language import LEVELS, QuerySyntaxError, compile_query, run


class Rows:
    """Index rows with defaults for every NOT NULL column, so a test states only what it is about."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._n = itertools.count(1)

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        self.db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
        return self.db.last_rowid()

    def patient(self, **cols: Any) -> int:
        n = next(self._n)
        row = {"patient_key": f"key{n}", "patient_id": f"P{n}", "issuer_of_patient_id": "",
               "patient_name": f"PATIENT^{n}", "patient_birth_date": "", "patient_birth_time": "", "patient_sex": "",
               "other_patient_ids": "", "ethnic_group": "", "patient_comments": "", "created_at": 0, "updated_at": 0}
        row |= cols
        return self._insert("patients", row | {"patient_name_folded": fold_name(row["patient_name"])})

    def study(self, patient: int, **cols: Any) -> int:
        row = {"patient_id": patient, "study_uid": f"1.2.1.{next(self._n)}", "study_date": "", "study_time": "",
               "accession_number": "", "study_id": "", "study_description": "", "referring_physician_name": "",
               "physicians_reading": "", "admitting_diagnoses": "", "patient_age": "", "patient_size": "",
               "patient_weight": "", "institution_name": "", "created_at": 0, "updated_at": 0}
        row |= cols
        folded = {"referring_physician_name_folded": fold_name(row["referring_physician_name"]),
                  "physicians_reading_folded": fold_name(row["physicians_reading"])}
        return self._insert("studies", row | folded)

    def series(self, study: int, **cols: Any) -> int:
        row = {"study_id": study, "series_uid": f"1.2.2.{next(self._n)}", "modality": "CT", "series_number": None,
               "series_description": "", "series_date": "", "series_time": "", "body_part_examined": "",
               "protocol_name": "", "laterality": "", "station_name": "", "manufacturer": "",
               "frame_of_reference_uid": "", "pps_start_date": "", "pps_start_time": "", "created_at": 0,
               "updated_at": 0}
        return self._insert("series", row | cols)

    def instance(self, series: int, **cols: Any) -> int:
        n = next(self._n)
        row = {"series_id": series, "sop_uid": f"1.2.3.{n}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
               "instance_number": None, "transfer_syntax_uid": "1.2.840.10008.1.2.1", "specific_character_set": "",
               "content_date": "", "content_time": "", "acquisition_number": "", "image_type": "", "rows": 0,
               "columns": 0, "number_of_frames": 1, "photometric": "", "has_image": 0, "file_path": f"f/{n}.dcm",
               "file_size": 1, "json_size": 1, "json_version": 1, "added_part10_header": 0, "source": "test",
               "received_at": 0}
        return self._insert("instances", row | cols)

    def tag(self, level: str, entity: int, key: str, value: str = "") -> None:
        self._insert("tags", {"level": level, "entity_id": entity, "key": key, "value": value, "set_at": 0})

    def member(self, project: str, level: str, entity: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO projects (name, created_at) VALUES (?, 0)", (project,))
        project_id = self.db.get_val("SELECT id FROM projects WHERE name = ?", (project,))
        self._insert("project_members", {"project_id": project_id, "level": level, "entity_id": entity, "added_at": 0})

    def derived(self, level: str, entity: int) -> None:
        self._insert("derived", {"level": level, "entity_id": entity, "origin_uid": "1.2", "name": f"d{next(self._n)}",
                                 "file_path": "x", "size": 1, "created_at": 0, "updated_at": 0})


@pytest.fixture
def rows(tmp_path: Path) -> Iterator[Rows]:
    archive = open_archive(tmp_path / "data")
    try:
        yield Rows(archive.db)
    finally:
        archive.close()


@pytest.fixture
def tree(rows: Rows) -> dict[str, int]:
    """Two patients: P1 (S1: Se1 PT #1 with I1, Se2 CT #2 with I2; S2: Se3 CT with I3), P2 (S3: Se4 MR with I4)."""
    t: dict[str, int] = {}
    t["P1"] = rows.patient(patient_name="Doe^John", patient_id="ID1")
    t["P2"] = rows.patient(patient_name="Roe^Anna", patient_id="ID2")
    t["S1"] = rows.study(t["P1"], study_date="20231231")
    t["S2"] = rows.study(t["P1"], study_date="20240301")
    t["S3"] = rows.study(t["P2"], study_date="20240615")
    t["Se1"] = rows.series(t["S1"], modality="PT", series_number=1)
    t["Se2"] = rows.series(t["S1"], modality="CT", series_number=2)
    t["Se3"] = rows.series(t["S2"], modality="CT", series_number=1)
    t["Se4"] = rows.series(t["S3"], modality="MR", series_number=1)
    t["I1"] = rows.instance(t["Se1"], sop_class_uid="1.2.840.10008.5.1.4.1.1.128", instance_number=1)
    t["I2"] = rows.instance(t["Se2"], instance_number=1)
    t["I3"] = rows.instance(t["Se3"], instance_number=7)
    t["I4"] = rows.instance(t["Se4"], sop_class_uid="1.2.840.10008.5.1.4.1.1.4", instance_number=1)
    return t


def ids(rows: Rows, text: str, level: str = "study") -> list[int]:
    return run(rows.db, text, level)


def named(tree: dict[str, int], *names: str) -> list[int]:
    return sorted(tree[n] for n in names)


# --- values and operators -----------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_an_empty_query_matches_everything(rows: Rows, tree: dict[str, int], level: str) -> None:
    prefix = {"patient": "P", "study": "S", "series": "Se", "instance": "I"}[level]
    everything = sorted(v for n, v in tree.items() if n.rstrip("0123456789") == prefix)
    assert ids(rows, "", level) == everything
    assert ids(rows, "  \t\n ", level) == everything


@pytest.mark.parametrize(("query", "expected"), [
    ("StudyDate=20240101", ["b"]),
    ("StudyDate!=20240101", ["a", "c", "none"]),
    ("StudyDate<20240101", ["a"]),  # an absent date is not before every date
    ("StudyDate<=20240101", ["a", "b"]),
    ("StudyDate>20240101", ["c"]),
    ("StudyDate>=20240101", ["b", "c"]),
    ("StudyDate>=2024", ["b", "c"]),  # text: '20240101' >= '2024'
    ("StudyDate>=2024-06-01", ["c"]),
    ("StudyDate=2024*", ["b", "c"]),
    ("StudyDate~0101", ["b"]),
    ('StudyDate="20240101"', ["b"]),
])
def test_every_operator_on_text(rows: Rows, query: str, expected: list[str]) -> None:
    p = rows.patient()
    studies = {"a": rows.study(p, study_date="20231231"), "b": rows.study(p, study_date="20240101"),
               "c": rows.study(p, study_date="20240615"), "none": rows.study(p)}
    assert ids(rows, query) == sorted(studies[n] for n in expected)


def test_uids_compare_as_text(rows: Rows) -> None:
    p = rows.patient()
    nine, ten = rows.study(p, study_uid="1.2.9"), rows.study(p, study_uid="1.2.10")
    assert ids(rows, "StudyInstanceUID>1.2.10") == [nine]
    assert ids(rows, "StudyInstanceUID=1.2.10") == [ten]
    assert ids(rows, "StudyInstanceUID=1.2.1*") == [ten]


def test_quoted_values_hold_spaces_operators_escaped_quotes_and_reserved_words(rows: Rows) -> None:
    p = rows.patient()
    odd = rows.study(p, study_description='PET/CT "whole body" a=b<c (x) ~!')
    word = rows.study(p, study_description="and")
    empty = rows.study(p, study_description="")
    backslash = rows.study(p, study_description="A\\B")
    assert ids(rows, r'StudyDescription="PET/CT \"whole body\" a=b<c (x) ~!"') == [odd]
    assert ids(rows, r'StudyDescription~"\"whole"') == [odd]
    assert ids(rows, 'StudyDescription="and"') == [word]
    assert ids(rows, 'StudyDescription=""') == [empty]
    assert ids(rows, r'StudyDescription="A\B"') == [backslash]  # a backslash before other characters is literal
    assert ids(rows, r'StudyDescription="A\\B"') == [backslash]
    assert ids(rows, r"StudyDescription=A\B") == [backslash]


def test_wildcards_keep_percent_underscore_and_bracket_literal(rows: Rows) -> None:
    st = rows.study(rows.patient())
    names = ["50% dose", "500 dose", "A_B", "AxB", "[x] y", "x y", "a_b"]
    se = {n: rows.series(st, series_description=n) for n in names}

    def q(text: str) -> list[str]:
        found = ids(rows, text, "series")
        return [n for n in names if se[n] in found]

    assert q("SeriesDescription=50%*") == ["50% dose"]
    assert q("SeriesDescription=A_*") == ["A_B"]
    assert q("SeriesDescription=A?B") == ["A_B", "AxB"]  # case-sensitive: not 'a_b'
    assert q("SeriesDescription=A_B") == ["A_B"]
    assert q("SeriesDescription=[x]*") == ["[x] y"]
    assert q("SeriesDescription=*dose") == ["50% dose", "500 dose"]
    assert q("SeriesDescription!=*dose") == ["A_B", "AxB", "[x] y", "x y", "a_b"]
    assert q("SeriesDescription~%") == ["50% dose"]
    assert q("SeriesDescription~_") == ["A_B", "a_b"]
    assert q("SeriesDescription~a_b") == ["A_B", "a_b"]  # ~ ignores case
    assert q('SeriesDescription~"*"') == []  # ~ has no wildcards


def test_person_names_ignore_case_and_match_the_first_component_group(rows: Rows) -> None:
    doe = rows.patient(patient_name="Doe^John")
    jane = rows.patient(patient_name="DOE^JANE")
    yamada = rows.patient(patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    obrien = rows.patient(patient_name="O_Brien^Pat")
    oxbrien = rows.patient(patient_name="OxBrien^Pat")
    assert ids(rows, "PatientName=doe^john", "patient") == [doe]
    assert ids(rows, "PatientName=DOE*", "patient") == [doe, jane]
    assert ids(rows, "PatientName=yamada^tarou", "patient") == [yamada]
    assert ids(rows, 'PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう"', "patient") == [yamada]
    assert ids(rows, "PatientName=*^tarou", "patient") == [yamada]
    assert ids(rows, "PatientName~JOHN", "patient") == [doe]
    assert ids(rows, "PatientName=o_brien*", "patient") == [obrien]
    assert ids(rows, "PatientName=O?Brien*", "patient") == [obrien, oxbrien]
    assert ids(rows, "PatientName!=doe*", "patient") == [yamada, obrien, oxbrien]
    assert ids(rows, "PatientID=p1", "patient") == []  # other text is case-sensitive
    assert ids(rows, "PatientID=P1", "patient") == [doe]


def test_numbers_compare_as_numbers_and_absent_numbers_never_match(rows: Rows) -> None:
    st = rows.study(rows.patient())
    two, ten, none = (rows.series(st, series_number=n) for n in (2, 10, None))
    assert ids(rows, "SeriesNumber>9", "series") == [ten]  # as text, '2' > '9' would be false and '10' < '9'
    assert ids(rows, "SeriesNumber<9", "series") == [two]
    assert ids(rows, "SeriesNumber=2.0", "series") == [two]
    assert ids(rows, "SeriesNumber=+1e1", "series") == [ten]
    assert ids(rows, "SeriesNumber>=-1", "series") == [two, ten]
    assert ids(rows, "SeriesNumber!=2", "series") == [ten]
    assert ids(rows, "not SeriesNumber=2", "series") == [ten, none]  # not is the complement
    assert ids(rows, "SeriesNumber<=10 and SeriesNumber>2", "series") == [ten]


def test_numbers_held_as_text_compare_as_numbers(rows: Rows) -> None:
    p = rows.patient()
    w80, w100, w9, blank = (rows.study(p, patient_weight=w) for w in ("80", "100", " 9.5", ""))
    assert ids(rows, "PatientWeight>50") == [w80, w100]
    assert ids(rows, "PatientWeight<10") == [w9]  # not the study without a weight
    assert ids(rows, "PatientWeight=80.0") == [w80]
    assert ids(rows, "not PatientWeight>50") == [w9, blank]


def test_count_attributes_can_be_queried(rows: Rows, tree: dict[str, int]) -> None:
    assert ids(rows, "NumberOfStudyRelatedSeries>=2") == [tree["S1"]]
    assert ids(rows, "NumberOfPatientRelatedStudies=2", "patient") == [tree["P1"]]


def test_keywords_and_logical_words_ignore_case(rows: Rows, tree: dict[str, int]) -> None:
    assert ids(rows, "modality=PT", "series") == [tree["Se1"]]
    assert ids(rows, "MODALITY=MR OR Modality=PT", "series") == named(tree, "Se1", "Se4")
    assert ids(rows, "NoT Modality=CT AnD SeriesNumber=1", "series") == named(tree, "Se1", "Se4")
    assert ids(rows, "TAG:x or PROJECT:y or HAS:DERIVED") == []


# --- levels ---------------------------------------------------------------------------------------


def test_below_level_attributes_match_when_any_descendant_does(rows: Rows, tree: dict[str, int]) -> None:
    empty = rows.study(tree["P2"])  # no series at all
    assert ids(rows, "Modality=PT") == named(tree, "S1")
    assert ids(rows, "Modality=CT") == named(tree, "S1", "S2")
    assert ids(rows, "not Modality=PT") == [*named(tree, "S2", "S3"), empty]  # no series has PT
    assert ids(rows, "Modality=PT", "patient") == named(tree, "P1")
    assert ids(rows, "StudyDate>=2024", "patient") == named(tree, "P1", "P2")
    assert ids(rows, "StudyDate<2024", "patient") == named(tree, "P1")
    assert ids(rows, "InstanceNumber=7", "series") == named(tree, "Se3")
    assert ids(rows, "InstanceNumber=7") == named(tree, "S2")
    assert ids(rows, "SOPClassUID=1.2.840.10008.5.1.4.1.1.4", "patient") == named(tree, "P2")  # three levels down


def test_each_below_level_comparison_matches_on_its_own(rows: Rows, tree: dict[str, int]) -> None:
    # S1 has a PT series (#1) and a series #2, but no PT series #2.
    assert ids(rows, "Modality=PT and SeriesNumber=2") == named(tree, "S1")
    assert ids(rows, "Modality=PT and SeriesNumber=2", "series") == []


def test_above_level_attributes_compare_the_ancestor(rows: Rows, tree: dict[str, int]) -> None:
    assert ids(rows, "PatientName=doe*", "instance") == named(tree, "I1", "I2", "I3")
    assert ids(rows, "StudyDate=20231231", "instance") == named(tree, "I1", "I2")
    assert ids(rows, "Modality=CT", "instance") == named(tree, "I2", "I3")
    assert ids(rows, "PatientID=ID1 and StudyDate>=2024", "series") == named(tree, "Se3")
    assert ids(rows, "not PatientID=ID1", "instance") == named(tree, "I4")
    assert ids(rows, "PatientID=ID2 or InstanceNumber=7", "instance") == named(tree, "I3", "I4")
    assert ids(rows, "PatientID=ID1 and Modality=PT") == named(tree, "S1")


def test_instances_known_only_from_a_remote_count(rows: Rows, tree: dict[str, int]) -> None:
    remote = rows.instance(tree["Se4"], file_path="", sop_class_uid="1.2.840.10008.5.1.4.1.1.66")
    assert ids(rows, "SOPClassUID=1.2.840.10008.5.1.4.1.1.66") == named(tree, "S3")
    assert ids(rows, "Modality=MR", "instance") == [tree["I4"], remote]


def test_tags_match_on_the_entity_its_ancestors_and_its_descendants(rows: Rows, tree: dict[str, int]) -> None:
    rows.tag("series", tree["Se1"], "site", "Oslo")
    rows.tag("study", tree["S1"], "review", "done")
    rows.tag("patient", tree["P2"], "cohort", "b")
    rows.tag("instance", tree["I3"], "bad", "")
    assert ids(rows, "tag:site=Oslo", "patient") == named(tree, "P1")
    assert ids(rows, "tag:site=Oslo") == named(tree, "S1")
    assert ids(rows, "tag:site=Oslo", "series") == named(tree, "Se1")
    assert ids(rows, "tag:site=Oslo", "instance") == named(tree, "I1")
    assert ids(rows, "tag:review=done", "series") == named(tree, "Se1", "Se2")
    assert ids(rows, "tag:review=done", "instance") == named(tree, "I1", "I2")
    assert ids(rows, "tag:cohort=b", "instance") == named(tree, "I4")
    assert ids(rows, "tag:bad", "patient") == named(tree, "P1")
    assert ids(rows, "tag:bad") == named(tree, "S2")
    assert ids(rows, "tag:bad", "series") == named(tree, "Se3")
    assert ids(rows, "tag:bad", "instance") == named(tree, "I3")
    assert ids(rows, "tag:Bad") == []  # tag keys are case-sensitive


def test_tag_values(rows: Rows, tree: dict[str, int]) -> None:
    rows.tag("study", tree["S1"], "site", "Oslo")
    rows.tag("study", tree["S2"], "site", "Bergen")
    rows.tag("study", tree["S3"], "two words", "50%")
    assert ids(rows, "tag:site") == named(tree, "S1", "S2")
    assert ids(rows, "tag:site=Oslo") == named(tree, "S1")
    assert ids(rows, "tag:site!=Oslo") == named(tree, "S2")  # set, to another value
    assert ids(rows, "not tag:site=Oslo") == named(tree, "S2", "S3")
    assert ids(rows, "not tag:site") == named(tree, "S3")
    assert ids(rows, "tag:site=B*") == named(tree, "S2")
    assert ids(rows, "tag:site~OSL") == named(tree, "S1")
    assert ids(rows, 'tag:"two words"="50%"') == named(tree, "S3")
    assert ids(rows, 'tag:"two words"=5%') == []
    assert ids(rows, "tag:site=Oslo", "patient") == named(tree, "P1")
    assert ids(rows, "tag:site!=Oslo", "patient") == named(tree, "P1")  # P1 has both


def test_projects_match_on_the_entity_its_ancestors_and_its_descendants(rows: Rows, tree: dict[str, int]) -> None:
    rows.member("Trial", "patient", tree["P2"])
    rows.member("Trial", "series", tree["Se3"])
    rows.member("Other 1", "study", tree["S1"])
    assert ids(rows, "project:Trial") == named(tree, "S2", "S3")
    assert ids(rows, "project:Trial", "patient") == named(tree, "P1", "P2")
    assert ids(rows, "project:Trial", "series") == named(tree, "Se3", "Se4")
    assert ids(rows, "project:Trial", "instance") == named(tree, "I3", "I4")
    assert ids(rows, 'project:"Other 1"', "series") == named(tree, "Se1", "Se2")
    assert ids(rows, "project:Tr*") == named(tree, "S2", "S3")
    assert ids(rows, "project:Nothing") == []
    assert ids(rows, "not project:Trial") == named(tree, "S1")


def test_has_derived_matches_on_the_entity_and_its_descendants(rows: Rows, tree: dict[str, int]) -> None:
    rows.derived("study", tree["S1"])
    rows.derived("series", tree["Se3"])
    assert ids(rows, "has:derived") == named(tree, "S1", "S2")
    assert ids(rows, "has:derived", "patient") == named(tree, "P1")
    assert ids(rows, "has:derived", "series") == named(tree, "Se3")  # S1's derived data is not Se1's
    assert ids(rows, "has:derived", "instance") == []
    assert ids(rows, "not has:derived") == named(tree, "S3")


# --- boolean structure ----------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ("Modality=CT or Modality=PT and SeriesNumber=9", ["ct1", "ct4"]),  # and binds tighter than or
    ("(Modality=CT or Modality=PT) and SeriesNumber=2", ["pt2"]),
    ("Modality=PT and SeriesNumber=2 or Modality=MR", ["pt2", "mr3"]),
    ("Modality=PT and (SeriesNumber=2 or Modality=MR)", ["pt2"]),
    ("not Modality=CT and SeriesNumber>1", ["pt2", "mr3"]),  # not binds tighter than and
    ("not (Modality=CT and SeriesNumber>1)", ["ct1", "pt2", "mr3"]),
    ("not not Modality=CT", ["ct1", "ct4"]),
    ("not Modality=CT or SeriesNumber=1", ["ct1", "pt2", "mr3"]),
    ("((Modality=MR))", ["mr3"]),
    ("(Modality=CT and (SeriesNumber=1 or (SeriesNumber=4 and not Modality=PT)))", ["ct1", "ct4"]),
])
def test_precedence_and_parentheses(rows: Rows, query: str, expected: list[str]) -> None:
    st = rows.study(rows.patient())
    se = {f"{m.lower()}{n}": rows.series(st, modality=m, series_number=n)
          for m, n in (("CT", 1), ("PT", 2), ("MR", 3), ("CT", 4))}
    assert ids(rows, query, "series") == sorted(se[n] for n in expected)


# --- compiled SQL ---------------------------------------------------------------------------------


def test_values_are_parameters_never_sql(rows: Rows, tree: dict[str, int]) -> None:
    evil = "x'); DROP TABLE studies; --"
    compiled = compile_query(f'StudyDescription="{evil}" or tag:"{evil}"="{evil}" or project:"{evil}"')
    assert evil not in compiled.where
    assert evil in compiled.args
    assert ids(rows, f'StudyDescription="{evil}"') == []
    assert rows.db.get_val("SELECT count(*) FROM studies") == 3


@pytest.mark.parametrize("level", LEVELS)
def test_compiled_shape(level: str) -> None:
    text = ("PatientName=DOE* and (StudyDate>=2024 or Modality~pt) and not SOPClassUID=1.2 "
            "and tag:a=b and project:c and has:derived and SeriesNumber>1")
    compiled = compile_query(text, level)
    table = {"patient": "patients p", "study": "studies st", "series": "series se", "instance": "instances i"}[level]
    assert (compiled.level, compiled.from_sql) == (level, table)
    assert compiled.id_column == table.split()[1] + ".id"
    assert compiled.where.count("?") == len(compiled.args)
    assert "DISTINCT" not in compiled.where.upper()


def test_run_orders_by_id_and_limits(rows: Rows, tree: dict[str, int]) -> None:
    assert run(rows.db, "", "instance", limit=2) == named(tree, "I1", "I2")
    assert run(rows.db, "Modality=CT", "series", limit=1) == named(tree, "Se2")
    assert run(rows.db, "", "patient", limit=0) == []


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="level must be one of patient, study, series, instance"):
        compile_query("", "image")


def test_the_module_examples_run() -> None:
    assert doctest.testmod(query_language).failed == 0


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "position", "message"), [
    # unterminated quote: the caret points at the opening quote
    ('Modality="PT', 9, "unterminated value: found end of query, expected a closing '\"'"),
    (r'StudyDescription="a\"', 17, "unterminated value"),
    # missing value
    ("Modality=", 9, "expected a value after '=', found end of query"),
    ("Modality= and StudyDate>1", 10, "expected a value after '=', found 'and' (quote it to use it as a value)"),
    ("Modality=(PT)", 9, "expected a value after '=', found '('"),
    ("tag:site=", 9, "expected a value after '=', found end of query"),
    # missing operator
    ("Modality PT", 9, "expected an operator (=, !=, <, <=, >, >=, ~) after 'Modality', found 'PT'"),
    ("Modality", 8, "after 'Modality', found end of query"),
    # unknown keyword, with a suggestion
    ("Modalty=PT", 0, "unknown keyword 'Modalty' (did you mean Modality?)"),
    ("Modality=PT and StudyDat>=2024", 16, "unknown keyword 'StudyDat' (did you mean StudyDate?)"),
    ("Xyzzy=1", 0, "unknown keyword 'Xyzzy'"),
    ("SliceThikness=1", 0, "unknown keyword 'SliceThikness' (did you mean SliceThickness?)"),
    ("PatientState=1", 0, "PatientState is not kept in the index"),
    ("ModalitiesInStudy=PT", 0, "ModalitiesInStudy is computed from other rows and cannot be queried (use Modality"),
    # sequences
    ("ReferencedSeriesSequence=1", 0, "ReferencedSeriesSequence is a sequence (VR SQ)"),
    # dangling operators and missing terms
    ("Modality=PT and", 15, "expected a term after 'and', found end of query"),
    ("Modality=PT or", 14, "expected a term after 'or', found end of query"),
    ("not", 3, "expected a term after 'not', found end of query"),
    ("=PT", 0, "expected a term, found '='"),
    ("Modality=PT and or StudyDate>1", 16, "expected a term after 'and', found 'or'"),
    ("Modality=PT=CT", 11, "expected 'and', 'or' or end of query, found '=' (quote a value that holds operators)"),
    ("!Modality=PT", 0, "expected '!=', found '!' (write 'not' to negate a term)"),
    # unbalanced parentheses
    ("(Modality=PT", 12, "expected ')' to close the '(' at position 0, found end of query"),
    ("((Modality=PT) or SeriesNumber=1", 32, "expected ')' to close the '(' at position 0"),
    ("Modality=PT)", 11, "found ')' without a matching '('"),
    ("()", 1, "expected a term after '(', found ')'"),
    # two terms without and/or
    ("Modality=PT StudyDate>=2024", 12,
     "expected 'and', 'or' or end of query, found 'StudyDate' (join terms with 'and' or 'or')"),
    ("(Modality=PT StudyDate>=2024)", 13, "expected 'and', 'or' or ')', found 'StudyDate'"),
    ("tag:a project:b", 6, "found 'project:b' (join terms with 'and' or 'or')"),
    ("Modality=PT (StudyDate>1)", 12, "found '('"),
    ('Modality=PT"CT"', 11, "found '\"CT\"'"),
    # prefixes
    ("foo:x", 0, "unknown prefix 'foo:'; expected tag:, project: or has:"),
    ("Modality=PT and bar:y=1", 16, "unknown prefix 'bar:'"),
    ("has:children", 0, "expected has:derived, found 'has:children'"),
    ("tag:", 4, "expected a tag key after 'tag:', found end of query"),
    ("project: x", 9, "expected a project name after 'project:', found 'x'"),
    ("project:Trial=1", 13, "expected 'and', 'or' or end of query, found '='"),
    # numbers
    ("SeriesNumber>ten", 13, "expected a number after '>' for SeriesNumber (VR IS), found 'ten'"),
    ("SeriesNumber=1*", 13, "expected a number after '=' for SeriesNumber (VR IS), found '1*'"),
    ("SeriesNumber~1", 12, "'~' compares text, and SeriesNumber (VR IS) is a number"),
])
def test_errors_say_what_was_expected_and_where(query: str, position: int, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        compile_query(query)
    err = caught.value
    assert err.position == position
    assert message in err.message
    assert err.message.endswith(f" at position {position}")
    assert isinstance(err, ValueError)


def test_the_error_text_points_a_caret_at_the_position() -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        compile_query("Modality=PT and\tStudyDate>=")
    assert str(caught.value) == (
        "expected a value after '>=', found end of query at position 27\n"
        "Modality=PT and StudyDate>=\n"  # the tab shown as a space keeps the caret aligned
        "                           ^"
    )


# --- scale ----------------------------------------------------------------------------------------


CT, PET = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.128"


def test_a_below_level_condition_over_20000_instances_is_fast(rows: Rows) -> None:
    with rows.db.transaction():
        for p in range(20):
            patient = rows.patient()
            for s in range(10):
                study = rows.study(patient, study_date=f"2024{s + 1:02}01")
                for n in range(5):
                    series = rows.series(study, modality="PT" if n == 0 and s == 3 else "CT", series_number=n + 1)
                    for k in range(20):
                        rare = (p, s, n, k) == (7, 3, 0, 19)
                        rows.instance(series, instance_number=k + 1, sop_class_uid=PET if rare else CT)
    assert rows.db.get_val("SELECT count(*) FROM instances") == 20_000
    query = f"StudyDate>=20240301 and (Modality=PT or InstanceNumber>19) and not SOPClassUID={PET}"
    start = time.perf_counter()
    found = run(rows.db, query)
    elapsed = time.perf_counter() - start
    assert len(found) == 20 * 8 - 1  # every study from March has an instance #20; one has the rare class
    assert elapsed < 1.0
