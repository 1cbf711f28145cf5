"""The NNN.json view: DICOM JSON (PS3.18 F.2) that is deterministic, fast to make and grep-able."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config, dcmread
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from dicomfs.views.dicom_json import JSON_VERSION, MAX_INLINE_BINARY, dataset_json
from dicomfs.views.render import render_view

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on odd test files

_BULK = {"7FE00008", "7FE00009", "7FE00010", "54001010", "FFFCFFFC"}
_SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _readable(paths: list[str]) -> list[str]:
    out = []
    for path in sorted(paths):
        try:
            dcmread(path)
        except Exception:
            continue
        out.append(path)
    return out


TEST_FILES = _readable(get_testdata_files())
CHARSET_FILES = _readable([p for p in get_charset_files() if p.endswith(".dcm")])
ALL_FILES = TEST_FILES + CHARSET_FILES


def _id(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


def _is_bulk(key: str) -> bool:
    group = int(key[:4], 16)
    return key in _BULK or (key[4:] == "3000" and 0x6000 <= group <= 0x601E and group % 2 == 0)


def normalise(d: dict[str, Any], *, big_endian: bool, top: bool = False) -> dict[str, Any]:
    """pydicom's to_json_dict output with our documented differences applied.

    - group 0002, bulk data (pixel, waveform, overlay), trailing padding left out at any depth;
    - binary values over 64 KiB left out; InlineBinary in little endian byte order;
    - empty values in multi-valued elements are null, SQ without items has no Value;
    - empty Person Name groups left out; non-finite numbers as strings.
    """
    out = {}
    for key, element in d.items():
        if (top and key.startswith("0002")) or _is_bulk(key):
            continue
        element = dict(element)
        vr = element["vr"]
        if "InlineBinary" in element:
            raw = base64.b64decode(element["InlineBinary"])
            if len(raw) > MAX_INLINE_BINARY:
                continue
            if big_endian and vr in _SWAP and len(raw) % _SWAP[vr] == 0:
                size = _SWAP[vr]
                raw = np.frombuffer(raw, f">u{size}").astype(f"<u{size}").tobytes()
                element["InlineBinary"] = base64.b64encode(raw).decode()
        if "Value" in element:
            values = element["Value"]
            if vr == "SQ":
                values = [normalise(item, big_endian=big_endian) for item in values]
            elif vr == "PN":
                values = [
                    ({g: t for g, t in v.items() if t} or None) if isinstance(v, dict) else v
                    for v in values
                ]
            else:
                values = [None if v == "" else v for v in values]
                values = [
                    repr(v) if isinstance(v, float) and not math.isfinite(v) else v for v in values
                ]
            if values:
                element["Value"] = values
            else:
                del element["Value"]
        out[key] = element
    return out


def _fully_converted(path: str) -> Dataset:
    """A dataset whose every element, at every depth, pydicom has already converted."""
    ds = dcmread(path)
    ds.walk(lambda dataset, elem: None)
    return ds


def _read_raw(body: bytes, *, little: bool = True, charset: str | None = None) -> Dataset:
    """Parse explicit VR dataset bytes the way dcmread does: elements stay raw until used."""
    ds = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=little)
    ds.set_original_encoding(False, little, charset)
    return ds


def _element(tag: int, vr: str, value: bytes, *, little: bool = True) -> bytes:
    """Explicit VR encoding of one element (value padded to even length by the caller)."""
    order = "<" if little else ">"
    head = np.array([tag >> 16, tag & 0xFFFF], dtype=f"{order}u2").tobytes() + vr.encode()
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"):
        return head + b"\0\0" + np.array([len(value)], f"{order}u4").tobytes() + value
    return head + np.array([len(value)], f"{order}u2").tobytes() + value


def _parsed(ds: Dataset | bytes) -> dict[str, Any]:
    out = dataset_json(ds) if isinstance(ds, Dataset) else ds
    return json.loads(out)


# --- agreement with pydicom ----------------------------------------------------------------


def _pydicom_json(path: str) -> dict[str, Any] | None:
    """pydicom's own JSON of a file, or None where pydicom cannot make one."""
    try:
        return json.loads(json.dumps(dcmread(path).to_json_dict()))
    except Exception:
        return None


@pytest.mark.parametrize("path", ALL_FILES, ids=_id)
def test_matches_pydicom_to_json_dict(path: str) -> None:
    ds = dcmread(path)
    reference = _pydicom_json(path)
    if reference is None:
        # pydicom gives up on invalid values (badVR.dcm has IS '1A'); we keep them as strings.
        model = _parsed(ds)
        assert model and all(set(e) <= {"vr", "Value", "InlineBinary"} for e in model.values())
        assert any(isinstance(v, str) for e in model.values() if e["vr"] in ("IS", "DS") for v in e.get("Value", []))
        return
    big_endian = ds.original_encoding[1] is False
    assert _parsed(ds) == normalise(reference, big_endian=big_endian, top=True)


def test_most_test_files_are_compared() -> None:
    """The comparison above must not pass by skipping: pydicom handles nearly all of them."""
    compared = 0
    for path in ALL_FILES:
        try:
            dcmread(path).to_json_dict()
        except Exception:
            continue
        compared += 1
    assert compared >= 150


@pytest.mark.parametrize("path", ALL_FILES, ids=_id)
def test_same_bytes_whatever_pydicom_converted_already(path: str) -> None:
    """Import measures the size on a half-used dataset, open renders a fresh one."""
    fresh = dataset_json(dcmread(path))
    assert dataset_json(_fully_converted(path)) == fresh
    half = dcmread(path)
    for tag in sorted(half.keys())[::2]:  # convert every other element, as attribute use would
        half[tag]
    assert dataset_json(half) == fresh
    assert dataset_json(half) == fresh  # and again: nothing cached changes it


@pytest.mark.parametrize("path", ALL_FILES, ids=_id)
def test_the_mount_renders_the_bytes_import_measured(path: str) -> None:
    """Import parses the whole file; the mount reads with long values deferred (faster)."""
    try:
        measured = dataset_json(pydicom.dcmread(io.BytesIO(Path(path).read_bytes())))
    except Exception:
        return  # not readable at all: never imported
    assert render_view("json", Path(path)) == measured


@pytest.mark.parametrize("path", ALL_FILES, ids=_id)
def test_pydicom_from_json_round_trips(path: str) -> None:
    text = dataset_json(dcmread(path))
    try:
        back = Dataset.from_json(text.decode("utf-8"))
    except ValueError as exc:
        assert "1A" in str(exc), exc  # badVR.dcm: pydicom cannot read IS "1A" back
        return
    assert dataset_json(back) == text


def test_output_is_independent_of_pydicom_value_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [get_testdata_file(n) for n in ("CT_small.dcm", "rtplan.dcm", "test-SR.dcm")]
    expected = [dataset_json(dcmread(p)) for p in paths]
    monkeypatch.setattr(config, "datetime_conversion", True)
    monkeypatch.setattr(config, "use_DS_decimal", True)
    assert [dataset_json(dcmread(p)) for p in paths] == expected
    assert [dataset_json(_fully_converted(p)) for p in paths] == expected


# --- layout ----------------------------------------------------------------------------------


def test_one_top_level_element_per_line_sorted_and_final_newline() -> None:
    text = dataset_json(dcmread(get_testdata_file("rtplan.dcm"))).decode("utf-8")
    assert text.startswith("{\n") and text.endswith("\n}\n")
    lines = text.splitlines()[1:-1]
    assert len(lines) > 20
    pattern = re.compile(r'^"([0-9A-F]{8})": \{"vr": "[A-Z]{2}"(, .*)?\},?$')
    keys = []
    for number, line in enumerate(lines):
        match = pattern.match(line)
        assert match, line
        assert line.endswith(",") == (number < len(lines) - 1)
        keys.append(match.group(1))
    assert keys == sorted(keys)
    assert any('"vr": "SQ", "Value": [{' in line for line in lines)  # sequences stay inline


def test_line_is_the_element_and_grep_finds_it() -> None:
    text = dataset_json(dcmread(get_testdata_file("CT_small.dcm"))).decode("utf-8")
    line = next(line for line in text.splitlines() if line.startswith('"00100010"'))
    assert json.loads("{" + line.rstrip(",") + "}") == {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    }


def test_empty_dataset() -> None:
    assert dataset_json(Dataset()) == b"{}\n"


def test_json_version_is_an_int() -> None:
    assert isinstance(JSON_VERSION, int) and JSON_VERSION >= 1


# --- what is left out ------------------------------------------------------------------------


def test_file_meta_and_bulk_data_are_left_out_at_every_depth() -> None:
    for name in ("examples_overlay.dcm", "waveform_ecg.dcm", "CT_small.dcm"):
        text = dataset_json(dcmread(get_testdata_file(name))).decode("utf-8")
        found = set(re.findall(r'"([0-9A-F]{8})": \{"vr"', text))
        assert not {k for k in found if k.startswith("0002") or _is_bulk(k)}
    # the overlay file has an icon image (with pixel data) inside a sequence, and overlays
    overlay = _parsed(dcmread(get_testdata_file("examples_overlay.dcm")))
    icon = overlay["00880200"]["Value"][0]
    assert "7FE00010" not in icon and icon["00280010"] == {"vr": "US", "Value": [64]}
    assert "60000010" in overlay and "60003000" not in overlay


def test_binary_values_inline_up_to_64_kib_only() -> None:
    ds = Dataset()
    ds.add_new(0x00091010, "OB", b"\x01" * MAX_INLINE_BINARY)
    ds.add_new(0x00091011, "OB", b"\x02" * (MAX_INLINE_BINARY + 2))
    ds.add_new(0x00091012, "UN", b"\x03\x04")
    ds.add_new(0x00091013, "OB", b"")
    out = _parsed(ds)
    assert base64.b64decode(out["00091010"]["InlineBinary"]) == b"\x01" * MAX_INLINE_BINARY
    assert "00091011" not in out
    assert out["00091012"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"\3\4").decode()}
    assert out["00091013"] == {"vr": "OB"}


def test_oversized_binary_is_skipped_without_reading_it() -> None:
    body = _element(0x00100020, "LO", b"ID") + _element(0x00431028, "OB", b"\x05" * 70000)
    out = _parsed(_read_raw(body))
    assert out == {"00100020": {"vr": "LO", "Value": ["ID"]}}


def test_inline_binary_from_big_endian_is_little_endian() -> None:
    words = np.array([0x0102, 0x0304], dtype=">u2").tobytes()
    body = _element(0x00100020, "LO", b"ID", little=False) + _element(
        0x00091010, "OW", words, little=False
    )
    for ds in (_read_raw(body, little=False), _fully_converted_raw(body, little=False)):
        out = _parsed(ds)
        assert base64.b64decode(out["00091010"]["InlineBinary"]) == b"\x02\x01\x04\x03"


def _fully_converted_raw(body: bytes, *, little: bool) -> Dataset:
    ds = _read_raw(body, little=little)
    ds.walk(lambda dataset, elem: None)
    return ds


# --- values ----------------------------------------------------------------------------------


def test_numbers_tags_and_empty_values() -> None:
    ds = Dataset()
    ds.Rows = 512
    ds.add_new(0x00091001, "SS", [-1, 2])
    ds.add_new(0x00091002, "FD", [0.5, float("nan"), float("inf")])
    ds.add_new(0x00091003, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00091004, "CS", ["A", "", "B"])
    ds.add_new(0x00091005, "LO", "")
    ds.add_new(0x00091006, "SQ", Sequence())
    ds.add_new(0x00091007, "UV", [2**64 - 1])
    out = _parsed(ds)
    assert out["00280010"] == {"vr": "US", "Value": [512]}
    assert out["00091001"] == {"vr": "SS", "Value": [-1, 2]}
    assert out["00091002"] == {"vr": "FD", "Value": [0.5, "nan", "inf"]}
    assert out["00091003"] == {"vr": "AT", "Value": ["00100010", "7FE00010"]}
    assert out["00091004"] == {"vr": "CS", "Value": ["A", None, "B"]}
    assert out["00091005"] == {"vr": "LO"}
    assert out["00091006"] == {"vr": "SQ"}
    assert out["00091007"] == {"vr": "UV", "Value": [2**64 - 1]}


@pytest.mark.parametrize("converted", [False, True], ids=["raw", "converted"])
def test_invalid_is_and_ds_are_kept_as_strings(converted: bool) -> None:
    body = (
        _element(0x00180050, "DS", b"1.50\\abc\\\\1e3 ")
        + _element(0x00200013, "IS", b"12\\x7\\ 3\\1.0 ")
        + _element(0x00281050, "DS", b"NaN ")
        + _element(0x00281051, "DS", b"-0.5")
    )
    ds = _fully_converted_raw(body, little=True) if converted else _read_raw(body)
    out = _parsed(ds)
    assert out["00180050"] == {"vr": "DS", "Value": [1.5, "abc", None, 1000.0]}
    assert out["00200013"] == {"vr": "IS", "Value": [12, "x7", 3, 1]}
    assert out["00281050"] == {"vr": "DS", "Value": ["NaN"]}
    assert out["00281051"] == {"vr": "DS", "Value": [-0.5]}


def test_in_memory_numbers_without_text() -> None:
    ds = Dataset()
    ds.SliceThickness = 2.5
    ds.InstanceNumber = 7
    ds.WindowCenter = [40, 400.5]
    out = _parsed(ds)
    assert out["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert out["00200013"] == {"vr": "IS", "Value": [7]}
    assert out["00281050"] == {"vr": "DS", "Value": [40.0, 400.5]}


def test_person_name_groups() -> None:
    ds = Dataset()
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.ReferringPhysicianName = "=Ideo^Only"
    ds.add_new(0x00081070, "PN", ["Doe^John", "", "Roe^Jane"])
    out = _parsed(ds)
    assert out["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert out["00080090"]["Value"] == [{"Ideographic": "Ideo^Only"}]
    assert out["00081070"]["Value"] == [
        {"Alphabetic": "Doe^John"},
        None,
        {"Alphabetic": "Roe^Jane"},
    ]


# --- character sets --------------------------------------------------------------------------

_NAMES = {
    "chrH31.dcm": {
        "Alphabetic": "Yamada^Tarou",
        "Ideographic": "山田^太郎",
        "Phonetic": "やまだ^たろう",
    },
    "chrI2.dcm": {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"},
    "chrX1.dcm": {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"},
    "chrX2.dcm": {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"},
    "chrGerm.dcm": {"Alphabetic": "Äneas^Rüdiger"},
    "chrRuss.dcm": {"Alphabetic": "Люкceмбypг"},
    "chrArab.dcm": {"Alphabetic": "قباني^لنزار"},
    "chrJapMulti.dcm": {"Alphabetic": "やまだ^たろう"},
    "chrKoreanMulti.dcm": {"Alphabetic": "김희중"},
}


@pytest.mark.parametrize("name", sorted(_NAMES))
def test_patient_names_in_every_charset_are_real_utf8(name: str) -> None:
    path = next(p for p in CHARSET_FILES if Path(p).name == name)
    raw = dataset_json(dcmread(path))
    assert raw.decode("utf-8")  # valid UTF-8
    assert b"\\u" not in raw  # not escaped: grep finds the names
    name_value = _NAMES[name]
    assert json.loads(raw)["00100010"]["Value"] == [name_value]
    assert name_value["Alphabetic"].encode("utf-8") in raw


def test_text_in_sequence_items_uses_the_items_charset() -> None:
    path = next(p for p in CHARSET_FILES if Path(p).name == "chrSQEncoding.dcm")
    item = _parsed(dcmread(path))["00321064"]["Value"][0]
    assert item["00100010"]["Value"] == [
        {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


@pytest.mark.parametrize(
    ("charset", "value"),
    [
        ("ISO_IR 192", b"Caf\xc3\xa9 \xff\xfe"),  # invalid UTF-8
        ("\\ISO 2022 IR 87", b"\x1b$B\x3b\x33\x1b(B broken \x1b$B\xff"),  # bad JIS bytes
        ("GB18030", b"\x81\x30\x81"),  # truncated four-byte sequence
        ("ISO_IR 999", b"Unknown charset \xe9"),  # a charset pydicom does not know
    ],
)
def test_undecodable_text_never_raises_and_is_stable(charset: str, value: bytes) -> None:
    cs = charset.encode()
    body = _element(0x00080005, "CS", cs + b" " * (len(cs) % 2))
    body += _element(0x00100010, "PN", value + b" " * (len(value) % 2))
    body += _element(0x00104000, "LT", value + b" " * (len(value) % 2))
    fresh = dataset_json(_read_raw(body))
    assert fresh == dataset_json(_fully_converted_raw(body, little=True))
    out = json.loads(fresh)
    assert out["00104000"]["vr"] == "LT" and len(out["00104000"]["Value"][0]) > 0
    assert out["00100010"]["vr"] == "PN"


def test_lone_surrogates_are_escaped_not_fatal() -> None:
    ds = Dataset()
    ds.PatientID = "abc\udcff"
    text = dataset_json(ds)
    assert json.loads(text)["00100020"]["Value"] == ["abc\udcff"]


def test_absurdly_long_strings_are_kept_whole() -> None:
    long_text = "x" * 5_000_000 + "é"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.add_new(0x00104000, "UT", long_text)
    ds.add_new(0x00100020, "LO", "y" * 100_000)  # far beyond LO's 64 characters
    out = _parsed(ds)
    assert out["00104000"]["Value"] == [long_text]
    assert out["00100020"]["Value"] == ["y" * 100_000]


def test_written_and_read_back_instance_matches_the_in_memory_one() -> None:
    """A Part 10 file (with file meta) gives the same JSON as the dataset it was written from."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen=ミュラー"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = [0.5, 0.25]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert dataset_json(pydicom.dcmread(io.BytesIO(buffer.getvalue()))) == dataset_json(ds)


def test_big_endian_file_agrees_with_little_endian_one() -> None:
    big = dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    little = dcmread(get_testdata_file("MR_small.dcm"))
    assert big.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert dataset_json(big) == dataset_json(little)


def test_strict_pydicom_settings_never_make_it_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """With pydicom set to raise on bad values, the element keeps its bytes as UN instead."""
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    value = b"Caf\xc3\xa9 \xff\xfe"
    body = _element(0x00080005, "CS", b"ISO_IR 192") + _element(0x00100010, "PN", value)
    body += _element(0x00200013, "IS", b"1A")
    out = _parsed(_read_raw(body))
    assert out["00100010"] == {"vr": "UN", "InlineBinary": base64.b64encode(value).decode()}
    assert out["00200013"] == {"vr": "IS", "Value": ["1A"]}
