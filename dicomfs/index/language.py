"""The archive's query language: one line of text → parameterised SQL over the index.

Terms, joined with ``and``, ``or``, ``not`` and parentheses (``not`` binds tightest, then
``and``, then ``or``; the words are case-insensitive; two terms side by side are an error)::

    Modality=PT                          attribute comparison on any DICOM keyword of query.KEYS
    StudyDate>=20240101                  = != < <= > >=; dates, times and UIDs compare as text
    StudyDate>=2024-01-01                dashes in a date are dropped (YYYY-MM-DD → YYYYMMDD)
    SeriesNumber>9                       IS/DS/US compare as numbers (10 > 9); absent values never compare
    PatientName=DOE*                     * any run, ? one character; '%' and '_' are literal
    SeriesDescription~"FDG"              case-insensitive substring, every character literal
    StudyDescription="PET/CT \\"whole\\""  quotes allow spaces and operators; \\" is a quote, \\\\ a backslash
    tag:site=Oslo  tag:reviewed  tag:site!=Oslo  tag:"long key"=x
    project:Lymphoma  project:"Trial 2*"
    has:derived
    (Modality=PT or Modality=NM) and not tag:excluded

Person names (VR PN) compare case-insensitively for = and != (ASCII letters, as SQLite's LIKE
folds them) and a name also matches the first component group of ``Yamada^Tarou=山田^太郎``.
Other text compares case-sensitively, except with ``~``. Wildcards are refused on numbers.

Semantics at a result level (patient, study, series or instance): an attribute of that level
or one above compares the joined column; an attribute of a level below matches when any
descendant matches, each comparison on its own (at study level ``Modality=PT and
SeriesNumber=2`` needs a PT series and a series 2, not necessarily the same one: query at series
level for that). ``tag:`` and ``project:`` match on the entity, an ancestor or a descendant;
``has:derived`` on the entity or a descendant (derived data hangs off studies and series, so it
never matches at instance level). ``tag:K!=V`` needs tag K set to another value; ``not tag:K=V``
is the complement of ``tag:K=V``. Every condition is true or false, never NULL, so ``not`` is
always the complement.

>>> compile_query("Modality=PT", "series").where
'se.modality = ?'
>>> print(compile_query("Modality=PT StudyDate>2024"))  # doctest: +ELLIPSIS
Traceback (most recent call last):
QuerySyntaxError: expected 'and', 'or' or end of query, found 'StudyDate' (join terms with 'and' or 'or') ...
Modality=PT StudyDate>2024
            ^
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.datadict import dictionary_VR, keyword_dict

from dicomfs.index.query import KEYS, Key, Level

if TYPE_CHECKING:
    from dicomfs.index.db import Database

__all__ = ["LEVELS", "Compiled", "QuerySyntaxError", "compile_query", "run"]

LEVELS = ("patient", "study", "series", "instance")
_TABLES = ("patients p", "studies st", "series se", "instances i")
_ALIAS = ("p", "st", "se", "i")
_PARENT = ("", "patient_id", "study_id", "series_id")  # the column naming the row one level up
_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}

_OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "~")  # two-character ones first
_WORD_END = frozenset('()"=!<>~')
_RESERVED = frozenset({"and", "or", "not"})
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_PLAIN_COLUMN = re.compile(r"(p|st|se|i)\.\w+")
_INSTEAD = {"ModalitiesInStudy": "Modality", "SOPClassesInStudy": "SOPClassUID"}
_LOWER_KEYS = {k.lower(): k for k in KEYS}


class QuerySyntaxError(ValueError):
    """A query that cannot be parsed; ``str()`` shows the query with a caret under ``position``."""

    def __init__(self, reason: str, query: str, position: int) -> None:
        self.reason, self.query, self.position = reason, query, position
        self.message = f"{reason} at position {position}"
        super().__init__(self.message)

    def __str__(self) -> str:
        shown = re.sub(r"\s", " ", self.query)  # keeps the caret aligned under tabs and newlines
        return f"{self.message}\n{shown}\n{' ' * self.position}^"


@dataclass(frozen=True)
class Compiled:
    """``SELECT {id_column} FROM {from_sql} WHERE {where}`` with ``args``: distinct entity ids."""

    level: str
    where: str
    args: list[object]
    from_sql: str
    id_column: str


def compile_query(text: str, level: str = "study") -> Compiled:
    """Parse ``text`` and compile it for entities of ``level``; raises QuerySyntaxError."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    node = _Parser(text).parse()
    compiler = _Compiler(LEVELS.index(level))
    where = "1" if node is None else compiler.sql(node)
    return Compiled(level, where, compiler.args, compiler.from_sql(), f"{_ALIAS[compiler.level]}.id")


def run(db: Database, text: str, level: str = "study", limit: int | None = None) -> list[int]:
    """Row ids of the ``level`` entities ``text`` matches, in id (arrival) order."""
    c = compile_query(text, level)
    sql = f"SELECT {c.id_column} FROM {c.from_sql} WHERE {c.where} ORDER BY {c.id_column}"
    args = list(c.args)
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [row[0] for row in db.query(sql, args)]


# --- tokens and syntax tree --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # word, string, op, (, ), end
    text: str  # a string's value, unescaped
    pos: int
    end: int


@dataclass(frozen=True, slots=True)
class _Attr:
    key: Key
    op: str
    value: str | float


@dataclass(frozen=True, slots=True)
class _Tag:
    key: str
    op: str | None  # None: the tag is set, whatever its value
    value: str = ""


@dataclass(frozen=True, slots=True)
class _Project:
    name: str


@dataclass(frozen=True, slots=True)
class _Derived:
    pass


@dataclass(frozen=True, slots=True)
class _Bool:
    op: str  # and, or, not
    terms: tuple[_Node, ...]


_Node = _Attr | _Tag | _Project | _Derived | _Bool


def _tokenize(text: str) -> list[_Token]:
    tokens, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(_Token(c, c, i, i + 1))
            i += 1
        elif c == '"':
            value, end = _quoted(text, i)
            tokens.append(_Token("string", value, i, end))
            i = end
        elif op := next((o for o in _OPERATORS if text.startswith(o, i)), None):
            tokens.append(_Token("op", op, i, i + len(op)))
            i += len(op)
        elif c == "!":
            raise QuerySyntaxError("expected '!=', found '!' (write 'not' to negate a term)", text, i)
        else:
            end = i
            while end < len(text) and text[end] not in _WORD_END and not text[end].isspace():
                end += 1
            tokens.append(_Token("word", text[i:end], i, end))
            i = end
    return [*tokens, _Token("end", "", len(text), len(text))]


def _quoted(text: str, start: int) -> tuple[str, int]:
    r"""The value of the quoted string at ``start`` and the index after it; only \" and \\ escape."""
    out, i = [], start + 1
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 2] in ('"', "\\"):
            out.append(text[i + 1])
            i += 2
        elif text[i] == '"':
            return "".join(out), i + 1
        else:
            out.append(text[i])
            i += 1
    raise QuerySyntaxError(f"expected a closing '\"' for the quote at position {start}, found end of query",
                           text, len(text))


class _Parser:
    """Recursive descent over the tokens; every check that needs a position happens here."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def parse(self) -> _Node | None:
        return None if self._peek().kind == "end" else self._or(None)

    def _peek(self) -> _Token:
        return self.tokens[self.i]

    def _take(self) -> _Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def _error(self, reason: str, tok: _Token) -> QuerySyntaxError:
        return QuerySyntaxError(reason, self.text, tok.pos)

    def _found(self, tok: _Token) -> str:
        return "end of query" if tok.kind == "end" else f"'{self.text[tok.pos:tok.end]}'"

    def _is(self, tok: _Token, word: str) -> bool:
        return tok.kind == "word" and tok.text.lower() == word

    def _or(self, opened: _Token | None) -> _Node:
        terms = [self._and(opened)]
        while self._is(self._peek(), "or"):
            self._take()
            terms.append(self._and(opened))
        return terms[0] if len(terms) == 1 else _Bool("or", tuple(terms))

    def _and(self, opened: _Token | None) -> _Node:
        terms = [self._not()]
        while True:
            tok = self._peek()
            if self._is(tok, "and"):
                self._take()
                terms.append(self._not())
                continue
            if self._is(tok, "or") or tok.kind == ("end" if opened is None else ")"):
                return terms[0] if len(terms) == 1 else _Bool("and", tuple(terms))
            if tok.kind == ")":
                raise self._error("found ')' without a matching '('", tok)
            if tok.kind == "end":
                raise self._error(f"expected ')' to close the '(' at position {opened.pos}, found end of query", tok)
            hint = "" if tok.kind == "op" else " (join terms with 'and' or 'or')"
            close = "or ')'" if opened else "or end of query"
            raise self._error(f"expected 'and', 'or' {close}, found {self._found(tok)}{hint}", tok)

    def _not(self) -> _Node:
        if self._is(self._peek(), "not"):
            self._take()
            return _Bool("not", (self._not(),))
        tok = self._peek()
        if tok.kind == "(":
            self._take()
            node = self._or(tok)
            self._take()  # the ')' that _and stopped at
            return node
        if tok.kind != "word" or tok.text.lower() in _RESERVED:
            after = f" after '{self.tokens[self.i - 1].text}'" if self.i else ""
            raise self._error(f"expected a term{after}, found {self._found(tok)}", tok)
        self._take()
        if ":" in tok.text:
            return self._prefixed(tok)
        return self._attribute(tok, self._key(tok))

    def _key(self, tok: _Token) -> Key:
        keyword = tok.text if tok.text in KEYS else _LOWER_KEYS.get(tok.text.lower(), "")
        key = KEYS.get(keyword)
        if key is not None and _PLAIN_COLUMN.fullmatch(key.sql):
            return key
        if key is not None:
            instead = f" (use {_INSTEAD[keyword]}: it matches when any one does)" if keyword in _INSTEAD else ""
            raise self._error(f"{keyword} is computed from other rows and cannot be queried{instead}", tok)
        if tok.text in keyword_dict and dictionary_VR(keyword_dict[tok.text]) == "SQ":
            raise self._error(f"{tok.text} is a sequence (VR SQ) and cannot be queried", tok)
        close = difflib.get_close_matches(tok.text.lower(), _LOWER_KEYS, n=1, cutoff=0.6)
        hint = f" (did you mean {_LOWER_KEYS[close[0]]}?)" if close else ""
        what = "is not kept in the index" if tok.text in keyword_dict else "is not a keyword this query knows"
        raise self._error(f"'{tok.text}' {what}{hint}", tok)

    def _attribute(self, tok: _Token, key: Key) -> _Attr:
        op = self._take()
        if op.kind != "op":
            raise self._error(f"expected an operator (=, !=, <, <=, >, >=, ~) after '{tok.text}', "
                              f"found {self._found(op)}", op)
        value_tok, value = self._value(op)
        if key.vr not in _NUMERIC_VRS:
            if key.vr in ("DA", "DT") and re.fullmatch(r"\d{4}-\d\d(-\d\d)?", value):
                value = value.replace("-", "")
            return _Attr(key, op.text, value)
        if op.text == "~" or not _NUMBER.fullmatch(value):
            what = "an operator other than '~'" if op.text == "~" else f"a number after '{op.text}'"
            raise self._error(f"expected {what} for {tok.text} (VR {key.vr}), found {self._found(value_tok)}",
                              op if op.text == "~" else value_tok)
        return _Attr(key, op.text, float(value))

    def _value(self, op: _Token) -> tuple[_Token, str]:
        tok = self._take()
        if tok.kind == "string" or (tok.kind == "word" and tok.text.lower() not in _RESERVED):
            return tok, tok.text
        quote = " (quote it to use it as a value)" if tok.kind == "word" else ""
        raise self._error(f"expected a value after '{op.text}', found {self._found(tok)}{quote}", tok)

    def _prefixed(self, tok: _Token) -> _Node:
        prefix, _, name = tok.text.partition(":")
        prefix = prefix.lower()
        nxt = self._peek()
        if not name and nxt.kind == "string" and nxt.pos == tok.end and prefix in ("tag", "project"):
            name = self._take().text  # tag:"long key", project:"Trial 2"
        if prefix == "has":
            if name.lower() != "derived":
                raise self._error(f"expected has:derived, found '{tok.text}'", tok)
            return _Derived()
        if prefix not in ("tag", "project"):
            raise self._error(f"unknown prefix '{prefix}:'; expected tag:, project: or has:", tok)
        if not name:
            what = "a tag key" if prefix == "tag" else "a project name"
            raise self._error(f"expected {what} after '{prefix}:', found {self._found(self._peek())}", self._peek())
        if prefix == "project":
            return _Project(name)
        if self._peek().kind != "op":
            return _Tag(name, None)
        op = self._take()
        return _Tag(name, op.text, self._value(op)[1])


# --- SQL -------------------------------------------------------------------------------------


def _like(value: str) -> str:
    """``value`` as a LIKE pattern that matches it literally (used with ESCAPE '\\')."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _compare(col: str, vr: str, op: str, value: str | float) -> tuple[str, list[object]]:
    """One comparison of a column; never NULL, so that NOT is the complement."""
    if vr in _NUMERIC_VRS:  # text columns hold numbers as received; '' and NULL are absent
        return f"coalesce(trim({col}) != '' AND CAST({col} AS REAL) {op} ?, 0)", [value]
    assert isinstance(value, str)
    if op == "~":
        return f"{col} LIKE ? ESCAPE '\\'", [f"%{_like(value)}%"]
    if op not in ("=", "!="):
        return f"({col} != '' AND {col} {op} ?)", [value]  # an absent date is not before every date
    negate = "NOT " if op == "!=" else ""
    if vr == "PN":  # LIKE folds case; the second pattern matches the first component group
        pattern = _like(value).replace("*", "%").replace("?", "_")
        alone = "" if "=" in value else f" OR {col} LIKE ? ESCAPE '\\'"
        return f"{negate}({col} LIKE ? ESCAPE '\\'{alone})", [pattern] + ([] if "=" in value else [pattern + "=%"])
    if "*" in value or "?" in value:  # GLOB: case-sensitive, '%' and '_' are plain characters
        return f"{negate}({col} GLOB ?)", [value.replace("[", "[[]")]
    return f"{col} {op} ?", [value]


@dataclass
class _Compiler:
    """Compiles a tree for one result level; joins only the ancestors the conditions use."""

    level: int
    args: list[object] = field(default_factory=list)
    top: int = -1  # the highest ancestor whose table must be joined

    def __post_init__(self) -> None:
        self.top = self.level

    def from_sql(self) -> str:
        joins = [_TABLES[self.level]]
        for up in range(self.level - 1, self.top - 1, -1):
            joins.append(f"JOIN {_TABLES[up]} ON {_ALIAS[up]}.id = {_ALIAS[up + 1]}.{_PARENT[up + 1]}")
        return " ".join(joins)

    def sql(self, node: _Node) -> str:
        match node:
            case _Bool("not", (term,)):
                return f"NOT ({self.sql(term)})"
            case _Bool(op, terms):
                return "(" + f" {op.upper()} ".join(self.sql(t) for t in terms) + ")"
            case _Attr(key, op, value):
                depth = _DEPTH[key.level]
                cond, args = _compare(key.sql, key.vr, op, value)
                self.args.extend(args)
                if depth <= self.level:
                    self.top = min(self.top, depth)
                    return cond
                return self._below(depth, cond)
            case _Tag(key, op, value):
                cond, args = ("1", []) if op is None else _compare("value", "LO", op, value)
                return self._related("tags", f"key = ? AND {cond}", [key, *args], range(4), ancestors=True)
            case _Project(name):
                cond, args = _compare("name", "LO", "=", name)
                where = f"project_id IN (SELECT id FROM projects WHERE {cond})"
                return self._related("project_members", where, args, range(3), ancestors=True)
            case _Derived():
                return self._related("derived", "1", [], range(1, 3), ancestors=False)
        raise AssertionError(node)

    def _below(self, depth: int, cond: str) -> str:
        """Some descendant at ``depth`` satisfies ``cond`` (which uses that level's aliases)."""
        first = self.level + 1
        chain = [_TABLES[first]]
        chain += [f"JOIN {_TABLES[d]} ON {_ALIAS[d]}.{_PARENT[d]} = {_ALIAS[d - 1]}.id" for d in range(first + 1, depth + 1)]
        return (f"EXISTS (SELECT 1 FROM {' '.join(chain)} "
                f"WHERE {_ALIAS[first]}.{_PARENT[first]} = {_ALIAS[self.level]}.id AND {cond})")

    def _related(self, table: str, where: str, args: list[object], levels: range, *, ancestors: bool) -> str:
        """Rows of ``table`` (level, entity_id, ...) naming the entity, an ancestor or a descendant.

        Each level's ids come from a subquery that does not depend on the outer row, so SQLite
        computes it once from the table's own indexes and probes it per entity.
        """
        terms = []
        for depth in levels:
            if depth < self.level and not ancestors:
                continue
            ids = f"SELECT entity_id FROM {table} WHERE level = '{LEVELS[depth]}' AND {where}"
            self.args.extend(args)
            if depth == self.level:
                terms.append(f"{_ALIAS[depth]}.id IN ({ids})")
            elif depth < self.level:  # the ancestor's id is the parent column of the level below it
                self.top = min(self.top, depth + 1)
                terms.append(f"{_ALIAS[depth + 1]}.{_PARENT[depth + 1]} IN ({ids})")
            else:
                terms.append(self._below(depth, f"{_ALIAS[depth]}.id IN ({ids})"))
        return "(" + " OR ".join(terms) + ")" if terms else "0"
