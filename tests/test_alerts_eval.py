"""The dose alerts' rule (docs/alerts.md), pure: each trigger, its threshold at the boundary, and
what never alerts (QA studies, timing runs, old studies)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from dosereg.conf.alerts import AlertsSettings
from dosereg.conf.config import default_config
from dosereg.conf.reference_levels import ReferenceLevel, load_reference_levels, reference_levels_path
from dosereg.extract import StudyRecord
from dosereg.registry_export import PatientHistory, alerts_for, dosimetry, evaluate, rules_from_config
from tests.synthetic import synthetic_study

CFG = default_config()
RULES = rules_from_config(CFG)
LEVELS = load_reference_levels(reference_levels_path(CFG))
SETTINGS = AlertsSettings(enabled=True)
RECEIVED = "2025-01-08T12:00:00Z"  # study 7 is of 2025-01-08 10:15:30


def run(record: StudyRecord, settings: AlertsSettings = SETTINGS, levels: Any = LEVELS,
        received: Any = RECEIVED, history: PatientHistory | None = None) -> list[Any]:
    return list(alerts_for(record, evaluate(record, RULES), RULES, settings, levels, history, received))


def with_scan(record: StudyRecord, **changes: Any) -> StudyRecord:
    """The record with its last event (the scan) changed."""
    events = list(record.events)
    events[-1] = replace(events[-1], **changes)
    return replace(record, events=tuple(events))


def test_event_above_the_notification_value_is_one_alert_with_the_study_fields() -> None:
    record = synthetic_study(7)  # TAP on body32 at 9 x 11 mGy: above adult body 50
    alerts = run(record)
    assert len(alerts) == 1
    a = alerts[0]
    scan = record.events[-1]
    assert (a.kind, a.quantity, a.value, a.threshold) == ("notification", "ctdivol_mGy", 99.0, 50.0)
    assert a.key == f"{record.study_instance_uid}|{scan.irradiation_event_uid}|notification"
    assert (a.accession_number, a.protocol, a.event_uid) == ("ACN000000007", "TAP 1.0 B30f", scan.irradiation_event_uid)
    assert (a.category, a.region, a.station_name) == ("adult_body", "body", "CT02")
    assert a.scanner == "GE MEDICAL SYSTEMS Revolution CT (CT02)"
    assert a.threshold_name == "Dose Check notification value, adult body"
    assert "Zyxwvut" not in repr(a.to_dict()) and "MRN" not in repr(a.to_dict())  # no patient name or ID
    assert run(record) == alerts  # the same key every time: sent once


def test_notification_boundary_is_strictly_above() -> None:
    base = synthetic_study(7)
    assert run(with_scan(base, ctdivol_mGy=50.0)) == []
    [a] = run(with_scan(base, ctdivol_mGy=50.01))
    assert (a.kind, a.value) == ("notification", 50.01)
    assert run(with_scan(base, ctdivol_mGy=99.0), replace(SETTINGS, notification=False)) == []


def test_alert_value_replaces_the_notification_of_the_same_event() -> None:
    base = synthetic_study(7)
    [a] = run(with_scan(base, ctdivol_mGy=1000.0))
    assert a.kind == "notification"  # 1000 is not above the alert value 1000
    [a] = run(with_scan(base, ctdivol_mGy=1000.5))
    assert (a.kind, a.value, a.threshold, a.threshold_name) == ("alert_value", 1000.5, 1000.0,
                                                                 "Dose Check alert value (body)")
    assert "NEMA XR 25" in a.source
    [a] = run(with_scan(base, ctdivol_mGy=1000.5), replace(SETTINGS, alert_value=False))
    assert a.kind == "notification"


def test_qa_study_never_alerts() -> None:
    assert run(synthetic_study(7, qa=True)) == []


def test_timing_run_never_alerts() -> None:
    record = synthetic_study(3)  # its second event is a bolus-tracking timing run (stationary, body32)
    child = replace(record, patient=replace(record.patient, age_years=5.0))
    events = list(child.events)
    events[1] = replace(events[1], ctdivol_mGy=30.0)  # above the paediatric body value (20 on body32)
    child = replace(child, events=tuple(events))
    ev = evaluate(child, RULES)
    assert ev.timing_runs[1] is True
    assert dosimetry.above_notification(events[1], 5.0, RULES.notification) is not None  # would, were it no timing run
    assert [a.event_uid for a in run(child)] == []


@pytest.mark.parametrize(("received", "expected"), [
    (datetime(2025, 1, 10, 10, 15), 1),  # exactly max_age_days (2) after the study: still timely
    (datetime(2025, 1, 10, 10, 16), 0),  # a minute later: a backfill
    ("2024-12-31T00:00:00Z", 1),  # before the study (a clock off): timely
    (None, 0),  # no receipt time
])
def test_max_age_days_from_the_study_to_the_receipt(received: Any, expected: int) -> None:
    assert len(run(synthetic_study(7), received=received)) == expected


def test_study_without_a_date_never_alerts() -> None:
    assert run(replace(synthetic_study(7), study_date=None)) == []


def _level(quantity: str, value: float, kind: str = "limit", **kw: Any) -> ReferenceLevel:
    return ReferenceLevel(name=f"test {kind}", exam=kw.pop("exam", "*"), region=kw.pop("region", "body"),
                          quantity=quantity, value=value, kind=kind, source="test source, table 1",
                          phantom="body32", stated_value=value, **kw)


def test_study_dlp_above_a_limit() -> None:
    record = synthetic_study(7)  # the scan's DLP: 720 + 7 x 3 = 741 (the localizer states none)
    levels = (*LEVELS, replace(_level("dlp_mGycm", 741.0), name="equal"), _level("dlp_mGycm", 740.0),
              replace(_level("dlp_mGycm", 100.0), name="head only", region="head"))
    alerts = [a for a in run(record, levels=levels) if a.kind == "reference_level"]
    assert [(a.key.split("|")[1:], a.value, a.threshold) for a in alerts] == [
        (["body", "reference_level", "test limit"], 741.0, 740.0)]
    assert alerts[0].protocol == "TAP 1.0 B30f" and alerts[0].event_uid is None
    assert alerts[0].source == "test source, table 1"


def test_event_ctdivol_above_a_drl_only_when_drls_are_asked_for() -> None:
    record = with_scan(synthetic_study(9), ctdivol_mGy=20.0)  # a chest: below every notification value
    levels = (*LEVELS, _level("ctdivol_mGy", 15.0, kind="drl"))
    assert run(record, levels=levels) == []  # default reference_level_kinds: limits only
    [a] = run(record, replace(SETTINGS, reference_level_kinds=("drl",)), levels=levels)
    assert (a.kind, a.quantity, a.value, a.threshold) == ("reference_level", "ctdivol_mGy", 20.0, 15.0)
    assert a.threshold_name == "test drl (diagnostic reference level (75th percentile))"


def test_cumulative_dlp_over_the_window() -> None:
    first = replace(synthetic_study(8), study_date="2025-01-06", dose_objects=())
    second = with_scan(synthetic_study(12), ctdivol_mGy=10.0)
    same = replace(second.patient, id=first.patient.id)
    second = replace(second, patient=same, study_date="2025-01-08")
    settings = replace(SETTINGS, cumulative_dlp_mgycm=1000.0, cumulative_window_days=30)
    history = PatientHistory.of([first], RULES, 30)
    dlp_first = history.cumulative(first.patient.id, first.study_date)["cumulative_dlp_mGycm"]  # type: ignore[index]
    assert dlp_first < 1000.0
    history.add(second, RULES)
    history.add(second, RULES)  # the same study again (it changed): counted once
    total = history.cumulative(second.patient.id, second.study_date)
    assert total is not None and total["studies"] == 2 and total["cumulative_dlp_mGycm"] > 1000.0
    [a] = run(second, settings, history=history)
    assert (a.kind, a.value, a.threshold, a.studies, a.window_days) == (
        "cumulative_dlp", total["cumulative_dlp_mGycm"], 1000.0, 2, 30)
    assert a.key == f"{second.study_instance_uid}|cumulative_dlp"
    assert run(second, replace(settings, cumulative_dlp_mgycm=total["cumulative_dlp_mGycm"]), history=history) == []
    assert run(second, SETTINGS, history=history) == []  # 0: off
