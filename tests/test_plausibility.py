"""Plausibility ranges of the registry profile (spec sections 4 and 6, issue 8).

Records are read from the project's synthetic dose objects (sample_dicom/) and changed
with ``dataclasses.replace``; verdicts come from the default configuration's rules. Reasons
are asserted exactly. The last tests show that the ranges change no verdict of any sample
or corpus file.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from dosereg.conf.config import ConfigError, default_config
from dosereg.extract import DoseCheck, Event, Patient, Source, StudyRecord, extract_file
from dosereg.registry_export import (
    Rules,
    evaluate,
    evaluated_dict,
    load_profile,
    rules_from_config,
    without_implausible,
)
from dosereg.registry_export import profile as profile_module
from tests.conftest import CORPUS, SAMPLES, corpus_present, validate_record

PROFILE_PATH = Path(profile_module.__file__).resolve().parent.parent / "conf" / "registry_profiles" / "acr-dir.toml"
SIEMENS = SAMPLES / "ct_siemens_single_source.dcm"
UID = "2.25.229470105366121905937414201137460843181.5"
TOPOGRAM = f"protocol 'Topogram', event {UID}.1"
MONITORING = f"protocol 'Monitoring', event {UID}.3"
THORAX = f"protocol 'ThoraxRoutine', event {UID}.4"
TODAY = dt.date(2026, 5, 1)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return rules_from_config(default_config())


@pytest.fixture(scope="module")
def siemens() -> StudyRecord:
    """A complete single-source RDSR (G9327): Topogram, PreMonitoring, Monitoring, ThoraxRoutine."""
    record = extract_file(str(SIEMENS))
    assert record.error is None
    return record


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch: pytest.MonkeyPatch) -> None:
    """Today is 2026-05-01 for every test (the study-date bound reads the clock)."""
    monkeypatch.setattr(profile_module, "_today", lambda: TODAY)
    monkeypatch.setattr(profile_module, "_today_cache", [-math.inf, {}])


def with_event(record: StudyRecord, index: int, **changes: Any) -> StudyRecord:
    events = list(record.events)
    events[index] = replace(events[index], **changes)
    return replace(record, events=tuple(events))


def with_source(record: StudyRecord, index: int, **changes: Any) -> StudyRecord:
    event = record.events[index]
    return with_event(record, index, sources=(replace(event.sources[0], **changes), *event.sources[1:]))


def check(record: StudyRecord, rules: Rules) -> dict[str, Any]:
    d = evaluated_dict(record, rules)
    # the verdicts are JSON as the writers write it (no NaN or Infinity), whatever the record holds
    json.dumps({k: d[k] for k in ("completeness", "classification", "flags")}, allow_nan=False)
    validate_record(without_implausible(d))
    return d


# --- numbers outside their plausible range ------------------------------------------------------


def test_an_11912_s_event_is_implausible_and_warns(siemens: StudyRecord, rules: Rules) -> None:
    record = with_event(siemens, 2, exposure_time_s=11912.0)
    d = check(record, rules)
    # exposure time is neither required nor recommended: a warning, the study stays complete
    assert d["completeness"]["status"] == "complete"
    assert d["flags"]["registry_code"] == "G9327"
    assert d["completeness"]["warnings"] == [
        f"events[2].exposure_time_s 11912.0 is outside 0..3600 s (optional; {MONITORING})"]
    assert d["completeness"]["invalid"] == []
    assert d["completeness"]["implausible"] == [
        {"path": "events[2].exposure_time_s", "value": 11912.0, "reason": f"is outside 0..3600 s ({MONITORING})"}]
    # the record keeps the stated value; the registry copy carries null in its place
    assert d["events"][2]["exposure_time_s"] == 11912.0
    registry = without_implausible(d)
    assert registry["events"][2]["exposure_time_s"] is None
    assert registry["events"][3]["exposure_time_s"] == 4.71
    assert d["events"][2]["exposure_time_s"] == 11912.0  # without_implausible copies


def test_an_hour_of_exposure_is_still_plausible(siemens: StudyRecord, rules: Rules) -> None:
    d = check(with_event(siemens, 2, exposure_time_s=3600.0), rules)
    assert d["completeness"]["warnings"] == []
    assert "implausible" not in d["completeness"]


def test_required_number_out_of_range_makes_the_study_incomplete(siemens: StudyRecord, rules: Rules) -> None:
    d = check(with_event(siemens, 3, ctdivol_mGy=25000.0), rules)
    assert d["completeness"]["status"] == "incomplete"
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == [f"events[3].ctdivol_mGy 25000.0 is outside 0..10000 mGy ({THORAX})"]
    invalid = {"path": "events[3].ctdivol_mGy", "value": 25000.0, "reason": f"is outside 0..10000 mGy ({THORAX})"}
    assert d["completeness"]["invalid"] == [invalid]
    assert d["completeness"]["implausible"] == [invalid]
    assert evaluate(record=with_event(siemens, 3, ctdivol_mGy=25000.0), rules=rules).implausible_paths == (
        "events[3].ctdivol_mGy",)


def test_perfusion_dose_is_plausible(siemens: StudyRecord, rules: Rules) -> None:
    d = check(with_event(siemens, 3, ctdivol_mGy=1500.0, dlp_mGycm=24000.0), rules)
    assert d["flags"]["registry_code"] == "G9327"
    assert d["completeness"]["warnings"] == []


def test_the_range_applies_where_the_element_is_not_required(siemens: StudyRecord, rules: Rules) -> None:
    # CTDIvol is required except on localizers; a localizer's stated CTDIvol is range-checked too
    d = check(with_event(siemens, 0, ctdivol_mGy=-1.0, scanning_length_mm=4000.0), rules)
    assert d["flags"]["registry_code"] == "G9327"
    assert d["completeness"]["warnings"] == [
        f"events[0].ctdivol_mGy -1.0 is outside 0..10000 mGy (optional; {TOPOGRAM})",
        f"events[0].scanning_length_mm 4000.0 is outside 0..3000 mm (optional; {TOPOGRAM})",
    ]
    assert [i["path"] for i in d["completeness"]["implausible"]] == [
        "events[0].ctdivol_mGy", "events[0].scanning_length_mm"]


def test_localizer_collimation_may_be_its_length_but_a_rotation_may_not(siemens: StudyRecord, rules: Rules) -> None:
    # GE states a scout's nominal total collimation as its scanning length (560 mm)
    assert check(with_event(siemens, 0, nominal_total_collimation_mm=560.0), rules)["completeness"]["warnings"] == []
    d = check(with_event(siemens, 3, nominal_total_collimation_mm=560.0), rules)
    assert d["completeness"]["warnings"] == [
        f"events[3].nominal_total_collimation_mm 560.0 is outside 0..200 mm (recommended; {THORAX})"]
    assert d["completeness"]["implausible"][0]["path"] == "events[3].nominal_total_collimation_mm"


def test_recommended_and_optional_source_values(siemens: StudyRecord, rules: Rules) -> None:
    record = with_source(siemens, 3, kvp_kV=1200.0, max_tube_current_mA=36600.0)
    d = check(record, rules)
    assert d["flags"]["registry_code"] == "G9327"
    assert d["completeness"]["warnings"] == [
        f"events[3].sources[0].kvp_kV 1200.0 is outside 40..160 kV (recommended; {THORAX})",
        f"events[3].sources[0].max_tube_current_mA 36600.0 is outside 0..2000 mA (optional; {THORAX})",
    ]
    registry = without_implausible(d)
    assert registry["events"][3]["sources"][0] == {**d["events"][3]["sources"][0], "kvp_kV": None,
                                                   "max_tube_current_mA": None}


def test_pitch_outside_its_range_on_spiral_and_other_events(siemens: StudyRecord, rules: Rules) -> None:
    record = with_event(with_event(siemens, 3, pitch_factor=0.0), 1, pitch_factor=12.0)
    d = check(record, rules)
    assert d["completeness"]["warnings"] == [
        f"events[3].pitch_factor 0.0 is outside 0.01..5 (recommended; {THORAX})",
        f"events[1].pitch_factor 12.0 is outside 0..5 (optional; protocol 'PreMonitoring', event {UID}.2)",
    ]


def test_dose_check_values_and_patient_size(rules: Rules) -> None:
    record = extract_file(str(SAMPLES / "ct_toshiba_dose_check.dcm"))
    event = record.events[2]
    assert event.dose_check is not None
    record = replace(record, patient=replace(record.patient, height_m=175.0),
                     events=(*record.events[:2], replace(event, dose_check=replace(
                         event.dose_check, dlp_forward_estimate_mGycm=float("inf")))))
    d = check(record, rules)
    label = f"protocol {event.acquisition_protocol!r}, event {event.irradiation_event_uid}"
    assert d["completeness"]["warnings"] == [
        "patient.height_m 175.0 is outside 0..3 m (optional)",
        f"events[2].dose_check.dlp_forward_estimate_mGycm Infinity is not a finite number (optional; {label})",
    ]
    assert d["completeness"]["implausible"][1] == {
        "path": "events[2].dose_check.dlp_forward_estimate_mGycm", "value": "Infinity",
        "reason": f"is not a finite number ({label})"}
    assert without_implausible(d)["events"][2]["dose_check"]["dlp_forward_estimate_mGycm"] is None


# --- numbers that are not finite ---------------------------------------------------------------


def test_nan_in_a_required_element_is_not_a_finite_number(siemens: StudyRecord, rules: Rules) -> None:
    d = check(with_event(siemens, 3, dlp_mGycm=math.nan), rules)
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == [f"events[3].dlp_mGycm NaN is not a finite number ({THORAX})"]
    assert d["completeness"]["invalid"] == [
        {"path": "events[3].dlp_mGycm", "value": "NaN", "reason": f"is not a finite number ({THORAX})"}]
    # the evaluated record still holds the NaN; its registry copy is valid JSON
    assert math.isnan(d["events"][3]["dlp_mGycm"])
    json.dumps(without_implausible(d), allow_nan=False)


def test_computed_total_is_checked_like_a_stated_one(siemens: StudyRecord, rules: Rules) -> None:
    # two DLPs of 1e308 sum to infinity: the events are out of range, the total is not finite
    record = replace(with_event(with_event(siemens, 2, dlp_mGycm=1e308), 3, dlp_mGycm=1e308),
                     total_dlp_mGycm=math.inf, reported_total_dlp_mGycm=-5.0)
    d = check(record, rules)
    assert d["flags"]["registry_reasons"] == [
        f"events[2].dlp_mGycm 1e+308 is outside 0..100000 mGy.cm ({MONITORING})",
        f"events[3].dlp_mGycm 1e+308 is outside 0..100000 mGy.cm ({THORAX})",
    ]
    assert d["completeness"]["warnings"] == [
        "reported_total_dlp_mGycm -5.0 is outside 0..1000000 mGy.cm (recommended)",
        "total_dlp_mGycm Infinity is not a finite number (optional)",
    ]
    assert evaluate(record, rules).implausible_paths == (
        "events[2].dlp_mGycm", "events[3].dlp_mGycm", "reported_total_dlp_mGycm", "total_dlp_mGycm")
    registry = without_implausible(d)
    assert (registry["total_dlp_mGycm"], registry["reported_total_dlp_mGycm"]) == (None, None)
    json.dumps(registry, allow_nan=False)


def _numeric_paths() -> list[tuple[str, str]]:
    """(record class, field) of every float field of the study-record model."""
    found = []
    for cls in (StudyRecord, Patient, Event, Source, DoseCheck):
        for f in fields(cls):
            if "float" in str(f.type):
                found.append((cls.__name__, f.name))
    return found


def test_every_numeric_element_has_a_range_in_the_profile(rules: Rules) -> None:
    prefix = {"StudyRecord": "", "Patient": "patient.", "Event": "events[].", "Source": "events[].sources[].",
              "DoseCheck": "events[].dose_check."}
    ranged = {e.path for e in rules.profile.elements if e.type in ("number", "integer")}
    unranged = [f"{prefix[c]}{n}" for c, n in _numeric_paths() if f"{prefix[c]}{n}" not in ranged]
    assert unranged == []
    for e in rules.profile.elements:
        if e.type in ("number", "integer"):
            assert e.min is not None and e.max is not None, e.path


@pytest.mark.parametrize(("cls", "name"), _numeric_paths())
def test_nan_anywhere_is_not_a_finite_number(cls: str, name: str, siemens: StudyRecord, rules: Rules) -> None:
    record = with_event(siemens, 3, dose_check=DoseCheck())
    if cls == "StudyRecord":
        record, path = replace(record, **{name: math.nan}), name
    elif cls == "Patient":
        record, path = replace(record, patient=replace(record.patient, **{name: math.nan})), f"patient.{name}"
    elif cls == "Event":
        record, path = with_event(record, 3, **{name: math.nan}), f"events[3].{name}"
    elif cls == "Source":
        record, path = with_source(record, 3, **{name: math.nan}), f"events[3].sources[0].{name}"
    else:
        record = with_event(record, 3, dose_check=DoseCheck(**{name: math.nan}))
        path = f"events[3].dose_check.{name}"
    ev = evaluate(record, rules)
    assert ev.implausible_paths == (path,)
    assert ev.completeness.implausible[0].reason.startswith("is not a finite number")
    assert any(w.startswith(f"{path} NaN is not a finite number") for w in ev.completeness.warnings + ev.flags.registry_reasons)


# --- dates -------------------------------------------------------------------------------------


def test_birth_date_after_the_study_is_implausible(siemens: StudyRecord, rules: Rules) -> None:
    record = replace(siemens, patient=replace(siemens.patient, birth_date="9999-01-01"))
    d = check(record, rules)
    assert d["flags"]["registry_code"] == "G9327"  # the age (the registry's element) is stated apart
    assert d["completeness"]["warnings"] == [
        "patient.birth_date '9999-01-01' is outside 1880-01-01..study_date (2024-03-05) (optional)"]
    assert d["completeness"]["implausible"] == [{
        "path": "patient.birth_date", "value": "9999-01-01",
        "reason": "is outside 1880-01-01..study_date (2024-03-05)"}]
    # born on the day of the exam: plausible
    same_day = replace(siemens, patient=replace(siemens.patient, birth_date="2024-03-05"))
    assert check(same_day, rules)["completeness"]["warnings"] == []


def test_birth_date_before_1880_is_implausible(siemens: StudyRecord, rules: Rules) -> None:
    record = replace(siemens, patient=replace(siemens.patient, birth_date="1879-12-31"))
    assert check(record, rules)["completeness"]["warnings"] == [
        "patient.birth_date '1879-12-31' is outside 1880-01-01..study_date (2024-03-05) (optional)"]


def test_birth_date_bound_without_a_study_date(siemens: StudyRecord, rules: Rules) -> None:
    record = replace(siemens, study_date=None, patient=replace(siemens.patient, birth_date="1870-01-01"))
    d = check(record, rules)
    assert d["flags"]["registry_reasons"] == ["study_date missing"]
    assert d["completeness"]["warnings"] == [
        "patient.birth_date '1870-01-01' is outside 1880-01-01..study_date (optional)"]


def test_study_date_in_the_future_makes_the_study_incomplete(siemens: StudyRecord, rules: Rules) -> None:
    d = check(replace(siemens, study_date="9999-01-01"), rules)
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == [
        "study_date '9999-01-01' is outside 1971-10-01..today + 1 day (2026-05-02)"]
    assert d["completeness"]["implausible"] == [{
        "path": "study_date", "value": "9999-01-01",
        "reason": "is outside 1971-10-01..today + 1 day (2026-05-02)"}]
    # tomorrow is allowed (a scanner on another time zone's date); the day after is not
    assert check(replace(siemens, study_date="2026-05-02"), rules)["flags"]["registry_code"] == "G9327"
    d = check(replace(siemens, study_date="2026-05-03"), rules)
    assert d["flags"]["registry_reasons"] == [
        "study_date '2026-05-03' is outside 1971-10-01..today + 1 day (2026-05-02)"]


def test_study_date_before_the_first_ct_scan(siemens: StudyRecord, rules: Rules) -> None:
    d = check(replace(siemens, study_date="1970-01-01"), rules)
    assert d["flags"]["registry_reasons"] == [
        "study_date '1970-01-01' is outside 1971-10-01..today + 1 day (2026-05-02)"]


def test_today_follows_the_clock(siemens: StudyRecord, rules: Rules, monkeypatch: pytest.MonkeyPatch) -> None:
    record = replace(siemens, study_date="2026-05-03")
    assert evaluate(record, rules).flags.registry_code == "G9326"
    monkeypatch.setattr(profile_module, "_today", lambda: dt.date(2026, 5, 2))
    monkeypatch.setattr(profile_module, "_today_cache", [-math.inf, {}])  # as 10 s later
    assert evaluate(record, rules).flags.registry_code == "G9327"


# --- the profile language ------------------------------------------------------------------------


def _profile(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text('name = "t"\nversion = "1"\n' + body)
    return path


@pytest.mark.parametrize(("body", "message"), [
    ('[[optional]]\npath = "patient.birth_date"\ntype = "date"\nmin = "yesterday"\n',
     "min: 'yesterday': unknown element 'yesterday'"),
    ('[[optional]]\npath = "patient.birth_date"\ntype = "date"\nmin = "2024-02-30"\n',
     "min '2024-02-30' is not a calendar date"),
    ('[[optional]]\npath = "patient.birth_date"\ntype = "date"\nmin = 2020-01-01\nmax = 2010-01-01\n',
     "min 2020-01-01 is after max 2010-01-01"),
    ('[[optional]]\npath = "patient.birth_date"\ntype = "date"\nmax = "events[].start_datetime"\n',
     "a date bound refers to one study-level element"),
    ('[[optional]]\npath = "events[].start_datetime"\ntype = "date"\nmax = "today"\n',
     "min/max of a date apply to study-level elements only"),
    ('[[optional]]\npath = "patient.sex"\ntype = "enum"\nvalues = ["M"]\nmin = 1\n',
     "min/max apply to type number, integer or date, not 'enum'"),
    ('[[optional]]\npath = "patient.birth_date"\ntype = "date"\nmax = 5\n',
     "max of a date must be a date (YYYY-MM-DD), 'today', 'today + N days' or a study-level date element"),
])
def test_profile_mistakes_are_config_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_profile(_profile(tmp_path, body))


def test_date_bounds_in_words(rules: Rules, tmp_path: Path) -> None:
    by_path = {e.path: e for e in rules.profile.optional}
    assert by_path["patient.birth_date"].describe() == "date, 1880-01-01..study_date"
    assert by_path["patient.birth_date"].level == "optional"
    assert rules.profile.required[1].describe() == "date, 1971-10-01..today + 1 day"
    profile = load_profile(_profile(tmp_path, '[[required]]\npath = "study_date"\ntype = "date"\n'
                                              'min = 2000-01-01\nmax = "today - 2 days"\n'))
    assert profile.required[0].describe() == "date, 2000-01-01..today - 2 days"
    assert profile.required[0].date_max is not None and profile.required[0].date_max.today_offset == -2


def test_one_pass_over_the_events_keeps_the_profile_order(siemens: StudyRecord, rules: Rules) -> None:
    # element by element, each in event order, exactly as one check per element would say it
    record = with_event(with_event(siemens, 1, ctdivol_mGy=None, phantom=None),
                        2, ctdivol_mGy=None, dlp_mGycm=-1.0, phantom=None)
    d = check(record, rules)
    pre = f"protocol 'PreMonitoring', event {UID}.2"
    assert d["flags"]["registry_reasons"] == [
        f"events[1].ctdivol_mGy missing ({pre})",
        f"events[2].ctdivol_mGy missing ({MONITORING})",
        f"events[2].dlp_mGycm -1.0 is outside 0..100000 mGy.cm ({MONITORING})",
        f"events[1].phantom missing ({pre})",
        f"events[2].phantom missing ({MONITORING})",
    ]
    assert d["completeness"]["missing"] == ["events[1].ctdivol_mGy", "events[2].ctdivol_mGy",
                                            "events[1].phantom", "events[2].phantom"]


def test_without_implausible_ignores_paths_that_lead_nowhere() -> None:
    d = {"events": [{"sources": [{"kvp_kV": 1.0}]}], "patient": None}
    out = without_implausible(d, ["events[3].ctdivol_mGy", "patient.weight_kg", "events[0].sources[0].kvp_kV",
                                  "events[0].sources[2].kvp_kV"])
    assert out == {"events": [{"sources": [{"kvp_kV": None}]}], "patient": None}
    assert d == {"events": [{"sources": [{"kvp_kV": 1.0}]}], "patient": None}


# --- no real file's verdict changes ----------------------------------------------------------------


def _without_ranges(tmp_path: Path) -> Rules:
    """The default rules with the plausibility additions taken out: no [[optional]] elements and
    no date bounds (the number ranges of required and recommended elements predate them)."""
    text = PROFILE_PATH.read_text().split("# --- optional:", 1)[0]
    text = text.replace('min = "1971-10-01"\nmax = "today + 1 day"\n', "")
    assert 'max = "today' not in text and '\n[[optional]]\n' not in text
    profile = tmp_path / "no-ranges.toml"
    profile.write_text(text)
    base = rules_from_config(default_config())
    return replace(base, profile=load_profile(profile))


def _real_files() -> list[Path]:
    files = sorted(SAMPLES.glob("*.dcm"))
    if corpus_present():
        files += sorted(CORPUS.glob("*.dcm"))
    return files


def test_no_sample_or_corpus_verdict_changes(tmp_path: Path, rules: Rules) -> None:
    plain = _without_ranges(tmp_path)
    assert not plain.profile.optional and rules.profile.optional
    checked = 0
    for path in _real_files():
        record = extract_file(str(path))
        if record.error:
            continue
        with_ranges, without = evaluate(record, rules), evaluate(record, plain)
        assert with_ranges.flags == without.flags, path.name
        assert with_ranges.completeness.to_dict() == without.completeness.to_dict(), path.name
        assert with_ranges.implausible_paths == (), path.name
        checked += 1
    assert checked >= 17


@pytest.mark.parametrize("stem", sorted(p.stem for p in (SAMPLES / "expected").glob("*.json") if p.stem != "merges"))
def test_sample_verdicts_are_the_expected_ones(stem: str, rules: Rules) -> None:
    want = json.loads((SAMPLES / "expected" / f"{stem}.json").read_text())["record"]
    record = extract_file(str(SAMPLES / f"{stem}.dcm"))
    if want.get("error"):
        assert record.error is not None
        return
    d = evaluated_dict(record, rules)
    if want.get("completeness"):
        assert d["completeness"]["status"] == want["completeness"]["status"]
    assert d["flags"]["registry_code"] == want["flags"]["registry_code"]
    assert "implausible" not in (d["completeness"] or {})


def test_list_elements_of_events_keep_their_meaning(siemens: StudyRecord, tmp_path: Path) -> None:
    profile = load_profile(_profile(tmp_path, (
        '[[required]]\npath = "events[].sources"\ntype = "list"\n'
        '[[recommended]]\npath = "events[].sources[]"\n'
        '[[recommended]]\npath = "events[].dose_check.ctdivol_alert_mGy"\ntype = "number"\nmax = 5000\n')))
    rules = replace(rules_from_config(default_config()), profile=profile)
    # the sample's events state a CTDIvol alert value of 1000 mGy each
    record = with_event(with_event(with_event(siemens, 1, sources=()), 3,
                                   dose_check=DoseCheck(ctdivol_alert_mGy=6000.0)), 0, dose_check=None)
    ev = evaluate(record, rules)
    pre = f"protocol 'PreMonitoring', event {UID}.2"
    assert ev.flags.registry_reasons == (f"events[1].sources missing ({pre})",)
    assert ev.completeness.warnings == (
        f"events[1].sources[] missing (recommended; {pre})",
        f"events[0].dose_check.ctdivol_alert_mGy missing (recommended; {TOPOGRAM})",
        f"events[3].dose_check.ctdivol_alert_mGy 6000.0 is outside ..5000 (recommended; {THORAX})",
    )


def test_implausible_values_reach_no_registry_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An optional element out of its range (exposure time 11,912 s) warns, the study stays
    G9327 and is exported, and the registry files carry null in its place while the
    record keeps the stated value."""
    import dataclasses
    import json

    import pyarrow.parquet as pq

    from dosereg.conf.config import default_config
    from dosereg.extract import extract_file
    from dosereg.registry_export import evaluated_dict, export_batch, rules_from_config

    monkeypatch.setenv("DOSEREG_SECRET", "plausibility-test-secret-0123456789abcdef")
    cfg = dataclasses.replace(default_config(), storage=dataclasses.replace(default_config().storage,
                                                                           data_dir=str(tmp_path / "data")))
    rec = extract_file(SAMPLES / "ct_siemens_single_source.dcm")
    bad = dataclasses.replace(rec, events=(dataclasses.replace(rec.events[0], exposure_time_s=11912.0),
                                           *rec.events[1:]))
    d = evaluated_dict(bad, rules_from_config(cfg))
    assert d["flags"]["registry_code"] == "G9327"
    assert [i["path"] for i in d["completeness"]["implausible"]] == ["events[0].exposure_time_s"]
    result = export_batch(cfg, lambda: iter([bad]))
    folder = next((tmp_path / "data" / "registry").glob("*/*"))
    events = pq.read_table(folder / "events.parquet").to_pylist()
    assert events[0]["exposure_time_s"] is None
    assert [e["exposure_time_s"] for e in events[1:]] == [e.exposure_time_s for e in rec.events[1:]]
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["studies"][0]["events"][0]["exposure_time_s"] is None
    assert bad.events[0].exposure_time_s == 11912.0
    assert result is not None
