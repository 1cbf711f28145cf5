"""``patient.json``, ``study.json`` and ``series.json``: a level's attributes and its children.

Keys are DICOM keywords (``PatientName``, ``NumberOfStudyRelatedInstances``…) so that
``jq .StudyDescription study.json`` reads naturally; children carry their folder or file
name in the mount, so a script can walk from a summary to the files it lists.
"""

from __future__ import annotations

import json
from typing import Any

# One encoder, reused: json.dumps with options builds a new one per call (a series has thousands).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


def summary_json(level: str, attributes: dict[str, Any], children_key: str, children: list[dict[str, Any]]) -> bytes:
    """Serialise a summary: one top-level key per line, children one per line, UTF-8."""
    lines = [f'"Level": {_ENCODE(level)}']
    lines += [f"{_ENCODE(k)}: {_ENCODE(v)}" for k, v in attributes.items()]
    body = ",\n".join(map(_ENCODE, children))
    lines.append(f'{json.dumps(children_key)}: [' + (f"\n{body}\n" if children else "") + "]")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")
