"""Dosimetry helpers: head/body, phantom normalisation, SSDE, timing runs, notification values."""

from __future__ import annotations

import doctest
import math
from typing import Any

import pytest

from dosereg.conf.config import NotificationSettings
from dosereg.extract import Code, Event
from dosereg.registry_export import dosimetry
from dosereg.registry_export.dosimetry import (
    conversion_factor,
    effective_diameter_cm,
    is_head_exam,
    is_timing_run,
    normalised_dose,
    notification_value_mGy,
    ssde_mGy,
    standard_phantom,
    timing_run_reason,
)

DEFAULTS = NotificationSettings()


def ev(**kw: Any) -> Event:
    base: dict[str, Any] = dict(acquisition_type="spiral", acquisition_protocol="Routine", ctdivol_mGy=10.0,
                                dlp_mGycm=300.0, phantom="body32", pitch_factor=1.0)
    base.update(kw)
    return Event(**base)


# --- head or body -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [
    Code("T-D1100", "SRT", "Head"), Code("69536005", "SCT", "Head"),
    Code("T-A0100", "SRT", "Brain"), Code("12738006", "SCT", "Brain"),
    Code("T-11100", "SRT", "Skull"), Code("89545001", "SCT", "Face"),
    Code("T-D14AE", "SRT", "Orbit"), Code("2095001", "SCT", "Paranasal sinus"),
    Code("T-11130", "SRT", "Temporal bone"), Code("60911003", "SCT", None),
    Code("91397008", "SCT", "Facial bones"),
    Code("X12", "99LOCAL", "Sinuses"), Code("HEAD", "99MYCT", "head"),
])
def test_head_regions_are_head_exams_whatever_the_phantom(code: Code) -> None:
    event = ev(target_region=code, phantom="body32")
    assert is_head_exam(event) is True
    assert standard_phantom(event) == "head16"


@pytest.mark.parametrize("code", [
    Code("T-D3000", "SRT", "Chest"), Code("51185008", "SCT", "Chest"), Code("T-D4000", "SRT", "Abdomen"),
    Code("R-FAB56", "SRT", "Chest, Abdomen and Pelvis"), Code("T-D0010", "SRT", "Entire body"),
    Code("T-D1600", "SRT", "Neck"), Code("C1", "99LOCAL", "Pelvis"),
])
def test_body_regions_are_body_exams_whatever_the_phantom(code: Code) -> None:
    event = ev(target_region=code, phantom="head16")
    assert is_head_exam(event) is False
    assert standard_phantom(event) == "body32"


@pytest.mark.parametrize(("region", "phantom", "head"), [
    (None, "head16", True),
    (None, "body32", False),
    (None, None, False),
    (Code("00001", "99GEMS", "Unknown"), "head16", True),  # GE's private "Unknown" region
    (Code("00001", "99GEMS", "Unknown"), "body32", False),
    (Code("T-D1000", "SRT", "Head and Neck"), "head16", True),  # spans both: the phantom decides
    (Code("774007", "SCT", "Head and Neck"), "body32", False),
])
def test_without_usable_target_region_the_phantom_decides(region: Code | None, phantom: str | None,
                                                          head: bool) -> None:
    assert is_head_exam(ev(target_region=region, phantom=phantom)) is head


# --- phantom normalisation --------------------------------------------------------------------------


def test_body_exam_on_16cm_phantom_is_divided_by_2_3() -> None:
    event = ev(target_region=Code("T-D4000", "SRT", "Abdomen"), phantom="head16", ctdivol_mGy=23.0, dlp_mGycm=690.0)
    assert normalised_dose(event) == pytest.approx((10.0, 300.0))


def test_head_exam_on_32cm_phantom_is_multiplied_by_2_3() -> None:
    event = ev(target_region=Code("T-A0100", "SRT", "Brain"), phantom="body32", ctdivol_mGy=20.0, dlp_mGycm=400.0)
    assert normalised_dose(event) == pytest.approx((46.0, 920.0))


def test_dose_on_the_standard_phantom_is_unchanged() -> None:
    assert normalised_dose(ev(phantom="body32", ctdivol_mGy=9.91, dlp_mGycm=708.2)) == (9.91, 708.2)
    head = ev(target_region=Code("T-D1100", "SRT", "Head"), phantom="head16", ctdivol_mGy=60.41, dlp_mGycm=475.04)
    assert normalised_dose(head) == (60.41, 475.04)


def test_unknown_phantom_or_missing_values_cannot_be_normalised() -> None:
    assert normalised_dose(ev(phantom=None)) == (None, None)
    assert normalised_dose(ev(phantom="other")) == (None, None)
    assert normalised_dose(ev(phantom="head16", target_region=Code("T-D3000", "SRT", "Chest"),
                              ctdivol_mGy=None, dlp_mGycm=46.0)) == (None, pytest.approx(20.0))


# --- SSDE ------------------------------------------------------------------------------------------------


def test_scanner_stated_ssde_wins() -> None:
    assert ssde_mGy(ev(ssde_mGy=12.3, water_equivalent_diameter_mm=300.0)) == 12.3
    # also for a head exam
    assert ssde_mGy(ev(ssde_mGy=40.0, target_region=Code("T-D1100", "SRT", "Head"))) == 40.0


def test_ssde_from_water_equivalent_diameter_aapm_220() -> None:
    event = ev(ctdivol_mGy=10.0, phantom="body32", water_equivalent_diameter_mm=250.0)
    expected = 3.704369 * math.exp(-0.03671937 * 25.0) * 10.0
    assert ssde_mGy(event) == pytest.approx(expected)
    assert ssde_mGy(event) == pytest.approx(14.8, abs=0.05)  # AAPM 204 table: f(25 cm) = 1.48


def test_ssde_for_body_exam_stated_on_16cm_uses_the_16cm_fit() -> None:
    event = ev(ctdivol_mGy=10.0, phantom="head16", water_equivalent_diameter_mm=150.0,
               target_region=Code("T-D4000", "SRT", "Abdomen"))
    assert ssde_mGy(event) == pytest.approx(1.874799 * math.exp(-0.03871313 * 15.0) * 10.0)


def test_ssde_unknown_without_size_for_head_exams_or_unknown_phantom() -> None:
    assert ssde_mGy(ev(water_equivalent_diameter_mm=None)) is None
    assert ssde_mGy(ev(water_equivalent_diameter_mm=250.0, phantom=None)) is None
    assert ssde_mGy(ev(water_equivalent_diameter_mm=250.0, ctdivol_mGy=None)) is None
    assert ssde_mGy(ev(water_equivalent_diameter_mm=170.0, target_region=Code("T-D1100", "SRT", "Head"))) is None


def test_aapm_204_helpers() -> None:
    assert effective_diameter_cm(20.0, 30.0) == pytest.approx(-0.203128 + 0.4958912 * 50.0)
    assert conversion_factor(32.0) == pytest.approx(3.704369 * math.exp(-0.03671937 * 32.0))
    assert conversion_factor(32.0) == pytest.approx(1.14, abs=0.01)  # near 1 at the phantom's own size


# --- timing runs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [
    "Monitoring", "PreMonitoring", "Pre-Monitoring", "MONITORING 2", "TestBolus", "Test Bolus", "test_bolus",
    "Abdomen TestBolus",
])
def test_timing_run_by_protocol(protocol: str) -> None:
    event = ev(acquisition_protocol=protocol, acquisition_type="stationary", ctdivol_mGy=1.2, dlp_mGycm=1.2)
    assert is_timing_run(event) is True


@pytest.mark.parametrize("protocol", ["TAP", "Thorax", "Bolus", None, "Test"])
def test_not_a_timing_run(protocol: str | None) -> None:
    assert is_timing_run(ev(acquisition_protocol=protocol)) is False


def test_timing_run_by_ctdivol_above_dlp_on_stationary() -> None:
    stationary = ev(acquisition_protocol=None, acquisition_type="stationary", ctdivol_mGy=32.83, dlp_mGycm=16.41)
    assert is_timing_run(stationary) is True
    assert timing_run_reason(stationary) == "stationary acquisition with CTDIvol 32.83 mGy above DLP 16.41 mGy.cm"
    assert is_timing_run(ev(acquisition_type="stationary", ctdivol_mGy=5.0, dlp_mGycm=5.0)) is False
    assert is_timing_run(ev(acquisition_type="sequenced", ctdivol_mGy=29.31, dlp_mGycm=14.66)) is False
    assert is_timing_run(ev(acquisition_type="stationary", ctdivol_mGy=None, dlp_mGycm=1.0)) is False
    assert timing_run_reason(ev(acquisition_protocol="PreMonitoring")) == "protocol 'PreMonitoring' contains 'Monitoring'"


# --- notification values ---------------------------------------------------------------------------------

HEAD = Code("T-D1100", "SRT", "Head")
CHEST = Code("T-D3000", "SRT", "Chest")


@pytest.mark.parametrize(("event", "age", "expected"), [
    (ev(target_region=HEAD, phantom="head16"), 45.0, ("adult_head", 80.0)),
    (ev(target_region=CHEST, phantom="body32"), 45.0, ("adult_body", 50.0)),
    (ev(target_region=HEAD, phantom="head16"), None, ("adult_head", 80.0)),
    (ev(target_region=HEAD, phantom="head16"), 1.5, ("paediatric_head_under_2y", 50.0)),
    (ev(target_region=HEAD, phantom="head16"), 2.0, ("paediatric_head_2_to_5y", 60.0)),
    (ev(target_region=HEAD, phantom="head16"), 5.9, ("paediatric_head_2_to_5y", 60.0)),
    (ev(target_region=HEAD, phantom="head16"), 6.0, ("adult_head", 80.0)),
    (ev(target_region=CHEST, phantom="head16"), 4.0, ("paediatric_body_under_10y", 25.0)),
    (ev(target_region=CHEST, phantom="body32"), 9.9, ("paediatric_body_under_10y", 20.0)),
    (ev(target_region=CHEST, phantom="body32"), 10.0, ("adult_body", 50.0)),
    (ev(target_region=HEAD, phantom="head16", acquisition_protocol="Neuro Perfusion",
        acquisition_type="stationary"), 60.0, ("brain_perfusion", 600.0)),
    (ev(target_region=Code("T-32000", "SRT", "Heart"), phantom="body32", pitch_factor=0.2), 60.0,
     ("cardiac_retrospective", 150.0)),
    (ev(target_region=CHEST, phantom="body32", acquisition_protocol="Coronary CTA", acquisition_type="sequenced"),
     60.0, ("cardiac_prospective", 50.0)),
    (ev(target_region=CHEST, phantom="body32", acquisition_protocol="Cardiac Flash", pitch_factor=3.2), 60.0,
     ("cardiac_prospective", 50.0)),
    (ev(target_region=CHEST, phantom="body32", acquisition_protocol="CaScore retro", pitch_factor=3.2), 60.0,
     ("cardiac_retrospective", 150.0)),
])
def test_notification_values_default(event: Event, age: float | None, expected: tuple[str, float]) -> None:
    category, value = notification_value_mGy(event, age, DEFAULTS)
    assert (category, value) == (expected[0], pytest.approx(expected[1]))


def test_notification_value_on_the_events_stated_phantom() -> None:
    # an adult head exam whose CTDIvol is stated on the 32 cm phantom: 80 mGy (16 cm) = 80/2.3 on 32 cm
    category, value = notification_value_mGy(ev(target_region=HEAD, phantom="body32"), 50.0, DEFAULTS)
    assert category == "adult_head" and value == pytest.approx(80.0 / 2.3)
    # an adult body exam stated on 16 cm: 50 x 2.3
    category, value = notification_value_mGy(ev(target_region=CHEST, phantom="head16"), 50.0, DEFAULTS)
    assert category == "adult_body" and value == pytest.approx(115.0)
    # phantom unknown: the category's reference value
    assert notification_value_mGy(ev(target_region=CHEST, phantom=None), 50.0, DEFAULTS) == ("adult_body", 50.0)


def test_notification_values_follow_the_configuration() -> None:
    settings = NotificationSettings(adult_head=70.0, adult_body=40.0, paediatric_body_under_10y=30.0)
    assert notification_value_mGy(ev(target_region=HEAD, phantom="head16"), 30.0, settings) == ("adult_head", 70.0)
    assert notification_value_mGy(ev(target_region=CHEST), 30.0, settings) == ("adult_body", 40.0)
    assert notification_value_mGy(ev(target_region=CHEST, phantom="head16"), 3.0, settings) == (
        "paediatric_body_under_10y", 30.0)
    _, value = notification_value_mGy(ev(target_region=CHEST, phantom="body32"), 3.0, settings)
    assert value == pytest.approx(24.0)


def test_module_examples() -> None:
    result = doctest.testmod(dosimetry)
    assert result.attempted >= 2 and result.failed == 0


def test_region_tables_match_pydicoms_snomed_codes() -> None:
    from pydicom.sr.codedict import codes

    for table in (dosimetry.HEAD_REGIONS, dosimetry.AMBIGUOUS_REGIONS, dosimetry._CARDIAC_REGIONS):
        for sct_id, keyword in table.items():
            assert getattr(codes.SCT, keyword).value == sct_id, keyword

