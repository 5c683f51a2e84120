"""The keys an export compares studies by: what a study says, what billing acts on, what an
evaluation saw.

* :func:`content_fingerprint` -- what the study record says (not the verdicts, not when its
  objects arrived, not the file it was read from): a study whose fingerprint differs from the
  one last submitted is submitted again. The one content hash of the export (``p1:`` + 32 hex
  digits); the JSON-based form earlier versions stored is read by :mod:`.legacy` only.
* :func:`flags_key` -- the billing row's codes and the keys they are filed under (not the
  wording of its reasons).
* :func:`input_key` -- the record as read and the rules: a study whose input key is the one
  recorded when it was last settled needs no evaluation to know it has nothing to send.
  The rules' part is :attr:`.rules.Rules.key` (the loaded rules and the evaluation code's
  revision; comments and refactoring keep it).

Values are serialised with pickle without its memo (the bytes depend on the values only, not
on which objects happen to be shared), several times faster than JSON; field order is fixed
by the record model, so no key sorting is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from typing import Any

FINGERPRINT_PREFIX = "p1:"

#: Fields of an evaluated study that are derived from the record by the rules, or volatile.
NOT_CONTENT = frozenset({"completeness", "classification", "flags", "export", "source_file"})


def content(d: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluated study ``d`` that is the record's content."""
    core = {k: v for k, v in d.items() if k not in NOT_CONTENT}
    core["dose_objects"] = [
        {k: v for k, v in o.items() if k != "received_at"} for o in d.get("dose_objects") or ()
    ]
    return core


def content_fingerprint(d: dict[str, Any]) -> str:
    """Hash of what the evaluated study ``d`` says (see the module docstring)."""
    return FINGERPRINT_PREFIX + hashlib.sha256(value_bytes(content(d))).hexdigest()[:32]


def input_key(d: dict[str, Any], rules_key: str) -> str:
    """Key of everything an evaluation of the record ``d`` (= ``record.to_dict()``) sees."""
    return hashlib.sha256(rules_key.encode("ascii") + value_bytes(d)).hexdigest()[:32]


def flags_key(row: dict[str, Any]) -> str:
    """What billing acts on in a flags row: the codes and the keys they are filed under."""
    blob = "\x1f".join("\x1e" if v is None else str(v) for k, v in row.items() if k != "reasons")
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def json_text(value: Any) -> str:
    """Compact JSON of plain values (anything else as ``str``)."""
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"), check_circular=False,
                      allow_nan=False)


def value_bytes(value: Any) -> bytes:
    """The bytes of a plain value (pickle without memo; JSON for what pickle refuses)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=5)
    pickler.fast = True  # no memo: equal values give equal bytes
    try:
        pickler.dump(value)
        return buf.getvalue()
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        return json_text(value).encode("utf-8")
