"""Event elements of the registry profile checked in one pass over the events.

A profile has a dozen event elements (``events[].ctdivol_mGy``, ``events[].dose_check.x``,
``events[].sources[].kvp_kV``); one check each would walk the events a dozen times,
re-evaluating the same conditions. :func:`event_run` checks consecutive event elements in one
pass instead: per event, the elements whose conditions hold (remembered per value of the one
field they read, the acquisition type), each value read once and an in-range number accepted
inline. What they find is held back and replayed in profile order (element by element, each
in event order), so the collector sees exactly what one check per element
(``completeness._element_check``) would have told it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from dosereg.extract import Event, StudyRecord

from .profile import Condition, ElementRule
from .validity import Validator, absent, validator

if TYPE_CHECKING:
    from .completeness import Check, Collector, EventCache

__all__ = ["event_run", "fusable"]

_MEMO_MAX = 256  # distinct condition inputs remembered per run (acquisition types: seven)


def fusable(rule: ElementRule) -> bool:
    """Whether :func:`event_run` takes the element: ``events[].x``, ``events[].dose_check.x``
    or ``events[].sources[].x`` (not e.g. ``events[].sources[]``, the items themselves)."""
    if not rule.in_events or len(rule.alternatives) != 1:
        return False
    rest = rule.path.split(".")[1:]
    return (len(rest) == 1 and not rest[0].endswith("[]")) or (len(rest) == 2 and not rest[1].endswith("[]"))


class _Spec(NamedTuple):
    """One element of a run, as the inner loops unpack it."""

    position: int  # in the run (profile order)
    name: str  # the field read
    container: str  # "" (the event), a record below it, or a list of records below it
    level: str
    lo: float
    hi: float
    fast: bool  # a number element: an in-range number is accepted by one chained comparison
    whole: bool
    valid: Validator


# The elements that apply to one event: on the event; on a record below it and on the items of
# a list, each grouped by that record's or list's name (read once for all its elements).
_Grouped = tuple[tuple[str, tuple[_Spec, ...]], ...]
_EventSpecs = tuple[tuple[_Spec, ...], _Grouped, _Grouped]
# (position, event index, concrete path, value, reason or None for missing, event, level)
_Found = tuple[int, int, str, Any, "str | None", Event, str]


def _spec(position: int, rule: ElementRule) -> tuple[str, _Spec]:
    """(kind: "direct", "sub" or "items"; the element's spec)."""
    rest = rule.path.split(".")[1:]
    lo = -math.inf if rule.min is None else rule.min
    hi = math.inf if rule.max is None else rule.max
    fast, whole = rule.type in ("number", "integer"), rule.type == "integer"
    valid = validator(rule)
    if len(rest) == 1:
        return "direct", _Spec(position, rest[0], "", rule.level, lo, hi, fast, whole, valid)
    if rest[0].endswith("[]"):
        return "items", _Spec(position, rest[1], rest[0][:-2], rule.level, lo, hi, fast, whole, valid)
    return "sub", _Spec(position, rest[1], rest[0], rule.level, lo, hi, fast, whole, valid)


def event_run(rules: list[ElementRule]) -> Check:
    """Consecutive event elements in one pass over the events (see the module's docstring)."""
    kinds: dict[str, list[tuple[Condition | None, _Spec]]] = {"direct": [], "sub": [], "items": []}
    for k, rule in enumerate(rules):
        kind, spec = _spec(k, rule)
        kinds[kind].append((rule.when, spec))
    field, memo, specs_for = _applicable(kinds["direct"], kinds["sub"], kinds["items"])

    def run(record: StudyRecord, out: Collector, cache: EventCache) -> None:
        found: list[_Found] = []
        for i, ev in enumerate(record.events or ()):
            key = getattr(ev, field, None) if field is not None else None
            specs = memo.get(key) if key.__class__ is str else None
            _check_event(ev, i, specs or specs_for(ev), found)
        if found:
            found.sort(key=_by_position)  # stable: event order (and item order) within an element
            for _, _, path, value, why, ev, level in found:
                if why is None:
                    out.add_missing(path, event_label(ev), level)
                else:
                    out.add_invalid(path, value, why, event_label(ev), level)

    return run


def event_label(ev: object) -> str:
    """How a reason names an event: "protocol 'TAP', event 1.2.3"."""
    protocol = getattr(ev, "acquisition_protocol", None)
    uid = getattr(ev, "irradiation_event_uid", None)
    p = f"protocol {protocol!r}" if protocol else "no protocol"
    u = f"event {uid}" if uid else "no event UID"
    return f"{p}, {u}"


def _by_position(entry: _Found) -> int:
    return entry[0]


def _grouped(specs: Iterable[_Spec]) -> _Grouped:
    by_name: dict[str, list[_Spec]] = {}
    for spec in specs:
        by_name.setdefault(spec.container, []).append(spec)
    return tuple((name, tuple(group)) for name, group in by_name.items())


def _applicable(*kinds: list[tuple[Condition | None, _Spec]]) -> tuple[
        str | None, dict[str, _EventSpecs], Callable[[Event], _EventSpecs]]:
    """(field, memo, specs_for): ``specs_for(event)`` gives the run's elements whose conditions
    hold on the event. When the conditions read one top-level field (the acquisition type),
    ``memo`` keeps the answer for each text value of it seen so far: look it up first, and the
    conditions are evaluated once per value instead of once per event and element."""
    def holding(test: Callable[[Condition], bool]) -> _EventSpecs:
        d, s, i = (tuple(spec for when, spec in kind if when is None or test(when)) for kind in kinds)
        return d, _grouped(s), _grouped(i)

    fields = {c.field for kind in kinds for when, _ in kind if when is not None for c in when.clauses}
    if not fields:
        everything = holding(lambda when: True)
        return None, {}, lambda ev: everything
    if len(fields) > 1 or "." in next(iter(fields)):
        return None, {}, lambda ev: holding(lambda when: when.test(ev))
    field = next(iter(fields))
    memo: dict[str, _EventSpecs] = {}

    def specs_for(ev: Event) -> _EventSpecs:
        key = getattr(ev, field, None)
        answer = holding(lambda when: all(c.accepts(key) for c in when.clauses))
        if key.__class__ is str and len(memo) < _MEMO_MAX:
            memo[key] = answer
        return answer

    return field, memo, specs_for


def _in_range(value: Any, lo: float, hi: float, whole: bool) -> bool:
    """A finite number within lo..hi (a NaN fails every comparison; an infinite one, ``% 1``)."""
    c = value.__class__
    return (c is float or c is int) and lo <= value <= hi and (not whole or value % 1 == 0)


def _check_event(ev: Event, i: int, specs: _EventSpecs, found: list[_Found]) -> None:
    """Append to ``found`` each element of ``specs`` that is missing or invalid on event ``i``."""
    # Each loop accepts an in-range number, and skips an absent optional value, inline (this
    # runs for every element of every event); anything else goes to _check_value.
    direct, subs, items = specs
    _check_fields(ev, i, "", direct, ev, found)
    for sub_name, sub_specs in subs:
        sub = getattr(ev, sub_name, None)  # None: every element below it is absent
        for k, name, _, level, lo, hi, fast, whole, valid in sub_specs:
            value = getattr(sub, name, None)
            if value is None and level == "optional" or (value is not None and fast and _in_range(value, lo, hi, whole)):
                continue
            _check_value(value, k, i, f"{sub_name}.{name}", level, valid, ev, found)
    for list_name, item_specs in items:
        entries = getattr(ev, list_name, None)
        if not isinstance(entries, (list, tuple)) or not entries:
            for spec in item_specs:
                if spec.level != "optional":  # as profile.instances: an empty nested list is the element absent
                    found.append((spec.position, i, f"events[{i}].{list_name}[].{spec.name}", None, None, ev,
                                  spec.level))
            continue
        for j, item in enumerate(entries):
            _check_fields(item, i, f"{list_name}[{j}].", item_specs, ev, found)


def _check_fields(node: object, i: int, prefix: str, specs: tuple[_Spec, ...], ev: Event,
                  found: list[_Found]) -> None:
    """The elements ``specs`` on one record of event ``i``: the event itself (``prefix`` "")
    or one item of a list under it (``prefix`` "sources[0].")."""
    for k, name, _, level, lo, hi, fast, whole, valid in specs:
        value = getattr(node, name, None)
        if value is None:
            if level != "optional":
                found.append((k, i, f"events[{i}].{prefix}{name}", None, None, ev, level))
            continue
        c = value.__class__
        if fast and (c is float or c is int) and lo <= value <= hi and (not whole or value % 1 == 0):
            continue
        _check_value(value, k, i, prefix + name, level, valid, ev, found)


def _check_value(value: Any, k: int, i: int, rel: str, level: str, valid: Validator, ev: Event,
                 found: list[_Found]) -> None:
    """A value the inline tests did not accept: absent, invalid or (after all) valid."""
    if absent(value):
        if level != "optional":
            found.append((k, i, f"events[{i}].{rel}", None, None, ev, level))
        return
    why = valid(value)
    if why is not None:
        found.append((k, i, f"events[{i}].{rel}", value, why, ev, level))
