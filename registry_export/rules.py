"""Registry rules: completeness, classification and billing flags (docs/registry-profile.md).

Pure functions of (study record, configured rules). The catalog stores extracted records
only; verdicts are computed whenever a record is read (``extract``, ``studies``,
``export``), so editing the registry profile or the nomenclature table takes effect on the
next read without re-importing anything. Nothing is cached between calls of
:func:`rules_from_config`.

* :func:`rules_from_config` -- reads the registry profile (``cfg.profile_path``, TOML) and
  the nomenclature table (``cfg.nomenclature_table``, CSV) into :class:`Rules`; mistakes in
  either are :class:`dosereg.conf.config.ConfigError` naming the file and the key or line.
* :func:`evaluate` -- one record -> :class:`Evaluation` (completeness, classification,
  flags, one timing-run verdict per event).
* :func:`evaluated_dict` -- the contract's JSON study record with the verdicts filled in.
* :func:`without_implausible` -- a copy of an evaluated record with null at each implausible
  value, for the registry files.

Profile format (``conf/registry_profiles/acr-dir.toml`` documents it in full)::

    name = "acr-dir"
    version = "2026.1"
    [[required]]                      # or [[recommended]], [[optional]]
    path = "events[].ctdivol_mGy"     # study-record path; [] = every item; a|b = any of
    when = "acquisition_type != constant_angle"   # optional condition
    type = "number"                   # present | text | number | integer | date | time |
    unit = "mGy"                      #   enum | uid | code | list
    min = 0                           # inclusive range (numbers; dates: "1880-01-01",
    max = 10000                       #   "today + 1 day", "study_date"), values (enum),
                                      #   min_items (list)

Missing or invalid **required** elements make the study ``incomplete``; recommended ones
only add warnings; ``[[optional]]`` elements are checked only when present (an invalid
value warns, an absent one says nothing). Every reason names the element path and, for
events, the event's protocol and Irradiation Event UID. Event indexes are 0-based, as in the
JSON ``events`` array and in the extractor's ``problems``.

Plausibility (docs/registry-profile.md and 6): the profile's ranges are physical limits. A number
outside its range or not finite, and a date outside its bounds (``min``/``max`` of a date
are ISO dates, ``today [+|- N days]`` or another study-level date element such as
``study_date``), is *implausible*: invalid like any invalid element, and listed in
``completeness.implausible`` (:attr:`Completeness.implausible`) at every level, so that
:func:`without_implausible` can give the registry files null in its place while the record
keeps the stated value.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fnmatch
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, TypeVar

from dosereg.conf.config import Config, ConfigError, NonPatientSettings, NotificationSettings, read_toml
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

from .dosimetry import is_timing_run

__all__ = [
    "Classification", "Completeness", "Condition", "ElementRule", "Evaluation", "Flags",
    "DateBound", "InvalidElement", "Nomenclature", "NomenclatureEntry", "Profile", "RtPlanningRules", "Rules",
    "evaluate", "evaluated_dict", "load_nomenclature", "load_profile", "rules_from_config", "without_implausible",
]

# ----------------------------------------------------------------------------------------
# The study-record model as the profile may address it
# ----------------------------------------------------------------------------------------

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


def _check_path(path: str, where: str) -> tuple[type, bool]:
    """Validate a study-record path against the model; return (class of the first list
    item the path descends into, or StudyRecord; whether the path descends into a list)."""
    cls: type = StudyRecord
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
        cls = nested[0] if nested else None  # type: ignore[assignment]
    return context, in_list


def _check_field(dotted: str, cls: type, where: str) -> None:
    cur: type | None = cls
    for name in dotted.split("."):
        if cur is None or name not in _field_names(cur):
            raise ConfigError(f"{where}: condition refers to unknown element {dotted!r}")
        nested = _NESTED.get((cur, name))
        cur = nested[0] if nested and not nested[1] else None


# ----------------------------------------------------------------------------------------
# Conditions ("acquisition_type != constant_angle and pitch_factor > 1")
# ----------------------------------------------------------------------------------------

_CLAUSE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(==|!=|<=|>=|<|>|not\s+in\b|in\b)\s*(.+?)\s*$", re.IGNORECASE)


def _literal(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("null", "none"):
        return None
    return text


@dataclass(frozen=True)
class Clause:
    field: str
    op: str
    values: tuple[Any, ...]

    def holds(self, ctx: Mapping[str, Any]) -> bool:
        actual = ctx.get(self.field) if "." not in self.field else _get(ctx, self.field)
        if self.op in ("in", "not in"):
            found = any(_equal(actual, v) for v in self.values)
            return found if self.op == "in" else not found
        expected = self.values[0]
        if self.op == "==":
            return _equal(actual, expected)
        if self.op == "!=":
            return not _equal(actual, expected)
        if not _is_number(actual):
            return False  # an ordering comparison on an absent value does not hold
        value, limit = float(actual), float(expected)  # type: ignore[arg-type]
        if self.op == "<":
            return value < limit
        if self.op == "<=":
            return value <= limit
        if self.op == ">":
            return value > limit
        return value >= limit


@dataclass(frozen=True)
class Condition:
    """Clauses joined by ``and``; evaluated on the event (paths under ``events[]``) or the record."""

    text: str
    clauses: tuple[Clause, ...]

    def holds(self, ctx: Mapping[str, Any]) -> bool:
        return self.test(ctx)

    @cached_property
    def test(self) -> Callable[[Mapping[str, Any]], bool]:
        """:meth:`holds` compiled: a one-clause equality on a top-level text field (the usual
        "acquisition_type != constant_angle") compares directly; anything else goes clause by clause."""
        if len(self.clauses) == 1:
            c = self.clauses[0]
            if c.op in ("==", "!=") and "." not in c.field and isinstance(c.values[0], str):
                name, expected, equal = c.field, c.values[0], c.op == "=="

                def text_equality(ctx: Mapping[str, Any]) -> bool:
                    actual = ctx.get(name)
                    same = actual == expected if actual.__class__ is str else _equal(actual, expected)
                    return same if equal else not same

                return text_equality
        clauses = self.clauses
        return lambda ctx: all(c.holds(ctx) for c in clauses)

    @classmethod
    def parse(cls, text: str, context: type, where: str) -> Condition:
        clauses = []
        for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
            m = _CLAUSE.match(part)
            if not m:
                raise ConfigError(
                    f"{where}: cannot read condition {part!r} (write e.g. 'acquisition_type != constant_angle', "
                    "'acquisition_type in [spiral, sequenced]', 'pitch_factor > 1', joined by 'and')"
                )
            name, op, rhs = m.group(1), re.sub(r"\s+", " ", m.group(2).lower()), m.group(3)
            _check_field(name, context, where)
            if op in ("in", "not in"):
                inner = rhs.strip()
                if inner.startswith("[") and inner.endswith("]"):
                    inner = inner[1:-1]
                values = tuple(_literal(v) for v in inner.split(",") if v.strip())
                if not values:
                    raise ConfigError(f"{where}: condition {part!r} lists no values")
            else:
                values = (_literal(rhs),)
                if op in ("<", "<=", ">", ">="):
                    try:
                        float(values[0])
                    except (TypeError, ValueError):
                        raise ConfigError(f"{where}: condition {part!r} compares with a non-number") from None
            clauses.append(Clause(name, op, values))
        return cls(text.strip(), tuple(clauses))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _equal(actual: Any, expected: Any) -> bool:
    if expected is None:
        return actual is None
    if actual is None:
        return False
    if _is_number(actual):
        try:
            return float(actual) == float(expected)
        except (TypeError, ValueError):
            return False
    if isinstance(actual, bool):
        return str(actual).lower() == str(expected).lower()
    return str(actual) == str(expected)


def _get(ctx: Mapping[str, Any] | None, dotted: str) -> Any:
    cur: Any = ctx
    for name in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(name)
    return cur


# ----------------------------------------------------------------------------------------
# Profile
# ----------------------------------------------------------------------------------------

_ELEMENT_KEYS = {"path", "when", "type", "unit", "min", "max", "values", "min_items", "note"}
LEVELS = ("required", "recommended", "optional")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TODAY = re.compile(r"^today(?:\s*([+-])\s*(\d{1,5})\s*days?)?$", re.IGNORECASE)


@dataclass(frozen=True)
class DateBound:
    """A bound of a date element: a fixed date, today (local) with an offset in days, or the
    value of another study-level date element of the same record (``study_date``)."""

    text: str  # as written in the profile
    fixed: str | None = None  # YYYY-MM-DD
    today_offset: int | None = None  # days after today
    ref: tuple[str, ...] = ()  # the other element's path, split at the dots

    def resolve(self, d: Mapping[str, Any]) -> str | None:
        """The bound as YYYY-MM-DD for record ``d``, or None when it does not apply (the
        referenced element is absent or not a date)."""
        if self.fixed is not None:
            return self.fixed
        if self.today_offset is not None:
            return _today_iso(self.today_offset)
        value: Any = d
        for name in self.ref:
            value = value.get(name) if isinstance(value, dict) else None
        return value if isinstance(value, str) and _ISO_DATE.match(value) else None

    def label(self, resolved: str) -> str:
        """The bound in a reason: the date itself, or what it stands for and its date."""
        return resolved if self.fixed is not None else f"{self.text} ({resolved})"

    @classmethod
    def parse(cls, raw: Any, where: str, key: str) -> DateBound:
        if not isinstance(raw, (str, _dt.date)) or isinstance(raw, _dt.datetime):
            raise ConfigError(f"{where}: {key} of a date must be a date (YYYY-MM-DD), 'today', "
                              f"'today + N days' or a study-level date element, not {raw!r}")
        text = raw.isoformat() if isinstance(raw, _dt.date) else " ".join(raw.split())
        if _ISO_DATE.match(text):
            try:
                _dt.date.fromisoformat(text)
            except ValueError:
                raise ConfigError(f"{where}: {key} {text!r} is not a calendar date") from None
            return cls(text, fixed=text)
        m = _TODAY.match(text)
        if m:
            days = int(m.group(2) or 0) * (-1 if m.group(1) == "-" else 1)
            return cls(text, today_offset=days)
        _, in_list = _check_path(text, f"{where}: {key}")
        if in_list or "|" in text:
            raise ConfigError(f"{where}: {key} {text!r}: a date bound refers to one study-level element")
        return cls(text, ref=tuple(text.split(".")))


def _today() -> _dt.date:
    """Today's local date: study dates are local (tests replace this function)."""
    return _dt.date.today()


# [monotonic time after which to re-read the clock, {offset in days: YYYY-MM-DD}]
_today_cache: list[Any] = [-math.inf, {}]


def _today_iso(offset: int) -> str:
    """``_today() + offset`` days as YYYY-MM-DD, re-read at most every 10 s: evaluation runs
    per record, and reading the clock costs more than the comparison it serves."""
    now = time.monotonic()
    if now >= _today_cache[0]:
        _today_cache[:] = [now + 10.0, {}]
    dates: dict[int, str] = _today_cache[1]
    found = dates.get(offset)
    if found is None:
        found = dates[offset] = (_today() + _dt.timedelta(days=offset)).isoformat()
    return found


@dataclass(frozen=True)
class ElementRule:
    """One required or recommended element of the registry profile."""

    path: str  # as written in the profile, e.g. "equipment.serial_number|equipment.station_name"
    alternatives: tuple[str, ...]  # the any-of alternatives (one for a plain path)
    required: bool
    type: str = "present"
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    min_items: int = 1
    when: Condition | None = None
    note: str | None = None
    in_events: bool = False  # the path addresses every event ("events[]...")
    optional: bool = False  # [[optional]]: checked when present, never missing
    date_min: DateBound | None = None  # bounds of a date element (type "date")
    date_max: DateBound | None = None

    @property
    def level(self) -> str:
        return "required" if self.required else "optional" if self.optional else "recommended"

    def describe(self) -> str:
        """The validity rule in words (for reports): "number, 0..10000 mGy"."""
        parts = [self.type]
        if self.values:
            parts.append("one of " + ", ".join(self.values))
        if self.min is not None or self.max is not None:
            parts.append(_range_text(self))
        elif self.date_min is not None or self.date_max is not None:
            lo = "" if self.date_min is None else self.date_min.text
            hi = "" if self.date_max is None else self.date_max.text
            parts.append(f"{lo}..{hi}")
        elif self.unit:
            parts.append(self.unit)
        if self.when:
            parts.append(f"when {self.when.text}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Profile:
    """A registry profile: which elements a submission needs (required) or should have."""

    name: str
    version: str
    description: str
    path: Path
    required: tuple[ElementRule, ...]
    recommended: tuple[ElementRule, ...]
    optional: tuple[ElementRule, ...] = ()

    @property
    def elements(self) -> tuple[ElementRule, ...]:
        return self.required + self.recommended + self.optional

    @cached_property
    def checks(self) -> tuple[Callable[..., None], ...]:
        """The elements compiled into checks (evaluation order), once per loaded profile.

        Consecutive event elements share one check (one pass over the events, see
        :func:`_compile_event_run`), and so do consecutive optional study numbers; the output
        is the same as one check per element.
        """
        checks: list[_Check] = []
        run: list[ElementRule] = []
        run_kind: str | None = None
        for rule in self.elements:
            kind = _fusion(rule)
            if run and kind != run_kind:
                checks.append(_compile_run(run_kind, run))
                run = []
            if kind is None:
                checks.append(_compile_rule(rule))
            else:
                run.append(rule)
                run_kind = kind
        if run:
            checks.append(_compile_run(run_kind, run))
        return tuple(checks)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)


def _element(raw: Any, level: str, where: str) -> ElementRule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table with at least a path, not {raw!r}")
    path = raw.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: path must be a non-empty string, not {path!r}")
    path = path.strip()
    where = f"{where} (path {path!r})"
    unknown = set(raw) - _ELEMENT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_ELEMENT_KEYS))})")
    alternatives = tuple(p.strip() for p in path.split("|"))
    contexts = [_check_path(p, where) for p in alternatives]
    in_events = contexts[0][1]
    if len(alternatives) > 1 and any(c[1] for c in contexts):
        raise ConfigError(f"{where}: any-of paths ('|') are supported for study-level elements only")
    if in_events and not alternatives[0].startswith("events[]"):
        raise ConfigError(f"{where}: list items can be addressed under events[] only")
    typ = raw.get("type", "present")
    if typ not in TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}, not {typ!r}")
    unit = raw.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise ConfigError(f"{where}: unit must be a string, not {unit!r}")
    if typ == "date":
        lo = hi = None
        date_lo, date_hi = _date_bounds(raw, where, study_level=not in_events and len(alternatives) == 1)
    else:
        (lo, hi), date_lo, date_hi = _number_bounds(raw, typ, where), None, None
    values = _enum_values(raw, typ, where)
    min_items = raw.get("min_items", 1)
    if isinstance(min_items, bool) or not isinstance(min_items, int) or min_items < 0:
        raise ConfigError(f"{where}: min_items must be a whole number >= 0, not {min_items!r}")
    when_text = raw.get("when")
    when = None
    if when_text is not None:
        if not isinstance(when_text, str) or not when_text.strip():
            raise ConfigError(f"{where}: when must be a condition string, not {when_text!r}")
        when = Condition.parse(when_text, contexts[0][0], f"{where}: when")
    note = raw.get("note")
    if note is not None and not isinstance(note, str):
        raise ConfigError(f"{where}: note must be a string")
    return ElementRule(path, alternatives, level == "required", typ, unit, lo, hi, values, min_items, when,
                       note, in_events, level == "optional", date_lo, date_hi)


def _number_bounds(raw: dict[str, Any], typ: str, where: str) -> tuple[float | None, float | None]:
    lo = _number(raw["min"], where, "min") if "min" in raw else None
    hi = _number(raw["max"], where, "max") if "max" in raw else None
    if (lo is not None or hi is not None) and typ not in ("number", "integer"):
        raise ConfigError(f"{where}: min/max apply to type number, integer or date, not {typ!r}")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{where}: min {lo:g} is above max {hi:g}")
    return lo, hi


def _date_bounds(raw: dict[str, Any], where: str, study_level: bool) -> tuple[DateBound | None, DateBound | None]:
    lo = DateBound.parse(raw["min"], where, "min") if "min" in raw else None
    hi = DateBound.parse(raw["max"], where, "max") if "max" in raw else None
    if (lo or hi) and not study_level:
        raise ConfigError(f"{where}: min/max of a date apply to study-level elements only (one path, not any-of)")
    if lo and hi and lo.fixed and hi.fixed and lo.fixed > hi.fixed:
        raise ConfigError(f"{where}: min {lo.fixed} is after max {hi.fixed}")
    return lo, hi


def _enum_values(raw: dict[str, Any], typ: str, where: str) -> tuple[str, ...]:
    values = raw.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}: values must be a list of strings, not {values!r}")
    if typ == "enum" and not values:
        raise ConfigError(f"{where}: type enum needs values = [...]")
    if values and typ != "enum":
        raise ConfigError(f"{where}: values apply to type enum only")
    return tuple(values)


def load_profile(path: Path) -> Profile:
    """Read and check a registry profile (TOML). Errors name the file and the key."""
    data = read_toml(path, "registry profile", key="registry.profile")
    known = {"name", "version", "description", *LEVELS}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key in ("name", "version"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{path}: {key} must be a non-empty string, not {data.get(key)!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description must be a string")
    groups: dict[str, tuple[ElementRule, ...]] = {}
    for level in LEVELS:
        items = data.get(level, [])
        if not isinstance(items, list):
            raise ConfigError(f"{path}: {level} must be an array of tables ([[{level}]])")
        groups[level] = tuple(_element(item, level, f"{path}: {level}[{i}]") for i, item in enumerate(items))
    return Profile(data["name"].strip(), data["version"].strip(), description.strip(), path,
                   groups["required"], groups["recommended"], groups["optional"])


# ----------------------------------------------------------------------------------------
# Nomenclature table
# ----------------------------------------------------------------------------------------

_RPID = re.compile(r"^RPID[1-9][0-9]*$")
_DIRECTIVE = re.compile(r"^#\s*playbook_schemes\s*:(.*)$", re.IGNORECASE)
NOMENCLATURE_COLUMNS = ("local_description", "radlex_playbook_id")


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class NomenclatureEntry:
    description: str
    playbook_id: str
    playbook_name: str | None
    line: int


@dataclass(frozen=True)
class Nomenclature:
    """Local description -> RadLex Playbook ID, and the coding schemes counted as Playbook."""

    path: Path
    entries: Mapping[str, NomenclatureEntry]  # keyed by the normalised description
    playbook_schemes: tuple[str, ...]

    def lookup(self, description: str | None) -> NomenclatureEntry | None:
        if not description:
            return None
        return self.entries.get(_norm(description))


def load_nomenclature(path: Path) -> Nomenclature:
    """Read the nomenclature table (CSV with a ``#`` comment header; see conf/nomenclature.csv)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: nomenclature table not found (nomenclature.table)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: nomenclature table is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read nomenclature table: {exc.strerror}") from None
    schemes: list[str] = []
    header: list[str] | None = None
    entries: dict[str, NomenclatureEntry] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            m = _DIRECTIVE.match(stripped)
            if m:
                schemes.extend(s.strip().upper() for s in m.group(1).split(",") if s.strip())
            continue
        row = next(csv.reader([line]))
        row = [c.strip() for c in row]
        if header is None:
            header = [c.lower() for c in row]
            missing = [c for c in NOMENCLATURE_COLUMNS if c not in header]
            if missing:
                raise ConfigError(
                    f"{path}: line {lineno}: the header row must name the columns "
                    f"{', '.join(NOMENCLATURE_COLUMNS)} (missing {', '.join(missing)}); got {line.strip()!r}"
                )
            continue
        if len(row) != len(header):
            raise ConfigError(f"{path}: line {lineno}: expected {len(header)} columns, found {len(row)}")
        values = dict(zip(header, row, strict=True))
        desc, rpid = values["local_description"], values["radlex_playbook_id"].upper()
        if not desc:
            raise ConfigError(f"{path}: line {lineno}: local_description is empty")
        if not _RPID.match(rpid):
            raise ConfigError(
                f"{path}: line {lineno}: radlex_playbook_id {values['radlex_playbook_id']!r} is not a "
                "RadLex Playbook ID (RPID followed by digits, e.g. RPID22)"
            )
        key = _norm(desc)
        if key in entries and entries[key].playbook_id != rpid:
            first = entries[key]
            raise ConfigError(
                f"{path}: line {lineno}: {desc!r} maps to {rpid} here but to {first.playbook_id} on line {first.line}"
            )
        entries.setdefault(key, NomenclatureEntry(desc, rpid, values.get("playbook_name") or None, lineno))
    if header is None:
        raise ConfigError(f"{path}: nomenclature table has no header row ({', '.join(NOMENCLATURE_COLUMNS)})")
    return Nomenclature(path, entries, tuple(dict.fromkeys(schemes)))


# ----------------------------------------------------------------------------------------
# Rules (everything evaluate() needs)
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RtPlanningRules:
    """classification.rt_planning with its regular expressions compiled."""

    text: tuple[re.Pattern[str], ...]
    station_names: tuple[str, ...]
    procedure_codes: tuple[str, ...]
    manufacturers: tuple[str, ...]

    @cached_property
    def any_text(self) -> Callable[[str], Any] | None:
        """``search`` of one regex that finds a match when any ``text`` pattern does (most texts
        match none, so one search replaces several); None when the patterns cannot be joined."""
        if not self.text or any(p.groups for p in self.text):  # groups: back-references would shift
            return None
        try:
            return re.compile("|".join(f"(?:{p.pattern})" for p in self.text), re.IGNORECASE).search
        except re.error:
            return None

    @cached_property
    def may_match(self) -> Callable[[str], bool] | None:
        """``any_text(text) is not None``, remembered for the last 4096 texts: descriptions and
        protocol names repeat across a site's studies, and the joined case-insensitive search
        with look-arounds costs more than the rest of a study's classification."""
        search = self.any_text
        if search is None:
            return None

        @lru_cache(maxsize=4096)
        def may_match(text: str) -> bool:
            return search(text) is not None

        return may_match


@dataclass(frozen=True)
class Rules:
    """The configured rules: registry profile, classification, nomenclature, notification values."""

    profile: Profile
    non_patient: NonPatientSettings
    rt_planning: RtPlanningRules
    nomenclature: Nomenclature
    notification: NotificationSettings
    config_path: Path | None = None

    @property
    def profile_name(self) -> str:
        return self.profile.name

    @property
    def profile_version(self) -> str:
        return self.profile.version


def rules_from_config(cfg: Config) -> Rules:
    """Load the registry profile and the nomenclature table named by the configuration.

    Read afresh on every call (nothing cached), so a changed profile applies on the next
    read. Errors are :class:`ConfigError` naming the file and the key or line at fault.
    """
    profile = load_profile(Path(cfg.profile_path))
    nomenclature = load_nomenclature(Path(cfg.nomenclature_table))
    rt = cfg.classification.rt_planning
    patterns = []
    for i, text in enumerate(rt.text):
        try:
            patterns.append(re.compile(text, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(
                f"{cfg.path}: classification.rt_planning.text[{i}] {text!r} is not a valid regular expression: {exc}"
            ) from None
    return Rules(
        profile=profile,
        non_patient=cfg.classification.non_patient,
        rt_planning=RtPlanningRules(tuple(patterns), rt.station_names, rt.procedure_codes, rt.manufacturers),
        nomenclature=nomenclature,
        notification=cfg.notification,
        config_path=cfg.path,
    )


# ----------------------------------------------------------------------------------------
# Verdicts
# ----------------------------------------------------------------------------------------


_V = TypeVar("_V", bound="_View")


class _View:
    """Read access by key as well as attribute (``ev.flags["registry_code"]``)."""

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]  # type: ignore[attr-defined]

    @classmethod
    def _of(cls: type[_V], **values: Any) -> _V:
        """``cls(**values)`` with every field given, without the frozen dataclass ``__init__``
        (one ``object.__setattr__`` per field): built for every record read (as
        ``extract.model`` builds records)."""
        obj = object.__new__(cls)
        obj.__dict__.update(values)
        return obj


def _json_value(value: Any) -> Any:
    """``value`` as JSON can carry it: a non-finite number as its JSON-style name (NaN,
    Infinity, -Infinity), since JSON has no such numbers and the writers refuse them."""
    if value.__class__ is float and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return value


@dataclass(frozen=True)
class InvalidElement(_View):
    path: str
    value: Any  # as stated in the record (a non-finite float stays one; to_dict names it)
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "value": _json_value(self.value), "reason": self.reason}


@dataclass(frozen=True)
class Completeness(_View):
    status: str  # "complete" | "incomplete"
    missing: tuple[str, ...] = ()
    invalid: tuple[InvalidElement, ...] = ()
    warnings: tuple[str, ...] = ()
    #: the reasons in words, one per missing or invalid required element (in order)
    reasons: tuple[str, ...] = ()
    #: every value outside its plausible range or not finite, at every level (required,
    #: recommended, optional), in evaluation order: what the registry files carry as null
    implausible: tuple[InvalidElement, ...] = ()

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def implausible_paths(self) -> tuple[str, ...]:
        """The concrete record paths of :attr:`implausible` (``events[2].exposure_time_s``)."""
        return tuple(i.path for i in self.implausible)

    def to_dict(self) -> dict[str, Any]:
        d = {"status": self.status, "missing": list(self.missing),
             "invalid": [i.to_dict() for i in self.invalid], "warnings": list(self.warnings)}
        if self.implausible:  # an addition to the contract's four keys, present only when needed
            d["implausible"] = [i.to_dict() for i in self.implausible]
        return d


@dataclass(frozen=True)
class Classification(_View):
    patient_study: bool
    rt_planning: bool
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"patient_study": self.patient_study, "rt_planning": self.rt_planning, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Flags(_View):
    registry_code: str  # "G9327" | "G9326" | "excluded"
    registry_reasons: tuple[str, ...]
    nomenclature_code: str | None  # "G9318" | "G9319" | "G9320" | None
    nomenclature_reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"registry_code": self.registry_code, "registry_reasons": list(self.registry_reasons),
                "nomenclature_code": self.nomenclature_code,
                "nomenclature_reasons": list(self.nomenclature_reasons)}


@dataclass(frozen=True)
class Evaluation(_View):
    completeness: Completeness
    classification: Classification
    flags: Flags
    timing_runs: tuple[bool, ...] = field(default=())  # one per event, in record order

    @property
    def implausible_paths(self) -> tuple[str, ...]:
        """Record paths whose stated values are implausible (see :func:`without_implausible`)."""
        return self.completeness.implausible_paths

    def to_dict(self) -> dict[str, Any]:
        return {"completeness": self.completeness.to_dict(), "classification": self.classification.to_dict(),
                "flags": self.flags.to_dict(), "timing_runs": list(self.timing_runs)}


def _event_label(ev: Mapping[str, Any]) -> str:
    protocol = ev.get("acquisition_protocol")
    uid = ev.get("irradiation_event_uid")
    p = f"protocol {protocol!r}" if protocol else "no protocol"
    u = f"event {uid}" if uid else "no event UID"
    return f"{p}, {u}"


def _absent(value: Any) -> bool:
    if value is None:
        return True
    t = type(value)
    if t is str:
        return not value.strip()
    if t is list or t is tuple or t is dict:
        return len(value) == 0
    return False


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class _Implausible(str):
    """A reason saying a number is not finite or outside its plausible range (or a date
    outside its bounds): the collector lists the element in ``implausible`` as well, at every
    level, so that the registry files carry null in its place."""

    __slots__ = ()


_NOT_FINITE = _Implausible("is not a finite number")
# The same words for a value that is no number at all (a string, a boolean): a wrong type,
# not an implausible statement, so not listed in ``implausible`` (the writers coerce "72.5").
_NOT_A_NUMBER = "is not a finite number"
_NOT_WHOLE = _Implausible("is not a whole number")


def _bound_text(value: float | None) -> str:
    """A range bound as a reader writes it: 1000000, not 1e+06."""
    if value is None:
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


def _range_text(rule: ElementRule) -> str:
    return f"{_bound_text(rule.min)}..{_bound_text(rule.max)}" + (f" {rule.unit}" if rule.unit else "")


def _number_reason(value: Any, rule: ElementRule) -> str | None:
    if not _is_number(value):
        return _NOT_FINITE if isinstance(value, float) else _NOT_A_NUMBER
    if rule.type == "integer" and float(value) != int(value):
        return _NOT_WHOLE
    if (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max):
        return _Implausible(f"is outside {_range_text(rule)}")
    return None


def _invalid_reason(value: Any, rule: ElementRule) -> str | None:
    """None when ``value`` (present) satisfies the rule, else what is wrong."""
    t = rule.type
    if t == "present":
        return None
    if t == "text":
        return None if isinstance(value, str) else "is not text"
    if t in ("number", "integer"):
        return _number_reason(value, rule)
    if t == "date":
        if not isinstance(value, str) or not _DATE.match(value):
            return "is not a date (YYYY-MM-DD)"
        try:
            _dt.date.fromisoformat(value)
        except ValueError:
            return "is not a valid date"
        return None
    if t == "time":
        return None if isinstance(value, str) and _TIME.match(value) else "is not a time (HH:MM:SS[.ffffff])"
    if t == "enum":
        return None if str(value) in rule.values else f"is not one of {', '.join(rule.values)}"
    if t == "uid":
        ok = isinstance(value, str) and len(value) <= 64 and _UID.match(value) is not None
        return None if ok else "is not a valid DICOM UID"
    if t == "code":
        ok = isinstance(value, dict) and not _absent(value.get("value")) and not _absent(value.get("scheme"))
        return None if ok else "is not a coded concept with value and coding scheme"
    if t == "list":
        if not isinstance(value, (list, tuple)):
            return "is not a list"
        return None if len(value) >= rule.min_items else f"has {len(value)} items, fewer than {rule.min_items}"
    return None  # pragma: no cover (types are checked when the profile is read)


def _instances(node: Any, segments: list[str], prefix: str) -> Iterable[tuple[str, Any, bool]]:
    """(concrete path, value, found) for a path with ``[]`` segments.

    A nested list that is empty yields its unexpanded path as absent; the events list
    itself yields nothing when empty (the profile's ``events`` element covers that).
    """
    if not segments:
        yield prefix, node, True
        return
    seg, rest = segments[0], segments[1:]
    name = seg[:-2] if seg.endswith("[]") else seg
    child = node.get(name) if isinstance(node, dict) else None
    here = f"{prefix}.{name}" if prefix else name
    if not seg.endswith("[]"):
        yield from _instances(child, rest, here)
        return
    items = child if isinstance(child, (list, tuple)) else []
    if not items:
        if prefix:  # nested list (e.g. events[2].sources): absent
            yield ".".join([f"{here}[]", *rest]), None, False
        return
    for i, item in enumerate(items):
        yield from _instances(item, rest, f"{here}[{i}]")


_EVENT_INDEX = re.compile(r"^events\[(\d+)\]")
_ANY_INDEX = re.compile(r"\[\d+\]")


def _shown(value: Any) -> Any:
    """A value as a reason quotes it: text in quotes, a non-finite number by its JSON-style name."""
    if isinstance(value, str):
        return repr(value)
    return _json_value(value)


class _Collector:
    def __init__(self) -> None:
        self.missing: list[str] = []
        self.invalid: list[InvalidElement] = []
        self.warnings: list[str] = []
        self.reasons: list[str] = []
        self.missing_reason: dict[str, int] = {}  # concrete path -> index in reasons
        self.warning_for: dict[str, int] = {}  # concrete path -> index in warnings
        self.implausible: list[InvalidElement] = []
        self.flagged: set[str] | None = None  # concrete paths reported invalid (at any level), once needed

    def add_missing(self, path: str, label: str, level: str) -> None:
        if level == "required":
            self.missing_reason[path] = len(self.reasons)
            self.missing.append(path)
            self.reasons.append(f"{path} missing" + (f" ({label})" if label else ""))
        elif level == "recommended":
            self.warning_for[path] = len(self.warnings)
            self.warnings.append(f"{path} missing (recommended" + (f"; {label})" if label else ")"))
        # optional: an absent value says nothing

    def add_invalid(self, path: str, value: Any, why: str, label: str, level: str) -> None:
        if self.flagged is None:
            self.flagged = set()
        elif path in self.flagged:
            return  # already reported by an earlier element of the profile on the same path
        self.flagged.add(path)
        shown = _shown(value)
        suffix = f" ({label})" if label else ""
        item = InvalidElement(path, value, f"{why}{suffix}")
        if level == "required":
            self.invalid.append(item)
            self.reasons.append(f"{path} {shown} {why}{suffix}")
        else:
            self.warning_for[path] = len(self.warnings)
            self.warnings.append(f"{path} {shown} {why} ({level}" + (f"; {label})" if label else ")"))
        if why.__class__ is _Implausible:
            self.implausible.append(item)


# The profile compiled: one check per element, built once per loaded profile (no path
# parsing or type dispatch per record). Each check appends to the collector what is missing
# or invalid, in profile order and, for event elements, in event order.
_Events = dict[str, list[tuple[int, dict[str, Any]]]]  # condition -> the (index, event) where it holds
_Check = Callable[[Mapping[str, Any], _Collector, _Events], None]


def _always_valid(value: Any) -> str | None:
    return None


def _valid_text(value: Any) -> str | None:
    return None if isinstance(value, str) else "is not text"


def _validator(rule: ElementRule) -> Callable[[Any], str | None]:
    """``_invalid_reason(value, rule)`` specialised for the rule's type (same messages)."""
    t = rule.type
    if t == "present":
        return _always_valid
    if t == "text":
        return _valid_text
    if t in ("number", "integer"):
        lo, hi, whole = rule.min, rule.max, t == "integer"
        outside = f"is outside {_range_text(rule)}"

        outside = _Implausible(outside)

        def number(value: Any) -> str | None:
            cls = value.__class__
            if not ((cls is float and math.isfinite(value)) or cls is int or _is_number(value)):
                return _NOT_FINITE if isinstance(value, float) else _NOT_A_NUMBER
            if whole and float(value) != int(value):
                return _NOT_WHOLE
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                return outside
            return None

        return number
    if t == "enum":
        allowed = frozenset(rule.values)
        message = f"is not one of {', '.join(rule.values)}"

        def enum(value: Any) -> str | None:
            return None if (value if value.__class__ is str else str(value)) in allowed else message

        return enum
    if t == "uid":
        return _valid_uid
    return lambda value: _invalid_reason(value, rule)


def _valid_uid(value: Any) -> str | None:
    ok = isinstance(value, str) and len(value) <= 64 and _UID.match(value) is not None
    return None if ok else "is not a valid DICOM UID"


def _compile_rule(rule: ElementRule) -> _Check:
    """One element's own check (the elements :func:`_fusion` does not take)."""
    if rule.date_min is not None or rule.date_max is not None:
        return _compile_bounded_date(rule)
    if not rule.in_events:
        if len(rule.alternatives) == 1 and rule.when is None:
            return _compile_plain_study_element(rule)
        return _compile_study_element(rule)
    return _compile_nested_element(rule)


def _compile_plain_study_element(rule: ElementRule) -> _Check:
    valid, level, path = _validator(rule), rule.level, rule.path
    names = tuple(path.split("."))

    def plain_study_element(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
        value: Any = d
        for name in names:
            value = value.get(name) if isinstance(value, dict) else None
        if _absent(value):
            out.add_missing(path, "", level)
            return
        why = valid(value)
        if why is not None:
            out.add_invalid(path, value, why, "", level)

    return plain_study_element


def _compile_study_element(rule: ElementRule) -> _Check:
    """A study-level element with a condition or any-of alternatives (``a|b``)."""
    valid, level, when = _validator(rule), rule.level, rule.when
    alternatives = tuple((alt, tuple(alt.split("."))) for alt in rule.alternatives)

    def study_element(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
        if when is not None and not when.holds(d):
            return
        present = []
        for alt, names in alternatives:
            value: Any = d
            for name in names:
                value = value.get(name) if isinstance(value, dict) else None
            if not _absent(value):
                present.append((alt, value))
        if not present:
            out.add_missing(rule.path, "", level)
            return
        problems = [(alt, v, valid(v)) for alt, v in present]
        if any(why is None for _, _, why in problems):
            return  # at least one alternative is present and valid
        for alt, v, why in problems:
            out.add_invalid(alt, v, why or "", "", level)

    return study_element


def _compile_nested_element(rule: ElementRule) -> _Check:
    """An event element below nested lists (``events[].sources[]``): walked with _instances."""
    valid, level, when = _validator(rule), rule.level, rule.when
    rest = rule.alternatives[0].split(".")[1:]  # below "events[]"
    when_text = when.text if when is not None else ""

    def nested_element(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
        for i, ev in _events_where(d, when, when_text, cache):
            for path, value, found in _instances(ev, rest, f"events[{i}]"):
                if not found or _absent(value):
                    out.add_missing(path, _event_label(ev), level)
                    continue
                why = valid(value)
                if why is not None:
                    out.add_invalid(path, value, why, _event_label(ev), level)

    return nested_element


def _compile_bounded_date(rule: ElementRule) -> _Check:
    """A study-level date with bounds (``patient.birth_date`` within 1880-01-01..study_date):
    the bounds are read on each record, since they may be another element or today."""
    path, names, level = rule.path, tuple(rule.path.split(".")), rule.level
    lo, hi = rule.date_min, rule.date_max
    lo_fixed = lo.fixed if lo is not None else None  # fixed bounds need no resolving
    hi_fixed = hi.fixed if hi is not None else None

    def bounded_date(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
        value: Any = d
        for name in names:
            value = value.get(name) if isinstance(value, dict) else None
        if _absent(value):
            out.add_missing(path, "", level)
            return
        why = _date_reason(value)
        if why is None:
            low = lo_fixed if lo_fixed is not None or lo is None else lo.resolve(d)
            high = hi_fixed if hi_fixed is not None or hi is None else hi.resolve(d)
            if (low is None or value >= low) and (high is None or value <= high):
                return  # ISO dates with four-digit years order as text
            why = _outside_dates(lo, low, hi, high)
        out.add_invalid(path, value, why, "", level)

    return bounded_date


def _date_reason(value: Any) -> str | None:
    """None for a calendar date written YYYY-MM-DD, else what is wrong (as type "date" says it)."""
    if value.__class__ is not str or not _DATE.match(value):
        return "is not a date (YYYY-MM-DD)"
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        return "is not a valid date"
    return None


def _outside_dates(lo: DateBound | None, low: str | None, hi: DateBound | None, high: str | None) -> str:
    """The range a date breaks: "is outside 1880-01-01..study_date (2024-03-01)"."""
    lo_text = "" if lo is None else lo.text if low is None else lo.label(low)
    hi_text = "" if hi is None else hi.text if high is None else hi.label(high)
    return _Implausible(f"is outside {lo_text}..{hi_text}")


# Fused checks. A profile has a dozen event elements and as many optional numbers; one check
# each would walk the events a dozen times, re-evaluating the same conditions. Consecutive
# event elements are checked in one pass over the events instead; what they find is held
# back and replayed in profile order (element by element, each in event order), so the
# collector sees exactly what one check per element would have told it.

_MEMO_MAX = 256  # distinct condition inputs remembered per run (acquisition types: seven)


def _fusion(rule: ElementRule) -> str | None:
    """Which fused check takes the element: "event" (``events[].x``, ``events[].dose_check.x``,
    ``events[].sources[].x``), "study" (an optional study-level number without a condition),
    or None (a check of its own)."""
    if len(rule.alternatives) != 1:
        return None
    rest = rule.path.split(".")
    if not rule.in_events:
        plain = rule.when is None and not any(r.endswith("[]") for r in rest)
        return "study" if plain and rule.optional and rule.type in ("number", "integer") else None
    rest = rest[1:]
    if (len(rest) == 1 and not rest[0].endswith("[]")) or (len(rest) == 2 and not rest[1].endswith("[]")):
        return "event"
    return None  # e.g. events[].sources[] (the items themselves): _compile_rule walks it


def _compile_run(kind: str | None, rules: list[ElementRule]) -> _Check:
    return _compile_study_numbers(rules) if kind == "study" else _compile_event_run(rules)


def _fast_range(rule: ElementRule) -> tuple[float, float, bool, bool]:
    """(lo, hi, fast, whole): numbers are accepted by one chained comparison when ``fast``."""
    lo = -math.inf if rule.min is None else rule.min
    hi = math.inf if rule.max is None else rule.max
    return lo, hi, rule.type in ("number", "integer"), rule.type == "integer"


def _compile_study_numbers(rules: list[ElementRule]) -> _Check:
    """Optional study-level numbers (``patient.weight_kg``), in profile order."""
    specs = tuple((tuple(r.path.split(".")), r.path, *_fast_range(r), _validator(r)) for r in rules)

    def study_numbers(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
        for names, path, lo, hi, _fast, whole, valid in specs:
            value: Any = d
            for name in names:
                value = value.get(name) if isinstance(value, dict) else None
            if value is None or _in_range(value, lo, hi, whole):
                continue
            why = valid(value)
            if why is not None:
                out.add_invalid(path, value, why, "", "optional")

    return study_numbers


def _in_range(value: Any, lo: float, hi: float, whole: bool) -> bool:
    """A finite number within lo..hi (a NaN fails every comparison; an infinite one, ``% 1``)."""
    c = value.__class__
    return (c is float or c is int) and lo <= value <= hi and (not whole or value % 1 == 0)


# One element of an event run: (position in the run, name, container (the record below the
# event or the list), level, lo, hi, fast, whole, validator)
_RunSpec = tuple[int, str, str, str, float, float, bool, bool, Callable[[Any], "str | None"]]
# The elements that apply to one event: on the event; on a record below it and on the items of
# a list, each grouped by that record's or list's name (read once for all its elements).
_Grouped = tuple[tuple[str, tuple[_RunSpec, ...]], ...]
_EventSpecs = tuple[tuple[_RunSpec, ...], _Grouped, _Grouped]


def _grouped(specs: Iterable[_RunSpec]) -> _Grouped:
    by_name: dict[str, list[_RunSpec]] = {}
    for spec in specs:
        by_name.setdefault(spec[2], []).append(spec)
    return tuple((name, tuple(group)) for name, group in by_name.items())


def _compile_event_run(rules: list[ElementRule]) -> _Check:
    """Consecutive event elements in one pass over the events (see the comment above)."""
    direct: list[tuple[Condition | None, _RunSpec]] = []
    sub: list[tuple[Condition | None, _RunSpec]] = []
    items: list[tuple[Condition | None, _RunSpec]] = []
    for k, r in enumerate(rules):
        rest = r.path.split(".")[1:]
        if len(rest) == 1:
            direct.append((r.when, (k, rest[0], "", r.level, *_fast_range(r), _validator(r))))
        elif rest[0].endswith("[]"):
            items.append((r.when, (k, rest[1], rest[0][:-2], r.level, *_fast_range(r), _validator(r))))
        else:
            sub.append((r.when, (k, rest[1], rest[0], r.level, *_fast_range(r), _validator(r))))
    field, memo, specs_for = _applicable(direct, sub, items)

    def event_run(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
        found: list[tuple[int, int, str, Any, str | None, Mapping[str, Any], str]] = []
        for i, ev in enumerate(d.get("events") or ()):
            if isinstance(ev, dict):
                key = ev.get(field) if field is not None else None
                specs = memo.get(key) if key.__class__ is str else None
                _check_event(ev, i, specs or specs_for(ev), found)
        if found:
            found.sort(key=_by_position)  # stable: event order (and item order) within an element
            for _, _, path, value, why, ev, level in found:
                if why is None:
                    out.add_missing(path, _event_label(ev), level)
                else:
                    out.add_invalid(path, value, why, _event_label(ev), level)

    return event_run


def _by_position(entry: tuple[Any, ...]) -> int:
    return entry[0]  # type: ignore[no-any-return]


def _applicable(*kinds: list[tuple[Condition | None, _RunSpec]]) -> tuple[
        str | None, dict[str, _EventSpecs], Callable[[Mapping[str, Any]], _EventSpecs]]:
    """(field, memo, specs_for): ``specs_for(event)`` gives the run's elements whose conditions
    hold on the event. When the conditions read one top-level field (the acquisition type),
    ``memo`` keeps the answer for each text value of it seen so far: look it up first, and the
    conditions are evaluated once per value instead of once per event and element."""
    def holding(ctx: Mapping[str, Any]) -> _EventSpecs:
        d, s, i = (tuple(spec for when, spec in kind if when is None or when.test(ctx)) for kind in kinds)
        return d, _grouped(s), _grouped(i)

    fields = {c.field for kind in kinds for when, _ in kind if when is not None for c in when.clauses}
    if not fields:
        everything = holding({})
        return None, {}, lambda ev: everything
    if len(fields) > 1 or "." in next(iter(fields)):
        return None, {}, holding
    field = next(iter(fields))
    memo: dict[str, _EventSpecs] = {}

    def specs_for(ev: Mapping[str, Any]) -> _EventSpecs:
        key = ev.get(field)
        answer = holding({field: key})
        if key.__class__ is str and len(memo) < _MEMO_MAX:
            memo[key] = answer
        return answer

    return field, memo, specs_for


def _check_event(ev: dict[str, Any], i: int, specs: _EventSpecs, found: list[Any]) -> None:
    """Append to ``found`` (position, event, path, value, reason or None for missing, event,
    level) for each element of ``specs`` that is missing or invalid on event ``i``."""
    # Each loop accepts an in-range number, and skips an absent optional value, inline (this
    # runs for every element of every event); anything else goes to _check_value.
    direct, subs, items = specs
    _check_fields(ev, i, "", direct, ev, found)
    for sub_name, sub_specs in subs:
        sub = ev.get(sub_name)
        if not isinstance(sub, dict):
            sub = {}  # every element below it is absent
        for k, name, _, level, lo, hi, fast, whole, valid in sub_specs:
            value = sub.get(name)
            if value is None and level == "optional" or (value is not None and fast and _in_range(value, lo, hi, whole)):
                continue
            _check_value(value, k, i, f"{sub_name}.{name}", level, valid, ev, found)
    for list_name, item_specs in items:
        entries = ev.get(list_name)
        if not isinstance(entries, (list, tuple)) or not entries:
            for k, name, _, level, *_rest in item_specs:
                if level != "optional":  # as _instances: an empty nested list is the element absent
                    found.append((k, i, f"events[{i}].{list_name}[].{name}", None, None, ev, level))
            continue
        for j, item in enumerate(entries):
            _check_fields(item if isinstance(item, dict) else {}, i, f"{list_name}[{j}].", item_specs, ev, found)


def _check_fields(fields_of: Mapping[str, Any], i: int, prefix: str, specs: tuple[_RunSpec, ...],
                  ev: Mapping[str, Any], found: list[Any]) -> None:
    """The elements ``specs`` on one mapping of event ``i``: the event itself (``prefix`` "")
    or one item of a list under it (``prefix`` "sources[0].")."""
    for k, name, _, level, lo, hi, fast, whole, valid in specs:
        value = fields_of.get(name)
        if value is None:
            if level != "optional":
                found.append((k, i, f"events[{i}].{prefix}{name}", None, None, ev, level))
            continue
        c = value.__class__
        if fast and (c is float or c is int) and lo <= value <= hi and (not whole or value % 1 == 0):
            continue
        _check_value(value, k, i, prefix + name, level, valid, ev, found)


def _check_value(value: Any, k: int, i: int, rel: str, level: str, valid: Callable[[Any], str | None],
                 ev: Mapping[str, Any], found: list[Any]) -> None:
    """A value the inline tests did not accept: absent, invalid or (after all) valid."""
    if value is None or _absent(value):
        if level != "optional":
            found.append((k, i, f"events[{i}].{rel}", None, None, ev, level))
        return
    why = valid(value)
    if why is not None:
        found.append((k, i, f"events[{i}].{rel}", value, why, ev, level))


def _events_where(d: Mapping[str, Any], when: Condition | None, text: str,
                  cache: _Events) -> list[tuple[int, dict[str, Any]]]:
    """The (index, event) of the record's events for which ``when`` holds (all without a
    condition), worked out once per record and condition: elements share conditions."""
    found = cache.get(text)
    if found is None:
        found = cache[text] = [(i, ev) for i, ev in enumerate(d.get("events") or [])
                               if isinstance(ev, dict) and (when is None or when.holds(ev))]
    return found


def _rule_for_problem(problem: Mapping[str, Any], rules: Rules) -> ElementRule | None:
    generic = _ANY_INDEX.sub("[]", str(problem.get("path", "")))
    for rule in rules.profile.elements:
        if generic in rule.alternatives:
            return rule
    return None


def _apply_problems(d: Mapping[str, Any], rules: Rules, out: _Collector) -> None:
    """The extractor's problems: invalid when the element is required (and applies), else warnings."""
    events = d.get("events") or []
    for p in d.get("problems") or ():
        path = str(p.get("path", ""))
        value, reason = p.get("value"), str(p.get("reason", "unreadable"))
        rule = _rule_for_problem(p, rules)
        ev = None
        m = _EVENT_INDEX.match(path)
        if m and int(m.group(1)) < len(events):
            ev = events[int(m.group(1))]
        label = _event_label(ev) if isinstance(ev, dict) else ""
        suffix = f" ({label})" if label else ""
        applies = rule is not None and rule.required
        if applies and rule is not None and rule.when is not None:
            applies = rule.when.holds(ev if rule.in_events and isinstance(ev, dict) else d)
        if applies and rule is not None and len(rule.alternatives) > 1:
            # an any-of element is satisfied by another alternative that is present
            applies = rule.path in out.missing_reason
            path_missing = rule.path
        else:
            path_missing = path
        if not applies:
            text = f"{path} could not be read: {reason}{suffix}"
            idx = out.warning_for.pop(path, None)
            if idx is not None:  # replaces the plain "missing (recommended)" warning of that element
                out.warnings[idx] = text
            else:
                out.warnings.append(text)
            continue
        # the element is reported as invalid (with the extractor's reason), not as missing
        idx = out.missing_reason.pop(path_missing, None)
        if idx is not None:
            out.missing.remove(path_missing)
            out.reasons[idx] = ""
        out.invalid.append(InvalidElement(path, value, f"could not be read: {reason}{suffix}"))
        shown = "" if value is None else f" {value!r}"
        out.reasons.append(f"{path}{shown} could not be read: {reason}{suffix}")


def _completeness(d: Mapping[str, Any], rules: Rules) -> Completeness:
    out = _Collector()
    cache: _Events = {}
    for check in rules.profile.checks:
        check(d, out, cache)
    _apply_problems(d, rules, out)
    incomplete = bool(out.missing or out.invalid)
    return Completeness._of(
        status="incomplete" if incomplete else "complete", missing=tuple(out.missing), invalid=tuple(out.invalid),
        warnings=tuple(out.warnings), reasons=tuple(r for r in out.reasons if r) if out.reasons else (),
        implausible=tuple(out.implausible))


_PATH_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


def without_implausible(d: dict[str, Any], paths: Iterable[str] | None = None) -> dict[str, Any]:
    """A copy of the evaluated dict ``d`` with null at each implausible path, for the registry
    files (docs/files.md: implausible values are never exported; the record keeps them).

    ``paths`` defaults to ``d["completeness"]["implausible"][].path`` (as :func:`with_verdicts`
    writes it); concrete record paths such as ``events[2].sources[0].kvp_kV``. Only the dicts
    and lists on those paths are copied; ``d`` itself is not changed. A path that does not lead
    to a value in ``d`` is ignored.
    """
    if paths is None:
        paths = [i["path"] for i in ((d.get("completeness") or {}).get("implausible") or ())]
    out = dict(d)
    for path in paths:
        _blank(out, path)
    return out


def _blank(root: dict[str, Any], path: str) -> None:
    steps = [(m.group(1), m.group(2)) for m in _PATH_STEP.finditer(path)]
    node: Any = root
    for k, (name, index) in enumerate(steps):
        last = k == len(steps) - 1
        if not isinstance(node, dict) or name not in node:
            return
        if index is None:
            if last:
                node[name] = None
                return
            child = node[name]
            if not isinstance(child, dict):
                return
            node[name] = node = dict(child)
            continue
        items = node[name]
        if not isinstance(items, (list, tuple)) or int(index) >= len(items):
            return
        items = node[name] = list(items)
        if last:
            items[int(index)] = None
            return
        if not isinstance(items[int(index)], dict):
            return
        items[int(index)] = node = dict(items[int(index)])


def _glob(value: str | None, patterns: Iterable[str]) -> str | None:
    """The first pattern (case-insensitive glob) that matches ``value``, or None."""
    if not value:
        return None
    v = value.strip().casefold()
    any_match, each = _globs(tuple(patterns))
    if any_match is None or not any_match(v):
        return None
    for pat, match in each:
        if match(v):
            return pat
    return None


@lru_cache(maxsize=64)
def _globs(patterns: tuple[str, ...]) -> tuple[Callable[[str], Any] | None, tuple[tuple[str, Callable[[str], Any]], ...]]:
    """(one regex matching when any pattern does, (pattern, its regex) each), as fnmatch.fnmatchcase
    compiles them."""
    regexes = [fnmatch.translate(p.casefold()) for p in patterns]
    if not regexes:
        return None, ()
    each = tuple((p, re.compile(r).match) for p, r in zip(patterns, regexes, strict=True))
    return re.compile("|".join(f"(?:{r})" for r in regexes)).match, each


def _non_patient_reasons(d: Mapping[str, Any], rules: Rules) -> list[str]:
    np = rules.non_patient
    patient = d.get("patient") or {}
    reasons = []
    # Patient names and IDs are not repeated in reasons (they end up in reports and logs).
    pat = _glob(patient.get("name"), np.patient_name)
    if pat:
        reasons.append(f"patient.name matches non-patient pattern {pat!r}")
    pat = _glob(patient.get("id"), np.patient_id)
    if pat:
        reasons.append(f"patient.id matches non-patient pattern {pat!r}")
    desc = d.get("study_description")
    pat = _glob(desc, np.study_description)
    if pat:
        reasons.append(f"study_description {desc!r} matches non-patient pattern {pat!r}")
    return reasons


def _rt_reasons(d: Mapping[str, Any], rules: Rules) -> list[str]:
    rt = rules.rt_planning
    reasons: list[str] = []
    texts: list[tuple[str, str]] = []
    for key in ("study_description", "requested_procedure_description"):
        if d.get(key):
            texts.append((key, d[key]))
    events = d.get("events") or []
    for i, ev in enumerate(events):
        if isinstance(ev, dict) and ev.get("acquisition_protocol"):
            texts.append((f"events[{i}].acquisition_protocol", ev["acquisition_protocol"]))
    may_match = rt.may_match
    patterns = rt.text if may_match is None or any(may_match(text) for _, text in texts) else ()
    for pattern in patterns:
        hits = [(where, text) for where, text in texts if pattern.search(text)]
        if hits:
            where, text = hits[0]
            more = f" (and {len(hits) - 1} more element{'s' if len(hits) > 2 else ''})" if len(hits) > 1 else ""
            reasons.append(
                f"{where} {text!r} matches RT-planning rule classification.rt_planning.text {pattern.pattern!r}{more}"
            )
    equipment = d.get("equipment") or {}
    pat = _glob(equipment.get("station_name"), rt.station_names)
    if pat:
        reasons.append(
            f"equipment.station_name {equipment.get('station_name')!r} matches RT-planning rule "
            f"classification.rt_planning.station_names {pat!r}"
        )
    for i, code in enumerate(d.get("procedure_codes") or ()):
        pat = _glob((code or {}).get("value"), rt.procedure_codes)
        if pat:
            reasons.append(
                f"procedure_codes[{i}] {code.get('value')!r} matches RT-planning rule "
                f"classification.rt_planning.procedure_codes {pat!r}"
            )
    pat = _glob(equipment.get("manufacturer"), rt.manufacturers)
    if pat:
        cone = [i for i, ev in enumerate(events) if isinstance(ev, dict) and ev.get("acquisition_type") == "cone_beam"]
        if cone:
            reasons.append(
                f"equipment.manufacturer {equipment.get('manufacturer')!r} matches RT-planning rule "
                f"classification.rt_planning.manufacturers {pat!r} with a cone-beam acquisition "
                f"(events[{cone[0]}]): image-guided radiation treatment delivery"
            )
    return reasons


def _nomenclature(d: Mapping[str, Any], rules: Rules) -> tuple[str, list[str]]:
    nom = rules.nomenclature
    table = nom.path.name
    reasons: list[str] = []
    desc = d.get("study_description")
    entry = nom.lookup(desc)
    if entry:
        reasons.append(f"study_description {desc!r} maps to RadLex Playbook {entry.playbook_id} ({table} line {entry.line})")
    for i, code in enumerate(d.get("procedure_codes") or ()):
        code = code or {}
        scheme = (code.get("scheme") or "").strip().upper()
        value = code.get("value")
        if scheme == "LN" and value:
            reasons.append(f"procedure_codes[{i}] {value!r} is a LOINC (LN) code")
        elif scheme and scheme in nom.playbook_schemes and value:
            reasons.append(f"procedure_codes[{i}] {value!r} is a RadLex Playbook code (scheme {scheme})")
        else:
            entry = nom.lookup(code.get("meaning"))
            if entry:
                reasons.append(
                    f"procedure_codes[{i}] meaning {code.get('meaning')!r} maps to RadLex Playbook "
                    f"{entry.playbook_id} ({table} line {entry.line})"
                )
    if reasons:
        return "G9318", reasons
    if desc:
        reasons.append(f"study_description {desc!r} is not in the nomenclature table {table}")
    else:
        reasons.append("no study_description")
    codes = d.get("procedure_codes") or ()
    accepted = ", ".join(["LN", *nom.playbook_schemes])
    if codes:
        shown = ", ".join(f"{(c or {}).get('value')!r} ({(c or {}).get('scheme') or 'no scheme'})" for c in codes)
        reasons.append(f"procedure_codes {shown} are neither in a standard scheme ({accepted}) nor in {table}")
    else:
        reasons.append("no procedure_codes")
    return "G9319", reasons


def _evaluate_dict(d: Mapping[str, Any], rules: Rules, events: Iterable[Event]) -> Evaluation:
    timing = tuple(is_timing_run(e) for e in events)
    error = d.get("error")
    if error:
        message = f"not a usable CT dose object: {error.get('code')}: {error.get('message')}"
        return Evaluation(
            Completeness("incomplete", warnings=(message,), reasons=(message,)),
            Classification(True, False, ()),
            Flags("G9326", (message,), "G9319", (message,)),
            timing,
        )
    completeness = _completeness(d, rules)
    np_reasons = _non_patient_reasons(d, rules)
    rt_reasons = [] if np_reasons else _rt_reasons(d, rules)
    classification = Classification._of(
        patient_study=not np_reasons, rt_planning=bool(rt_reasons), reasons=tuple(np_reasons or rt_reasons))
    if np_reasons:
        flags = Flags("excluded", tuple(f"not a patient study: {r}" for r in np_reasons), None,
                      ("not a patient study",))
        return Evaluation(completeness, classification, flags, timing)
    registry_reasons: list[str] = []
    if not d.get("dose_objects"):
        registry_reasons.append("no parsed CT dose object")
    registry_reasons.extend(completeness.reasons)
    if registry_reasons:
        registry_code = "G9326"
    else:
        registry_code = "G9327"
        p = rules.profile
        registry_reasons.append(f"complete against registry profile {p.name} {p.version}")
    if rt_reasons:
        nom_code, nom_reasons = "G9320", list(rt_reasons)
    else:
        nom_code, nom_reasons = _nomenclature(d, rules)
    flags = Flags._of(registry_code=registry_code, registry_reasons=tuple(registry_reasons),
                      nomenclature_code=nom_code, nomenclature_reasons=tuple(nom_reasons))
    return Evaluation._of(completeness=completeness, classification=classification, flags=flags, timing_runs=timing)


def evaluate(record: StudyRecord, rules: Rules) -> Evaluation:
    """Completeness, classification, flags and timing runs of one record (pure).

    * completeness: every required element of the profile (with its condition) present
      and valid; the extractor's ``problems`` on required elements count as invalid.
    * classification: ``patient_study`` false when a non-patient glob matches the
      patient name / ID or the study description; ``rt_planning`` when an RT-planning
      rule matches (text regexes, station names, procedure codes, treatment-machine
      manufacturer with a cone-beam acquisition). Non-patient studies are not tested
      for RT planning.
    * flags: ``excluded`` / null for non-patient studies; else G9327 when the record has
      a parsed dose object and is complete, G9326 with the reasons otherwise; G9320 for
      RT planning, G9318 when the description or a procedure code maps to the
      standardized nomenclature, else G9319.

    An error record (``record.error`` set) gets G9326 / G9319 with the error as reason;
    :func:`evaluated_dict` prints null verdicts for it instead.
    """
    return _evaluate_dict(record.to_dict(), rules, record.events)


def evaluated_dict(record: StudyRecord, rules: Rules, export: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's JSON study record: ``record.to_dict()`` with the verdicts filled in.

    ``completeness``, ``classification`` and ``flags`` from :func:`evaluate`, each event's
    ``is_timing_run`` set, and ``export`` = the given mark (``{batch_id, exported_at}`` or
    None). For an error record the three verdicts are null.
    """
    return with_verdicts(record.to_dict(), record, rules, export)


def with_verdicts(d: dict[str, Any], record: StudyRecord, rules: Rules,
                  export: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`evaluated_dict` on ``d = record.to_dict()`` (filled in place and returned)."""
    d["export"] = export
    if d.get("error"):
        d["completeness"] = d["classification"] = d["flags"] = None
        for e, event in zip(d.get("events") or (), record.events, strict=False):
            e["is_timing_run"] = is_timing_run(event)
        return d
    ev = _evaluate_dict(d, rules, record.events)
    for e, timing in zip(d.get("events") or (), ev.timing_runs, strict=False):
        e["is_timing_run"] = timing
    d["completeness"] = ev.completeness.to_dict()
    d["classification"] = ev.classification.to_dict()
    d["flags"] = ev.flags.to_dict()
    return d
