"""Study Root C-FIND at any level, from any peer: one relational query, or a walk of the hierarchy.

A strict peer (dicomfs's own node, many PACS) answers hierarchical queries only (PS3.4
C.4.1.2.1): a SERIES query must name its study, an IMAGE query its study and series, and
keys above the query level other than those unique keys are not allowed. ``search`` asks
for relational queries in the association (extended negotiation, PS3.4 C.5.1.1.1); where
the peer declines, it walks: the studies that match the study keys, then in each the
series that match the series keys, then the instances, all on one association. Each
answer carries the values its ancestors' answers returned, as a relational answer would.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pydicom.dataset import Dataset

from dicomfs.config import RemoteNode
from dicomfs.index.cfind import KEYS, Level
from dicomfs.net import scu

__all__ = ["UNIQUE", "level_of", "search"]

log = logging.getLogger(__name__)

UNIQUE = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_DEPTH = {"STUDY": 0, "SERIES": 1, "IMAGE": 2}


def level_of(keyword: str, query_level: str) -> str:
    """The Study Root level an attribute belongs to (patient attributes are study level there);
    attributes the standard puts at no level are asked at the query level."""
    key = KEYS.get(keyword)
    if key is None:
        return query_level
    level = "STUDY" if key.level in (Level.PATIENT, Level.STUDY) else key.level.value
    return level if _DEPTH[level] < _DEPTH[query_level] else query_level


def search(remote: RemoteNode, level: str, keys: dict[str, str], *, calling_ae: str, timeout: float,
           levels: Mapping[str, str] | None = None) -> list[Dataset]:
    """The answers to a Study Root C-FIND at ``level`` with ``keys`` on any level up to it.

    ``keys``: keyword → match value, ``""`` to have it returned. ``levels``: the level of
    attributes the standard's keys do not place (the query language knows more). With a
    relational peer one request; otherwise one per study (and series) the upper keys match.
    """
    if level not in _DEPTH:
        raise ValueError(f"query level must be one of {', '.join(_DEPTH)}, not {level!r}")
    with scu.finder(remote, calling_ae=calling_ae, timeout=timeout) as finder:
        if level == "STUDY" or finder.relational:
            return finder.find(level, keys)
        answers = _walk(finder, level, keys, levels or {})
        log.debug("remote %s: %s query walked in %d C-FIND requests", remote.name, level, finder.requests)
        return answers


def _walk(finder: scu.Finder, level: str, keys: dict[str, str], levels: Mapping[str, str]) -> list[Dataset]:
    by_level: dict[str, dict[str, str]] = {name: {} for name in _DEPTH}
    for keyword, value in keys.items():
        at = levels.get(keyword) or level_of(keyword, level)
        by_level[at if _DEPTH[at] <= _DEPTH[level] and keyword != "SpecificCharacterSet" else level][keyword] = value
    charset = {"SpecificCharacterSet": keys["SpecificCharacterSet"]} if "SpecificCharacterSet" in keys else {}
    parents = [Dataset()]
    for name in list(_DEPTH)[:_DEPTH[level] + 1]:
        own, unique = by_level[name], UNIQUE[name]
        answers: list[Dataset] = []
        for parent in parents:
            above = {UNIQUE[upper]: str(parent[UNIQUE[upper]].value) for upper in list(_DEPTH)[:_DEPTH[name]]}
            if name != level and _names_one(own, unique):
                known = Dataset()  # the upper entity is named: no need to ask for it
                for keyword, value in {**above, unique: own[unique]}.items():
                    setattr(known, keyword, value)
                answers.append(known)
                continue
            for answer in finder.find(name, {**charset, **above, **own, unique: own.get(unique, "")}):
                if unique in answer and answer[unique].value:
                    answers.append(_inherit(answer, parent))
        parents = answers
    return parents


def _names_one(own: dict[str, str], unique: str) -> bool:
    """The keys of a level are its unique key alone, with one UID: nothing to match or return."""
    value = own.get(unique, "")
    return set(own) == {unique} and bool(value) and "\\" not in value and "*" not in value and "?" not in value


def _inherit(answer: Dataset, parent: Dataset) -> Dataset:
    """``answer`` with the values its parent's answer returned that it has not (decoded first:
    the two may come in different character sets)."""
    answer.decode()
    for element in parent:
        if element.tag not in answer and element.keyword != "SpecificCharacterSet":
            answer.add(element)
    return answer
