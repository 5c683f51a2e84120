"""Completeness of a study record against the registry profile (docs/registry-profile.md).

:func:`completeness_check` compiles a loaded :class:`~.profile.Profile` once into checks,
one per element (or one per run of consecutive event elements, :mod:`.event_checks`); the
compiled function then gives the :class:`~.verdicts.Completeness` of a typed
:class:`dosereg.extract.StudyRecord`. Missing or invalid **required** elements make the
study ``incomplete``; recommended ones only add warnings; optional ones are checked only
when present. Every reason names the element path and, for events, the event's protocol
and Irradiation Event UID; event indexes are 0-based, as in the JSON ``events`` array and in
the extractor's ``problems`` (which count as invalid when the element is required).

:func:`without_implausible` gives the registry files null at each implausible value
(docs/files.md: implausible values are never exported; the record keeps them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from dosereg.extract import Event, ExamRecord, Problem, StudyRecord

from .event_checks import event_label, event_run, fusable
from .paths import instances, stated, value_at
from .profile import Condition, ElementRule, Profile
from .validity import Implausible, absent, date_bounds, validator
from .verdicts import Completeness, InvalidElement, json_value

__all__ = ["NO_DOSE_REPORT", "Check", "Collector", "EventCache", "completeness_check", "without_implausible"]

#: The reason of an exam the PACS or RIS knows and no dose object came for (spec section 10).
NO_DOSE_REPORT = "no dose report received"
_NO_DOSE_REPORT = Completeness("incomplete", missing=("dose_objects",), reasons=(NO_DOSE_REPORT,))

_SCALARS = frozenset({str, int, float, bool, type(None)})


def _shown(value: Any) -> Any:
    """A value as a reason quotes it: text in quotes, a non-finite number by its JSON-style name."""
    if isinstance(value, str):
        return repr(value)
    return json_value(value)


class Collector:
    """What the checks of one record found, in evaluation order."""

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
        if value.__class__ not in _SCALARS:
            value = stated(value)  # a coded concept or a list, as the JSON record states it
        shown = _shown(value)
        suffix = f" ({label})" if label else ""
        item = InvalidElement(path, value, f"{why}{suffix}")
        if level == "required":
            self.invalid.append(item)
            self.reasons.append(f"{path} {shown} {why}{suffix}")
        else:
            self.warning_for[path] = len(self.warnings)
            self.warnings.append(f"{path} {shown} {why} ({level}" + (f"; {label})" if label else ")"))
        if why.__class__ is Implausible:
            self.implausible.append(item)

    def completeness(self) -> Completeness:
        incomplete = bool(self.missing or self.invalid)
        return Completeness._of(
            status="incomplete" if incomplete else "complete", missing=tuple(self.missing),
            invalid=tuple(self.invalid), warnings=tuple(self.warnings),
            reasons=tuple(r for r in self.reasons if r) if self.reasons else (),
            implausible=tuple(self.implausible))


# condition text -> the (index, event) of a record where it holds: elements share conditions
EventCache = dict[str, list[tuple[int, Event]]]
Check = Callable[[StudyRecord, Collector, EventCache], None]


def completeness_check(profile: Profile) -> Callable[[StudyRecord], Completeness]:
    """The profile compiled (no path parsing or type dispatch per record): record -> verdict.

    Consecutive event elements share one check (one pass over the events,
    :func:`.event_checks.event_run`); the output is the same as one check per element.
    """
    checks: list[Check] = []
    run: list[ElementRule] = []
    for rule in profile.elements:
        if fusable(rule):
            run.append(rule)
            continue
        if run:
            checks.append(event_run(run))
            run = []
        checks.append(_element_check(rule))
    if run:
        checks.append(event_run(run))
    elements = profile.elements

    def completeness(record: StudyRecord) -> Completeness:
        if record.__class__ is ExamRecord and not record.dose_objects:
            return _NO_DOSE_REPORT  # nothing of the dose is known: only that the report is missing
        out = Collector()
        cache: EventCache = {}
        for check in checks:
            check(record, out, cache)
        _apply_problems(record, elements, out)
        return out.completeness()

    return completeness


def _element_check(rule: ElementRule) -> Check:
    """One element's own check: its path walked on the record (or on each event where the
    element's condition holds), each value found tested for presence and validity."""
    if rule.in_events:
        return _event_element(rule)
    if len(rule.alternatives) > 1:  # (a date with bounds has one path)
        return _any_of_check(rule)
    return _study_element(rule)


def _event_element(rule: ElementRule) -> Check:
    """An event element the one-pass run does not take (``events[].sources[]``, the items)."""
    valid, level, when = validator(rule), rule.level, rule.when
    rest = rule.alternatives[0].split(".")[1:]  # below "events[]"
    when_text = when.text if when is not None else ""

    def event_element(record: StudyRecord, out: Collector, cache: EventCache) -> None:
        for i, ev in events_where(record, when, when_text, cache):
            for concrete, value, found in instances(ev, rest, f"events[{i}]"):
                if not found or absent(value):
                    out.add_missing(concrete, event_label(ev), level)
                    continue
                why = valid(value)
                if why is not None:
                    out.add_invalid(concrete, value, why, event_label(ev), level)

    return event_element


def _study_element(rule: ElementRule) -> Check:
    """A study-level element with one path (``patient.sex``); a date's bounds are resolved on
    each record (:func:`.validity.date_bounds`)."""
    valid, level, when, path = validator(rule), rule.level, rule.when, rule.path
    within = date_bounds(rule)
    names = tuple(path.split("."))

    def study_element(record: StudyRecord, out: Collector, cache: EventCache) -> None:
        if when is not None and not when.holds(record):
            return
        value: Any = record
        for name in names:  # paths.value_at, inlined: this runs for every element of every record
            value = getattr(value, name, None)
        if absent(value):
            out.add_missing(path, "", level)
            return
        why = valid(value)
        if why is None and within is not None:
            why = within(value, record)
        if why is not None:
            out.add_invalid(path, value, why, "", level)

    return study_element


def _any_of_check(rule: ElementRule) -> Check:
    """A study-level element with alternatives (``a|b``): one present and valid is enough;
    none present is the element missing; else each present one is invalid."""
    valid, level, when, path = validator(rule), rule.level, rule.when, rule.path
    alternatives = tuple((alt, tuple(alt.split("."))) for alt in rule.alternatives)

    def any_of(record: StudyRecord, out: Collector, cache: EventCache) -> None:
        if when is not None and not when.holds(record):
            return
        problems = []
        for alt, names in alternatives:
            value = value_at(record, names)
            if absent(value):
                continue
            why = valid(value)
            if why is None:
                return  # one alternative present and valid
            problems.append((alt, value, why))
        if not problems:
            out.add_missing(path, "", level)
        for alt, value, why in problems:
            out.add_invalid(alt, value, why, "", level)

    return any_of


def events_where(record: StudyRecord, when: Condition | None, text: str,
                 cache: EventCache) -> list[tuple[int, Event]]:
    """The (index, event) of the record's events for which ``when`` holds (all without a
    condition), worked out once per record and condition."""
    found = cache.get(text)
    if found is None:
        found = cache[text] = [(i, ev) for i, ev in enumerate(record.events or ())
                               if when is None or when.holds(ev)]
    return found


# --- the extractor's problems --------------------------------------------------------------

_EVENT_INDEX = re.compile(r"^events\[(\d+)\]")
_ANY_INDEX = re.compile(r"\[\d+\]")


def _rule_for_problem(problem: Problem, elements: tuple[ElementRule, ...]) -> ElementRule | None:
    generic = _ANY_INDEX.sub("[]", str(problem.path))
    for rule in elements:
        if generic in rule.alternatives:
            return rule
    return None


def _apply_problems(record: StudyRecord, elements: tuple[ElementRule, ...], out: Collector) -> None:
    """The extractor's problems: invalid when the element is required (and applies), else warnings."""
    events = record.events or ()
    for p in record.problems or ():
        path, value, reason = str(p.path), p.value, str(p.reason)
        rule = _rule_for_problem(p, elements)
        m = _EVENT_INDEX.match(path)
        ev = events[int(m.group(1))] if m and int(m.group(1)) < len(events) else None
        label = event_label(ev) if ev is not None else ""
        suffix = f" ({label})" if label else ""
        applies = rule is not None and rule.required
        if applies and rule is not None and rule.when is not None:
            applies = rule.when.holds(ev if rule.in_events and ev is not None else record)
        path_missing = path
        if applies and rule is not None and len(rule.alternatives) > 1:
            # an any-of element is satisfied by another alternative that is present
            applies = rule.path in out.missing_reason
            path_missing = rule.path
        if applies:
            _problem_invalid(out, path, path_missing, value, f"could not be read: {reason}{suffix}")
        else:
            _problem_warning(out, path, f"{path} could not be read: {reason}{suffix}")


def _problem_warning(out: Collector, path: str, text: str) -> None:
    idx = out.warning_for.pop(path, None)
    if idx is not None:  # replaces the plain "missing (recommended)" warning of that element
        out.warnings[idx] = text
    else:
        out.warnings.append(text)


def _problem_invalid(out: Collector, path: str, path_missing: str, value: str | None, why: str) -> None:
    """The element is reported as invalid (with the extractor's reason), not as missing."""
    idx = out.missing_reason.pop(path_missing, None)
    if idx is not None:
        out.missing.remove(path_missing)
        out.reasons[idx] = ""
    out.invalid.append(InvalidElement(path, value, why))
    shown = "" if value is None else f" {value!r}"
    out.reasons.append(f"{path}{shown} {why}")


# --- implausible values out of the registry files --------------------------------------------

_PATH_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


def without_implausible(d: dict[str, Any], paths: Iterable[str] | None = None) -> dict[str, Any]:
    """A copy of the JSON study record ``d`` with null at each implausible path, for the
    registry files (docs/files.md: implausible values are never exported; the record keeps them).

    ``paths`` defaults to ``d["completeness"]["implausible"][].path`` (as ``study_dict``
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
