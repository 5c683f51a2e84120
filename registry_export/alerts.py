"""Dose alerts, the rule (docs/alerts.md): one evaluated study in, typed :class:`Alert` values out.

:func:`alerts_for` is pure: (record, evaluation, rules, ``[alerts]`` settings, reference levels,
patient history, when the object arrived) -> the alerts the study triggers, each with a stable
:attr:`Alert.key` (study, event or region, kind, level) so that the worker
(:mod:`.alert_worker`) sends each one once however often the study is evaluated again.

Triggers, each switched by ``[alerts]``:

* ``notification`` -- an event's CTDIvol above the Dose Check notification value of its category
  (:func:`.dosimetry.above_notification`, the rule of the report's table);
* ``alert_value`` -- an event's CTDIvol (on its region's standard phantom) above a Dose Check
  alert value (the reference levels of kind ``alert``, 1000 mGy as shipped); it replaces the
  notification alert of the same event (one alert per event, the more severe);
* ``reference_level`` -- an event (CTDIvol, SSDE) or a study's region (DLP summed) above a level
  of ``reference_level_kinds`` (default: regulatory limits only; a diagnostic reference level is
  a 75th percentile, exceeded by a quarter of the exams by construction);
* ``cumulative_dlp`` -- the patient's DLP over ``cumulative_window_days`` up to this study above
  ``cumulative_dlp_mgycm`` (one alert per study that brings or keeps the patient above it).

Never an alert for: a non-patient study (QA, QC, phantom: the classification's verdict), a timing
run, a study without a date, or an object received more than ``max_age_days`` after the study
(a backfill, import or reconcile of old studies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from dosereg.conf.alerts import AlertsSettings
from dosereg.conf.reference_levels import KINDS, ReferenceLevel
from dosereg.extract import Event, StudyRecord

from . import dosimetry
from .patient_history import PatientHistory
from .report import scanner_label
from .rules import Rules
from .verdicts import Evaluation

__all__ = ["ALERT_SCHEMA", "Alert", "alerts_for", "is_recent"]

ALERT_SCHEMA = "dosereg.alert/1"
_QUANTITY_UNIT = {"ctdivol_mGy": "mGy", "ssde_mGy": "mGy", "dlp_mGycm": "mGy·cm"}


@dataclass(frozen=True)
class Alert:
    """One triggering event. Carries the accession number and protocol (for use inside the
    hospital), never the patient's name or ID."""

    key: str  # study UID | event UID (or #position) or region | kind [| level]
    kind: str  # conf.alerts.ALERT_KINDS
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None
    scanner: str  # "Manufacturer Model (station)"
    station_name: str | None
    protocol: str | None  # the event's acquisition protocol, or the study's protocols
    event_uid: str | None
    quantity: str  # ctdivol_mGy | ssde_mGy | dlp_mGycm
    value: float
    threshold: float
    threshold_name: str
    source: str  # where the threshold comes from (configuration key or the level's citation)
    category: str | None = None  # Dose Check category
    region: str | None = None  # head | body
    studies: int | None = None  # cumulative_dlp: the patient's studies in the window
    window_days: int | None = None

    @property
    def unit(self) -> str:
        return _QUANTITY_UNIT[self.quantity]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": ALERT_SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        return cls(**{k: v for k, v in d.items() if k != "schema"})


def _study_datetime(record: StudyRecord) -> datetime | None:
    """The study's date and time (local, as DICOM states them); midnight when no time is stated."""
    if not isinstance(record.study_date, str):
        return None
    try:
        day = datetime.fromisoformat(record.study_date[:10])
    except ValueError:
        return None
    t = record.study_time
    if isinstance(t, str) and len(t) >= 5:
        try:
            hh, mm = int(t[:2]), int(t[3:5])
            return day.replace(hour=hh, minute=mm)
        except ValueError:
            return day
    return day


def _local(received_at: str | datetime) -> datetime | None:
    if isinstance(received_at, str):
        try:
            received_at = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
        except ValueError:
            return None
    return received_at.astimezone().replace(tzinfo=None) if received_at.tzinfo else received_at


def is_recent(record: StudyRecord, received_at: str | datetime | None, max_age_days: float) -> bool:
    """Whether the object received at ``received_at`` (ISO UTC, or aware datetime) came at most
    ``max_age_days`` after the study's date and time (compared in local time, as DICOM states the
    study). False without a study date or a receipt time: an alert needs both to be timely."""
    study = _study_datetime(record)
    received = _local(received_at) if received_at is not None else None
    if study is None or received is None:
        return False
    return received - study <= timedelta(days=max_age_days)


class _Study:
    """What every alert of one study repeats."""

    def __init__(self, record: StudyRecord) -> None:
        eq = record.equipment
        self.record = record
        self.ident: dict[str, Any] = {
            "study_instance_uid": record.study_instance_uid or "",
            "accession_number": record.accession_number, "study_date": record.study_date,
            "study_time": record.study_time, "study_description": record.study_description,
            "scanner": scanner_label({"manufacturer": eq.manufacturer, "model": eq.model,
                                      "station_name": eq.station_name}),
            "station_name": eq.station_name,
        }

    def key(self, *parts: str) -> str:
        return "|".join((self.ident["study_instance_uid"], *parts))

    def alert(self, key: str, **kw: Any) -> Alert:
        return Alert(key=key, **self.ident, **kw)


def _event_key(ev: Event, position: int) -> str:
    if ev.irradiation_event_uid:
        return ev.irradiation_event_uid
    return f"series{ev.series_number}" if ev.series_number is not None else f"#{position}"


def _level_matches(level: ReferenceLevel, exam: str, region: str, category: str) -> bool:
    return level.applies_to(exam, region) and (level.category is None or level.category == category)


def _event_alerts(st: _Study, ev: Event, position: int, age: float | None, exam: str, rules: Rules,
                  settings: AlertsSettings, levels: Sequence[ReferenceLevel]) -> list[Alert]:
    """The alerts of one event that is not a timing run."""
    head = dosimetry.is_head_exam(ev)
    region = "head" if head else "body"
    category = dosimetry.notification_category(ev, age)
    ekey = _event_key(ev, position)
    common = {"protocol": ev.acquisition_protocol, "event_uid": ev.irradiation_event_uid, "category": category,
              "region": region}
    out: list[Alert] = []
    ctdi, _ = dosimetry.normalised_dose(ev, head)
    severe = None
    if settings.alert_value and ctdi is not None:
        severe = next((lv for lv in levels if lv.kind == "alert" and lv.quantity == "ctdivol_mGy"
                       and _level_matches(lv, exam, region, category) and ctdi > lv.value), None)
    if severe is not None:
        out.append(st.alert(st.key(ekey, "alert_value"), kind="alert_value", quantity="ctdivol_mGy",
                            value=round(float(ctdi or 0.0), 3), threshold=round(severe.value, 3),
                            threshold_name=severe.name, source=severe.source, **common))
    elif settings.notification:
        above = dosimetry.above_notification(ev, age, rules.notification)
        if above is not None:
            out.append(st.alert(st.key(ekey, "notification"), kind="notification", quantity="ctdivol_mGy",
                                value=float(ev.ctdivol_mGy or 0.0), threshold=round(above[1], 3),
                                threshold_name=f"Dose Check notification value, {above[0].replace('_', ' ')}",
                                source=f"[notification] {above[0]}", **common))
    if not dosimetry.is_compared(ev, False) or not settings.reference_level_kinds:
        return out
    values = {"ctdivol_mGy": ctdi, "ssde_mGy": dosimetry.ssde_mGy(ev, head)}
    for lv in levels:
        value = values.get(lv.quantity)
        if (lv.kind in settings.reference_level_kinds and value is not None
                and _level_matches(lv, exam, region, category) and value > lv.value):
            out.append(st.alert(st.key(ekey, "reference_level", lv.name), kind="reference_level",
                                quantity=lv.quantity, value=round(float(value), 3), threshold=round(lv.value, 3),
                                threshold_name=f"{lv.name} ({KINDS[lv.kind]})", source=lv.source, **common))
    return out


def _dlp_alerts(st: _Study, events: Sequence[Event], timing: Sequence[bool], age: float | None, exam: str,
                settings: AlertsSettings, levels: Sequence[ReferenceLevel]) -> list[Alert]:
    """Per region, the study's compared events' DLP summed (as the dose review) against the DLP levels."""
    sums: dict[str, list[Any]] = {}  # region -> [dlp, protocols, categories]
    for ev, t in zip(events, timing, strict=False):
        if not dosimetry.is_compared(ev, t):
            continue
        head = dosimetry.is_head_exam(ev)
        _, dlp = dosimetry.normalised_dose(ev, head)
        acc = sums.setdefault("head" if head else "body", [0.0, set(), set()])
        if dlp is not None and dlp == dlp:
            acc[0] += dlp
        acc[1].add(ev.acquisition_protocol or "(no protocol name)")
        acc[2].add(dosimetry.notification_category(ev, age))
    out = []
    for lv in levels:
        if lv.quantity != "dlp_mGycm" or lv.kind not in settings.reference_level_kinds:
            continue
        for region, (dlp_sum, protocols, categories) in sums.items():
            if lv.applies_to(exam, region) and (lv.category is None or lv.category in categories) \
                    and dlp_sum > lv.value:
                out.append(st.alert(st.key(region, "reference_level", lv.name), kind="reference_level",
                                    protocol=", ".join(sorted(protocols)), event_uid=None, quantity="dlp_mGycm",
                                    value=round(dlp_sum, 3), threshold=round(lv.value, 3),
                                    threshold_name=f"{lv.name} ({KINDS[lv.kind]})", source=lv.source,
                                    region=region))
    return out


def alerts_for(record: StudyRecord, evaluation: Evaluation, rules: Rules, settings: AlertsSettings,
               levels: Sequence[ReferenceLevel], history: PatientHistory | None = None,
               received_at: str | datetime | None = None) -> tuple[Alert, ...]:
    """The alerts ``record`` (a merged study, evaluated as ``evaluation`` under ``rules``) triggers
    when its newest object arrived at ``received_at``. ``history`` (with this study in it) is asked
    for the cumulative DLP when ``settings.cumulative_dlp_mgycm`` is set."""
    if record.error is not None or not record.study_instance_uid or not evaluation.classification.patient_study:
        return ()
    if not is_recent(record, received_at, settings.max_age_days):
        return ()
    st = _Study(record)
    age = record.patient.age_years
    exam = rules.nomenclature.exam_name(record.study_description)
    timing = evaluation.timing_runs or (False,) * len(record.events)
    out: list[Alert] = []
    for position, (ev, t) in enumerate(zip(record.events, timing, strict=False)):
        if not t:
            out += _event_alerts(st, ev, position, age, exam, rules, settings, levels)
    out += _dlp_alerts(st, record.events, timing, age, exam, settings, levels)
    threshold = settings.cumulative_dlp_mgycm
    if threshold > 0 and history is not None:
        c = history.cumulative(record.patient.id, record.study_date)
        if c is not None and c["cumulative_dlp_mGycm"] > threshold:
            out.append(st.alert(st.key("cumulative_dlp"), kind="cumulative_dlp",
                                protocol=", ".join(sorted({e.acquisition_protocol or "(no protocol name)"
                                                           for e in record.events})),
                                event_uid=None, quantity="dlp_mGycm", value=float(c["cumulative_dlp_mGycm"]),
                                threshold=threshold,
                                threshold_name=f"cumulative DLP over {c['window_days']} days",
                                source="[alerts] cumulative_dlp_mgycm", studies=int(c["studies"]),
                                window_days=int(c["window_days"])))
    return tuple(out)
