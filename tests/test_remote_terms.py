"""Remote terms in process: the query language of ``dicomfs find`` → C-FIND keys, what cannot be
sent, and the old KEYWORD=VALUE form with the way to write it now."""

from __future__ import annotations

import pytest

from dicomfs.errors import UserError
from dicomfs.index.query_language import QuerySyntaxError, compile_query
from dicomfs.remote.terms import TermsError, deprecation, parse


@pytest.mark.parametrize(
    ("text", "level", "keys"),
    [
        ("Modality=CT and StudyDate>=20240101 and PatientName=DOE*", "STUDY",
         {"ModalitiesInStudy": "CT", "StudyDate": "20240101-", "PatientName": "DOE*"}),
        ("Modality=CT and StudyDate>=20240101", "SERIES", {"Modality": "CT", "StudyDate": "20240101-"}),
        ("StudyDate>=2024-01-01 and StudyDate<=2024-01-31", "STUDY", {"StudyDate": "20240101-20240131"}),
        ("StudyDate<=20231231", "STUDY", {"StudyDate": "-20231231"}),
        ("StudyTime>=0800 and StudyTime<=1200", "STUDY", {"StudyTime": "0800-1200"}),
        ("StudyInstanceUID=1.2.3 or StudyInstanceUID=1.2.4", "SERIES", {"StudyInstanceUID": "1.2.3\\1.2.4"}),
        ("(PatientID=A1 and (SeriesNumber=3)) and InstanceNumber=12", "IMAGE",
         {"PatientID": "A1", "SeriesNumber": "3", "InstanceNumber": "12"}),
        ('StudyDescription="HEAD CT" and PatientName=?OE', "STUDY",
         {"StudyDescription": "HEAD CT", "PatientName": "?OE"}),
        ("", "STUDY", {}),
    ],
)
def test_the_query_language_becomes_cfind_keys(text: str, level: str, keys: dict[str, str]) -> None:
    compile_query(text)  # what dicomfs find accepts
    found = parse(text, level)
    assert found.keys == keys and not found.legacy


@pytest.mark.parametrize(
    ("text", "level", "message"),
    [
        ("not Modality=CT", "STUDY", "'not Modality=CT' cannot be sent to a remote: C-FIND has no 'not'"),
        ("Modality=CT or Modality=MR", "SERIES", "'Modality=CT or Modality=MR' cannot be sent to a remote: C-FIND has "
                                                 "no 'or'"),
        ("StudyDate>=20240101 and (PatientID=A or PatientID=B)", "STUDY", "'PatientID=A or PatientID=B' cannot"),
        ("tag:site=Oslo", "STUDY", "'tag:site=Oslo' cannot be sent to a remote: tags, projects and has:derived"),
        ("project:Trial", "STUDY", "'project:Trial' cannot be sent"),
        ("has:derived", "STUDY", "'has:derived' cannot be sent"),
        ("StudyDate>20240101", "STUDY", "C-FIND ranges include their ends (write >=)"),
        ("SeriesNumber>=3", "SERIES", "'SeriesNumber>=3' cannot be sent to a remote: C-FIND matches ranges of dates"),
        ("StudyDescription~head", "STUDY", "C-FIND has no substring match (write Keyword=*text*"),
        ("PatientID!=A", "STUDY", "'PatientID!=A' cannot be sent to a remote: C-FIND has no 'not equal'"),
        ("SeriesDescription=Soft", "STUDY", "at study level: SeriesDescription belongs to the series level (query at "
                                            "series level)"),
        ("InstanceNumber=1", "SERIES", "InstanceNumber belongs to the image level (query at image level)"),
        ("PatientID=A and PatientID=B", "STUDY", "PatientID has a condition already"),
        ("StudyInstanceUID=1.2* or StudyInstanceUID=1.3", "SERIES", "a list of UIDs has no wildcards"),
    ],
)
def test_what_cfind_cannot_express_is_one_line_naming_the_part(text: str, level: str, message: str) -> None:
    with pytest.raises(TermsError) as caught:
        parse(text, level)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_a_syntax_error_is_the_query_languages_own() -> None:
    with pytest.raises(QuerySyntaxError, match="expected a value after '>='"):
        parse("StudyDate>= and Modality=CT")


@pytest.mark.parametrize(
    ("old", "keys", "now"),
    [
        ("PatientID=REM1 StudyDate=20240101-", {"PatientID": "REM1", "StudyDate": "20240101-"},
         "PatientID=REM1 and StudyDate>=20240101"),
        ("StudyDate=20240101-20240131", {"StudyDate": "20240101-20240131"},
         "StudyDate>=20240101 and StudyDate<=20240131"),
        ("ModalitiesInStudy=PT", {"ModalitiesInStudy": "PT"}, "Modality=PT"),
        ("StudyInstanceUID=1.2\\1.3", {"StudyInstanceUID": "1.2\\1.3"},
         "(StudyInstanceUID=1.2 or StudyInstanceUID=1.3)"),
        ("'StudyDescription=HEAD CT' PatientName=DOE*", {"StudyDescription": "HEAD CT", "PatientName": "DOE*"},
         'StudyDescription="HEAD CT" and PatientName=DOE*'),
    ],
)
def test_the_old_form_still_works_and_says_how_to_write_it_now(old: str, keys: dict[str, str], now: str) -> None:
    found = parse(old, "STUDY")
    assert found.keys == keys and found.legacy and found.rewritten == now
    assert parse(now, "STUDY").keys == keys  # the suggestion means the same
    assert deprecation(old, found) == (f"{old!r} is in the old KEYWORD=VALUE form, which is deprecated: write it in "
                                       f"the query language of dicomfs find, {now!r}")


def test_command_line_words_in_the_old_form() -> None:
    found = parse(["StudyDescription=HEAD CT", "StudyDate=20240101-"], "STUDY")
    assert found.keys == {"StudyDescription": "HEAD CT", "StudyDate": "20240101-"} and found.legacy
    assert parse(["PatientID=A1", "and", "StudyDate>=20240101"], "STUDY").keys == {
        "PatientID": "A1", "StudyDate": "20240101-"}


def test_an_old_form_attribute_the_query_language_lacks_keeps_working() -> None:
    found = parse("OperatorsName=SMITH*", "STUDY")
    assert found.keys == {"OperatorsName": "SMITH*"} and found.legacy and not found.rewritten
    assert "no equivalent in the query language yet (OperatorsName is not kept in the index)" in deprecation(
        "OperatorsName=SMITH*", found)


def test_each_attribute_comes_with_its_study_root_level() -> None:
    found = parse("Modality=CT and PatientID=A and InstanceNumber=2", "IMAGE")
    assert found.levels == {"Modality": "SERIES", "PatientID": "STUDY", "InstanceNumber": "IMAGE"}
    assert parse("Modality=CT", "STUDY").levels == {"ModalitiesInStudy": "STUDY"}


@pytest.mark.parametrize(
    ("old", "message"),
    [("NoSuchKeyword=1", "'NoSuchKeyword' is not a DICOM keyword"),
     ("ReferencedSeriesSequence=1", "ReferencedSeriesSequence is a sequence")],
)
def test_a_bad_old_form_is_refused(old: str, message: str) -> None:
    with pytest.raises(TermsError, match=message):
        parse(old, "STUDY")
