"""The registry profile language (docs/registry-profile.md): paths, conditions, element rules.

A profile is a TOML file naming the elements of the study record (docs/study-record.md) a
registry needs (``[[required]]``), should have (``[[recommended]]``) or checks when present
(``[[optional]]``). :func:`load_profile` reads and checks it against the record model, so
every mistake is a :class:`ConfigError` naming the file, the element and the key; what it
returns is pure data (:class:`Profile`, :class:`ElementRule`, :class:`Condition`,
:class:`DateBound`), compiled into checks by :mod:`.completeness`.

Paths address the typed :class:`dosereg.extract.StudyRecord`: its field names are the JSON
keys, so ``events[].sources[].kvp_kV`` reads ``record.events[i].sources[j].kvp_kV``
(:mod:`.paths`).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dosereg.conf.config import ConfigError, read_toml

from .paths import TYPES, check_field, check_path, stated, value_at

__all__ = ["LEVELS", "TYPES", "Clause", "Condition", "DateBound", "ElementRule", "Profile", "is_number",
           "load_profile", "range_text"]

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


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _equal(actual: Any, expected: Any) -> bool:
    if expected is None:
        return actual is None
    if actual is None:
        return False
    if actual.__class__ is str:
        return actual == str(expected)
    if is_number(actual):
        try:
            return float(actual) == float(expected)
        except (TypeError, ValueError):
            return False
    if isinstance(actual, bool):
        return str(actual).lower() == str(expected).lower()
    return str(stated(actual)) == str(expected)


@dataclass(frozen=True)
class Clause:
    field: str
    op: str
    values: tuple[Any, ...]

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(self.field.split("."))

    def holds(self, ctx: object) -> bool:
        """Whether the clause holds on ``ctx`` (an event, or the study record)."""
        return self.accepts(value_at(ctx, self.names))

    def accepts(self, actual: Any) -> bool:
        """Whether the clause holds when its field has the value ``actual``."""
        if self.op in ("in", "not in"):
            found = any(_equal(actual, v) for v in self.values)
            return found if self.op == "in" else not found
        expected = self.values[0]
        if self.op == "==":
            return _equal(actual, expected)
        if self.op == "!=":
            return not _equal(actual, expected)
        if not is_number(actual):
            return False  # an ordering comparison on an absent value does not hold
        value, limit = float(actual), float(expected)
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

    def holds(self, ctx: object) -> bool:
        return self.test(ctx)

    @cached_property
    def test(self) -> Callable[[object], bool]:
        """:meth:`holds` compiled: a one-clause equality on a top-level text field (the usual
        "acquisition_type != constant_angle") compares directly; anything else goes clause by clause."""
        if len(self.clauses) == 1:
            c = self.clauses[0]
            if c.op in ("==", "!=") and "." not in c.field and isinstance(c.values[0], str):
                name, expected, equal = c.field, c.values[0], c.op == "=="

                def text_equality(ctx: object) -> bool:
                    actual = getattr(ctx, name, None)
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
            check_field(name, context, where)
            clauses.append(Clause(name, op, _clause_values(op, rhs, part, where)))
        return cls(text.strip(), tuple(clauses))


def _clause_values(op: str, rhs: str, part: str, where: str) -> tuple[Any, ...]:
    if op in ("in", "not in"):
        inner = rhs.strip()
        if inner.startswith("[") and inner.endswith("]"):
            inner = inner[1:-1]
        values = tuple(_literal(v) for v in inner.split(",") if v.strip())
        if not values:
            raise ConfigError(f"{where}: condition {part!r} lists no values")
        return values
    values = (_literal(rhs),)
    if op in ("<", "<=", ">", ">="):
        try:
            float(values[0])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: condition {part!r} compares with a non-number") from None
    return values


# ----------------------------------------------------------------------------------------
# Date bounds ("1880-01-01", "today + 1 day", "study_date")
# ----------------------------------------------------------------------------------------

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

    def resolve(self, record: object) -> str | None:
        """The bound as YYYY-MM-DD for ``record``, or None when it does not apply (the
        referenced element is absent or not a date)."""
        if self.fixed is not None:
            return self.fixed
        if self.today_offset is not None:
            return _today_iso(self.today_offset)
        value = value_at(record, self.ref)
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
        _, in_list = check_path(text, f"{where}: {key}")
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


# ----------------------------------------------------------------------------------------
# Element rules and the profile
# ----------------------------------------------------------------------------------------

LEVELS = ("required", "recommended", "optional")
_ELEMENT_KEYS = {"path", "when", "type", "unit", "min", "max", "values", "min_items", "note"}


@dataclass(frozen=True)
class ElementRule:
    """One required, recommended or optional element of the registry profile."""

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
            parts.append(range_text(self))
        elif self.date_min is not None or self.date_max is not None:
            lo = "" if self.date_min is None else self.date_min.text
            hi = "" if self.date_max is None else self.date_max.text
            parts.append(f"{lo}..{hi}")
        elif self.unit:
            parts.append(self.unit)
        if self.when:
            parts.append(f"when {self.when.text}")
        return ", ".join(parts)


def _bound_text(value: float | None) -> str:
    """A range bound as a reader writes it: 1000000, not 1e+06."""
    if value is None:
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


def range_text(rule: ElementRule) -> str:
    """A number element's range in words: "0..10000 mGy"."""
    return f"{_bound_text(rule.min)}..{_bound_text(rule.max)}" + (f" {rule.unit}" if rule.unit else "")


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
        """Every element in evaluation order: required, recommended, optional."""
        return self.required + self.recommended + self.optional

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


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
    contexts = [check_path(p, where) for p in alternatives]
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
    when = _when(raw.get("when"), contexts[0][0], where)
    note = raw.get("note")
    if note is not None and not isinstance(note, str):
        raise ConfigError(f"{where}: note must be a string")
    return ElementRule(path, alternatives, level == "required", typ, unit, lo, hi, values, min_items, when,
                       note, in_events, level == "optional", date_lo, date_hi)


def _when(text: Any, context: type, where: str) -> Condition | None:
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: when must be a condition string, not {text!r}")
    return Condition.parse(text, context, f"{where}: when")


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)


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
