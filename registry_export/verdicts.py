"""The verdicts of one evaluation, typed (docs/registry-profile.md, docs/study-record.md).

:class:`Evaluation` = :class:`Completeness` (with its :class:`InvalidElement` items),
:class:`Classification`, :class:`Flags` and one timing-run verdict per event. Each part has
the ``to_dict`` of its object in the JSON study record (``completeness``, ``classification``,
``flags``) and may be read by key as well as by attribute (``ev.flags["registry_code"]``).
Pure data: :mod:`.rules` computes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Classification", "Completeness", "Evaluation", "Flags", "InvalidElement", "json_value"]

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


def json_value(value: Any) -> Any:
    """``value`` as JSON can carry it: a non-finite number as its JSON-style name (NaN,
    Infinity, -Infinity), since JSON has no such numbers and the writers refuse them."""
    if value.__class__ is float and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return value


@dataclass(frozen=True)
class InvalidElement(_View):
    path: str  # the concrete record path, e.g. "events[2].ctdivol_mGy"
    value: Any  # as the JSON record states it (a non-finite float stays one; to_dict names it)
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "value": json_value(self.value), "reason": self.reason}


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
    #: one per event, in record order: a bolus-tracking or test-bolus scan
    #: (:func:`dosereg.registry_export.dosimetry.is_timing_run`); the JSON record's
    #: ``events[].is_timing_run``
    timing_runs: tuple[bool, ...] = field(default=())

    @property
    def implausible_paths(self) -> tuple[str, ...]:
        """Record paths whose stated values are implausible (see ``without_implausible``)."""
        return self.completeness.implausible_paths

    def to_dict(self) -> dict[str, Any]:
        return {"completeness": self.completeness.to_dict(), "classification": self.classification.to_dict(),
                "flags": self.flags.to_dict(), "timing_runs": list(self.timing_runs)}
