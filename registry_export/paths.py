"""Study-record paths of the registry profile (docs/registry-profile.md, "Paths").

A path names an element of the typed :class:`dosereg.extract.StudyRecord` with dots, ``[]``
for every item of a list (``events[].sources[].kvp_kV``). The record's field names are the
JSON keys of docs/study-record.md, so a path reads the same on the JSON form and on the
typed record. :func:`check_path` checks a path against the model when a profile is read;
:func:`value_at` and :func:`instances` walk it on a record.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from dosereg.conf.config import ConfigError
from dosereg.extract import (
    Code,
    DoseCheck,
    DoseObjectRef,
    Equipment,
    Event,
    Patient,
    Problem,
    ReportInfo,
    Source,
    StudyRecord,
)

__all__ = ["TYPES", "check_field", "check_path", "instances", "stated", "value_at"]

_CODE_FIELDS = {"target_region", "acquisition_type_code", "procedure_context", "phantom_code",
                "procedure_reported", "has_intent", "source_of_dose_information"}
# (class, field) -> (nested class, is a list)
_NESTED: dict[tuple[type, str], tuple[type, bool]] = {
    (StudyRecord, "patient"): (Patient, False),
    (StudyRecord, "equipment"): (Equipment, False),
    (StudyRecord, "report"): (ReportInfo, False),
    (StudyRecord, "events"): (Event, True),
    (StudyRecord, "dose_objects"): (DoseObjectRef, True),
    (StudyRecord, "dose_screens"): (DoseObjectRef, True),
    (StudyRecord, "procedure_codes"): (Code, True),
    (StudyRecord, "problems"): (Problem, True),
    (Event, "sources"): (Source, True),
    (Event, "dose_check"): (DoseCheck, False),
}
for _cls in (Event, ReportInfo):
    for _f in fields(_cls):
        if _f.name in _CODE_FIELDS:
            _NESTED[(_cls, _f.name)] = (Code, False)

_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\[\])?$")
TYPES = ("present", "text", "number", "integer", "date", "time", "enum", "uid", "code", "list")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def check_path(path: str, where: str) -> tuple[type, bool]:
    """Validate a study-record path against the model; return (class of the first list
    item the path descends into, or StudyRecord; whether the path descends into a list)."""
    cls: type | None = StudyRecord
    context: type = StudyRecord
    in_list = False
    segments = path.split(".")
    for i, seg in enumerate(segments):
        m = _SEGMENT.match(seg)
        if not m:
            raise ConfigError(f"{where}: {path!r} is not a study-record path (bad segment {seg!r})")
        name, brackets = m.group(1), bool(m.group(2))
        if cls is None or name not in _field_names(cls):
            known = ", ".join(sorted(_field_names(cls))) if cls is not None else "none"
            raise ConfigError(f"{where}: {path!r}: unknown element {name!r} (known here: {known})")
        nested = _NESTED.get((cls, name))
        last = i == len(segments) - 1
        if brackets and not (nested and nested[1]):
            raise ConfigError(f"{where}: {path!r}: {name!r} is not a list, so '[]' does not apply")
        if nested and nested[1] and not brackets and not last:
            raise ConfigError(f"{where}: {path!r}: {name!r} is a list; write {name}[] to address its items")
        if brackets and not in_list:
            context = nested[0] if nested else StudyRecord
            in_list = True
        cls = nested[0] if nested else None
    return context, in_list


def check_field(dotted: str, cls: type, where: str) -> None:
    cur: type | None = cls
    for name in dotted.split("."):
        if cur is None or name not in _field_names(cur):
            raise ConfigError(f"{where}: condition refers to unknown element {dotted!r}")
        nested = _NESTED.get((cur, name))
        cur = nested[0] if nested and not nested[1] else None


def value_at(node: object, names: tuple[str, ...]) -> Any:
    """The value at ``names`` (a path split at the dots, no ``[]``) below ``node``; None where
    a step is absent. Paths are checked against the model when the profile is read, so each
    name is a field of the record found there; a value that is not a record (None, text, a
    number, a list) has none of the model's field names and yields None."""
    for name in names:
        node = getattr(node, name, None)
    return node


def instances(node: object, segments: list[str], prefix: str) -> Iterator[tuple[str, Any, bool]]:
    """(concrete path, value, found) for a path with ``[]`` segments, below ``node``.

    A nested list that is empty yields its unexpanded path as absent; the events list
    itself yields nothing when empty (the profile's ``events`` element covers that).
    """
    if not segments:
        yield prefix, node, True
        return
    seg, rest = segments[0], segments[1:]
    listed = seg.endswith("[]")
    name = seg[:-2] if listed else seg
    child = getattr(node, name, None)
    here = f"{prefix}.{name}" if prefix else name
    if not listed:
        yield from instances(child, rest, here)
        return
    items = child if isinstance(child, (list, tuple)) else ()
    if not items:
        if prefix:  # nested list (e.g. events[2].sources): absent
            yield ".".join([f"{here}[]", *rest]), None, False
        return
    for i, item in enumerate(items):
        yield from instances(item, rest, f"{here}[{i}]")


def stated(value: Any) -> Any:
    """A value of the record as the JSON study record states it (docs/study-record.md): a
    record (a coded concept, a source) as its ``to_dict``, a list as a list. Reasons quote
    values in this form, and conditions compare it as text."""
    if isinstance(value, (list, tuple)):
        return [stated(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if to_dict is not None else value
