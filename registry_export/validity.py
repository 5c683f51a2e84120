"""Whether a present value satisfies its element's type and range (docs/registry-profile.md,
"Validity rules"): one validator per element, built once per loaded profile.

A validator returns None for a valid value, else what is wrong in words ("is outside
0..10000 mGy"), the reason the completeness verdict quotes. A number that is not finite or
outside its range, and a date outside its bounds, is *implausible* (:class:`Implausible`,
docs/registry-profile.md "Plausibility"): the registry files carry null in its place.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable
from typing import Any

from dosereg.extract import Code

from .paths import stated
from .profile import DateBound, ElementRule, is_number, range_text

__all__ = ["Implausible", "Validator", "absent", "date_reason", "outside_dates", "validator"]

Validator = Callable[[Any], "str | None"]


class Implausible(str):
    """A reason saying a number is not finite or outside its plausible range (or a date
    outside its bounds): the completeness verdict lists the element in ``implausible`` as
    well, at every level, so that the registry files carry null in its place."""

    __slots__ = ()


NOT_FINITE = Implausible("is not a finite number")
# The same words for a value that is no number at all (a string, a boolean): a wrong type,
# not an implausible statement, so not listed in ``implausible`` (the writers coerce "72.5").
NOT_A_NUMBER = "is not a finite number"
NOT_WHOLE = Implausible("is not a whole number")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def absent(value: Any) -> bool:
    """None, blank text or an empty list: the element is missing."""
    if value is None:
        return True
    t = value.__class__
    if t is str:
        return not value.strip()
    if t is tuple or t is list:
        return len(value) == 0
    return False


def validator(rule: ElementRule) -> Validator:
    """The validator of the rule's type (types are checked when the profile is read)."""
    t = rule.type
    if t in ("number", "integer"):
        return _number_validator(rule)
    if t == "enum":
        return _enum_validator(rule)
    if t == "list":
        return _list_validator(rule.min_items)
    return _FIXED[t]


def _number_validator(rule: ElementRule) -> Validator:
    lo, hi, whole = rule.min, rule.max, rule.type == "integer"
    outside = Implausible(f"is outside {range_text(rule)}")

    def number(value: Any) -> str | None:
        cls = value.__class__
        if not ((cls is float and math.isfinite(value)) or cls is int or is_number(value)):
            return NOT_FINITE if isinstance(value, float) else NOT_A_NUMBER
        if whole and value % 1:
            return NOT_WHOLE
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return outside
        return None

    return number


def _enum_validator(rule: ElementRule) -> Validator:
    allowed = frozenset(rule.values)
    message = f"is not one of {', '.join(rule.values)}"

    def enum(value: Any) -> str | None:
        return None if (value if value.__class__ is str else str(stated(value))) in allowed else message

    return enum


def _list_validator(min_items: int) -> Validator:
    def items(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)):
            return "is not a list"
        return None if len(value) >= min_items else f"has {len(value)} items, fewer than {min_items}"

    return items


def _present(value: Any) -> str | None:
    return None


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "is not text"


def date_reason(value: Any) -> str | None:
    """None for a calendar date written YYYY-MM-DD, else what is wrong."""
    if value.__class__ is not str or not _DATE.match(value):
        return "is not a date (YYYY-MM-DD)"
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        return "is not a valid date"
    return None


def _time(value: Any) -> str | None:
    return None if isinstance(value, str) and _TIME.match(value) else "is not a time (HH:MM:SS[.ffffff])"


def _uid(value: Any) -> str | None:
    ok = isinstance(value, str) and len(value) <= 64 and _UID.match(value) is not None
    return None if ok else "is not a valid DICOM UID"


def _code(value: Any) -> str | None:
    ok = isinstance(value, Code) and not absent(value.value) and not absent(value.scheme)
    return None if ok else "is not a coded concept with value and coding scheme"


_FIXED: dict[str, Validator] = {"present": _present, "text": _text, "date": date_reason, "time": _time,
                                "uid": _uid, "code": _code}


def outside_dates(lo: DateBound | None, low: str | None, hi: DateBound | None, high: str | None) -> str:
    """The range a date breaks: "is outside 1880-01-01..study_date (2024-03-01)"."""
    lo_text = "" if lo is None else lo.text if low is None else lo.label(low)
    hi_text = "" if hi is None else hi.text if high is None else hi.label(high)
    return Implausible(f"is outside {lo_text}..{hi_text}")


def date_bounds(rule: ElementRule) -> Callable[[str, object], str | None] | None:
    """For a date element with bounds: (valid date, record) -> None when the date lies within
    them, else the range it breaks. The bounds are resolved on each record, since they may be
    another element of it or today."""
    lo, hi = rule.date_min, rule.date_max
    if lo is None and hi is None:
        return None
    lo_fixed = lo.fixed if lo is not None else None  # fixed bounds need no resolving
    hi_fixed = hi.fixed if hi is not None else None

    def within(value: str, record: object) -> str | None:
        low = lo_fixed if lo_fixed is not None or lo is None else lo.resolve(record)
        high = hi_fixed if hi_fixed is not None or hi is None else hi.resolve(record)
        if (low is None or value >= low) and (high is None or value <= high):
            return None  # ISO dates with four-digit years order as text
        return outside_dates(lo, low, hi, high)

    return within
