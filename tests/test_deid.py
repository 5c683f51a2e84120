"""De-identification rules (spec section 5): pseudonyms, ages, dates, whitelist, scrubbing."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import replace

import pytest

from dosereg.conf.config import load_config
from dosereg.registry_export import evaluated_dict, rules_from_config
from dosereg.registry_export.deid import (
    MIN_SECRET_LENGTH,
    MissingSecretError,
    Pseudonymizer,
    Scrubber,
    WeakSecretError,
    age_whole_years,
    deidentify_study,
    secret_fingerprint,
    secret_from_config,
    truncate_date,
)
from tests.synthetic import patient_name, study_uid, synthetic_study

SECRET = b"test-secret-0123456789abcdef0123456789"
UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_pseudonym_is_hmac_sha256_first_16_bytes_as_2_25_uid() -> None:
    uid = "1.2.840.113619.2.55.3.2831209208.960.1363108704.865"
    digest = hmac.new(SECRET, uid.encode(), hashlib.sha256).digest()
    expected = "2.25." + str(int.from_bytes(digest[:16], "big"))
    assert Pseudonymizer(SECRET).uid(uid) == expected
    assert UID_RE.match(expected) and len(expected) <= 64
    # same UID, same pseudonym; another secret or UID, another pseudonym
    assert Pseudonymizer(SECRET).uid(uid) == Pseudonymizer(SECRET).uid(uid)
    assert Pseudonymizer(b"other" * 8).uid(uid) != expected
    assert Pseudonymizer(SECRET).uid(uid + "1") != expected
    assert Pseudonymizer(SECRET).uid(None) is None
    assert Pseudonymizer(SECRET).uid("  ") is None


def test_missing_or_empty_secret_refuses_with_the_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config()
    monkeypatch.delenv("DOSEREG_SECRET", raising=False)
    with pytest.raises(MissingSecretError, match="DOSEREG_SECRET") as exc:
        secret_from_config(cfg)
    assert isinstance(exc.value, ValueError)
    assert "pseudonym_secret_env" in str(exc.value)
    monkeypatch.setenv("DOSEREG_SECRET", "")
    with pytest.raises(MissingSecretError):
        Pseudonymizer.from_config(cfg)
    other = replace(cfg, site=replace(cfg.site, pseudonym_secret_env="MY_SITE_KEY"))
    monkeypatch.setenv("MY_SITE_KEY", "k" * 32)
    assert Pseudonymizer.from_config(other).uid("1.2.3") == Pseudonymizer(b"k" * 32).uid("1.2.3")


@pytest.mark.parametrize("value", ["k", "x" * 31, "short but not thirty-two"])
def test_a_secret_under_32_characters_is_refused_naming_the_variable_and_the_rule(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    cfg = load_config()
    monkeypatch.setenv("DOSEREG_SECRET", value)
    with pytest.raises(WeakSecretError) as exc:
        Pseudonymizer.from_config(cfg)
    message = str(exc.value)
    assert "DOSEREG_SECRET" in message and "at least 32 characters" in message and "\n" not in message
    assert len(value) < 3 or value not in message  # the secret itself is never repeated
    with pytest.raises(WeakSecretError):
        Pseudonymizer(value.encode())
    monkeypatch.setenv("DOSEREG_SECRET", "x" * MIN_SECRET_LENGTH)
    assert Pseudonymizer.from_config(cfg).uid("1.2.3") == Pseudonymizer(b"x" * 32).uid("1.2.3")


def test_secret_fingerprint_is_a_keyed_hash_never_the_secret() -> None:
    fp = secret_fingerprint(SECRET)
    assert fp == hmac.new(SECRET, b"dosereg-secret-fingerprint", hashlib.sha256).hexdigest()
    assert SECRET.decode() not in fp and len(fp) == 64
    assert Pseudonymizer(SECRET).fingerprint == fp
    assert secret_fingerprint(SECRET + b"!") != fp


def test_station_name_and_serial_number_pseudonyms_fit_their_vrs() -> None:
    station = Pseudonymizer(SECRET).station_name("CTAWP10001")
    digest = hmac.new(SECRET, b"station_name:CTAWP10001", hashlib.sha256).hexdigest()
    assert station == "S" + digest[:15].upper()
    assert re.fullmatch(r"S[0-9A-F]{15}", station) and len(station) == 16  # SH: at most 16 characters
    serial = Pseudonymizer(SECRET).serial_number("10001")
    assert serial == "SN" + hmac.new(SECRET, b"serial_number:10001", hashlib.sha256).hexdigest()[:30].upper()
    assert re.fullmatch(r"SN[0-9A-F]{30}", serial) and len(serial) <= 64  # LO
    # keyed: the same value and secret give the same pseudonym, so the registry tells scanners apart
    p = Pseudonymizer(SECRET)
    assert p.station_name("CTAWP10001 ") == station and p.serial_number("10001") == serial
    assert p.station_name("CTAWP20002") != station
    assert Pseudonymizer(SECRET + b"x").station_name("CTAWP10001") != station
    # domain-separated from UIDs and from each other
    assert p.station_name("10001") != p.serial_number("10001")
    assert p.station_name(None) is None and p.serial_number("  ") is None


def test_scrubber_replaces_the_station_name_and_serial_number_as_whole_words() -> None:
    p = Pseudonymizer(SECRET)
    record = {"patient": {}, "equipment": {"station_name": "CTRTSIM01", "serial_number": "60006"}}
    s = Scrubber(record, p)
    assert s.text("equipment.station_name 'CTRTSIM01' matches rule") == (
        f"equipment.station_name '{p.station_name('CTRTSIM01')}' matches rule")
    assert s.text("scanner ctrtsim01 serial 60006") == (
        f"scanner {p.station_name('CTRTSIM01')} serial {p.serial_number('60006')}")
    # digits of the serial inside a number or a pseudonymous UID stay as they are
    assert s.text("DLP 1600060.5 mGy") == "DLP 1600060.5 mGy"


@pytest.mark.parametrize("age, expected", [
    (0.4, 0), (1.99, 1), (45.0, 45), (89.99, 89), (90.0, 90), (90.01, 90), (104.5, 90),
    (None, None), (-1, None), ("x", None), (float("nan"), None),
])
def test_age_floor_and_90_cap(age: object, expected: int | None) -> None:
    assert age_whole_years(age) == expected


@pytest.mark.parametrize("precision, date, dt", [
    ("day", "2025-03-14", "2025-03-14T10:16:00"),
    ("month", "2025-03", "2025-03"),
    ("year", "2025", "2025"),
])
def test_date_precision(precision: str, date: str, dt: str) -> None:
    assert truncate_date("2025-03-14", precision) == date
    assert truncate_date("2025-03-14T10:16:00", precision) == dt
    assert truncate_date(None, precision) is None


def _deid(i: int = 7, precision: str = "day", **kw: object) -> tuple[dict, dict]:
    cfg = load_config()
    record = synthetic_study(i, **kw)  # type: ignore[arg-type]
    d = evaluated_dict(record, rules_from_config(cfg))
    return d, deidentify_study(d, Pseudonymizer(SECRET), precision)


def test_whitelist_removes_every_identifier_and_free_text() -> None:
    d, out = _deid(7)
    text = json.dumps(out)
    ev_src = d["events"][-1]
    assert ev_src["comment"] and ev_src["dose_check"]["person"] and ev_src["dose_check"]["reason"]
    for secret_value in (patient_name(7), "Zyxwvut", "MRN00000007", "ACN000000007", d["patient"]["birth_date"],
                         d["equipment"]["institution_name"], "Dr^Rad7", "Obese patient", "tolerated well",
                         study_uid(7), d["events"][0]["irradiation_event_uid"],
                         d["dose_objects"][0]["sop_instance_uid"], d["equipment"]["device_observer_uid"]):
        assert secret_value not in text, secret_value
    assert set(out["patient"]) == {"sex", "age_years", "weight_kg", "height_m"}
    assert "institution_name" not in out["equipment"]
    assert "accession_number" not in out
    assert all("comment" not in e for e in out["events"])
    assert set(out["events"][-1]["dose_check"]) == {
        "ctdivol_alert_mGy", "dlp_alert_mGycm", "ctdivol_notification_mGy", "dlp_notification_mGycm",
        "ctdivol_forward_estimate_mGy", "dlp_forward_estimate_mGycm"}
    assert out["events"][-1]["dose_check"]["ctdivol_notification_mGy"] == 50.0
    # UIDs become their pseudonyms, consistently
    p = Pseudonymizer(SECRET)
    assert out["study_instance_uid"] == p.uid(study_uid(7))
    assert out["events"][0]["irradiation_event_uid"] == p.uid(d["events"][0]["irradiation_event_uid"])
    assert out["dose_objects"][0]["sop_instance_uid"] == p.uid(d["dose_objects"][0]["sop_instance_uid"])
    assert out["equipment"]["device_observer_uid"] == p.uid(d["equipment"]["device_observer_uid"])
    assert out["dose_objects"][0]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.67"  # not identifying
    # values the registry needs are kept exactly
    assert out["patient"]["sex"] == "F" and out["patient"]["age_years"] == 27  # 20 + 7 + 0.37
    assert out["events"][-1]["ctdivol_mGy"] == d["events"][-1]["ctdivol_mGy"]
    assert out["events"][-1]["dlp_mGycm"] == d["events"][-1]["dlp_mGycm"]
    # device identifiers (HIPAA) become keyed pseudonyms that fit their VRs
    assert d["equipment"]["station_name"] and d["equipment"]["serial_number"]
    assert out["equipment"]["station_name"] == p.station_name(d["equipment"]["station_name"])
    assert out["equipment"]["serial_number"] == p.serial_number(d["equipment"]["serial_number"])
    assert d["equipment"]["station_name"] not in text and d["equipment"]["serial_number"] not in text


def test_year_precision_is_safe_harbor_dates() -> None:
    d, out = _deid(7, precision="year")
    assert d["study_date"] == "2025-01-08"
    assert out["study_date"] == "2025"
    assert out["study_time"] is None
    assert out["report"]["start_datetime"] == "2025"
    assert out["dose_objects"][0]["received_at"] == "2025"
    assert "2025-01-08" not in json.dumps(out)


def test_age_over_89_becomes_90() -> None:
    d, out = _deid(97)
    assert d["patient"]["age_years"] == 91.5
    assert out["patient"]["age_years"] == 90


def test_scrubber_replaces_identifiers_and_uids_in_kept_text() -> None:
    p = Pseudonymizer(SECRET)
    record = {"patient": {"name": "Doe^Jonathan", "id": "MRN555", "birth_date": "1950-02-03"},
              "accession_number": "ACC42"}
    s = Scrubber(record, p)
    assert s.text("CT for DOE jonathan MRN555 acc ACC42 born 19500203") == (
        "CT for [removed] [removed] [removed] acc [removed] born [removed]")
    assert s.text("events[2].ctdivol_mGy missing (event 1.2.826.0.1.3680043.2.5)") == (
        f"events[2].ctdivol_mGy missing (event {p.uid('1.2.826.0.1.3680043.2.5')})")
    assert s.text("pitch 1.2, kV 120, version 1.2.3") == "pitch 1.2, kV 120, version 1.2.3"
    assert s.text(None) is None
