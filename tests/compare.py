"""Compare an extracted study record with a partial expected record.

The rules (the same as the vendor corpus README's "How to compare"), used by the
sample_dicom tests and by the corpus conformance tests:

- every key present in the expected dict is checked at the same path of the output; keys not
  present are not checked; ``null`` means the value is not stated, so the output must be ``null``;
- lists must have the same length and match item by item, in order;
- numbers match within a relative 1e-6, unless written ``{"$approx": x, "abs": t}``;
  ``{"$any": [a, b]}`` accepts either alternative;
- codes (dicts with ``value`` and ``scheme``) compare ``value`` and ``scheme`` only, the
  SNOMED-RT (``SRT``) and SNOMED CT (``SCT``) forms of one concept being equal.

``assert_matches`` raises ``AssertionError`` listing every mismatch with its path, e.g.
``record.events[2].sources[0].kvp_kV: expected 120, got 100``.
"""

from __future__ import annotations

import math
from typing import Any

from dosereg.extract.concepts import srt_to_sct

__all__ = ["assert_matches", "mismatches", "REL_TOL"]

REL_TOL = 1e-6

_SRT_TO_SCT: dict[str, str] = dict(srt_to_sct())  # the extractor's one use of pydicom's mapping


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_code(x: Any) -> bool:
    return isinstance(x, dict) and "value" in x and "scheme" in x and not any(k.startswith("$") for k in x)


def _code_key(value: Any, scheme: Any) -> tuple[Any, Any]:
    """(value, scheme) with SNOMED-RT codes mapped to their SNOMED CT form."""
    if scheme == "SRT" and value in _SRT_TO_SCT:
        return _SRT_TO_SCT[value], "SCT"
    if scheme in ("SCT", "SNM3") and value in _SRT_TO_SCT.values():
        return value, "SCT"
    return value, scheme


def _numbers_equal(expected: float, actual: float, rel: float = REL_TOL, abs_tol: float = 0.0) -> bool:
    if math.isnan(expected) or math.isnan(actual):
        return False
    return math.isclose(expected, actual, rel_tol=rel, abs_tol=abs_tol)


def mismatches(expected: Any, actual: Any, path: str = "record") -> list[str]:
    """Every difference between ``expected`` (partial, with $approx/$any) and ``actual``."""
    # {"$any": [alternatives]}
    if isinstance(expected, dict) and "$any" in expected:
        alternatives = expected["$any"]
        if not isinstance(alternatives, list) or not alternatives:
            return [f"{path}: malformed $any in expected value: {expected!r}"]
        tried: list[str] = []
        for alt in alternatives:
            problems = mismatches(alt, actual, path)
            if not problems:
                return []
            tried.extend(problems)
        return [f"{path}: got {actual!r}, which matches none of {alternatives!r}"
                + "".join(f"\n    ({p})" for p in tried)]

    # {"$approx": x, "abs": t}
    if isinstance(expected, dict) and "$approx" in expected:
        target = expected["$approx"]
        if not _is_number(actual):
            return [f"{path}: expected a number ~{target!r}, got {actual!r}"]
        abs_tol = float(expected.get("abs", 0.0))
        rel = float(expected.get("rel", REL_TOL if "abs" not in expected else 0.0))
        if not _numbers_equal(float(target), float(actual), rel=rel, abs_tol=abs_tol):
            tol = f"abs {abs_tol}" if "abs" in expected else f"rel {rel}"
            return [f"{path}: expected {target!r} ({tol}), got {actual!r}"]
        return []

    if expected is None:
        return [] if actual is None else [f"{path}: expected null (value not stated), got {actual!r}"]

    if isinstance(expected, bool):
        if not isinstance(actual, bool) or actual != expected:
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        return []

    if _is_number(expected):
        if not _is_number(actual):
            return [f"{path}: expected number {expected!r}, got {actual!r}"]
        if not _numbers_equal(float(expected), float(actual)):
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        return []

    if isinstance(expected, str):
        if actual != expected:
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        return []

    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list of {len(expected)} item(s), got {actual!r}"]
        if len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} item(s), got {len(actual)}"]
        out: list[str] = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out.extend(mismatches(e, a, f"{path}[{i}]"))
        return out

    if _is_code(expected):
        if not isinstance(actual, dict) or "value" not in actual or "scheme" not in actual:
            return [f"{path}: expected code ({expected['value']}, {expected['scheme']}), got {actual!r}"]
        if _code_key(expected["value"], expected["scheme"]) != _code_key(actual["value"], actual["scheme"]):
            return [f"{path}: expected code ({expected['value']}, {expected['scheme']}), "
                    f"got ({actual['value']}, {actual['scheme']})"]
        return []

    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        out = []
        for key, e in expected.items():
            sub = f"{path}.{key}"
            if key not in actual:
                out.append(f"{sub}: missing from output (expected {e!r})")
                continue
            out.extend(mismatches(e, actual[key], sub))
        return out

    return [f"{path}: unsupported expected value {expected!r}"]


def assert_matches(expected: dict[str, Any], actual: dict[str, Any], path: str = "record") -> None:
    """Assert that ``actual`` matches the partial ``expected`` record; list every mismatch by path."""
    problems = mismatches(expected, actual, path)
    if problems:
        raise AssertionError(f"{len(problems)} mismatch(es):\n  " + "\n  ".join(problems))
