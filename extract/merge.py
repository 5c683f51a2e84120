"""Merging several dose objects of one study (docs/merging.md).

A pure function: records in the order they were received in, one merged record out.

* Study key: the header's Study Instance UID (callers group by it).
* Objects: the same SOP Instance UID received again replaces the earlier object (last
  received wins; identical content therefore changes nothing).
* Events: keyed by (Study Instance UID, Irradiation Event UID); a later object's values win.
  Cumulative reports (each repeats earlier events) and continuation reports (each holds
  new events) both end with every event exactly once.
* Philips dose screens describe the same scans as an RDSR of the study: when the study has
  an RDSR (or other SR) its events win and the screens are kept (listed in ``dose_objects``
  and ``dose_screens``) but not counted; a study with screens only keys their events by series number.
* ``reported_total_dlp_mGycm``: the newest object's stated total when its events include
  all earlier ones (cumulative), else the sum of the objects' stated totals (continuation);
  an object whose events another object repeats is superseded by it, whatever the arrival order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace

from .model import Event, Problem, StudyRecord

SCREEN = "philips_dose_info"
_COMPUTED = frozenset({"total_dlp_mGycm", "reported_total_dlp_mGycm"})  # paths of sums merging recomputes


def _event_key(obj_index: int, ev_index: int, ev: Event, screen: bool) -> tuple[str, object]:
    if not screen and ev.irradiation_event_uid:
        return ("uid", ev.irradiation_event_uid)
    if screen and ev.series_number is not None:
        return ("series", ev.series_number)
    # no key stated: this object's own event, never merged with another's
    return ("anon", (obj_index, ev_index))


_EVENT_PATH = re.compile(r"^events\[(\d+)\]")


def start_order(starts: Sequence[str | None]) -> list[int]:
    """Indices of events ordered by start time, then order of appearance; events without a
    start time follow the timed ones (docs/study-record.md)."""
    timed = sorted((i for i, t in enumerate(starts) if t), key=lambda i: (starts[i] or "", i))
    return timed + [i for i, t in enumerate(starts) if not t]


def renumber_events(problems: Sequence[Problem], order: Sequence[int]) -> tuple[Problem, ...]:
    """Problems whose ``events[i]`` paths follow the events into ``order`` (old indices listed
    in their new order)."""
    new_index = {old: new for new, old in enumerate(order)}

    def renumber(p: Problem) -> Problem:
        m = _EVENT_PATH.match(p.path)
        if not m or int(m.group(1)) not in new_index:
            return p
        return replace(p, path=_EVENT_PATH.sub(f"events[{new_index[int(m.group(1))]}]", p.path, count=1))

    return tuple(renumber(p) for p in problems)


def merge_study(records: Sequence[StudyRecord]) -> StudyRecord:
    """Merge the records of one study's dose objects, given in the order received."""
    usable = [r for r in records if r.error is None]
    if not usable:
        if not records:
            raise ValueError("merge_study needs at least one record")
        return records[-1]
    # last received wins per SOP Instance UID; keep first-arrival order of distinct objects
    by_sop: dict[str, StudyRecord] = {}
    for r in usable:
        sop = r.dose_objects[0].sop_instance_uid if r.dose_objects else f"#{id(r)}"
        known = by_sop.get(sop)
        if known is not None and _same_content(known, r):
            continue  # a re-sent identical object changes nothing, not even the order
        by_sop.pop(sop, None)
        by_sop[sop] = r
    objects = list(by_sop.values())
    if len(objects) == 1:
        return objects[0]

    srs = [r for r in objects if not _is_screen(r)]
    screens = [r for r in objects if _is_screen(r)]
    counted = srs if srs else screens
    screen_mode = not srs

    events: dict[tuple[str, object], Event] = {}
    # which object's version of each event won, to carry that object's problems along
    event_problems: dict[tuple[str, object], list[Problem]] = {}
    study_problems: list[Problem] = []
    key_sets: list[frozenset[tuple[str, object]]] = []
    for oi, r in enumerate(counted):
        keys = [_event_key(oi, ei, e, screen_mode) for ei, e in enumerate(r.events)]
        key_sets.append(frozenset(keys))
        for k, e in zip(keys, r.events, strict=True):
            events.pop(k, None)
            events[k] = e
            event_problems[k] = []
        for p in r.problems:
            m = _EVENT_PATH.match(p.path)
            if m and int(m.group(1)) < len(keys):
                event_problems[keys[int(m.group(1))]].append(p)
            elif oi == len(counted) - 1:
                study_problems.append(p)
    reported, reported_overflows = _reported_total(counted, key_sets)

    keys = list(events)
    ordered_keys = [keys[i] for i in start_order([events[k].start_datetime for k in keys])]
    merged_events = tuple(events[k] for k in ordered_keys)
    # the totals are computed again below, with their own problems
    problems = [p for p in study_problems if p.path not in _COMPUTED]
    for index, k in enumerate(ordered_keys):
        for p in event_problems.get(k, ()):
            problems.append(replace(p, path=_EVENT_PATH.sub(f"events[{index}]", p.path, count=1)))
    dlps = [e.dlp_mGycm for e in merged_events if e.dlp_mGycm is not None]
    total = finite_sum(dlps)
    if total is None and dlps:
        problems.append(Problem("total_dlp_mGycm", None, "sum of event DLPs is not finite"))
    if reported_overflows:
        problems.append(Problem("reported_total_dlp_mGycm", None, "sum of the objects' stated total DLPs is not finite"))
    # Header fields: the newest counted object describes the study
    base = counted[-1]
    # every object received for the study is listed; screens an SR supersedes are also
    # named in dose_screens (kept, not counted)
    dose_objects = tuple(o for r in objects for o in r.dose_objects)
    screen_refs = tuple(o for r in screens for o in r.dose_objects) if srs else ()
    return replace(
        base,
        dose_objects=dose_objects,
        dose_screens=screen_refs,
        events=merged_events,
        total_events=len(merged_events),
        total_dlp_mGycm=total,
        reported_total_dlp_mGycm=reported,
        problems=tuple(problems),
        source_file=None,
    )


def _is_screen(r: StudyRecord) -> bool:
    return bool(r.dose_objects) and r.dose_objects[0].kind == SCREEN


def _same_content(a: StudyRecord, b: StudyRecord) -> bool:
    """Equal but for when and from where each copy was received."""
    return a == replace(b, dose_objects=a.dose_objects, source_file=a.source_file)


def _reported_total(objects: list[StudyRecord],
                    key_sets: list[frozenset[tuple[str, object]]]) -> tuple[float | None, bool]:
    """The study's stated total DLP after merging (docs/merging.md).

    An object whose events are all contained in another object's events was superseded by
    that cumulative report; the stated totals of the objects that remain are added up. For
    cumulative reports that leaves the newest complete report, in whatever order they
    arrived; for continuation reports every object, so their totals add up. Returns the
    total and whether the stated totals add up to more than a finite number (then None).
    """
    keep: list[int] = []
    for i, ks in enumerate(key_sets):
        covered = any(
            j != i and ks <= other and (ks != other or j > i)  # equal sets: the later one stands
            for j, other in enumerate(key_sets)
        )
        if not covered:
            keep.append(i)
    stated = [t for t in (objects[i].reported_total_dlp_mGycm for i in keep) if t is not None]
    total = finite_sum(stated)
    return total, bool(stated) and total is None


def finite_sum(values: Sequence[float]) -> float | None:
    """The exact sum (math.fsum) of ``values``; None for no values or a sum that is not finite."""
    if not values:
        return None
    try:
        total = math.fsum(values)
    except (OverflowError, ValueError):  # the exact sum overflows, or inf - inf
        return None
    return total if math.isfinite(total) else None
