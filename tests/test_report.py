"""The completeness report (spec section 6): content, CSV, offline HTML, a real browser render."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dosereg.conf.config import Config, load_config
from dosereg.registry_export import write_report
from tests.synthetic import patient_name, synthetic_study


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    return load_config(None, data_dir=str(tmp_path / "data"))


def records() -> list:  # type: ignore[type-arg]
    """30 studies: 3 without patient sex, QA study 4, RT study 6, timing runs in every third."""
    return [synthetic_study(i, sex=None if i % 10 == 3 else "auto", qa=(i == 4), rt=(i == 6)) for i in range(30)]


@pytest.fixture()
def report(cfg: Config) -> tuple[Path, Path]:
    recs = records()
    paths = write_report(cfg, lambda: iter(recs))
    html_path, csv_path = paths
    return html_path, csv_path


def test_report_files_and_names(cfg: Config, report: tuple[Path, Path]) -> None:
    html_path, csv_path = report
    assert html_path.parent == cfg.data_dir / "reports" and html_path.suffix == ".html"
    assert csv_path.with_suffix(".html") == html_path and html_path.name.startswith("completeness-")
    assert not [p for p in html_path.parent.iterdir() if p.name.startswith(".staging")]


def test_csv_holds_the_tables(report: tuple[Path, Path]) -> None:
    _, csv_path = report
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    tables = Counter(r["table"] for r in rows)
    assert tables["scanner"] == 3
    assert tables["incomplete_study"] == 3  # studies 3, 13, 23 lack patient sex
    assert tables["timing_run"] == 10  # studies 0, 3, ..., 27
    assert tables["above_notification"] == 1  # study 7: 9x the usual CTDIvol of a body scan
    assert tables["dlp_disagreement"] == 1  # study 5: stated total 25 mGy.cm above the sum
    assert tables["ctdivol_by_protocol"] >= 4 and tables["dlp_by_body_region"] >= 4

    scanners = {r["scanner"]: r for r in rows if r["table"] == "scanner"}
    siemens = scanners["Siemens SOMATOM Definition Flash (CTAWP91919)"]
    assert siemens["studies"] == "10" and siemens["complete"] == "9" and siemens["completeness_rate"] == "0.9"
    assert siemens["top_missing_or_invalid"] == "patient.sex (1)"
    incomplete = {r["accession_number"]: r for r in rows if r["table"] == "incomplete_study"}
    assert set(incomplete) == {"ACN000000003", "ACN000000013", "ACN000000023"}
    assert "patient.sex" in incomplete["ACN000000003"]["reasons"]
    assert incomplete["ACN000000003"]["registry_code"] == "G9326"
    assert incomplete["ACN000000003"]["study_date"] == "2025-01-04"
    high = next(r for r in rows if r["table"] == "above_notification")
    assert high["accession_number"] == "ACN000000007" and high["category"] == "adult body"
    assert float(high["ctdivol_mGy"]) == pytest.approx(99.0) and float(high["notification_value_mGy"]) == 50.0
    dlp = next(r for r in rows if r["table"] == "dlp_disagreement")
    assert dlp["accession_number"] == "ACN000000005" and float(dlp["difference_mGycm"]) == -25.0
    head = next(r for r in rows if r["table"] == "ctdivol_by_protocol" and r["protocol"] == "Head routine")
    assert int(head["n"]) == 8 and 52.0 <= float(head["median"]) <= 54.5
    # one row per phantom a protocol's values are stated on: the head protocol only on 16 cm
    assert [r["phantom"] for r in rows if r["table"] == "ctdivol_by_protocol" and r["protocol"] == "Head routine"] \
        == ["head16"]
    assert {r["phantom"] for r in rows if r["table"] == "dlp_by_body_region"} == {"head16", "body32"}
    timing = [r for r in rows if r["table"] == "timing_run"]
    assert {r["protocol"] for r in timing} == {"PreMonitoring"}
    (summary,) = [r for r in rows if r["table"] == "timing_runs_by_protocol"]
    assert summary["protocol"] == "PreMonitoring" and summary["events"] == "10" and float(summary["median"]) == 4.1


def test_html_is_self_contained_and_names_missing_elements(report: tuple[Path, Path]) -> None:
    html_path, _ = report
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<code>patient.sex</code>" in page
    # CTDIvol and DLP by protocol and by body region (the dose review's own charts come after them),
    # one chart per phantom: the samples state head exams on 16 cm and body exams on 32 cm
    charts = page[page.index(">Dose distributions</h2>"):page.index(">Dose review by exam</h2>")]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", charts)
    assert charts.count("<svg") == len(captions) == 8
    assert sorted(captions) == sorted(f"{q} by {g}, {p}" for q in ("CTDIvol (mGy)", "DLP (mGy·cm)")
                                      for g in ("protocol", "body region")
                                      for p in ("16 cm head phantom", "32 cm body phantom"))
    # a chart never mixes phantoms: the head protocol only on the head phantom's chart
    head_chart, body_chart = (c for c in charts.split("<figure>")[1:3])
    assert "Head routine (n=" in head_chart and "Head routine (n=" not in body_chart
    for section in ("Completeness by scanner", "Completeness by acquisition protocol", "Incomplete studies (3)",
                    "Dose distributions", "Timing runs (10)", "Events above the notification values (1)",
                    "Stated total DLP differs from the sum of events (1)"):
        assert section in page, section
    # offline: nothing fetched from anywhere
    lowered = page.lower()
    assert "<script" not in lowered and "<link" not in lowered and "src=\"http" not in lowered
    assert "url(http" not in lowered and "@import" not in lowered
    # identifiable data limited to accession and date, and the page says so
    assert "ACN000000003" in page
    assert "accession number and study date" in page
    for i in range(30):
        assert patient_name(i).split("^")[0] not in page
        assert f"MRN{i:08d}" not in page
    assert "1925-03-14" not in page


def test_matplotlib_is_imported_only_when_a_report_is_written() -> None:
    code = "import sys, dosereg.cli, dosereg.registry_export; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_empty_catalog_still_gives_a_readable_report(cfg: Config) -> None:
    html_path, csv_path = write_report(cfg, lambda: iter(()), out_dir=cfg.data_dir / "elsewhere")
    assert html_path.parent == cfg.data_dir / "elsewhere" / "reports"
    page = html_path.read_text()
    assert "No dose values to chart." in page and "Incomplete studies (0)" in page
    assert csv_path.read_text().splitlines()[0].startswith("table,scanner,protocol")


def _png_pixels(path: Path) -> list[tuple[int, ...]]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    step = 7
    return [tuple(int(c * 255) for c in img[y, x][:3]) for y in range(0, img.shape[0], step)
            for x in range(0, img.shape[1], step)]


def test_report_renders_in_headless_chromium(report: tuple[Path, Path], tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (Debian package `chromium`; .ci/run installs it)")
    html_path, _ = report
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           html_path.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, "chromium wrote no screenshot"
    pixels = _png_pixels(shot)
    colours = Counter(pixels)
    white_share = colours[(255, 255, 255)] / len(pixels)
    assert len(colours) > 40, "the page rendered (almost) blank"
    assert white_share < 0.97
    # the chart boxes (#cfe0f3) and the completeness bars are drawn
    assert any(abs(r - 0xCF) < 6 and abs(g - 0xE0) < 6 and abs(b - 0xF3) < 6 for r, g, b in colours)
