"""Tree names: safe on every platform, letters intact, unique, stable."""

from __future__ import annotations

import pytest

from dicomfs.mount import naming


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("DOE/JOHN", "DOE_JOHN"),
        ("a\x00b\x1fc\x7f", "a_b_c_"),
        ("..", "(x)"),
        (".", "(x)"),
        ("", "(x)"),
        ("   ", "(x)"),
        ("trailing dot. ", "trailing dot"),
        ('win<>:"\\|?*', "win________"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("Müller^Jürgen", "Müller^Jürgen"),
        ("山田^太郎", "山田^太郎"),
        ("Ωμέγα", "Ωμέγα"),
        ("tab\tand\nnewline", "tab_and_newline"),
    ],
)
def test_safe_component(raw: str, expected: str) -> None:
    assert naming.safe_component(raw, fallback="(x)") == expected


def test_long_names_are_cut_at_a_character_boundary() -> None:
    name = naming.safe_component("é" * 400, fallback="x")
    assert len(name.encode()) <= 200
    assert name == "é" * 100
    assert len(naming.study_name("20240101", "ü" * 1000, "A" * 64).encode()) <= naming.MAX_NAME_BYTES


def test_undecodable_surrogates_do_not_break_names() -> None:
    # Text decoded with errors may carry lone surrogates; they must not reach the kernel.
    assert naming.safe_component("bad\udcffname", fallback="x") == "bad_name"


def test_level_names() -> None:
    assert naming.patient_name("DOE^JOHN", "12345") == "DOE^JOHN [12345]"
    assert naming.patient_name("", "12345") == "(no name) [12345]"
    assert naming.patient_name("", "") == "(no name)"
    assert naming.patient_name("Yamada^Tarou=山田^太郎=やまだ^たろう", "1") == "Yamada^Tarou [1]"
    assert naming.patient_name("=山田^太郎", "1") == "山田^太郎 [1]"
    assert naming.patient_name("../../etc", "x/y") == "___.._etc [x_y]"  # never hidden, never a path
    assert naming.study_name("20240301", "CT Thorax", "ACC123") == "2024-03-01 CT Thorax [ACC123]"
    assert naming.study_name("", "", "", "CT\\PT") == "(no date) CT_PT"
    assert naming.study_name("2024", "", "") == "(no date) (no description)"
    assert naming.series_name(3, "CT", "Lung 1.0") == "003 CT Lung 1.0"
    assert naming.series_name(None, "", "") == "(series)"
    assert naming.series_name(1234, "MR", "") == "1234 MR"
    assert naming.instance_stem(7) == "007"
    assert naming.instance_stem(12345) == "12345"
    assert naming.instance_stem(-3) == "-003"
    assert naming.instance_stem(None) == "nonum"
    assert naming.dated_study_name("081500", "DOE^JOHN", "CT", "A1") == "0815 DOE^JOHN CT [A1]"


def test_names_that_begin_with_a_dot_are_shown_not_hidden() -> None:
    from dicomfs.mount.rows import PatientRow

    assert naming.patient_name(".hidden^anna", "P1") == "_hidden^anna [P1]"
    assert naming.patient_name("...^x", "") == "___^x"
    assert naming.patient_name(".", "") == "(no name)"
    assert naming.series_name(None, "", ".Localizer") == "_Localizer"
    assert naming.series_name(None, ".", "x") == "_ x"
    assert naming.dated_study_name("", ".DOE", "", "") == "_DOE"
    assert naming.uid_name(".1.2") == "_1.2"
    rows = [PatientRow(1, "_hidden", "", 0.0), PatientRow(2, ".hidden", "", 0.0), PatientRow(3, ".hidden", "", 0.0)]
    named = [n for n, _ in naming.named_patients(rows)]
    assert named == ["_hidden", "_hidden (2)", "_hidden (3)"]  # unique, by arrival order
    assert [n for n, _ in naming.named_patients(rows[:2])] == named[:2]  # stable as newcomers arrive
    assert not any(n.startswith(".") for n in named)
    assert naming.safe_component(".voi", fallback="x") == ".voi"  # a user's own derived file keeps its name


def test_unique_names_first_come_keeps_the_plain_name() -> None:
    items = ["a", "A", "b", "a", "a (2)"]
    named = naming.unique_names(items, lambda s: s)
    assert [n for n, _ in named] == ["a", "A (2)", "b", "a (3)", "a (2) (2)"]
    assert len({n.casefold() for n, _ in named}) == len(items)


def test_unique_names_respects_reserved_and_suffix() -> None:
    named = naming.unique_names(["study.json", "007", "007"], lambda s: s, reserved=["study.json"],
                                suffix=lambda n, i: f"{n}_{i}")
    assert [n for n, _ in named] == ["study.json_2", "007", "007_2"]


def test_iso_date() -> None:
    assert naming.iso_date("20240301") == "2024-03-01"
    assert naming.iso_date("2024.03.01") == "2024-03-01"
    assert naming.iso_date("") == ""
    assert naming.iso_date("2024") == ""
    assert naming.iso_date("garbage!") == ""
    assert naming.iso_date("20241345") == ""
    assert naming.iso_date("20230229") == ""
    assert naming.iso_date("20240229") == "2024-02-29"
