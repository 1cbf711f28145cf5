"""The ``NNN.json`` view: a dataset's metadata in the DICOM JSON model (PS3.18 F.2).

The mount records the size of this file at import time and renders it again on
open, so the output must be byte-for-byte deterministic, and cheap enough to
run on every import. ``Dataset.to_json_dict`` is neither fast (it converts and
caches every element through ``Dataset.__getitem__``) nor laid out for people,
so the text is written here directly:

* one top-level element per line, keys sorted by tag, ``", "``/``": "``
  separators, real UTF-8 (no ``\\u`` escapes), a final newline; sequences stay
  on their element's line, so ``grep '^"00100010"'`` and ``jq`` both work;
* elements pydicom has not converted yet are decoded here straight from their
  bytes, following pydicom's own converters (``pydicom.values``) step by step
  for the plain cases: numbers, binary, tags, and text that is ASCII (any
  character set) or latin-1 by definition (AE, CS, DA, UI, ...). Everything
  else (other text in other character sets, ``SQ``, ``UN``, ambiguous VRs,
  implicit private tags, LUT descriptors, non-default pydicom settings) goes
  through ``Dataset.__getitem__`` itself. Either way the value reaches the same
  formatting, so a freshly read dataset and one whose elements were already
  converted give identical bytes (the tests check this for every test file);
* IS/DS are formatted from their original text (pydicom keeps it), never from
  pydicom's guess at a type, for the same reason.

What is left out or differs from ``to_json_dict`` (all deliberate):

* file meta information (group 0002);
* bulk pixel data: (7FE0,0008/0009/0010), Waveform Data (5400,1010) and
  Overlay Data (60xx,3000), at any nesting depth, and Data Set Trailing
  Padding (FFFC,FFFC);
* other binary values (OB/OD/OF/OL/OV/OW/UN) longer than
  :data:`MAX_INLINE_BINARY` bytes (64 KiB); shorter ones are ``InlineBinary``
  in little endian byte order (PS3.18 F.2.7), swapped from big endian sources;
* empty values inside a multi-valued element are ``null`` and a sequence
  without items has no ``"Value"`` (PS3.18 F.2.5); empty Person Name groups are
  omitted (F.2.2);
* IS/DS values that are not numbers, and non-finite FL/FD/DS values, are kept
  as JSON strings (``NaN`` is not JSON);
* an element that pydicom refuses to convert becomes
  ``{"vr": "UN", "InlineBinary": ...}`` of its raw bytes, instead of an error.

Bump :data:`JSON_VERSION` whenever any of this changes the output bytes.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import pydicom
import pydicom.hooks
from pydicom import config
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import _LUT_DESCRIPTOR_TAGS
from pydicom.uid import UID
from pydicom.valuerep import AMBIGUOUS_VR, IS, DSfloat, PersonName

__all__ = ["JSON_VERSION", "MAX_INLINE_BINARY", "dataset_json"]

JSON_VERSION: int = 1
"""Version of the output format; the index stores sizes computed with it."""

MAX_INLINE_BINARY = 64 * 1024
"""Binary values longer than this many bytes are left out of the view."""

_BULK_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010, 0x54001010, 0xFFFCFFFC})
_SPECIFIC_CHARACTER_SET = 0x00080005
_LUT_DESCRIPTORS = frozenset(int(t) for t in _LUT_DESCRIPTOR_TAGS)
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SPECIAL_VRS = _BINARY_VRS | AMBIGUOUS_VR | {"SQ"}
_PLAIN_SCALARS = frozenset({str, int, float, UID, DSfloat, IS})
_SWAP_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_STRUCT_CODES = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q"}
_STRUCT_CODES |= {"FL": "f", "FD": "d", "AT": "H"}
_KEYS: dict[int, str] = {}
_DEFAULT_HOOKS = (pydicom.hooks.raw_element_vr, pydicom.hooks.raw_element_value)


def dataset_json(ds: pydicom.Dataset) -> bytes:
    """Return `ds` (without file meta and bulk data) as DICOM JSON, UTF-8 encoded.

    Deterministic: the same dataset bytes always give the same output bytes,
    whether or not pydicom has already converted some of its elements.
    Never raises for odd content; see the module docstring for the rules.
    """
    lines = _members(ds, _fast_path_allowed(), top_level=True)
    text = "{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n"
    # Lone surrogates cannot be UTF-8; "\udcxx" happens to be their JSON escape.
    return text.encode("utf-8", "backslashreplace")


def _fast_path_allowed() -> bool:
    """Decode raw bytes here only while pydicom's conversion is the stock one."""
    hooks = pydicom.hooks.hooks
    return (
        config.data_element_callback is None
        and not hooks.raw_element_kwargs
        and (hooks.raw_element_vr, hooks.raw_element_value) == _DEFAULT_HOOKS
        and not config.datetime_conversion
        and not config.use_DS_numpy
        and not config.use_IS_numpy
    )


def _members(ds: pydicom.Dataset, fast: bool, *, top_level: bool = False) -> list[str]:
    """``"tag": {...}`` for each element of `ds` that belongs in the view, in tag order."""
    members = []
    ascii_text: bool | None = None
    swap = ds.original_encoding[1] is False  # read from a big endian transfer syntax
    for key, elem in sorted(ds.items(), key=_tag_of):
        tag = int(key)
        if (top_level and tag >> 16 == 0x0002) or tag in _BULK_TAGS:
            continue
        if 0x60003000 <= tag <= 0x601E3000 and _is_bulk(tag):
            continue
        if type(elem) is RawDataElement:
            if ascii_text is None:
                ascii_text = fast and _ascii_compatible(_encoding(ds))
            body = _raw_element(ds, tag, elem, swap, ascii_text)
        else:
            body = _element(elem.VR, elem.value, swap)
        if body is not None:
            members.append((_KEYS.get(tag) or _key(tag)) + body)
    return members


def _key(tag: int) -> str:
    """``"GGGGEEEE": `` for `tag`, remembered: formatting hex costs more than the lookup."""
    if len(_KEYS) > 100_000:
        _KEYS.clear()  # private tags could grow this without bound
    key = _KEYS[tag] = f'"{tag:08X}": '
    return key


def _tag_of(item: tuple[Any, Any]) -> int:
    return int(item[0])


def _is_bulk(tag: int) -> bool:
    """Pixel, waveform and overlay data (60xx,3000 for even xx up to 1E)."""
    return tag in _BULK_TAGS or (0x60003000 <= tag <= 0x601E3000 and tag & 0x1FFFF == 0x3000)


def _encoding(ds: pydicom.Dataset) -> Any:
    """The character set Dataset.__getitem__ would decode this dataset's text with."""
    try:
        return ds.original_character_set or ds._character_set
    except Exception:
        return None  # e.g. an unusable (0008,0005) in strict mode: let pydicom decide


def _ascii_compatible(encoding: Any) -> bool:
    """True if ASCII bytes without ESC decode to themselves in `encoding`.

    That holds for every character set DICOM defines (pydicom maps them to
    ASCII supersets); an unexpected name disables the fast path instead.
    """
    if encoding is None:
        return False
    names = [encoding] if isinstance(encoding, str) else list(encoding)
    return all(_is_ascii_superset(name) for name in names)


def _is_ascii_superset(name: str) -> bool:
    try:
        return b" -~\\^=".decode(name) == " -~\\^="
    except (LookupError, UnicodeDecodeError, TypeError):
        return False


def _raw_element(
    ds: pydicom.Dataset, tag: int, raw: RawDataElement, swap: bool, fast: bool
) -> str | None:
    """JSON for an element pydicom has not converted yet."""
    vr = raw.VR
    if vr is None:  # implicit VR: the lookup pydicom's raw_element_vr hook does first
        entry = DicomDictionary.get(tag)
        if entry is not None:
            vr = entry[0]
        else:
            try:
                vr = dictionary_VR(tag)  # repeating groups such as (60xx,0010)
            except KeyError:
                vr = None  # private or unknown: pydicom looks the VR up itself
    if vr in _BINARY_VRS and raw.length != 0xFFFFFFFF and raw.length > MAX_INLINE_BINARY:
        return None
    value = raw.value
    if (
        fast
        and value is not None
        and vr in _RAW_DECODERS
        and tag != _SPECIFIC_CHARACTER_SET
        and tag not in _LUT_DESCRIPTORS
    ):
        if not value:
            return f'{{"vr": "{vr}"}}'
        if vr in _BINARY_VRS:
            return _binary(vr, value, swap)
        items = _RAW_DECODERS[vr](value, raw.is_little_endian)
        if items is not None:
            return _values(vr, items)
    try:
        elem = ds[tag]
    except Exception:
        return _unconvertible(raw)
    return _element(elem.VR, elem.value, swap)


def _unconvertible(raw: RawDataElement) -> str | None:
    """Last resort for a value pydicom refuses: keep its bytes, labelled UN."""
    value = raw.value
    if not isinstance(value, bytes) or len(value) > MAX_INLINE_BINARY:
        return '{"vr": "UN"}'
    return _binary("UN", value, False)


# Raw decoders: bytes -> list of values, mirroring pydicom.values for the plain
# cases and returning None for anything pydicom itself must handle.


def _split_latin1(value: bytes, little: bool) -> list[str] | None:
    """AS, CS, DA, DT, TM, UI (convert_string / convert_UI): latin-1, right-stripped."""
    return value.decode("latin-1").rstrip(" \x00").split("\\")


def _split_ae(value: bytes, little: bool) -> list[str] | None:
    """AE (convert_AE_string): each value stripped on both sides."""
    return [s.strip() for s in value.decode("latin-1").split("\\")]


def _single_ur(value: bytes, little: bool) -> list[str] | None:
    """UR (convert_UR_string): one value, trailing whitespace removed."""
    return [value.decode("latin-1").rstrip()]


def _split_number_text(value: bytes, little: bool) -> list[str] | None:
    """IS, DS: keep the text; formatting decides number or string."""
    if not value.isascii():
        return None  # an invalid value falls back to SH decoding in pydicom
    return value.decode("ascii").strip().rstrip(" \x00").split("\\")


def _split_text(value: bytes, little: bool) -> list[str] | None:
    """SH, LO, UC (convert_text) when the bytes are plain ASCII."""
    if not value.isascii() or b"\x1b" in value:
        return None
    return [s.rstrip("\x00 ") for s in value.decode("ascii").split("\\")]


def _single_text(value: bytes, little: bool) -> list[str] | None:
    """LT, ST, UT (convert_single_string) when the bytes are plain ASCII."""
    if not value.isascii() or b"\x1b" in value:
        return None
    return [value.decode("ascii").rstrip("\x00 ")]


def _split_pn(value: bytes, little: bool) -> list[Any] | None:
    """PN (convert_PN) when the bytes are plain ASCII: groups split on '='."""
    if not value.isascii() or b"\x1b" in value:
        return None
    names = value.rstrip(b"\x00 ").decode("ascii").split("\\")
    return [tuple(name.split("=")) if name else "" for name in names]


def _numbers(vr: str) -> Callable[[bytes, bool], list[Any] | None]:
    code = _STRUCT_CODES[vr]
    size = struct.calcsize("<" + code)

    def decode(value: bytes, little: bool) -> list[Any] | None:
        if len(value) % size:
            return None  # pydicom decides: UN with a warning, or an error
        return list(struct.unpack(f"{'<' if little else '>'}{len(value) // size}{code}", value))

    return decode


def _tags(value: bytes, little: bool) -> list[Any] | None:
    """AT (convert_ATvalue): pairs of 16-bit group, element."""
    if len(value) % 4:
        return None
    words = struct.unpack(f"{'<' if little else '>'}{len(value) // 2}H", value)
    return [words[i] << 16 | words[i + 1] for i in range(0, len(words), 2)]


def _binary_marker(value: bytes, little: bool) -> list[Any] | None:
    return None  # binary VRs are handled before decoding; listed to be eligible


_RAW_DECODERS: dict[str, Callable[[bytes, bool], list[Any] | None]] = {
    **{vr: _split_latin1 for vr in ("AS", "CS", "DA", "DT", "TM", "UI")},
    "AE": _split_ae,
    "UR": _single_ur,
    "IS": _split_number_text,
    "DS": _split_number_text,
    **{vr: _split_text for vr in ("SH", "LO", "UC")},
    **{vr: _single_text for vr in ("LT", "ST", "UT")},
    "PN": _split_pn,
    **{vr: _numbers(vr) for vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD")},
    "AT": _tags,
    **{vr: _binary_marker for vr in ("OB", "OD", "OF", "OL", "OV", "OW")},
}


# Formatting: pydicom values (or raw-decoded lists) -> JSON text.


def _element(vr: str, value: Any, swap: bool) -> str | None:
    """JSON object for one converted element, or None when it is left out."""
    if vr in _SPECIAL_VRS:
        if vr in AMBIGUOUS_VR:
            vr = _resolve_ambiguous(vr, value)
        if vr in _BINARY_VRS:
            return _binary(vr, value, swap)
        if vr == "SQ":
            return _sequence(value)
    kind = type(value)
    if kind in _PLAIN_SCALARS:  # the common single value, without the list detour
        if not value and (kind is str or kind is UID):
            return f'{{"vr": "{vr}"}}'
        try:
            return f'{{"vr": "{vr}", "Value": [{_FORMATTERS.get(vr, _string)(value)}]}}'
        except Exception:
            return f'{{"vr": "{vr}"}}'
    return _values(vr, _as_list(value))


def _values(vr: str, items: Any) -> str:
    """``{"vr": .., "Value": [..]}``; a single empty value means an empty element."""
    try:
        if len(items) == 1:
            item = items[0]
            if item is None or item == "":
                return f'{{"vr": "{vr}"}}'
            text = _FORMATTERS.get(vr, _string)(item)
        elif items:
            text = ", ".join(map(_FORMATTERS.get(vr, _string), items))
        else:
            return f'{{"vr": "{vr}"}}'
    except Exception:
        return f'{{"vr": "{vr}"}}'  # a value of a type no VR allows; keep the element
    return f'{{"vr": "{vr}", "Value": [{text}]}}'


def _resolve_ambiguous(vr: str, value: Any) -> str:
    """A real VR for an element pydicom could not disambiguate (no context)."""
    if isinstance(value, bytes | bytearray):
        return "OB" if vr.startswith("OB") else "OW"
    return "SS" if any(isinstance(v, int) and v < 0 for v in _as_list(value)) else "US"


def _as_list(value: Any) -> Any:
    """A converted element's values as a sequence."""
    kind = type(value)
    if kind is MultiValue or kind is list or kind is tuple:
        return value
    if value is None:
        return ()
    if isinstance(value, str | int | float | bytes | PersonName):
        return (value,)
    if kind is np.ndarray:
        return value.tolist()
    if isinstance(value, MultiValue | list | tuple):
        return value
    return (value,)


def _binary(vr: str, value: Any, swap: bool) -> str | None:
    """InlineBinary in little endian byte order, or None when too long to inline."""
    if not isinstance(value, bytes | bytearray):
        return f'{{"vr": "{vr}"}}'  # e.g. a buffered value: nothing cheap to show
    if len(value) > MAX_INLINE_BINARY:
        return None
    if not value:
        return f'{{"vr": "{vr}"}}'
    size = _SWAP_SIZE.get(vr)
    if swap and size and len(value) % size == 0:
        value = np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()
    return f'{{"vr": "{vr}", "InlineBinary": "{base64.b64encode(value).decode("ascii")}"}}'


def _sequence(value: Any) -> str:
    """SQ: the items as nested JSON objects, all on the element's line."""
    fast = _fast_path_allowed()
    items = ["{" + ", ".join(_members(item, fast)) + "}" for item in value or ()]
    if not items:
        return '{"vr": "SQ"}'
    return '{"vr": "SQ", "Value": [' + ", ".join(items) + "]}"


def _string(v: Any) -> str:
    """Text VRs; dates and times as their original text."""
    if type(v) is str:
        return encode_basestring(v) if v else "null"
    if v is None or v == "":
        return "null"
    if isinstance(v, bytes):
        return encode_basestring(v.decode("utf-8", "replace"))
    original = getattr(v, "original_string", None)
    return encode_basestring(original if isinstance(original, str) else str(v))


def _integer(v: Any) -> str:
    """US/SS/UL/SL/UV/SV."""
    if type(v) is int:
        return int.__repr__(v)
    return "null" if v is None else int.__repr__(int(v))


def _float(v: Any) -> str:
    """FL/FD; non-finite values as strings because NaN is not JSON."""
    if v is None:
        return "null"
    f = float(v)
    return float.__repr__(f) if math.isfinite(f) else encode_basestring(repr(f))


def _number_text(v: Any) -> str | None:
    """The text an IS/DS value was read from, if it has one."""
    if isinstance(v, str):
        return v
    original = getattr(v, "original_string", None)
    return original if isinstance(original, str) else None


def _is_number(v: Any) -> str:
    """IS: a JSON integer (pydicom also accepts "1.0"), else the original text."""
    if type(v) is IS:
        return int.__repr__(v)  # equals int() of its text, as the raw path computes
    text = _number_text(v)
    if text is None:
        return "null" if v is None else _integral(float(v), str(v))
    text = text.strip(" \x00")
    if not text:
        return "null"
    try:
        return int.__repr__(int(text))
    except ValueError:
        pass
    try:
        return _integral(float(text), text)
    except ValueError:
        return encode_basestring(text)


def _integral(f: float, text: str) -> str:
    if math.isfinite(f) and f.is_integer():
        return int.__repr__(int(f))
    return encode_basestring(text)


def _ds_number(v: Any) -> str:
    """DS: a JSON number, or the original text when it is not a finite number."""
    if type(v) is DSfloat and math.isfinite(v):
        return float.__repr__(v)  # equals float() of its text, as the raw path computes
    text = _number_text(v)
    if text is None:
        return "null" if v is None else _finite(float(v), str(v))
    text = text.strip(" \x00")
    if not text:
        return "null"
    try:
        return _finite(float(text), text)
    except ValueError:
        return encode_basestring(text)


def _finite(f: float, text: str) -> str:
    return float.__repr__(f) if math.isfinite(f) else encode_basestring(text)


def _person_name(v: Any) -> str:
    """PN: Alphabetic/Ideographic/Phonetic groups, empty groups omitted."""
    if v is None or v == "":
        return "null"
    groups = v if isinstance(v, tuple) else getattr(v, "components", None)
    if groups is None:
        groups = str(v).split("=")
    members = [
        f'"{key}": {encode_basestring(text)}'
        for key, text in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
        if text
    ]
    return "{" + ", ".join(members) + "}" if members else "null"


def _attribute_tag(v: Any) -> str:
    """AT: eight upper-case hex digits."""
    return "null" if v is None else f'"{int(v):08X}"'


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "AT": _attribute_tag,
    "DS": _ds_number,
    "FD": _float,
    "FL": _float,
    "IS": _is_number,
    "PN": _person_name,
    **{vr: _integer for vr in ("SL", "SS", "SV", "UL", "US", "UV")},
}
