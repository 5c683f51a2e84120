"""A patient's cumulative dose over a window (docs/dose-review.md, "Patient history"): for use
inside the hospital only (it is keyed by patient ID and never leaves the site).

:func:`patient_doses` reads each patient study once (non-patient and error records take no
part) into (patient ID, study date, DLP, effective-dose estimate); :class:`PatientHistory` then
gives, for any study, the patient's studies in the ``window_days`` up to and including its date,
their summed DLP (each event on its standard phantom, so head and body DLP add as the registry
compares them) and summed effective-dose estimate (AAPM Report 96 k-factors). Every event counts,
timing runs and localizers too: they are dose the patient received.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from dosereg.extract import Event, StudyRecord

from . import dosimetry
from .classification import non_patient_reasons
from .effective_dose import k_factor
from .rules import Rules

__all__ = ["PatientHistory", "events_dose"]


def events_dose(events: Iterable[Event]) -> tuple[float, float]:
    """(DLP mGy.cm on the standard phantoms, effective-dose estimate mSv) of a study's events
    whose DLP can be normalised (all of them: timing runs and localizers are dose too)."""
    dlp_sum = eff_sum = 0.0
    for ev in events:
        head = dosimetry.is_head_exam(ev)
        _, dlp = dosimetry.normalised_dose(ev, head)
        if dlp is not None and dlp == dlp:
            dlp_sum += dlp
            eff_sum += k_factor(ev, head)[1] * dlp
    return dlp_sum, eff_sum


def _day(text: Any) -> int | None:
    if isinstance(text, str) and len(text) >= 10:
        try:
            return date.fromisoformat(text[:10]).toordinal()
        except ValueError:
            return None
    return None


@dataclass
class PatientHistory:
    """Per patient ID: the studies' days, DLP and effective dose, sorted by day."""

    window_days: int
    _days: dict[str, list[int]] = field(default_factory=dict)
    _doses: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _uids: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[StudyRecord], rules: Rules, window_days: int) -> PatientHistory:
        """From every record (those the non-patient rules exclude take no part)."""
        rows: dict[str, list[tuple[int, str, float, float]]] = {}
        for record in records:
            row = _row(record, rules)
            if row is not None:
                rows.setdefault(row[0], []).append(row[1:])
        history = cls(window_days)
        for pid, items in rows.items():
            items.sort()
            history._days[pid] = [d for d, _, _, _ in items]
            history._uids[pid] = [u for _, u, _, _ in items]
            history._doses[pid] = [(dlp, eff) for _, _, dlp, eff in items]
        return history

    def add(self, record: StudyRecord, rules: Rules) -> None:
        """Account for one more study, or again for a study that changed (the same Study
        Instance UID replaces its earlier entry); a record :meth:`of` would skip is skipped."""
        row = _row(record, rules)
        if row is None:
            return
        pid, day, uid, dlp, eff = row
        days = self._days.setdefault(pid, [])
        uids = self._uids.setdefault(pid, [])
        doses = self._doses.setdefault(pid, [])
        if uid and uid in uids:
            i = uids.index(uid)
            del days[i], uids[i], doses[i]
        i = bisect.bisect_right(days, day)
        days.insert(i, day)
        uids.insert(i, uid)
        doses.insert(i, (dlp, eff))

    def cumulative(self, patient_id: Any, study_date: Any) -> Mapping[str, Any] | None:
        """``{window_days, studies, cumulative_dlp_mGycm, cumulative_effective_dose_mSv}`` of the
        patient's studies in the window ending on ``study_date`` (None: no ID or date)."""
        day = _day(study_date)
        days = self._days.get(patient_id) if isinstance(patient_id, str) else None
        if day is None or days is None:
            return None
        lo = bisect.bisect_left(days, day - self.window_days + 1)
        hi = bisect.bisect_right(days, day)
        doses = self._doses[patient_id][lo:hi]
        return {"window_days": self.window_days, "studies": hi - lo,
                "cumulative_dlp_mGycm": round(sum(d for d, _ in doses), 2),
                "cumulative_effective_dose_mSv": round(sum(e for _, e in doses), 3),
                "effective_dose_is_estimate": True}


def _row(record: StudyRecord, rules: Rules) -> tuple[str, int, str, float, float] | None:
    """(patient ID, day, Study Instance UID, DLP, effective dose) of a patient study, else None."""
    pid = record.patient.id
    day = _day(record.study_date)
    if record.error is not None or not pid or day is None or non_patient_reasons(record, rules.non_patient):
        return None
    return (pid, day, record.study_instance_uid or "", *events_dose(record.events or ()))
