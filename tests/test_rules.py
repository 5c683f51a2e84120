"""Registry rules one by one (spec section 4) on study records built here.

Every evaluated record is validated against the project's schema; reasons and codes are
asserted exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dosereg.conf.config import default_config, load_config
from dosereg.extract import (
    Code,
    DoseObjectRef,
    Equipment,
    ErrorInfo,
    Event,
    Patient,
    Problem,
    Source,
    StudyRecord,
)
from dosereg.registry_export import Evaluation, Rules, evaluate, evaluated_dict, rules_from_config
from tests.conftest import validate_record

UID = "1.2.826.0.1.3680043.10.1"
LOCALIZER_UID = f"{UID}.1"
SPIRAL_UID = f"{UID}.2"
PROFILE = "acr-dir 2026.1"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return rules_from_config(default_config())


def localizer(**kw: Any) -> Event:
    base = dict(
        irradiation_event_uid=LOCALIZER_UID, acquisition_protocol="Topogram", acquisition_type="constant_angle",
        target_region=Code("T-D3000", "SRT", "Chest"), scanning_length_mm=500.0,
        sources=(Source(id="A", kvp_kV=120.0, tube_current_mA=35.0),),
    )
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def spiral(**kw: Any) -> Event:
    base = dict(
        irradiation_event_uid=SPIRAL_UID, acquisition_protocol="TAP", acquisition_type="spiral",
        target_region=Code("T-D3000", "SRT", "Chest"), scanning_length_mm=737.0, pitch_factor=0.6,
        nominal_total_collimation_mm=38.4, sources=(Source(id="A", kvp_kV=120.0, tube_current_mA=176.0),),
        ctdivol_mGy=9.91, phantom="body32", phantom_code=Code("113691", "DCM", "IEC Body Dosimetry Phantom"),
        dlp_mGycm=708.2,
    )
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def study(**kw: Any) -> StudyRecord:
    """A complete patient study: every required and recommended element present."""
    base: dict[str, Any] = dict(
        study_instance_uid=UID, accession_number="ACC1", study_date="2024-03-01", study_time="10:11:12",
        study_description="Thorax^TAP (Adult)", modality="SR",
        patient=Patient(id="123456", name="SMITH^JOHN", birth_date="1950-01-01", sex="M", age_years=74.16),
        equipment=Equipment(manufacturer="SIEMENS", model="SOMATOM Definition Flash", station_name="CTAWP1",
                            serial_number="SN1", device_observer_uid=f"{UID}.9"),
        dose_objects=(DoseObjectRef(f"{UID}.8", "1.2.840.10008.5.1.4.1.1.88.67", "rdsr", None),),
        total_events=2, total_dlp_mGycm=708.2, reported_total_dlp_mGycm=708.2,
        events=(localizer(), spiral()),
    )
    base.update(kw)
    return StudyRecord(**base)


def check(record: StudyRecord, rules: Rules) -> dict[str, Any]:
    d = evaluated_dict(record, rules)
    validate_record(d)
    return d


SPIRAL_LABEL = f"protocol 'TAP', event {SPIRAL_UID}"


# --- completeness -----------------------------------------------------------------------------


def test_complete_patient_study_is_G9327(rules: Rules) -> None:
    d = check(study(), rules)
    assert d["completeness"] == {"status": "complete", "missing": [], "invalid": [], "warnings": []}
    assert d["classification"] == {"patient_study": True, "rt_planning": False, "reasons": []}
    assert d["flags"]["registry_code"] == "G9327"
    assert d["flags"]["registry_reasons"] == [f"complete against registry profile {PROFILE}"]
    assert d["export"] is None


def test_missing_patient_sex_is_G9326_naming_the_path(rules: Rules) -> None:
    record = study(patient=replace(study().patient, sex=None))
    d = check(record, rules)
    assert d["completeness"]["status"] == "incomplete"
    assert d["completeness"]["missing"] == ["patient.sex"]
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == ["patient.sex missing"]


def test_age_outside_range_is_invalid(rules: Rules) -> None:
    d = check(study(patient=replace(study().patient, age_years=150.0)), rules)
    assert d["completeness"]["missing"] == []
    assert d["completeness"]["invalid"] == [
        {"path": "patient.age_years", "value": 150.0, "reason": "is outside 0..130 years"}
    ]
    assert d["flags"]["registry_reasons"] == ["patient.age_years 150.0 is outside 0..130 years"]


def test_missing_study_date_and_bad_date(rules: Rules) -> None:
    assert check(study(study_date=None), rules)["flags"]["registry_reasons"] == ["study_date missing"]
    d = check(study(study_date="2024-02-30"), rules)
    assert d["completeness"]["invalid"] == [
        {"path": "study_date", "value": "2024-02-30", "reason": "is not a valid date"}
    ]


def test_localizer_without_ctdivol_does_not_make_the_study_incomplete(rules: Rules) -> None:
    record = study(events=(localizer(ctdivol_mGy=None, dlp_mGycm=None, phantom=None), spiral()))
    d = check(record, rules)
    assert d["completeness"]["status"] == "complete"
    assert d["flags"]["registry_code"] == "G9327"


def test_spiral_without_ctdivol_names_event_protocol_and_uid(rules: Rules) -> None:
    d = check(study(events=(localizer(), spiral(ctdivol_mGy=None))), rules)
    assert d["completeness"]["missing"] == ["events[1].ctdivol_mGy"]
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == [f"events[1].ctdivol_mGy missing ({SPIRAL_LABEL})"]


def test_dlp_and_phantom_required_on_every_non_localizer_event(rules: Rules) -> None:
    stationary = spiral(irradiation_event_uid=f"{UID}.3", acquisition_protocol="Monitoring",
                        acquisition_type="stationary", dlp_mGycm=None, phantom=None, pitch_factor=None)
    d = check(study(events=(localizer(), spiral(), stationary)), rules)
    label = f"protocol 'Monitoring', event {UID}.3"
    assert d["completeness"]["missing"] == ["events[2].dlp_mGycm", "events[2].phantom"]
    assert d["flags"]["registry_reasons"] == [
        f"events[2].dlp_mGycm missing ({label})",
        f"events[2].phantom missing ({label})",
    ]


def test_ctdivol_out_of_range_and_other_phantom_are_invalid(rules: Rules) -> None:
    d = check(study(events=(localizer(), spiral(ctdivol_mGy=12000.0, phantom="other"))), rules)
    assert d["completeness"]["invalid"] == [
        {"path": "events[1].ctdivol_mGy", "value": 12000.0, "reason": f"is outside 0..10000 mGy ({SPIRAL_LABEL})"},
        {"path": "events[1].phantom", "value": "other", "reason": f"is not one of head16, body32 ({SPIRAL_LABEL})"},
    ]
    assert d["flags"]["registry_reasons"] == [
        f"events[1].ctdivol_mGy 12000.0 is outside 0..10000 mGy ({SPIRAL_LABEL})",
        f"events[1].phantom 'other' is not one of head16, body32 ({SPIRAL_LABEL})",
    ]


def test_unknown_acquisition_type_is_invalid_and_needs_dose(rules: Rules) -> None:
    event = spiral(acquisition_type="unknown", ctdivol_mGy=None, pitch_factor=None)
    d = check(study(events=(event,)), rules)
    assert d["completeness"]["invalid"] == [{
        "path": "events[0].acquisition_type", "value": "unknown",
        "reason": f"is not one of spiral, sequenced, constant_angle, stationary, free, cone_beam ({SPIRAL_LABEL})",
    }]
    assert d["completeness"]["missing"] == ["events[0].ctdivol_mGy"]


def test_serial_number_or_station_name(rules: Rules) -> None:
    eq = study().equipment
    assert check(study(equipment=replace(eq, serial_number=None)), rules)["flags"]["registry_code"] == "G9327"
    assert check(study(equipment=replace(eq, station_name=None)), rules)["flags"]["registry_code"] == "G9327"
    d = check(study(equipment=replace(eq, serial_number=None, station_name="  ")), rules)
    assert d["completeness"]["missing"] == ["equipment.serial_number|equipment.station_name"]
    assert d["flags"]["registry_reasons"] == ["equipment.serial_number|equipment.station_name missing"]


def test_manufacturer_and_model_required(rules: Rules) -> None:
    d = check(study(equipment=replace(study().equipment, manufacturer=None, model="")), rules)
    assert d["completeness"]["missing"] == ["equipment.manufacturer", "equipment.model"]


def test_description_or_procedure_code(rules: Rules) -> None:
    codes = (Code("CCHAPC", "General", "CT chest abdomen pelvis"),)
    assert check(study(study_description=None, procedure_codes=codes), rules)["flags"]["registry_code"] == "G9327"
    d = check(study(study_description=None), rules)
    assert d["flags"]["registry_reasons"] == ["study_description|procedure_codes missing"]


def test_study_without_events_or_dose_object(rules: Rules) -> None:
    d = check(study(events=()), rules)
    assert d["completeness"]["missing"] == ["events"]
    assert d["flags"]["registry_reasons"] == ["events missing"]
    d = check(study(dose_objects=()), rules)
    assert d["completeness"]["status"] == "complete"
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == ["no parsed CT dose object"]


def test_recommended_elements_only_warn(rules: Rules) -> None:
    record = study(
        accession_number=None,
        events=(localizer(), spiral(pitch_factor=None, sources=(Source(id="A", kvp_kV=200.0, tube_current_mA=176.0),))),
    )
    d = check(record, rules)
    assert d["completeness"]["status"] == "complete"
    assert d["flags"]["registry_code"] == "G9327"
    assert d["completeness"]["warnings"] == [
        "accession_number missing (recommended)",
        f"events[1].sources[0].kvp_kV 200.0 is outside 40..160 kV (recommended; {SPIRAL_LABEL})",
        f"events[1].pitch_factor missing (recommended; {SPIRAL_LABEL})",
    ]


def test_event_without_sources_warns_on_the_list_path(rules: Rules) -> None:
    d = check(study(events=(localizer(sources=()), spiral())), rules)
    label = f"protocol 'Topogram', event {LOCALIZER_UID}"
    assert d["completeness"]["warnings"] == [
        f"events[0].sources[].kvp_kV missing (recommended; {label})",
        f"events[0].sources[].tube_current_mA missing (recommended; {label})",
    ]


def test_event_without_protocol_or_uid_is_still_named(rules: Rules) -> None:
    d = check(study(events=(spiral(acquisition_protocol=None, irradiation_event_uid=None, phantom=None),)), rules)
    assert d["flags"]["registry_reasons"] == ["events[0].phantom missing (no protocol, no event UID)"]


# --- the extractor's problems -----------------------------------------------------------------


def test_problem_on_required_element_is_invalid_not_missing(rules: Rules) -> None:
    record = study(
        events=(localizer(), spiral(ctdivol_mGy=None)),
        problems=(Problem("events[1].ctdivol_mGy", "12,5", "Numeric Value '12,5' is not a decimal number"),),
    )
    d = check(record, rules)
    assert d["completeness"]["missing"] == []
    assert d["completeness"]["invalid"] == [{
        "path": "events[1].ctdivol_mGy", "value": "12,5",
        "reason": f"could not be read: Numeric Value '12,5' is not a decimal number ({SPIRAL_LABEL})",
    }]
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == [
        f"events[1].ctdivol_mGy '12,5' could not be read: Numeric Value '12,5' is not a decimal number ({SPIRAL_LABEL})"
    ]


def test_problem_on_study_level_required_element(rules: Rules) -> None:
    record = study(patient=replace(study().patient, sex=None), problems=(Problem("patient.sex", "X", "not M, F or O"),))
    d = check(record, rules)
    assert d["completeness"]["missing"] == []
    assert d["completeness"]["invalid"] == [{"path": "patient.sex", "value": "X", "reason": "could not be read: not M, F or O"}]
    assert d["flags"]["registry_reasons"] == ["patient.sex 'X' could not be read: not M, F or O"]


def test_problem_on_recommended_element_replaces_its_missing_warning(rules: Rules) -> None:
    record = study(events=(localizer(), spiral(target_region=None)),
                   problems=(Problem("events[1].target_region", None, "CODE content item has no Concept Code Sequence"),))
    d = check(record, rules)
    assert d["completeness"]["status"] == "complete"
    assert d["completeness"]["warnings"] == [
        f"events[1].target_region could not be read: CODE content item has no Concept Code Sequence ({SPIRAL_LABEL})"
    ]


def test_problems_on_optional_elements_or_localizers_only_warn(rules: Rules) -> None:
    record = study(problems=(
        Problem("events[0].ctdivol_mGy", "abc", "not a number"),  # localizer: not required
        Problem("report.start_datetime", "1997", "not a DATETIME"),  # not in the profile
        Problem("equipment.serial_number", "?", "unreadable"),  # any-of satisfied by station_name
    ))
    d = check(record, rules)
    assert d["completeness"]["status"] == "complete"
    assert d["completeness"]["warnings"] == [
        f"events[0].ctdivol_mGy could not be read: not a number (protocol 'Topogram', event {LOCALIZER_UID})",
        "report.start_datetime could not be read: not a DATETIME",
        "equipment.serial_number could not be read: unreadable",
    ]


# --- classification: non-patient studies ------------------------------------------------------------


@pytest.mark.parametrize(("patient", "description", "reason"), [
    (Patient(id="physics12345", name="QATesting^Physics", sex="M", age_years=42.0), None,
     ["patient.name matches non-patient pattern '*physics*'", "patient.id matches non-patient pattern 'phys*'"]),
    (Patient(id="QA-2024", name="Doe^Jane", sex="F", age_years=40.0), None,
     ["patient.id matches non-patient pattern 'qa*'"]),
    (Patient(id="777", name="CATPHAN^600", sex="O", age_years=1.0), "Daily Phantom Check",
     ["study_description 'Daily Phantom Check' matches non-patient pattern '*phantom*'"]),
    (Patient(id="778", name="Test^Scanner", sex="O", age_years=1.0), "Quality Control",
     ["patient.name matches non-patient pattern 'test^*'",
      "study_description 'Quality Control' matches non-patient pattern '*quality control*'"]),
])
def test_non_patient_studies_are_excluded(rules: Rules, patient: Patient, description: str | None,
                                          reason: list[str]) -> None:
    d = check(study(patient=patient, study_description=description or "RTP planning"), rules)
    assert d["classification"] == {"patient_study": False, "rt_planning": False, "reasons": reason}
    assert d["flags"] == {
        "registry_code": "excluded", "registry_reasons": [f"not a patient study: {r}" for r in reason],
        "nomenclature_code": None, "nomenclature_reasons": ["not a patient study"],
    }
    # no patient name or ID in the reasons
    text = " ".join(d["flags"]["registry_reasons"])
    assert patient.name not in text and patient.id not in text


def test_patient_names_that_merely_contain_qa_are_patients(rules: Rules) -> None:
    d = check(study(patient=replace(study().patient, name="AQAB^John", id="12QA")), rules)
    assert d["classification"]["patient_study"] is True
    assert d["flags"]["registry_code"] == "G9327"


# --- classification: RT planning -------------------------------------------------------------------


def test_rt_planning_by_study_description(rules: Rules) -> None:
    d = check(study(study_description="Thorax^RTP_4DCT_Thorax_C (Adult)"), rules)
    reasons = [
        "study_description 'Thorax^RTP_4DCT_Thorax_C (Adult)' matches RT-planning rule "
        "classification.rt_planning.text '(?<![a-z])rtp(?![a-z])'",
        "study_description 'Thorax^RTP_4DCT_Thorax_C (Adult)' matches RT-planning rule "
        "classification.rt_planning.text '(?<![a-z])4d ?ct(?![a-z])'",
    ]
    assert d["classification"] == {"patient_study": True, "rt_planning": True, "reasons": reasons}
    assert d["flags"]["registry_code"] == "G9327"
    assert d["flags"]["nomenclature_code"] == "G9320"
    assert d["flags"]["nomenclature_reasons"] == reasons


@pytest.mark.parametrize("text", ["CT Sim Pelvis", "RT Planning Brain", "Radiotherapy Head", "IGRT", "4D CT Lung"])
def test_rt_planning_texts(rules: Rules, text: str) -> None:
    assert check(study(study_description=text), rules)["flags"]["nomenclature_code"] == "G9320"


@pytest.mark.parametrize("text", ["PortPhase Abdomen", "Cardiac HeartPlan", "Abdomen 4DCTA", "Shortplan"])
def test_words_containing_rt_terms_are_not_rt_planning(rules: Rules, text: str) -> None:
    d = check(study(study_description=text), rules)
    assert d["classification"]["rt_planning"] is False
    assert d["flags"]["nomenclature_code"] == "G9319"


def test_rt_planning_by_event_protocol_and_requested_description(rules: Rules) -> None:
    events = (localizer(), spiral(acquisition_protocol="10.13 RADIOTHERAPY QA"))
    d = check(study(events=events), rules)
    assert d["flags"]["nomenclature_reasons"] == [
        "events[1].acquisition_protocol '10.13 RADIOTHERAPY QA' matches RT-planning rule "
        "classification.rt_planning.text 'radiotherap'"
    ]
    d = check(study(requested_procedure_description="CT for RT planning"), rules)
    assert d["flags"]["nomenclature_reasons"] == [
        "requested_procedure_description 'CT for RT planning' matches RT-planning rule "
        "classification.rt_planning.text '(?<![a-z])rt ?plan'"
    ]


def test_rt_planning_by_cpt_77014(rules: Rules) -> None:
    d = check(study(procedure_codes=(Code("77014", "C4", "CT guidance for placement of radiation therapy fields"),)),
              rules)
    assert d["flags"]["nomenclature_code"] == "G9320"
    assert d["flags"]["nomenclature_reasons"] == [
        "procedure_codes[0] '77014' matches RT-planning rule classification.rt_planning.procedure_codes '77014'"
    ]


def test_rt_planning_by_treatment_machine_cone_beam(rules: Rules) -> None:
    cbct = spiral(acquisition_type="cone_beam", acquisition_protocol="Pelvis CBCT", pitch_factor=None)
    eq = replace(study().equipment, manufacturer="Varian Medical Systems", model="TrueBeam")
    d = check(study(equipment=eq, events=(cbct,), study_description="Pelvis"), rules)
    assert d["flags"]["nomenclature_code"] == "G9320"
    assert d["flags"]["nomenclature_reasons"] == [
        "equipment.manufacturer 'Varian Medical Systems' matches RT-planning rule "
        "classification.rt_planning.manufacturers 'varian*' with a cone-beam acquisition (events[0]): "
        "image-guided radiation treatment delivery"
    ]
    # the same manufacturer without a cone-beam acquisition is not enough
    d = check(study(equipment=eq, study_description="Pelvis"), rules)
    assert d["flags"]["nomenclature_code"] == "G9319"


def test_rt_planning_by_station_name(tmp_path: Any) -> None:
    cfg_file = tmp_path / "dosereg.toml"
    cfg_file.write_text('[classification.rt_planning]\nstation_names = ["RADONC-*"]\n')
    rules = rules_from_config(load_config(cfg_file))
    eq = replace(study().equipment, station_name="RadOnc-CT1")
    d = check(study(equipment=eq, study_description="Chest"), rules)
    assert d["flags"]["nomenclature_code"] == "G9320"
    assert d["flags"]["nomenclature_reasons"] == [
        "equipment.station_name 'RadOnc-CT1' matches RT-planning rule classification.rt_planning.station_names "
        "'RADONC-*'"
    ]


# --- nomenclature -------------------------------------------------------------------------------------


def test_description_in_the_nomenclature_table_is_G9318(rules: Rules) -> None:
    d = check(study(study_description="ct  head wo contrast "), rules)
    assert d["flags"]["nomenclature_code"] == "G9318"
    line = rules.nomenclature.lookup("CT HEAD WO CONTRAST").line  # type: ignore[union-attr]
    assert d["flags"]["nomenclature_reasons"] == [
        f"study_description 'ct  head wo contrast ' maps to RadLex Playbook RPID22 (nomenclature.csv line {line})"
    ]


@pytest.mark.parametrize(("code", "reason"), [
    (Code("24627-2", "LN", "CT Chest"), "procedure_codes[0] '24627-2' is a LOINC (LN) code"),
    (Code("RPID16", "RADLEX", "CT CHEST WO IV CONTRAST"),
     "procedure_codes[0] 'RPID16' is a RadLex Playbook code (scheme RADLEX)"),
])
def test_standard_procedure_code_is_G9318(rules: Rules, code: Code, reason: str) -> None:
    d = check(study(procedure_codes=(code,)), rules)
    assert d["flags"]["nomenclature_code"] == "G9318"
    assert d["flags"]["nomenclature_reasons"] == [reason]


def test_procedure_code_meaning_in_the_table_is_G9318(rules: Rules) -> None:
    d = check(study(study_description=None, procedure_codes=(Code("CCHEC", None, "CT CHEST W CONTRAST"),)), rules)
    line = rules.nomenclature.lookup("CT CHEST W CONTRAST").line  # type: ignore[union-attr]
    assert d["flags"]["nomenclature_reasons"] == [
        f"procedure_codes[0] meaning 'CT CHEST W CONTRAST' maps to RadLex Playbook RPID17 (nomenclature.csv line {line})"
    ]


def test_unmapped_study_is_G9319_with_reasons(rules: Rules) -> None:
    d = check(study(procedure_codes=(Code("CCHAPC", "General", None),)), rules)
    assert d["flags"]["nomenclature_code"] == "G9319"
    assert d["flags"]["nomenclature_reasons"] == [
        "study_description 'Thorax^TAP (Adult)' is not in the nomenclature table nomenclature.csv",
        "procedure_codes 'CCHAPC' (General) are neither in a standard scheme (LN, RADLEX, RPID, PLAYBOOK) "
        "nor in nomenclature.csv",
    ]
    d = check(study(study_description=None, procedure_codes=(Code("X1", None, None),)), rules)
    assert d["flags"]["nomenclature_reasons"] == [
        "no study_description",
        "procedure_codes 'X1' (no scheme) are neither in a standard scheme (LN, RADLEX, RPID, PLAYBOOK) "
        "nor in nomenclature.csv",
    ]
    d = check(study(study_description="CT Chest With Contrast"), rules)  # close, but not the table's wording
    assert d["flags"]["nomenclature_code"] == "G9319"


def test_incomplete_study_still_gets_a_nomenclature_code(rules: Rules) -> None:
    d = check(study(study_description="CT HEAD WO CONTRAST", patient=replace(study().patient, sex=None)), rules)
    assert (d["flags"]["registry_code"], d["flags"]["nomenclature_code"]) == ("G9326", "G9318")


# --- timing runs, evaluation object, error records ------------------------------------------------------


def test_timing_runs_are_marked_per_event(rules: Rules) -> None:
    events = (
        localizer(),
        spiral(irradiation_event_uid=f"{UID}.3", acquisition_protocol="PreMonitoring", acquisition_type="stationary",
               ctdivol_mGy=1.2, dlp_mGycm=1.2, pitch_factor=None),
        spiral(irradiation_event_uid=f"{UID}.4", acquisition_protocol="Bolus", acquisition_type="stationary",
               ctdivol_mGy=32.83, dlp_mGycm=16.41, pitch_factor=None),
        spiral(),
    )
    record = study(events=events)
    d = check(record, rules)
    assert [e["is_timing_run"] for e in d["events"]] == [False, True, True, False]
    assert evaluate(record, rules).timing_runs == (False, True, True, False)


def test_evaluation_is_typed_and_readable_as_dict(rules: Rules) -> None:
    record = study(patient=replace(study().patient, sex=None))
    ev = evaluate(record, rules)
    assert isinstance(ev, Evaluation)
    assert ev.flags.registry_code == "G9326" and ev.flags["registry_code"] == "G9326"
    assert ev.completeness.missing == ("patient.sex",)
    assert ev.completeness.reasons == ("patient.sex missing",)
    assert ev.to_dict()["completeness"] == evaluated_dict(record, rules)["completeness"]
    assert ev.to_dict()["timing_runs"] == [False, False]
    # evaluate is pure: the record is unchanged and a second call gives the same verdict
    assert record == study(patient=replace(study().patient, sex=None))
    assert not hasattr(record.events[0], "is_timing_run")  # a verdict of the evaluation, not of the record
    assert evaluate(record, rules) == ev


def test_export_mark_is_passed_through(rules: Rules) -> None:
    mark = {"batch_id": "20240301T101112Z-0001", "exported_at": "2024-03-01T10:11:12Z"}
    d = check(study(), rules)
    assert d["export"] is None
    d = evaluated_dict(study(), rules, export=mark)
    validate_record(d)
    assert d["export"] == mark


def test_error_record_has_null_verdicts(rules: Rules) -> None:
    record = StudyRecord(error=ErrorInfo("not_ct_dose", "x.dcm: not a CT dose report"), source_file="x.dcm")
    d = check(record, rules)
    assert d["error"] == {"code": "not_ct_dose", "message": "x.dcm: not a CT dose report"}
    assert d["completeness"] is None and d["classification"] is None and d["flags"] is None
    assert d["export"] is None
    assert evaluate(record, rules).flags.registry_code == "G9326"


def test_record_round_trip_through_json_gives_the_same_verdict(rules: Rules) -> None:
    record = study(events=(localizer(), spiral(phantom=None)))
    again = StudyRecord.from_dict(record.to_dict())
    assert evaluated_dict(again, rules) == evaluated_dict(record, rules)
