"""Issue 13: non-patient classification from all the evidence, and timing runs that need a
monitoring dose (docs/classification.md, docs/timing-runs.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dosereg.conf.config import ConfigError, default_config, load_config
from dosereg.extract import Equipment, Event, Patient
from dosereg.registry_export import Rules, evaluate, evaluated_dict, rules_from_config
from dosereg.registry_export.dosimetry import is_timing_run, timing_run_reason
from tests.conftest import run_cli, validate_record
from tests.test_rules import localizer, spiral, study

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_dicom"
PATIENT = Patient(id="123456", name="SMITH^JOHN", birth_date="1950-01-01", sex="M", age_years=74.16)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return rules_from_config(default_config())


def verdict(record: Any, rules: Rules) -> dict[str, Any]:
    d = evaluated_dict(record, rules)
    validate_record(d)
    return d


def qa_events(*protocols: str) -> tuple[Event, ...]:
    return tuple(spiral(irradiation_event_uid=f"1.2.3.{i}", acquisition_protocol=p) for i, p in enumerate(protocols))


@pytest.mark.parametrize(("kw", "reason"), [
    (dict(patient=Patient(id="900001", name="MONTHLY_QC^CT2", sex="O")),
     "patient.name matches non-patient pattern '*[_ ]qc^*'"),
    (dict(patient=Patient(id="QC-2026-01", name="Scanner^Two", sex="O")),
     "patient.id matches non-patient pattern 'qc*'"),
    (dict(study_description="Daily QA"), "study_description 'Daily QA' matches non-patient pattern '*[_ ]qa'"),
    (dict(study_description="CT constancy check"),
     "study_description 'CT constancy check' matches non-patient pattern '*constancy*'"),
    (dict(events=qa_events("Daily QA", "Daily QA")),
     "events[].acquisition_protocol of all 2 events ('Daily QA') match non-patient pattern "
     r"classification.non_patient.acquisition_protocol '\bqa\b'"),
    (dict(events=qa_events("Head/PHYSICS", "QC_Body_Axial")),
     "events[].acquisition_protocol of all 2 events ('Head/PHYSICS', 'QC_Body_Axial') match non-patient patterns "
     r"classification.non_patient.acquisition_protocol '\bphysics\b', '\bqc\b'"),
])
def test_qa_and_qc_scans_are_excluded_naming_the_field(rules: Rules, kw: dict[str, Any], reason: str) -> None:
    kw.setdefault("patient", PATIENT)
    d = verdict(study(**kw), rules)
    assert d["classification"] == {"patient_study": False, "rt_planning": False, "reasons": [reason]}
    assert d["flags"]["registry_code"] == "excluded"
    assert d["flags"]["registry_reasons"] == [f"not a patient study: {reason}"]
    assert d["flags"]["nomenclature_code"] is None
    assert kw["patient"].name not in reason and kw["patient"].id not in reason


def test_one_qa_event_inside_a_patient_study_leaves_it_a_patient_study(rules: Rules) -> None:
    # a radiotherapy QA check after the patient's scan (the GE PixelMed file of the corpus)
    events = (localizer(), spiral(), spiral(irradiation_event_uid="1.2.3.9", acquisition_protocol="RADIOTHERAPY QA"))
    d = verdict(study(events=events, patient=PATIENT), rules)
    assert d["classification"]["patient_study"] is True
    assert d["flags"]["registry_code"] == "G9327"
    # an event without a protocol says nothing either
    d = verdict(study(events=(spiral(acquisition_protocol=None), *qa_events("QA"))), rules)
    assert d["classification"]["patient_study"] is True


@pytest.mark.parametrize("protocol", ["Quadriceps", "Aqua Phase", "Calibrated Chest", "Phantomless BMD",
                                      "ThoraxRoutine", "Abd QAS", "QACT"])
def test_patient_protocols_are_not_caught_by_accident(rules: Rules, protocol: str) -> None:
    d = verdict(study(events=qa_events(protocol)), rules)
    assert d["classification"]["patient_study"] is True, protocol


def test_a_qa_study_is_excluded_even_when_it_matches_rt_planning(rules: Rules) -> None:
    d = verdict(study(study_description="RT Planning CT Sim", events=qa_events("RTP QA Phantom")), rules)
    assert d["classification"]["patient_study"] is False
    assert d["classification"]["rt_planning"] is False
    assert d["flags"]["registry_code"] == "excluded"
    assert d["flags"]["nomenclature_code"] is None
    assert d["classification"]["reasons"] == [
        "events[].acquisition_protocol of all 1 event ('RTP QA Phantom') match non-patient pattern "
        r"classification.non_patient.acquisition_protocol '\bqa\b'"]


def test_station_and_requested_procedure_patterns(tmp_path: Path) -> None:
    rules = rules_from_config(default_config())
    record = study(equipment=Equipment(manufacturer="SIEMENS", model="X", station_name="CT-PHYS-LAB"),
                   requested_procedure_description="Annual physics survey")
    assert verdict(record, rules)["classification"]["patient_study"] is True  # empty by default
    cfg = tmp_path / "c.toml"
    cfg.write_text("[classification.non_patient]\nstation_name = ['\\bphys\\b']\n"
                   "requested_procedure = ['\\bphysics\\b']\n")
    d = verdict(record, rules_from_config(load_config(cfg)))
    assert d["classification"]["reasons"] == [
        "requested_procedure_description 'Annual physics survey' matches non-patient pattern "
        r"classification.non_patient.requested_procedure '\bphysics\b'",
        "equipment.station_name 'CT-PHYS-LAB' matches non-patient pattern "
        r"classification.non_patient.station_name '\bphys\b'",
    ]


def test_a_bad_regular_expression_is_an_error_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[classification.non_patient]\nacquisition_protocol = ['\\bqa\\b', '(unclosed']\n")
    with pytest.raises(ConfigError, match=r"c\.toml: classification\.non_patient\.acquisition_protocol\[1\] "
                                          r"'\(unclosed' is not a valid regular expression"):
        rules_from_config(load_config(cfg))


def test_rules_key_follows_the_new_settings(tmp_path: Path) -> None:
    base = rules_from_config(default_config())
    cfg = tmp_path / "c.toml"
    cfg.write_text("[classification.non_patient]\nstation_name = ['x']\n")
    other = rules_from_config(load_config(cfg))
    cfg.write_text("[dose]\ntiming_run_max_ctdivol_mgy = 20\n")
    third = rules_from_config(load_config(cfg))
    assert len({base.key, other.key, third.key}) == 3


# --- timing runs ---------------------------------------------------------------------------------------


def stationary(ctdi: float, dlp: float, protocol: str | None = None) -> Event:
    return Event(acquisition_type="stationary", acquisition_protocol=protocol, ctdivol_mGy=ctdi, dlp_mGycm=dlp,
                 phantom="body32")


def test_a_high_dose_stationary_exposure_is_never_a_timing_run() -> None:
    assert is_timing_run(stationary(222.59, 111.3, "10.13 RADIOTHERAPY QA")) is False
    assert timing_run_reason(stationary(222.59, 111.3)) is None
    assert is_timing_run(stationary(600.0, 100.0, "Monitoring")) is False  # whatever its name
    assert is_timing_run(stationary(50.0, 10.0)) is False  # the bound itself is not below it
    assert is_timing_run(stationary(float("nan"), 1.0, "Monitoring")) is False
    assert is_timing_run(stationary(49.9, 10.0)) is True
    assert is_timing_run(stationary(32.83, 16.41)) is True  # GE VCT's monitoring scan
    assert is_timing_run(Event(acquisition_protocol="Monitoring")) is True  # no dose stated: the name decides
    assert is_timing_run(stationary(32.83, 16.41), max_ctdivol_mGy=20.0) is False


def test_timing_run_bound_is_configurable(tmp_path: Path) -> None:
    record = study(events=(localizer(), stationary(32.83, 16.41), spiral()))
    assert evaluate(record, rules_from_config(default_config())).timing_runs == (False, True, False)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[dose]\ntiming_run_max_ctdivol_mgy = 20\n")
    assert evaluate(record, rules_from_config(load_config(cfg))).timing_runs == (False, False, False)
    cfg.write_text("[dose]\ntiming_run_max_ctdivol_mgy = -1\n")
    with pytest.raises(ConfigError, match="dose.timing_run_max_ctdivol_mgy must be between"):
        load_config(cfg)


# --- the corpus and the samples ------------------------------------------------------------------------


def _extract(paths: list[Path]) -> list[dict[str, Any]]:
    proc = run_cli("extract", *map(str, paths))
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="vendor corpus absent")
def test_corpus_qa_excluded_no_patient_study_excluded_no_high_dose_timing_run() -> None:
    records = {Path(d["source_file"]).stem if d.get("source_file") else i: d
               for i, d in enumerate(_extract(sorted(CORPUS.glob("*.dcm"))))}
    excluded = sorted(k for k, d in records.items() if (d["flags"] or {}).get("registry_code") == "excluded")
    assert excluded == ["CT-RDSR-ToshibaPixelMed"]
    for d in records.values():
        for e in d["events"]:
            if e["is_timing_run"]:
                assert e["ctdivol_mGy"] is None or e["ctdivol_mGy"] < 50.0


def test_every_planning_ct_of_the_samples_stays_g9320() -> None:
    records = _extract(sorted(SAMPLES.glob("ct_*.dcm")))
    planning = {Path(d["source_file"]).stem for d in records if (d.get("flags") or {}).get("nomenclature_code")
                == "G9320"}
    assert planning == {"ct_rt_sim"}
    qa = [d for d in records if (d.get("flags") or {}).get("registry_code") == "excluded"]
    assert [Path(d["source_file"]).stem for d in qa] == ["ct_qa_phantom"]
