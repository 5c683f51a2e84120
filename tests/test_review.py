"""Issue 13: reference levels as data and the report's dose review (docs/reference-levels.md,
docs/dose-review.md), values asserted."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dosereg.conf.config import CONF_DIR, ConfigError, default_config, load_config
from dosereg.conf.reference_levels import load_reference_levels, reference_levels_path
from dosereg.extract import Code, Event, Patient
from dosereg.registry_export import evaluate, rules_from_config
from dosereg.registry_export.effective_dose import effective_dose_mSv, k_factor
from dosereg.registry_export.report import ReportBuilder
from dosereg.registry_export.report_html import render_html
from tests.test_rules import localizer, spiral, study

HEAD = Code("T-D1100", "SRT", "Head")
CHEST = Code("T-D3000", "SRT", "Chest")
LEVEL = """schema = "dosereg.reference_levels/1"
[[level]]
name = "Test DRL head CT"
exam = "CT HEAD WO"
region = "head"
phantom = "head16"
quantity = "ctdivol_mGy"
value = 55
kind = "drl"
source = "a survey, Table 2"
[[level]]
name = "Test DRL head DLP"
exam = "*"
region = "head"
phantom = "head16"
quantity = "dlp_mGycm"
value = 1000
kind = "drl"
source = "a survey, Table 3"
"""


def test_every_shipped_level_names_its_source() -> None:
    levels = load_reference_levels(CONF_DIR / "reference_levels.toml")
    assert len(levels) == 10
    for lv in levels:
        assert re.search(r"(Table \d|section)", lv.source), lv
        assert lv.value == lv.stated_value  # each is stated on its region's phantom
    by_category = {lv.category: lv.value for lv in levels if lv.kind == "notification"}
    n = default_config().notification
    assert by_category == {"adult_head": n.adult_head, "adult_body": n.adult_body,
                           "paediatric_head_under_2y": n.paediatric_head_under_2y,
                           "paediatric_head_2_to_5y": n.paediatric_head_2_to_5y,
                           "paediatric_body_under_10y": 20.0, "brain_perfusion": n.brain_perfusion,
                           "cardiac_prospective": n.cardiac_prospective,
                           "cardiac_retrospective": n.cardiac_retrospective}
    assert reference_levels_path(default_config()) == CONF_DIR / "reference_levels.toml"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace('source = "a survey, Table 2"\n', ""), r"level\[0\]: source is missing"),
    (lambda t: t.replace('kind = "drl"', 'kind = "guess"', 1), r"level\[0\]: kind must be one of drl, "),
    (lambda t: t.replace("value = 55", "value = -5"), r"level\[0\]: value must be a positive number, not -5"),
    (lambda t: t.replace('region = "head"', 'region = "neck"', 1), r"level\[0\]: region must be one of head, body"),
    (lambda t: t.replace("value = 1000", "value = 1000\ncolour = 'red'"), r"level\[1\]: unknown key 'colour'"),
    (lambda t: t.replace("/1", "/9"), r"schema must be 'dosereg.reference_levels/1'"),
])
def test_level_file_errors_name_file_level_and_key(tmp_path: Path, edit: Any, message: str) -> None:
    path = tmp_path / "levels.toml"
    path.write_text(edit(LEVEL))
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + message):
        load_reference_levels(path)


def test_a_level_on_the_other_phantom_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "levels.toml"
    path.write_text(LEVEL.replace('phantom = "head16"', 'phantom = "body32"', 1))
    lv = load_reference_levels(path)[0]
    assert (lv.stated_value, lv.value) == (55.0, pytest.approx(55.0 * 2.3))


def test_effective_dose_estimates_use_aapm_report_96_k_factors() -> None:
    head = Event(acquisition_type="spiral", ctdivol_mGy=50.0, dlp_mGycm=1000.0, phantom="head16", target_region=HEAD)
    chest = Event(acquisition_type="spiral", ctdivol_mGy=10.0, dlp_mGycm=400.0, phantom="body32", target_region=CHEST)
    neck = replace(chest, target_region=Code("45048000", "SCT", "Neck"))
    trunk = replace(chest, target_region=Code("x", "99X", "Chest, abdomen and pelvis"))
    assert k_factor(head) == ("head", 0.0021) and effective_dose_mSv(head) == pytest.approx(2.1)
    assert k_factor(chest) == ("chest", 0.014) and effective_dose_mSv(chest) == pytest.approx(5.6)
    assert k_factor(neck) == ("neck", 0.0059)
    assert k_factor(trunk) == ("trunk", 0.015)
    # DLP on the 16 cm phantom for a body exam: divided by 2.3 first
    assert effective_dose_mSv(replace(chest, phantom="head16")) == pytest.approx(400 / 2.3 * 0.014)


def _head_study(i: int, ctdi: float, dlp: float, date: str = "2025-03-01", description: str = "CT HEAD WO") -> Any:
    scan = spiral(irradiation_event_uid=f"1.2.3.{i}.2", acquisition_protocol="Head Routine", target_region=HEAD,
                  phantom="head16", ctdivol_mGy=ctdi, dlp_mGycm=dlp)
    return study(study_instance_uid=f"1.2.3.{i}", accession_number=f"ACC{i}", study_date=date,
                 study_description=description, total_dlp_mGycm=dlp, reported_total_dlp_mGycm=dlp,
                 events=(localizer(irradiation_event_uid=f"1.2.3.{i}.1", target_region=HEAD), scan))


def _review(tmp_path: Path, records: list[Any], levels: str = LEVEL, extra: str = "") -> Any:
    (tmp_path / "levels.toml").write_text(levels)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f"[reference_levels]\nfile = 'levels.toml'\nlocal_min_n = 3\n{extra}")
    cfg = load_config(cfg_path)
    rules = rules_from_config(cfg)
    builder = ReportBuilder(cfg)
    for r in records:
        builder.add_evaluated(r, evaluate(r, rules))
    summary = builder.summary()
    builder.close()
    return cfg, summary


def test_exam_statistics_levels_and_local_levels(tmp_path: Path) -> None:
    heads = [_head_study(i, ctdi, dlp) for i, (ctdi, dlp) in enumerate([(50, 800), (60, 900), (70, 1100), (80, 1200)])]
    body = study(study_instance_uid="1.2.3.99", accession_number="ACC99", study_date="2025-03-02")
    qa = _head_study(98, 500.0, 5000.0)
    qa = replace(qa, patient=Patient(id="QA1", name="MONTHLY_QC^CT", sex="O"))
    cfg, summary = _review(tmp_path, [*heads, body, qa])
    r = summary.review
    assert [(e.name, e.region) for e in r.exams] == [("CT HEAD WO", "head"), ("Thorax^TAP (Adult)", "body")]
    head = next(e for e in r.exams if e.region == "head")
    assert head.studies == 4  # the QC study takes no part
    assert (head.ctdivol.n, head.ctdivol.p25, head.ctdivol.median, head.ctdivol.p75) == (4, 57.5, 65.0, 72.5)
    assert (head.dlp.median, head.dlp.p75) == (1000.0, 1125.0)
    assert head.effective_dose_mSv == pytest.approx(2.1)  # 1000 mGy.cm x 0.0021
    assert (head.local_ctdivol, head.local_dlp) == (72.5, 1125.0)  # 75th percentiles, n = 4 >= 3
    checks = {c.level.name: (c.median, c.above) for c in head.levels}
    assert checks == {"Test DRL head CT": (65.0, True), "Test DRL head DLP": (1000.0, False)}
    body_stats = next(e for e in r.exams if e.region == "body")
    assert body_stats.levels == () and body_stats.local_ctdivol is None  # n = 1 < 3
    assert (body_stats.ctdivol.median, body_stats.dlp.median) == (9.91, 708.2)
    # studies above a level (per event for CTDIvol, per study for DLP), largest ratio first
    above = [(row["accession_number"], row["level"], row["value"]) for row in r.above_level]
    assert above == [("ACC3", "Test DRL head CT", 80.0), ("ACC2", "Test DRL head CT", 70.0),
                     ("ACC3", "Test DRL head DLP", 1200.0), ("ACC2", "Test DRL head DLP", 1100.0),
                     ("ACC1", "Test DRL head CT", 60.0)]
    assert r.above_level[0]["protocol"] == "Head Routine"
    assert r.above_level_count == 5
    page = render_html(summary, cfg)
    assert "▲ " + head.name in page and "Effective doses are estimates" in page
    assert "<nav class='toc'>" in page and "href='#s" in page


def test_the_csv_holds_the_review_tables(tmp_path: Path) -> None:
    """The CSV has the review's rows as the page has them: exams, levels with sources, protocols,
    trends, every study above a level (the page shows the first ABOVE_ROWS) and the high-dose patients."""
    import csv

    heads = [_head_study(i, ctdi, dlp) for i, (ctdi, dlp) in enumerate([(50, 800), (60, 900), (70, 1100), (80, 1200)])]
    (tmp_path / "levels.toml").write_text(LEVEL)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text("[reference_levels]\nfile = 'levels.toml'\nlocal_min_n = 3\n")
    cfg = load_config(cfg_path)
    rules = rules_from_config(cfg)
    builder = ReportBuilder(cfg)
    for r in heads:
        builder.add_evaluated(r, evaluate(r, rules))
    html_path, csv_path = builder.write(tmp_path / "out", "completeness-x")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_table: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_table.setdefault(row["table"], []).append(row)
    (exam,) = by_table["review_exam"]
    assert (exam["exam"], exam["region"], exam["studies"]) == ("CT HEAD WO", "head", "4")
    assert (exam["ctdivol_p25"], exam["ctdivol_median"], exam["ctdivol_p75"]) == ("57.5", "65.0", "72.5")
    assert (exam["dlp_median"], exam["local_ctdivol_mGy"], exam["local_dlp_mGycm"]) == ("1000.0", "72.5", "1125.0")
    assert exam["above_levels"] == "Test DRL head CT"
    levels = {r["level"]: r for r in by_table["reference_level"]}
    assert levels["Test DRL head DLP"]["source"] == "a survey, Table 3"
    assert (levels["Test DRL head CT"]["level_value"], levels["Test DRL head CT"]["stated_phantom"]) == ("55.0", "head16")
    (protocol,) = by_table["review_protocol"]
    assert protocol["protocol"] == "Head Routine" and protocol["ctdivol_n"] == "4"
    (trend,) = by_table["review_trend"]
    assert (trend["month"], trend["events"], trend["ctdivol_median_mGy"]) == ("2025-03", "4", "65.0")
    above = [(r["accession_number"], r["level"], r["value"]) for r in by_table["review_above_level"]]
    assert above[:2] == [("ACC3", "Test DRL head CT", "80.0"), ("ACC2", "Test DRL head CT", "70.0")]
    assert len(above) == 5 and by_table["review_above_level"][0]["protocol"] == "Head Routine"
    (patient,) = by_table["review_high_dose"]  # the four studies are one patient's
    assert (patient["studies"], patient["latest_study_date"]) == ("4", "2025-03-01")
    assert float(patient["cumulative_dlp_mGycm"]) >= 4000.0
    assert "all are in the CSV" not in html_path.read_text(encoding="utf-8")


def test_the_page_shows_the_first_studies_above_a_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dosereg.registry_export import review_html

    heads = [_head_study(i, ctdi, dlp) for i, (ctdi, dlp) in enumerate([(50, 800), (60, 900), (70, 1100), (80, 1200)])]
    cfg, summary = _review(tmp_path, heads)
    monkeypatch.setattr(review_html, "ABOVE_ROWS", 2)
    page = render_html(summary, cfg)
    assert len(summary.review.above_level) == 5  # the summary keeps them all, for the CSV
    assert "Showing the first 2 of 5; all are in the CSV." in page
    assert "ACC3" in page and "ACC1" not in page.split("Studies above a reference level")[1].split("</table>")[0]


def test_trends_per_scanner_and_month_keep_head_and_body_apart(tmp_path: Path) -> None:
    records = [_head_study(1, 50, 800, "2025-01-10"), _head_study(2, 70, 900, "2025-01-20"),
               _head_study(3, 40, 700, "2025-02-05"),
               study(study_instance_uid="1.2.3.9", accession_number="B", study_date="2025-01-03")]
    _, summary = _review(tmp_path, records)
    trends = [(t.region, t.month, t.events, t.ctdivol_median, t.studies, t.dlp_median) for t in summary.review.trends]
    assert trends == [("body", "2025-01", 1, 9.91, 1, 708.2), ("head", "2025-01", 2, 60.0, 2, 850.0),
                      ("head", "2025-02", 1, 40.0, 1, 700.0)]


def test_local_levels_cover_only_the_period(tmp_path: Path) -> None:
    old = [_head_study(i, 500, 5000, "2023-01-01") for i in range(3)]
    new = [_head_study(10 + i, 50 + i, 800, "2025-06-01") for i in range(3)]
    _, summary = _review(tmp_path, [*old, *new], extra="local_period_days = 30\n")
    head = summary.review.exams[0]
    assert head.studies == 6 and head.local_ctdivol == 51.5  # 75th percentile of 50, 51, 52
    assert summary.review.local_period == ("2025-05-03", "2025-06-01")


# --- patient history ---------------------------------------------------------------------------


def test_cumulative_dose_per_patient_over_the_window() -> None:
    from dosereg.registry_export import PatientHistory

    rules = rules_from_config(default_config())
    a1, a2, a3 = (replace(_head_study(i, 50, dlp, day), patient=Patient(id="P1", name="A^B", sex="F", age_years=50.0))
                  for i, (dlp, day) in enumerate([(800, "2024-01-10"), (900, "2024-12-01"), (1000, "2025-06-01")]))
    other = replace(_head_study(7, 50, 700, "2024-12-01"), patient=Patient(id="P2", name="C^D", sex="M"))
    qa = replace(_head_study(8, 50, 5000, "2024-12-01"), patient=Patient(id="P1", name="MONTHLY_QC^X", sex="O"))
    history = PatientHistory.of([a1, a2, a3, other, qa], rules, 365)
    assert history.cumulative("P1", "2024-12-01") == {
        "window_days": 365, "studies": 2, "cumulative_dlp_mGycm": 1700.0,
        "cumulative_effective_dose_mSv": 3.57, "effective_dose_is_estimate": True}  # 1700 x 0.0021; QC left out
    assert history.cumulative("P1", "2025-06-01")["studies"] == 2  # 2024-01-10 is outside the window
    assert history.cumulative("P1", "2025-06-01")["cumulative_dlp_mGycm"] == 1900.0
    assert history.cumulative("P2", "2024-12-01")["cumulative_dlp_mGycm"] == 700.0
    assert history.cumulative("P3", "2024-12-01") is None and history.cumulative("P1", None) is None


def test_studies_json_carries_the_patient_history(tmp_path: Path) -> None:
    from tests.conftest import run_cli
    from tests.test_classification_evidence import SAMPLES

    data = tmp_path / "data"
    assert run_cli("import", str(SAMPLES / "ct_head_sequenced.dcm"), str(SAMPLES / "ct_qa_phantom.dcm"),
                   "--data-dir", str(data)).returncode == 0
    out = run_cli("studies", "--json", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    by_desc = {d["study_description"]: d for d in map(__import__("json").loads, out.stdout.splitlines())}
    head = by_desc["Head^HeadSeq (Adult)"]["patient_history"]
    # the localizer (2.3 mGy.cm) and the head scan (754.13), both on the 16 cm phantom
    assert head["studies"] == 1 and head["cumulative_dlp_mGycm"] == pytest.approx(756.43, abs=0.01)
    assert head["cumulative_effective_dose_mSv"] == pytest.approx(756.43 * 0.0021, abs=0.001)
    assert by_desc["Daily QA"]["patient_history"] is None


def test_report_high_dose_section_names_studies_not_patients(tmp_path: Path) -> None:
    p1 = Patient(id="PID-9F3K", name="A^B", sex="F", age_years=50.0)
    records = [replace(_head_study(i, 50, dlp, day), patient=p1)
               for i, (dlp, day) in enumerate([(800, "2024-01-10"), (900, "2024-12-01"), (1000, "2025-06-01")])]
    records.append(replace(_head_study(7, 50, 700, "2024-12-01"), patient=Patient(id="P2", name="C^D", sex="M")))
    cfg, summary = _review(tmp_path, records)
    # P1: its two studies within 365 days of its latest (900 + 1000); 2024-01-10 is outside
    assert [(r["accession_numbers"], r["studies"], r["cumulative_dlp_mGycm"]) for r in summary.review.high_dose] == [
        ("ACC2, ACC1", 2, 1900.0), ("ACC7", 1, 700.0)]
    page = render_html(summary, cfg)
    assert "Highest cumulative patient dose (2)" in page and "ACC2, ACC1" in page
    assert "PID-9F3K" not in page
