"""Registry rules: completeness, classification and billing flags (spec section 4).

Pure functions of (study record, configured rules). The catalog stores extracted records
only; verdicts are computed whenever a record is read (``extract``, ``studies``,
``export``), so editing the registry profile or the nomenclature table takes effect on the
next read without re-importing anything. Nothing is cached between calls of
:func:`rules_from_config`.

* :func:`rules_from_config` -- reads the registry profile (``cfg.profile_path``, TOML) and
  the nomenclature table (``cfg.nomenclature_table``, CSV) into :class:`Rules`; mistakes in
  either are :class:`dosereg.config.ConfigError` naming the file and the key or line.
* :func:`evaluate` -- one record -> :class:`Evaluation` (completeness, classification,
  flags, one timing-run verdict per event).
* :func:`evaluated_dict` -- the contract's JSON study record with the verdicts filled in.

Profile format (``conf/registry_profiles/acr-dir.toml`` documents it in full)::

    name = "acr-dir"
    version = "2026.1"
    [[required]]                      # or [[recommended]]
    path = "events[].ctdivol_mGy"     # study-record path; [] = every item; a|b = any of
    when = "acquisition_type != constant_angle"   # optional condition
    type = "number"                   # present | text | number | integer | date | time |
    unit = "mGy"                      #   enum | uid | code | list
    min = 0                           # inclusive range (numbers), values (enum),
    max = 10000                       #   min_items (list)

Missing or invalid **required** elements make the study ``incomplete``; recommended ones
only add warnings. Every reason names the element path and, for events, the event's
protocol and Irradiation Event UID. Event indexes are 0-based, as in the JSON ``events``
array and in the extractor's ``problems``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from dosereg.config import Config, ConfigError, NonPatientSettings, NotificationSettings, read_toml
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
    "InvalidElement", "Nomenclature", "NomenclatureEntry", "Profile", "RtPlanningRules", "Rules",
    "evaluate", "evaluated_dict", "load_nomenclature", "load_profile", "rules_from_config",
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

    @property
    def level(self) -> str:
        return "required" if self.required else "recommended"

    def describe(self) -> str:
        """The validity rule in words (for reports): "number, 0..10000 mGy"."""
        parts = [self.type]
        if self.values:
            parts.append("one of " + ", ".join(self.values))
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            parts.append(f"{lo}..{hi}" + (f" {self.unit}" if self.unit else ""))
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

    @property
    def elements(self) -> tuple[ElementRule, ...]:
        return self.required + self.recommended

    @cached_property
    def checks(self) -> tuple[Callable[..., None], ...]:
        """The elements compiled into checks (evaluation order), once per loaded profile."""
        return tuple(_compile_rule(rule) for rule in self.elements)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)


def _element(raw: Any, required: bool, where: str) -> ElementRule:
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
    lo = _number(raw["min"], where, "min") if "min" in raw else None
    hi = _number(raw["max"], where, "max") if "max" in raw else None
    if (lo is not None or hi is not None) and typ not in ("number", "integer"):
        raise ConfigError(f"{where}: min/max apply to type number or integer, not {typ!r}")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{where}: min {lo:g} is above max {hi:g}")
    values = raw.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}: values must be a list of strings, not {values!r}")
    if typ == "enum" and not values:
        raise ConfigError(f"{where}: type enum needs values = [...]")
    if values and typ != "enum":
        raise ConfigError(f"{where}: values apply to type enum only")
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
    return ElementRule(path, alternatives, required, typ, unit, lo, hi, tuple(values), min_items, when, note,
                       in_events)


def load_profile(path: Path) -> Profile:
    """Read and check a registry profile (TOML). Errors name the file and the key."""
    data = read_toml(path, "registry profile", key="registry.profile")
    known = {"name", "version", "description", "required", "recommended"}
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
    for level in ("required", "recommended"):
        items = data.get(level, [])
        if not isinstance(items, list):
            raise ConfigError(f"{path}: {level} must be an array of tables ([[{level}]])")
        groups[level] = tuple(_element(item, level == "required", f"{path}: {level}[{i}]")
                              for i, item in enumerate(items))
    return Profile(data["name"].strip(), data["version"].strip(), description.strip(), path,
                   groups["required"], groups["recommended"])


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


class _View:
    """Read access by key as well as attribute (``ev.flags["registry_code"]``)."""

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InvalidElement(_View):
    path: str
    value: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class Completeness(_View):
    status: str  # "complete" | "incomplete"
    missing: tuple[str, ...] = ()
    invalid: tuple[InvalidElement, ...] = ()
    warnings: tuple[str, ...] = ()
    #: the reasons in words, one per missing or invalid required element (in order)
    reasons: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "missing": list(self.missing),
                "invalid": [i.to_dict() for i in self.invalid], "warnings": list(self.warnings)}


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


def _range_text(rule: ElementRule) -> str:
    lo = "" if rule.min is None else f"{rule.min:g}"
    hi = "" if rule.max is None else f"{rule.max:g}"
    return f"{lo}..{hi}" + (f" {rule.unit}" if rule.unit else "")


def _invalid_reason(value: Any, rule: ElementRule) -> str | None:
    """None when ``value`` (present) satisfies the rule, else what is wrong."""
    t = rule.type
    if t == "present":
        return None
    if t == "text":
        return None if isinstance(value, str) else "is not text"
    if t in ("number", "integer"):
        if not _is_number(value):
            return "is not a finite number"
        if t == "integer" and float(value) != int(value):
            return "is not a whole number"
        if (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max):
            return f"is outside {_range_text(rule)}"
        return None
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


class _Collector:
    def __init__(self) -> None:
        self.missing: list[str] = []
        self.invalid: list[InvalidElement] = []
        self.warnings: list[str] = []
        self.reasons: list[str] = []
        self.missing_reason: dict[str, int] = {}  # concrete path -> index in reasons
        self.warning_for: dict[str, int] = {}  # concrete path -> index in warnings

    def add_missing(self, path: str, label: str, required: bool) -> None:
        if required:
            self.missing_reason[path] = len(self.reasons)
            self.missing.append(path)
            self.reasons.append(f"{path} missing" + (f" ({label})" if label else ""))
        else:
            self.warning_for[path] = len(self.warnings)
            self.warnings.append(f"{path} missing (recommended" + (f"; {label})" if label else ")"))

    def add_invalid(self, path: str, value: Any, why: str, label: str, required: bool) -> None:
        shown = value if not isinstance(value, str) else repr(value)
        if required:
            suffix = f" ({label})" if label else ""
            self.invalid.append(InvalidElement(path, value, f"{why}{suffix}"))
            self.reasons.append(f"{path} {shown} {why}{suffix}")
        else:
            self.warning_for[path] = len(self.warnings)
            self.warnings.append(f"{path} {shown} {why} (recommended" + (f"; {label})" if label else ")"))


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

        def number(value: Any) -> str | None:
            cls = value.__class__
            if not ((cls is float and math.isfinite(value)) or cls is int or _is_number(value)):
                return "is not a finite number"
            if whole and float(value) != int(value):
                return "is not a whole number"
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
    valid = _validator(rule)
    required = rule.required
    when = rule.when
    if not rule.in_events:
        alternatives = tuple((alt, tuple(alt.split("."))) for alt in rule.alternatives)
        if len(alternatives) == 1 and when is None:
            path, names = alternatives[0]

            def plain_study_element(d: Mapping[str, Any], out: _Collector,
                                    cache: _Events) -> None:
                value: Any = d
                for name in names:
                    value = value.get(name) if isinstance(value, dict) else None
                if _absent(value):
                    out.add_missing(path, "", required)
                    return
                why = valid(value)
                if why is not None:
                    out.add_invalid(path, value, why, "", required)

            return plain_study_element

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
                out.add_missing(rule.path, "", required)
                return
            problems = [(alt, v, valid(v)) for alt, v in present]
            if any(why is None for _, _, why in problems):
                return  # at least one alternative is present and valid
            for alt, v, why in problems:
                out.add_invalid(alt, v, why or "", "", required)

        return study_element

    rest = rule.alternatives[0].split(".")[1:]  # below "events[]"
    dotted = ".".join(rest)
    when_text = when.text if when is not None else ""
    if len(rest) == 2 and rest[0].endswith("[]") and not rest[1].endswith("[]"):
        # events[].sources[].kvp_kV: one nested list of items with the element (as _instances walks it)
        list_name, item_name = rest[0][:-2], rest[1]
        empty_path = f"{rest[0]}.{item_name}"

        def item_element(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
            for i, ev in _events_where(d, when, when_text, cache):
                items = ev.get(list_name)
                if not isinstance(items, (list, tuple)) or not items:
                    out.add_missing(f"events[{i}].{empty_path}", _event_label(ev), required)
                    continue
                for j, item in enumerate(items):
                    value = item.get(item_name) if isinstance(item, dict) else None
                    if _absent(value):
                        out.add_missing(f"events[{i}].{list_name}[{j}].{item_name}", _event_label(ev), required)
                        continue
                    why = valid(value)
                    if why is not None:
                        out.add_invalid(f"events[{i}].{list_name}[{j}].{item_name}", value, why,
                                        _event_label(ev), required)

        return item_element

    if any(seg.endswith("[]") for seg in rest):  # deeper nesting: walk the nested lists

        def nested_element(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
            for i, ev in _events_where(d, when, when_text, cache):
                for path, value, found in _instances(ev, rest, f"events[{i}]"):
                    if not found or _absent(value):
                        out.add_missing(path, _event_label(ev), required)
                        continue
                    why = valid(value)
                    if why is not None:
                        out.add_invalid(path, value, why, _event_label(ev), required)

        return nested_element

    names = tuple(rest)
    single = names[0] if len(names) == 1 else None

    def event_element(d: Mapping[str, Any], out: _Collector, cache: _Events) -> None:
        for i, ev in _events_where(d, when, when_text, cache):
            if single is not None:
                value = ev.get(single)
            else:
                value = ev
                for name in names:
                    value = value.get(name) if isinstance(value, dict) else None
            if _absent(value):
                out.add_missing(f"events[{i}].{dotted}", _event_label(ev), required)
            else:
                why = valid(value)
                if why is not None:
                    out.add_invalid(f"events[{i}].{dotted}", value, why, _event_label(ev), required)

    return event_element


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
    return Completeness(
        "incomplete" if incomplete else "complete",
        tuple(out.missing), tuple(out.invalid), tuple(out.warnings), tuple(r for r in out.reasons if r),
    )


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
    any_text = rt.any_text
    patterns = rt.text if any_text is None or any(any_text(text) for _, text in texts) else ()
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
    classification = Classification(not np_reasons, bool(rt_reasons), tuple(np_reasons or rt_reasons))
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
    flags = Flags(registry_code, tuple(registry_reasons), nom_code, tuple(nom_reasons))
    return Evaluation(completeness, classification, flags, timing)


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
