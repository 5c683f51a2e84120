"""Registry profile and nomenclature table: loading, errors naming file and key, changes taking effect."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dosereg.conf.config import CONF_DIR, ConfigError, load_config
from dosereg.extract import Patient
from dosereg.registry_export import evaluated_dict, rules_from_config
from tests.conftest import run_cli, validate_record
from tests.test_rules import spiral, study

PACKAGED_PROFILE = CONF_DIR / "registry_profiles" / "acr-dir.toml"
PACKAGED_TABLE = CONF_DIR / "nomenclature.csv"


def write_config(tmp_path: Path, profile: str | None = None, table: str | None = None, extra: str = "") -> Path:
    cfg = tmp_path / "dosereg.toml"
    lines = []
    if profile is not None:
        lines += ["[registry]", f"profile = {profile!r}"]
    if table is not None:
        lines += ["[nomenclature]", f"table = {table!r}"]
    cfg.write_text("\n".join(lines) + "\n" + extra)
    return cfg


def rules_for(tmp_path: Path, profile_text: str | None = None, table_text: str | None = None):  # type: ignore[no-untyped-def]
    profile = table = None
    if profile_text is not None:
        (tmp_path / "profile.toml").write_text(profile_text)
        profile = "profile.toml"
    if table_text is not None:
        (tmp_path / "table.csv").write_text(table_text)
        table = "table.csv"
    return rules_from_config(load_config(write_config(tmp_path, profile, table)))


def test_packaged_profile_and_table_load() -> None:
    cfg = load_config(None)
    rules = rules_from_config(cfg)
    assert (rules.profile.name, rules.profile.version) == ("acr-dir", "2026.1")
    assert rules.profile.path == PACKAGED_PROFILE
    required = [r.path for r in rules.profile.required]
    assert required == [
        "study_instance_uid", "study_date", "study_description|procedure_codes", "patient.sex",
        "patient.age_years", "equipment.manufacturer", "equipment.model",
        "equipment.serial_number|equipment.station_name", "events", "events[].acquisition_type",
        "events[].ctdivol_mGy", "events[].dlp_mGycm", "events[].phantom",
    ]
    ctdi = rules.profile.required[10]
    assert ctdi.describe() == "number, 0..10000 mGy, when acquisition_type != constant_angle"
    assert rules.nomenclature.playbook_schemes == ("RADLEX", "RPID", "PLAYBOOK")
    assert rules.nomenclature.lookup("CT Head WO Contrast").playbook_id == "RPID22"  # type: ignore[union-attr]
    assert rules.notification.adult_head == 80.0


def test_changed_profile_changes_the_verdict_without_re_extraction(tmp_path: Path) -> None:
    record = study(patient=Patient(id="1", name="A^B", sex=None, age_years=50.0))
    default = evaluated_dict(record, rules_from_config(load_config(None)))
    assert default["flags"]["registry_code"] == "G9326"
    assert default["flags"]["registry_reasons"] == ["patient.sex missing"]

    # the same record, a profile in which patient sex is only recommended
    text = PACKAGED_PROFILE.read_text()
    relaxed = text.replace('[[required]]\npath = "patient.sex"', '[[recommended]]\npath = "patient.sex"')
    relaxed = relaxed.replace('version = "2026.1"', 'version = "local-1"')
    assert relaxed != text
    profile = tmp_path / "relaxed.toml"
    profile.write_text(relaxed)
    cfg = load_config(write_config(tmp_path, str(profile)))
    d = evaluated_dict(record, rules_from_config(cfg))
    validate_record(d)
    assert d["flags"]["registry_code"] == "G9327"
    assert d["flags"]["registry_reasons"] == ["complete against registry profile acr-dir local-1"]
    assert d["completeness"]["warnings"] == ["patient.sex missing (recommended)"]

    # edit the file again: the next read applies it (nothing cached)
    profile.write_text(relaxed + '\n[[required]]\npath = "patient.weight_kg"\ntype = "number"\nunit = "kg"\nmin = 0\nmax = 500\n')
    d = evaluated_dict(record, rules_from_config(cfg))
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == ["patient.weight_kg missing"]


def test_profile_path_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    shutil.copy(PACKAGED_PROFILE, tmp_path / "profiles" / "site.toml")
    cfg = load_config(write_config(tmp_path, "profiles/site.toml"))
    assert rules_from_config(cfg).profile.path == tmp_path / "profiles" / "site.toml"


def test_conditions_on_numbers_and_lists(tmp_path: Path) -> None:
    rules = rules_for(tmp_path, """
name = "t"
version = "1"
[[required]]
path = "events[].pitch_factor"
when = "acquisition_type in [spiral, cone_beam] and ctdivol_mGy > 5"
type = "number"
[[required]]
path = "patient.weight_kg"
when = "patient.age_years < 18"
""")
    young = Patient(sex="F", age_years=12.0)
    d = evaluated_dict(study(patient=young, events=(spiral(pitch_factor=None),)), rules)
    assert d["completeness"]["missing"] == ["events[0].pitch_factor", "patient.weight_kg"]
    d = evaluated_dict(study(patient=replace(young, age_years=40.0), events=(spiral(pitch_factor=None, ctdivol_mGy=4.0),)),
                       rules)
    assert d["completeness"]["status"] == "complete"


def test_custom_nomenclature_table(tmp_path: Path) -> None:
    rules = rules_for(tmp_path, table_text=(
        "# site table\n# playbook_schemes: 99MYPB\n"
        "local_description,radlex_playbook_id\n"
        '"Thorax^TAP (Adult)",RPID144\n'
    ))
    d = evaluated_dict(study(), rules)
    assert d["flags"]["nomenclature_code"] == "G9318"
    assert d["flags"]["nomenclature_reasons"] == [
        "study_description 'Thorax^TAP (Adult)' maps to RadLex Playbook RPID144 (table.csv line 4)"
    ]
    assert rules.nomenclature.playbook_schemes == ("99MYPB",)


# --- errors name the file and the key or line ------------------------------------------------------

GOOD_HEAD = 'name = "t"\nversion = "1"\n'


@pytest.mark.parametrize(("body", "message"), [
    ('version = "1"\n', r"name must be a non-empty string"),
    (GOOD_HEAD + 'colour = "red"\n', r"unknown key 'colour'"),
    (GOOD_HEAD + '[[required]]\npath = "patient.sx"\n', r"required\[0\] \(path 'patient.sx'\): 'patient.sx': unknown element 'sx'"),
    (GOOD_HEAD + '[[required]]\npath = "events.ctdivol_mGy"\n', r"required\[0\].*'events' is a list; write events\[\]"),
    (GOOD_HEAD + '[[required]]\npath = "patient[].sex"\n', r"'patient' is not a list"),
    (GOOD_HEAD + '[[recommended]]\npath = "patient.sex"\ntype = "colour"\n', r"recommended\[0\] \(path 'patient.sex'\): type must be one of"),
    (GOOD_HEAD + '[[required]]\npath = "patient.age_years"\ntype = "number"\nmin = 10\nmax = 1\n', r"min 10 is above max 1"),
    (GOOD_HEAD + '[[required]]\npath = "patient.age_years"\ntype = "number"\nmin = "0"\n', r"required\[0\].*min must be a number"),
    (GOOD_HEAD + '[[required]]\npath = "patient.sex"\ntype = "enum"\n', r"type enum needs values"),
    (GOOD_HEAD + '[[required]]\npath = "patient.sex"\nunits = "a"\n', r"required\[0\] \(path 'patient.sex'\): unknown key 'units'"),
    (GOOD_HEAD + '[[required]]\npath = "events[].ctdivol_mGy"\nwhen = "acquisition_type is spiral"\n',
     r"required\[0\] \(path 'events\[\].ctdivol_mGy'\): when: cannot read condition"),
    (GOOD_HEAD + '[[required]]\npath = "events[].ctdivol_mGy"\nwhen = "acquisition_typ == spiral"\n',
     r"when: condition refers to unknown element 'acquisition_typ'"),
    (GOOD_HEAD + '[[required]]\npath = "events[].ctdivol_mGy|events[].ssde_mGy"\n', r"any-of paths"),
    (GOOD_HEAD + 'required = "patient.sex"\n', r"required must be an array of tables"),
    (GOOD_HEAD + '[[required]]\nnote = "x"\n', r"required\[0\]: path must be a non-empty string"),
    ('name = "t\n', r"not valid TOML"),
])
def test_profile_errors_name_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        rules_for(tmp_path, body)
    text = str(exc.value)
    assert text.startswith(str(tmp_path / "profile.toml") + ":"), text
    assert re.search(message, text), text


def test_missing_profile_file(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "nowhere.toml"))
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nowhere.toml'}: registry profile not found")):
        rules_from_config(cfg)
    cfg = load_config(write_config(tmp_path, "no-such-profile"))
    with pytest.raises(ConfigError, match=r"no-such-profile\.toml: registry profile not found \(registry.profile\)"):
        rules_from_config(cfg)


@pytest.mark.parametrize(("text", "message"), [
    ("# nothing\n", r"no header row"),
    ("description,rpid\nA,RPID1\n", r"line 1: the header row must name the columns local_description, radlex_playbook_id"),
    ("local_description,radlex_playbook_id\nCT HEAD,RP22\n", r"line 2: radlex_playbook_id 'RP22' is not a RadLex Playbook ID"),
    ("# c\nlocal_description,radlex_playbook_id\nCT HEAD,RPID22\nct  head,RPID23\n",
     r"line 4: 'ct  head' maps to RPID23 here but to RPID22 on line 3"),
    ("local_description,radlex_playbook_id\nCT HEAD,RPID22,extra\n", r"line 2: expected 2 columns, found 3"),
    ("local_description,radlex_playbook_id\n,RPID22\n", r"line 2: local_description is empty"),
])
def test_nomenclature_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        rules_for(tmp_path, table_text=text)
    msg = str(exc.value)
    assert msg.startswith(str(tmp_path / "table.csv") + ":"), msg
    assert re.search(message, msg), msg


def test_bad_rt_planning_regex_names_config_key(tmp_path: Path) -> None:
    cfg_file = write_config(tmp_path, extra="[classification.rt_planning]\ntext = ['ok', '(unclosed']\n")
    with pytest.raises(ConfigError) as exc:
        rules_from_config(load_config(cfg_file))
    assert str(exc.value).startswith(f"{cfg_file}: classification.rt_planning.text[1] '(unclosed' is not a valid")


def test_cli_reports_a_broken_profile_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "profile.toml").write_text(GOOD_HEAD + '[[required]]\npath = "patient.sx"\n')
    cfg = write_config(tmp_path, "profile.toml")
    result = run_cli("extract", "--config", str(cfg), str(tmp_path / "whatever.dcm"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(tmp_path / "profile.toml") in lines[0]
    assert "unknown element 'sx'" in lines[0]
    assert result.stdout == ""
