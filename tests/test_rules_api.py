"""The rules' public API around the evaluation: study_dict, Rules.key, typed paths.

What an evaluation says is tested in test_rules.py and test_plausibility.py; this is about
how a record and its evaluation become the JSON study record (docs/study-record.md), what
the rules key depends on, and the typed record the rules walk.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from dosereg.conf.config import CONF_DIR, default_config, load_config
from dosereg.extract import (
    Code,
    DoseCheck,
    DoseObjectRef,
    Equipment,
    ErrorInfo,
    Event,
    Patient,
    Problem,
    ReportInfo,
    Source,
    StudyRecord,
)
from dosereg.registry_export import (
    Rules,
    evaluate,
    evaluated_dict,
    load_profile,
    rules_from_config,
    study_dict,
    without_implausible,
)
from dosereg.registry_export import rules as rules_module
from tests.conftest import validate_record
from tests.test_rules import spiral, study

PACKAGED_PROFILE = CONF_DIR / "registry_profiles" / "acr-dir.toml"
PACKAGED_TABLE = CONF_DIR / "nomenclature.csv"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return rules_from_config(default_config())


def timing_study() -> StudyRecord:
    monitoring = spiral(irradiation_event_uid="1.2.3.4", acquisition_protocol="PreMonitoring",
                        acquisition_type="stationary", ctdivol_mGy=1.2, dlp_mGycm=1.2, pitch_factor=None)
    return study(events=(*study().events, monitoring))


# --- study_dict: the one place a record and its evaluation become the JSON record ------------------


def test_study_dict_is_the_record_with_its_verdicts(rules: Rules) -> None:
    record = timing_study()
    ev = evaluate(record, rules)
    mark = {"batch_id": "20240301T101112Z-0001", "exported_at": "2024-03-01T10:11:12Z"}
    d = study_dict(record, ev, mark)
    validate_record(d)
    assert d["completeness"] == ev.completeness.to_dict()
    assert d["classification"] == ev.classification.to_dict()
    assert d["flags"] == ev.flags.to_dict()
    assert d["export"] == mark
    assert [e["is_timing_run"] for e in d["events"]] == [False, False, True] == list(ev.timing_runs)
    plain = record.to_dict()
    for key in plain:
        if key != "events":
            assert d[key] == plain[key]
    assert [{k: v for k, v in e.items() if k != "is_timing_run"} for e in d["events"]] == plain["events"]
    assert evaluated_dict(record, rules, mark) == d
    assert study_dict(record, ev) == {**d, "export": None}


def test_study_dict_keeps_the_contract_key_order(rules: Rules) -> None:
    # Export state fingerprints a submitted study by the bytes of this dict, so its key order
    # is fixed: the record's fields, then export and the three verdicts; in each event
    # is_timing_run right after dose_check, where the record model once held it.
    d = evaluated_dict(timing_study(), rules)
    record_keys = [f.name for f in fields(StudyRecord)]
    assert list(d) == [*record_keys, "export", "completeness", "classification", "flags"]
    event_keys = [f.name for f in fields(Event)]
    at = event_keys.index("dose_check") + 1
    expected = [*event_keys[:at], "is_timing_run", *event_keys[at:]]
    assert all(list(e) == expected for e in d["events"])
    assert event_keys[at:] == ["comment", "series_number"]


def test_an_error_record_has_null_verdicts_and_its_timing_runs(rules: Rules) -> None:
    record = replace(timing_study(), error=ErrorInfo("not_ct_dose", "x.dcm: not a CT dose report"))
    ev = evaluate(record, rules)
    d = study_dict(record, ev)
    assert d["completeness"] is None and d["classification"] is None and d["flags"] is None
    assert d["export"] is None
    assert [e["is_timing_run"] for e in d["events"]] == [False, False, True]
    assert ev.flags.registry_code == "G9326"
    assert ev.flags.registry_reasons == ("not a usable CT dose object: not_ct_dose: x.dcm: not a CT dose report",)


def test_without_implausible_blanks_what_study_dict_lists(rules: Rules) -> None:
    record = study(events=(spiral(ctdivol_mGy=20000.0),))
    d = evaluated_dict(record, rules)
    assert [i["path"] for i in d["completeness"]["implausible"]] == ["events[0].ctdivol_mGy"]
    out = without_implausible(d)
    assert out["events"][0]["ctdivol_mGy"] is None
    assert d["events"][0]["ctdivol_mGy"] == 20000.0  # the record keeps the stated value


# --- the timing-run verdict left the record model ------------------------------------------------


def test_the_record_model_has_no_timing_run_field() -> None:
    assert "is_timing_run" not in {f.name for f in fields(Event)}
    assert "is_timing_run" not in Event().to_dict()


@pytest.mark.parametrize("where", ["stored place", "end"])
def test_stored_events_with_a_timing_run_verdict_are_read(where: str) -> None:
    # catalogs hold the verdict on every event (written while the model had the field)
    event = spiral(dose_check=DoseCheck(ctdivol_notification_mGy=50.0), comment="c", series_number=3)
    plain = event.to_dict()
    if where == "end":
        stored = {**plain, "is_timing_run": True}
    else:
        keys = list(plain)
        at = keys.index("dose_check") + 1
        stored = {k: plain[k] for k in keys[:at]} | {"is_timing_run": True} | {k: plain[k] for k in keys[at:]}
    read = Event.from_dict(stored)
    assert read == event and not hasattr(read, "is_timing_run")
    assert read.to_dict() == plain and list(read.to_dict()) == list(plain)


def test_to_dict_gives_the_fields_only_when_more_is_stored_on_an_instance() -> None:
    record = study()
    plain = record.to_dict()
    object.__setattr__(record.events[0], "cached", 1)
    object.__setattr__(record, "cached", 2)
    assert record.to_dict() == plain and list(record.to_dict()) == list(plain)
    assert "cached" not in record.to_dict()["events"][0]


# --- Rules.key --------------------------------------------------------------------------------------


def _rules(tmp_path: Path, profile: str | None = None, table: str | None = None,
           extra: str = "") -> Rules:
    pdir = tmp_path / "p"
    pdir.mkdir(exist_ok=True)
    p = pdir / "profile.toml"
    p.write_text(profile if profile is not None else PACKAGED_PROFILE.read_text(encoding="utf-8"), encoding="utf-8")
    t = pdir / "nomenclature.csv"
    t.write_text(table if table is not None else PACKAGED_TABLE.read_text(encoding="utf-8"), encoding="utf-8")
    cfg = tmp_path / "dosereg.toml"
    cfg.write_text(f'[registry]\nprofile = "{p}"\n[nomenclature]\ntable = "{t}"\n{extra}', encoding="utf-8")
    return rules_from_config(load_config(cfg, data_dir=str(tmp_path / "data")))


def test_rules_key_is_32_hex_digits_and_stable(rules: Rules, tmp_path: Path) -> None:
    key = rules.key
    assert isinstance(key, str) and len(key) == 32 and int(key, 16) >= 0
    assert rules_from_config(default_config()).key == key  # read again: nothing changed
    # the same content from other files (the table's name stays: reasons quote it)
    assert _rules(tmp_path).key == key


def test_rules_key_follows_the_profile_content(rules: Rules, tmp_path: Path) -> None:
    text = PACKAGED_PROFILE.read_text(encoding="utf-8")
    assert _rules(tmp_path, profile="# a comment\n" + text).key == rules.key  # no content change
    changed = text.replace("max = 10000\n", "max = 9000\n", 1)
    assert changed != text
    assert _rules(tmp_path, profile=changed).key != rules.key
    assert _rules(tmp_path, profile=text.replace('version = "2026.1"', 'version = "2026.2"')).key != rules.key


def test_rules_key_follows_the_nomenclature_table(rules: Rules, tmp_path: Path) -> None:
    table = PACKAGED_TABLE.read_text(encoding="utf-8")
    assert _rules(tmp_path, table=table + "\n# a comment\n").key == rules.key
    assert _rules(tmp_path, table=table.rstrip("\n") + "\nCT WRIST LEFT,RPID999999,\n").key != rules.key
    assert _rules(tmp_path, table="# playbook_schemes: RPID\n" + table).key != rules.key


def test_rules_key_follows_the_classification_patterns(rules: Rules, tmp_path: Path) -> None:
    base = _rules(tmp_path)
    assert _rules(tmp_path, extra='[classification.non_patient]\npatient_id = ["QA*"]\n').key != base.key
    assert _rules(tmp_path, extra='[classification.rt_planning]\ntext = ["(?i)sim"]\n').key != base.key


def test_rules_key_follows_the_rules_revision(rules: Rules, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_module, "RULES_REVISION", rules_module.RULES_REVISION + 1)
    assert rules_from_config(default_config()).key != rules.key


def test_a_replaced_profile_is_compiled_anew(rules: Rules, tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('name = "tiny"\nversion = "1"\n[[required]]\npath = "accession_number"\ntype = "text"\n',
                 encoding="utf-8")
    tiny = replace(rules, profile=load_profile(p))
    record = study(accession_number=None, patient=replace(study().patient, sex=None))
    assert evaluate(record, tiny).completeness.missing == ("accession_number",)
    assert evaluate(record, rules).completeness.missing == ("patient.sex",)
    assert tiny.key != rules.key


# --- paths on the typed record ------------------------------------------------------------------------


MODEL = (StudyRecord, Patient, Equipment, DoseObjectRef, ReportInfo, Event, Source, DoseCheck, Code, Problem,
         ErrorInfo)


def test_no_field_name_of_the_model_is_an_attribute_of_a_plain_value() -> None:
    # the path walker reads fields with getattr(value, name, None): a value that is no
    # record (text, a number, a list, None) must yield None, never a method of its own
    names = {f.name for cls in MODEL for f in fields(cls)}
    for plain in ("text", 1, 1.5, True, None, (), []):
        assert not names & set(dir(plain)), type(plain)


def test_a_wrong_value_is_quoted_as_the_json_record_states_it(rules: Rules, tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('name = "t"\nversion = "1"\n[[required]]\npath = "events[].target_region"\ntype = "text"\n'
                 '[[required]]\npath = "dose_objects"\ntype = "list"\nmin_items = 2\n', encoding="utf-8")
    r = replace(rules, profile=load_profile(p))
    record = study(events=(spiral(),))
    d = evaluated_dict(record, r)
    region = {"value": "T-D3000", "scheme": "SRT", "meaning": "Chest"}
    objects: list[dict[str, Any]] = [o.to_dict() for o in record.dose_objects]
    assert d["completeness"]["invalid"] == [
        {"path": "events[0].target_region", "value": region,
         "reason": "is not text (protocol 'TAP', event 1.2.826.0.1.3680043.10.1.2)"},
        {"path": "dose_objects", "value": objects, "reason": "has 1 items, fewer than 2"},
    ]
    assert d["flags"]["registry_reasons"][0] == (
        f"events[0].target_region {region!r} is not text (protocol 'TAP', event 1.2.826.0.1.3680043.10.1.2)")
    validate_record(d)


def test_a_bounded_date_applies_only_where_its_condition_holds(rules: Rules, tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('name = "t"\nversion = "1"\n[[required]]\npath = "patient.birth_date"\ntype = "date"\n'
                 'min = "1900-01-01"\nmax = "study_date"\nwhen = "modality == CT"\n', encoding="utf-8")
    r = replace(rules, profile=load_profile(p))
    late = replace(study().patient, birth_date="2030-01-01")
    assert evaluate(study(patient=late, modality="SR"), r).completeness.invalid == ()
    invalid = evaluate(study(patient=late, modality="CT"), r).completeness.invalid
    assert [(i.path, i.reason) for i in invalid] == [
        ("patient.birth_date", "is outside 1900-01-01..study_date (2024-03-01)")]


def test_the_key_tests_copy_the_packaged_files() -> None:
    assert Path(default_config().profile_path) == PACKAGED_PROFILE
    assert Path(default_config().nomenclature_table) == PACKAGED_TABLE
