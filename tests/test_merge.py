"""Merging rules (spec section 3) on records built in the test."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dosereg.extract import DoseObjectRef, Event, StudyRecord, merge_study

STUDY = "2.25.100"


def _rdsr(sop: str, events: list[tuple[str, float]], total: float | None, kind: str = "rdsr") -> StudyRecord:
    evs = tuple(Event(irradiation_event_uid=uid, acquisition_type="spiral", dlp_mGycm=dlp) for uid, dlp in events)
    return StudyRecord(
        study_instance_uid=STUDY,
        dose_objects=(DoseObjectRef(sop, "1.2.840.10008.5.1.4.1.1.88.67", kind, None),),
        events=evs, total_events=len(evs), reported_total_dlp_mGycm=total,
        total_dlp_mGycm=sum(d for _, d in events),
    )


def _screen(sop: str, series: list[tuple[int, float]], total: float) -> StudyRecord:
    evs = tuple(Event(series_number=n, acquisition_type="spiral", dlp_mGycm=dlp) for n, dlp in series)
    return StudyRecord(
        study_instance_uid=STUDY,
        dose_objects=(DoseObjectRef(sop, "1.2.840.10008.5.1.4.1.1.7", "philips_dose_info", None),),
        events=evs, total_events=len(evs), reported_total_dlp_mGycm=total,
    )


def test_continuation_objects_add_up() -> None:
    a = _rdsr("1", [("e1", 10.0), ("e2", 20.0)], 30.0)
    b = _rdsr("2", [("e3", 5.0)], 5.0)
    for order in ([a, b], [b, a], [a, b, a, b]):
        m = merge_study(order)
        assert m.total_events == 3
        assert m.total_dlp_mGycm == pytest.approx(35.0)
        assert m.reported_total_dlp_mGycm == pytest.approx(35.0)
        assert sorted(e.irradiation_event_uid or "" for e in m.events) == ["e1", "e2", "e3"]


def test_a_later_objects_values_win_for_the_same_event() -> None:
    a = _rdsr("1", [("e1", 10.0)], 10.0)
    b = _rdsr("2", [("e1", 12.5), ("e2", 1.0)], 13.5)
    m = merge_study([a, b])
    assert [e.dlp_mGycm for e in m.events] == [12.5, 1.0]
    assert m.reported_total_dlp_mGycm == 13.5


def test_same_sop_instance_with_different_content_replaces_the_earlier() -> None:
    a = _rdsr("1", [("e1", 10.0)], 10.0)
    a2 = _rdsr("1", [("e1", 11.0)], 11.0)
    m = merge_study([a, a2])
    assert len(m.dose_objects) == 1 and m.events[0].dlp_mGycm == 11.0 and m.reported_total_dlp_mGycm == 11.0


def test_events_with_the_same_uid_in_another_study_are_not_this_studys_business() -> None:
    # merge_study takes one study's records; the catalog groups by the header's Study UID
    a = _rdsr("1", [("e1", 10.0)], 10.0)
    other = replace(_rdsr("2", [("e1", 99.0)], 99.0), study_instance_uid="2.25.999")
    assert merge_study([a]).events[0].dlp_mGycm == 10.0
    assert merge_study([other]).events[0].dlp_mGycm == 99.0


def test_rdsr_events_win_over_a_philips_screen_which_is_kept_not_counted() -> None:
    screen = _screen("s1", [(2, 100.0), (3, 200.0)], 300.0)
    rdsr = _rdsr("r1", [("e1", 101.0), ("e2", 199.0)], 300.0)
    for order in ([screen, rdsr], [rdsr, screen]):
        m = merge_study(order)
        assert m.total_events == 2
        assert [e.irradiation_event_uid for e in m.events] == ["e1", "e2"]
        assert m.total_dlp_mGycm == pytest.approx(300.0) and m.reported_total_dlp_mGycm == 300.0
        assert {o.sop_instance_uid for o in m.dose_objects} == {"s1", "r1"}
        assert [o.sop_instance_uid for o in m.dose_screens] == ["s1"]


def test_screens_only_are_keyed_by_series_number() -> None:
    first = _screen("s1", [(2, 100.0)], 100.0)
    second = _screen("s2", [(2, 100.0), (3, 50.0)], 150.0)  # a later screen repeating series 2
    m = merge_study([first, second])
    assert m.total_events == 2
    assert [e.series_number for e in m.events] == [2, 3]
    assert m.total_dlp_mGycm == pytest.approx(150.0) and m.reported_total_dlp_mGycm == 150.0


def test_events_are_ordered_by_start_time_then_appearance() -> None:
    evs = (
        Event(irradiation_event_uid="late", start_datetime="2020-01-01T10:05:00"),
        Event(irradiation_event_uid="untimed"),
        Event(irradiation_event_uid="early", start_datetime="2020-01-01T10:00:00"),
    )
    a = replace(_rdsr("1", [], None), events=evs[:2])
    b = replace(_rdsr("2", [], None), events=evs[2:])
    m = merge_study([a, b])
    assert [e.irradiation_event_uid for e in m.events] == ["early", "late", "untimed"]


def test_problems_follow_their_events_when_reordered() -> None:
    from dosereg.extract import Problem
    from dosereg.extract.merge import renumber_events, start_order

    order = start_order(["2020-01-01T10:05:00", None, "2020-01-01T10:00:00"])
    assert order == [2, 0, 1]
    problems = [Problem("events[0].ctdivol_mGy", "abc", "not a number"), Problem("patient.sex", "U", "bad"),
                Problem("events[2].sources[0].kvp_kV", "x", "bad")]
    assert [p.path for p in renumber_events(problems, order)] == [
        "events[1].ctdivol_mGy", "patient.sex", "events[0].sources[0].kvp_kV"]
