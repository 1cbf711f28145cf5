"""What to ask a remote: the query language of ``dicomfs find`` → C-FIND match keys.

Saved listings and ``dicomfs remote query`` take the same text as ``dicomfs find``
(``index/query_language.py``), as far as C-FIND can express it (PS3.4 C.2.2.2)::

    Modality=CT and StudyDate>=20240101 and PatientName=DOE*
      → ModalitiesInStudy=CT (at study level), StudyDate=20240101-, PatientName=DOE*

- ``=``: single value matching, or wildcard matching with ``*`` and ``?``;
- ``>=`` and ``<=`` on dates and times: range matching (both: ``a-b``);
- ``K=a or K=b`` on a UID: list of UID matching (``a\\b``);
- terms joined by ``and`` (parentheses allowed), one condition per attribute.

Anything else (``not``, other ``or``, ``!=``, ``<``, ``>``, ``~``, ranges of numbers, tags,
projects, ``has:derived``, an attribute of a level below the query's) is a ``TermsError``
that names the part a remote cannot be sent. The old form, space-separated
``KEYWORD=VALUE`` terms with DICOM values (``StudyDate=20240101-``), is still understood;
``legacy`` says so and ``deprecation`` how to write it now.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomfs.errors import UserError
from dicomfs.index import query_language as ql
from dicomfs.index.cfind import KEYS, Key, Level

__all__ = ["RemoteTerms", "TermsError", "deprecation", "parse"]

# Every attribute the query language knows: the C-FIND keys, and the ones it searches beyond them.
_LANGUAGE_KEYS: dict[str, Key] = {**KEYS, **ql.QUERY_KEYS}
_KEYWORD = {key: keyword for keyword, key in _LANGUAGE_KEYS.items()}
_RANGED_VRS = frozenset({"DA", "TM", "DT"})
_DEPTH = {"STUDY": 0, "SERIES": 1, "IMAGE": 2}
_BELOW_STUDY = {"Modality": "ModalitiesInStudy"}  # at study level, the study's own summary attribute
_OLD_FORM_ONLY = {v: k for k, v in _BELOW_STUDY.items()}  # computed: refused by the query language


class TermsError(UserError, ValueError):
    """Terms that cannot be sent to a remote; the message names the part and why."""


@dataclass(frozen=True, slots=True)
class RemoteTerms:
    """C-FIND match keys for one query, and whether they were written in the old form."""

    keys: dict[str, str]
    levels: dict[str, str] = field(default_factory=dict)  # keyword → its Study Root level, from the language
    legacy: bool = False
    rewritten: str = ""  # the old form in the query language ('' if it has no equivalent there)
    why_not: str = ""  # when it has none: the reason


def parse(terms: str | list[str], level: str = "STUDY") -> RemoteTerms:
    """Terms for a C-FIND at ``level`` (STUDY, SERIES or IMAGE), in the query language or the old form.

    A list is command-line words: joined with spaces for the query language, each one
    ``KEYWORD=VALUE`` in the old form. Raises TermsError or QuerySyntaxError.
    """
    text = terms if isinstance(terms, str) else " ".join(terms)
    if not text.strip():
        return RemoteTerms({})
    try:
        levels: dict[str, str] = {}
        return RemoteTerms(_translate(ql.parse(text), level, levels), levels)
    except _OldFormOnly:
        words = _words(terms) if isinstance(terms, str) else list(terms)
    except ql.QuerySyntaxError:
        try:
            words = _words(terms) if isinstance(terms, str) else list(terms)
        except TermsError:
            words = []
        if not words or not all(_looks_old(word) for word in words):
            raise
    keys = _old_form(words)
    rewritten, why_not = _rewrite(keys, level)
    return RemoteTerms(keys, legacy=True, rewritten=rewritten, why_not=why_not)


def deprecation(original: str, terms: RemoteTerms) -> str:
    """One line for a query in the old form: how to write it now."""
    if terms.rewritten:
        return (f"{original!r} is in the old KEYWORD=VALUE form, which is deprecated: write it in the query "
                f"language of dicomfs find, {terms.rewritten!r}")
    return (f"{original!r} is in the old KEYWORD=VALUE form, which is deprecated; it has no equivalent in the "
            f"query language yet ({terms.why_not}), so it keeps working")


# ------------------------------------------------------------------ the query language


class _OldFormOnly(Exception):
    """A value that only means something in the old form (a DICOM range or value list)."""


@dataclass(slots=True)
class _Range:
    low: str = ""
    high: str = ""


def _translate(node: ql.Node | None, level: str, levels: dict[str, str] | None = None) -> dict[str, str]:
    """C-FIND keys for ``node`` at ``level``; ``levels`` gets each keyword's Study Root level."""
    levels = {} if levels is None else levels
    keys: dict[str, str] = {}
    ranges: dict[str, _Range] = {}
    for term in _conjuncts(node):
        if isinstance(term, ql.Bool) and term.op == "or":
            keyword, value = _uid_list(term, level)
            _once(keys, ranges, keyword, term)
            keys[keyword] = value
            levels[keyword] = "STUDY" if keyword in _BELOW_STUDY.values() else _level(term.terms[0].key)
            continue
        if isinstance(term, ql.Bool):
            raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: C-FIND has no 'not'")
        if isinstance(term, ql.Link):
            raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: tags, projects and has:derived "
                             f"belong to this archive")
        keyword = _keyword_at(term, level)
        levels[keyword] = "STUDY" if keyword in _BELOW_STUDY.values() else _level(term.key)
        value = _value(term)
        if term.op == "=":
            if (term.key.vr in _RANGED_VRS and "-" in value) or "\\" in value:
                raise _OldFormOnly
            _once(keys, ranges, keyword, term)
            keys[keyword] = value
        elif term.op in (">=", "<=") and term.key.vr in _RANGED_VRS:
            if keyword in keys and keyword not in ranges:
                raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: {keyword} has a condition already "
                                 f"(C-FIND sends one value per attribute)")
            bound = ranges.setdefault(keyword, _Range())
            side = "low" if term.op == ">=" else "high"
            if getattr(bound, side):
                raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: {keyword} has a {term.op} bound "
                                 f"already")
            setattr(bound, side, value)
            keys[keyword] = f"{bound.low}-{bound.high}"
        else:
            raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: {_why_not(term)}")
    return keys


def _conjuncts(node: ql.Node | None) -> list[ql.Node]:
    if node is None:
        return []
    if isinstance(node, ql.Bool) and node.op == "and":
        return [leaf for term in node.terms for leaf in _conjuncts(term)]
    return [node]


def _why_not(term: ql.Attr) -> str:
    if term.op in (">", "<"):
        return f"C-FIND ranges include their ends (write {term.op}=)" if term.key.vr in _RANGED_VRS \
            else "C-FIND matches ranges of dates and times only"
    if term.op in (">=", "<="):
        return "C-FIND matches ranges of dates and times only"
    if term.op == "~":
        return "C-FIND has no substring match (write Keyword=*text*, a wildcard; case follows the remote)"
    return "C-FIND has no 'not equal'"


def _keyword_at(term: ql.Attr, level: str) -> str:
    """The attribute to send for ``term`` at ``level``; one below it has no meaning there."""
    keyword = _keyword(term.key)
    if _DEPTH[_level(term.key)] <= _DEPTH[level]:
        return keyword
    if level == "STUDY" and keyword in _BELOW_STUDY:
        return _BELOW_STUDY[keyword]
    below = _level(term.key).lower()
    raise TermsError(f"{_shown(term)!r} cannot be sent to a remote at {level.lower()} level: {keyword} belongs to "
                     f"the {below} level (query at {below} level)")


def _uid_list(term: ql.Bool, level: str) -> tuple[str, str]:
    """``K=a or K=b`` on one UID attribute → ``a\\b``; any other 'or' cannot be sent."""
    leaves = [t for t in term.terms if isinstance(t, ql.Attr) and t.op == "=" and t.key.vr == "UI"]
    keywords = {_keyword(t.key) for t in leaves}
    if len(leaves) != len(term.terms) or len(keywords) != 1:
        raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: C-FIND has no 'or' (except a list of UIDs: "
                         f"StudyInstanceUID=a or StudyInstanceUID=b)")
    values = [_value(t) for t in leaves]
    if any("*" in v or "?" in v or "\\" in v for v in values):
        raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: a list of UIDs has no wildcards")
    return _keyword_at(leaves[0], level), "\\".join(values)


def _once(keys: dict[str, str], ranges: dict[str, _Range], keyword: str, term: ql.Node) -> None:
    if keyword in keys:
        raise TermsError(f"{_shown(term)!r} cannot be sent to a remote: {keyword} has a condition already "
                         f"(C-FIND sends one value per attribute)")


def _keyword(key: Key) -> str:
    return _KEYWORD[key]


def _level(key: Key) -> str:
    """Study Root has no patient level: patient attributes are asked with the study."""
    return "STUDY" if key.level in (Level.PATIENT, Level.STUDY) else key.level.value


def _value(term: ql.Attr) -> str:
    value = term.value
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def _shown(node: ql.Node) -> str:
    """A term as it could have been written."""
    if isinstance(node, ql.Attr):
        return f"{_keyword(node.key)}{node.op}{_quoted(_value(node))}"
    if isinstance(node, ql.Link):
        if node.kind == "derived":
            return "has:derived"
        return f"{node.kind}:{_quoted(node.name)}" + (f"{node.op}{_quoted(node.value)}" if node.op else "")
    if node.op == "not":
        return f"not {_shown(node.terms[0])}"
    return f" {node.op} ".join(_shown(t) if not isinstance(t, ql.Bool) else f"({_shown(t)})" for t in node.terms)


def _quoted(value: str) -> str:
    if value and re.fullmatch(r'[^\s()"=!<>~]+', value) and value.lower() not in ("and", "or", "not"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------ the old form


def _words(text: str) -> list[str]:
    """Shell-like words; a backslash is a DICOM value separator here, not an escape."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.escape, lexer.commenters = True, "", ""
    try:
        return list(lexer)
    except ValueError as exc:  # an unclosed quote
        raise TermsError(f"{text!r}: {exc}") from None


def _looks_old(word: str) -> bool:
    keyword, sep, _ = word.partition("=")
    return bool(sep) and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", keyword.strip()) is not None


def _old_form(words: list[str]) -> dict[str, str]:
    """``PatientName=DOE* StudyDate=20240101-``: DICOM keywords and C-FIND values, sent as they are."""
    keys: dict[str, str] = {}
    for word in words:
        keyword, sep, value = word.partition("=")
        keyword = keyword.strip()
        if not sep or not keyword:
            raise TermsError(f"{word!r}: expected KEYWORD=VALUE, e.g. PatientName=DOE*")
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise TermsError(f"{keyword!r} is not a DICOM keyword (e.g. PatientID, StudyDate, ModalitiesInStudy)")
        if dictionary_VR(tag) == "SQ":
            raise TermsError(f"{keyword} is a sequence; only plain attributes can be matched")
        keys[keyword] = value
    return keys


def _rewrite(keys: dict[str, str], level: str) -> tuple[str, str]:
    """The old form's keys in the query language, checked by translating it back; or why there is none."""
    parts = []
    for keyword, value in keys.items():
        keyword = _OLD_FORM_ONLY.get(keyword, keyword)
        key = _LANGUAGE_KEYS.get(keyword)
        if key is None or key.computed:
            return "", f"{keyword} is not kept in the index"
        if key.vr in _RANGED_VRS and "-" in value:
            low, _, high = value.partition("-")
            parts.extend([f"{keyword}>={low}"] * bool(low) + [f"{keyword}<={high}"] * bool(high))
        elif "\\" in value:
            alternatives = [f"{keyword}={_quoted(v)}" for v in value.split("\\") if v]
            parts.append(alternatives[0] if len(alternatives) == 1 else f"({' or '.join(alternatives)})")
        elif value:
            parts.append(f"{keyword}={_quoted(value)}")
    text = " and ".join(parts)
    try:
        _translate(ql.parse(text), level)
    except ql.QuerySyntaxError as exc:
        return "", exc.reason
    except (TermsError, _OldFormOnly) as exc:
        return "", str(exc) or "a value C-FIND alone can express"
    return text, ""
