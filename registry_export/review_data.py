"""The dose review a physicist reads before approving a batch (docs/dose-review.md), as plain data.

:class:`ReviewBuilder` accounts for one evaluated study at a time (the report's builder feeds
it) in compact columns: patient studies only (excluded and error records take no part), and of
their events neither timing runs nor localizers (constant-angle acquisitions). Each value is on
the standard phantom of its region (head 16 cm, body 32 cm; :func:`.dosimetry.normalised_dose`),
so head and body never meet in one statistic or chart. :meth:`ReviewBuilder.summary` aggregates
with pandas (one grouped quantile per table) into :class:`ReviewSummary`:

* per exam (the RadLex Playbook ID of the nomenclature table, else the study description) and
  per protocol, head and body apart: n, median and IQR of CTDIvol and SSDE (per event) and DLP
  (per study: the study's events of that region summed), the median effective-dose estimate,
  the site's local reference levels (75th percentile over the configured period, minimum n),
  and the configured levels with those the median exceeds;
* monthly medians per scanner and region;
* the studies above a reference level, with accession number and protocol.

Quartiles as the completeness report computes them (pandas, linear interpolation, type 7).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from dosereg.conf.config import Config
from dosereg.conf.reference_levels import ReferenceLevel, load_reference_levels, reference_levels_path
from dosereg.extract import Event

from . import dosimetry
from .effective_dose import k_factor
from .nomenclature import Nomenclature, load_nomenclature

__all__ = ["ExamStats", "LevelCheck", "ReviewBuilder", "ReviewSummary", "TrendPoint"]

ABOVE_ROWS = 200  # studies above a level shown on the page
HIGH_DOSE_ROWS = 50  # patients in the high-dose table
_NO_PROTOCOL = "(no protocol name)"


@dataclass(frozen=True)
class Quartiles:
    n: int
    p25: float
    median: float
    p75: float


@dataclass(frozen=True)
class LevelCheck:
    """One configured level next to a group: the group's median of ``level.quantity`` (over
    the events of ``level.category`` when it has one) and whether it exceeds the level."""

    level: ReferenceLevel
    median: float
    above: bool


@dataclass(frozen=True)
class ExamStats:
    """One exam (or protocol) of one region."""

    name: str
    region: str  # head | body
    studies: int
    ctdivol: Quartiles | None
    dlp: Quartiles | None
    ssde: Quartiles | None
    effective_dose_mSv: float | None  # median of the studies' estimates
    local_ctdivol: float | None  # the site's local reference level (75th percentile), None below min n
    local_dlp: float | None
    levels: tuple[LevelCheck, ...]

    @property
    def above(self) -> tuple[LevelCheck, ...]:
        return tuple(c for c in self.levels if c.above)


@dataclass(frozen=True)
class TrendPoint:
    scanner: str
    region: str
    month: str  # YYYY-MM
    events: int
    ctdivol_median: float | None
    studies: int
    dlp_median: float | None


@dataclass(frozen=True)
class ReviewSummary:
    exams: tuple[ExamStats, ...]
    protocols: tuple[ExamStats, ...]
    trends: tuple[TrendPoint, ...]
    above_level: tuple[Mapping[str, Any], ...]  # every study above a level (the page shows ABOVE_ROWS)
    above_level_count: int
    levels: tuple[ReferenceLevel, ...]
    local_period: tuple[str, str] | None  # (first, last day) of the local levels' period
    local_min_n: int
    studies: int
    high_dose: tuple[Mapping[str, Any], ...] = ()  # patients with the highest cumulative DLP (no patient ID)
    history_days: int = 365


def _month(study_date: Any) -> str:
    return study_date[:7] if isinstance(study_date, str) and len(study_date) >= 7 else "(no date)"


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else math.nan


class _Codes:
    """Strings as small integers (the columns stay compact)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def __call__(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
        return i


class ReviewBuilder:
    """Accounts for evaluated studies (:meth:`add`) and aggregates them (:meth:`summary`)."""

    def __init__(self, cfg: Config, nomenclature: Nomenclature | None = None,
                 levels: Sequence[ReferenceLevel] | None = None) -> None:
        self.cfg = cfg
        self.nomenclature = nomenclature if nomenclature is not None else load_nomenclature(cfg.nomenclature_table)
        self.levels = tuple(levels) if levels is not None else load_reference_levels(reference_levels_path(cfg))
        self.codes = _Codes()
        # one row per compared event
        self.ev_study = array("i")
        self.ev_protocol = array("i")
        self.ev_category = array("i")
        self.ev_ctdivol = array("d")
        self.ev_ssde = array("d")
        self.ev_dlp = array("d")
        # one row per (study, region) with compared events
        self.st_study = array("i")
        self.st_exam = array("i")
        self.st_head = array("b")
        self.st_scanner = array("i")
        self.st_month = array("i")
        self.st_date = array("i")  # days since 1970-01-01, -1 unknown
        self.st_dlp = array("d")
        self.st_effective = array("d")
        self.accessions: list[Any] = []
        self.dates: list[Any] = []
        self.studies = 0
        self._patients: dict[str, int] = {}
        self.pt_patient, self.pt_day = array("i"), array("i")
        self.pt_dlp, self.pt_eff = array("d"), array("d")
        self.pt_accession: list[Any] = []
        self._pending: list[tuple[bool, int, int, float, float, float]] = []  # one study's events, by region

    # -- accumulation ------------------------------------------------------------------------
    def add(self, description: Any, accession: Any, study_date: Any, scanner: str, registry_code: str,
            events: Sequence[Event], timing_runs: Sequence[bool], age_years: Any, patient_id: Any = None) -> None:
        """Account for one study given by its parts (either form of the report's input)."""
        if registry_code in ("excluded", "unknown"):
            return
        exam = self.nomenclature.exam_name(description)
        codes = self.codes
        study = self.studies
        per_region: dict[bool, list[float]] = {}
        age = age_years if isinstance(age_years, (int, float)) else None
        whole_dlp = whole_eff = 0.0  # every event's, for the patient's history (patient_history.events_dose)
        for ev, timing in zip(events, timing_runs, strict=False):
            head = dosimetry.is_head_exam(ev)
            ctdi, dlp = dosimetry.normalised_dose(ev, head)
            dlp_value = _num(dlp)
            eff = k_factor(ev, head)[1] * dlp_value  # AAPM Report 96 estimate (effective_dose_mSv)
            if dlp_value == dlp_value:
                whole_dlp += dlp_value
                whole_eff += eff
            if not dosimetry.is_compared(ev, timing):
                continue
            ssde = dosimetry.ssde_mGy(ev, head)
            category = dosimetry.notification_category(ev, age)
            acc = per_region.setdefault(head, [0.0, 0.0, 0.0])  # dlp sum, effective dose sum, events
            acc[0] += dlp_value
            acc[1] += eff
            acc[2] += 1
            self._pending.append((head, codes(ev.acquisition_protocol or _NO_PROTOCOL), codes(category),
                                  _num(ctdi), _num(ssde), dlp_value))
        day = _day(study_date)
        for head, (dlp_sum, eff_sum, _n) in per_region.items():
            row = len(self.st_study)
            self.st_study.append(study)
            self.st_exam.append(codes(exam))
            self.st_head.append(1 if head else 0)
            self.st_scanner.append(codes(scanner))
            self.st_month.append(codes(_month(study_date)))
            self.st_date.append(day)
            self.st_dlp.append(dlp_sum)
            self.st_effective.append(eff_sum)
            for h, protocol_code, category_code, ctdi, ssde, ev_dlp in self._pending:
                if h == head:
                    self.ev_dlp.append(ev_dlp)
                    self.ev_study.append(row)
                    self.ev_protocol.append(protocol_code)
                    self.ev_category.append(category_code)
                    self.ev_ctdivol.append(ctdi)
                    self.ev_ssde.append(ssde)
        self._pending.clear()
        self._add_history(patient_id, study_date, accession, whole_dlp, whole_eff)
        if per_region:
            self.accessions.append(accession)
            self.dates.append(study_date)
            self.studies += 1

    def _add_history(self, patient_id: Any, study_date: Any, accession: Any, dlp: float, eff: float) -> None:
        """The study's whole dose for its patient's history (the patient ID stays in this object:
        the page names studies by accession number only)."""
        day = _day(study_date)
        if not isinstance(patient_id, str) or not patient_id or day < 0:
            return
        code = self._patients.setdefault(patient_id, len(self._patients))
        self.pt_patient.append(code)
        self.pt_day.append(day)
        self.pt_dlp.append(dlp)
        self.pt_eff.append(eff)
        self.pt_accession.append(accession)

    # -- aggregation ---------------------------------------------------------------------------
    def summary(self) -> ReviewSummary:
        from .review_stats import summarise

        return summarise(self)


def _day(study_date: Any) -> int:
    if isinstance(study_date, str) and len(study_date) >= 10:
        try:
            return (date.fromisoformat(study_date[:10]) - date(1970, 1, 1)).days
        except ValueError:
            return -1
    return -1


def day_text(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()
