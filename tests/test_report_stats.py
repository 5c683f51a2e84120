"""The completeness report's parts (docs/report.md): the dose statistics (pandas) against
hand-computed values, the typed entry point against export's dict adapter, the renderer
fed a summary alone, owner-only files."""

from __future__ import annotations

import csv
import math
import os
import random
import stat
import subprocess
import sys
from array import array
from dataclasses import replace
from pathlib import Path

import pytest

from dosereg.conf.config import Config, load_config
from dosereg.extract import StudyRecord, error_record
from dosereg.registry_export.report import ReportBuilder
from dosereg.registry_export.report_data import (
    DetailTable,
    Distribution,
    DoseStats,
    GroupCompleteness,
    ReportSummary,
    TimingSummary,
    dose_stats,
)
from dosereg.registry_export.report_html import render_html
from dosereg.registry_export.rules import evaluate, rules_from_config
from tests.synthetic import synthetic_study


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    return load_config(None, data_dir=str(tmp_path / "data"))


def _type7(values: list[float], p: float) -> float:
    """The quartile as the report computed it by hand before pandas: linear interpolation
    between the closest ranks of the sorted values, at rank (n - 1) * p."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _one(values: list[float]) -> DoseStats:
    return dose_stats({"t": {"g": array("d", values)}})["t"]["g"]


def test_quartiles_of_a_known_set_are_linear_interpolation() -> None:
    # 1..4: ranks (n-1)p = 0.75, 1.5, 2.25 -> 1.75, 2.5, 3.25 (the exclusive method, (n+1)p,
    # would give 1.25 / 2.5 / 3.75; the nearest-rank method 1 / 2 / 3)
    assert _one([4.0, 1.0, 3.0, 2.0]) == DoseStats("g", 4, 1.0, 1.75, 2.5, 3.25, 4.0)
    # 5 values: ranks 1, 2, 3 fall on values
    assert _one([10.0, 50.0, 20.0, 40.0, 30.0]) == DoseStats("g", 5, 10.0, 20.0, 30.0, 40.0, 50.0)
    # one value: every statistic is that value
    assert _one([52.25]) == DoseStats("g", 1, 52.25, 52.25, 52.25, 52.25, 52.25)
    # two values: p25 at rank 0.25
    assert _one([8.5, 12.5]) == DoseStats("g", 2, 8.5, 9.5, 10.5, 11.5, 12.5)
    # rounded to 3 decimals: p25 = 42.225 + (113.822 - 42.225) / 2 = 78.0235 (78.02350000000001
    # in binary), 78.024; numpy.quantile interpolates from the upper value here and gets 78.023
    s = _one([113.822, 42.225, 142.763])
    assert (s.p25, s.median, s.p75) == (78.024, 113.822, 128.293)
    assert s.p75 == round(113.822 + (142.763 - 113.822) * 0.5, 3)


def test_quartiles_equal_the_hand_written_interpolation_on_random_groups() -> None:
    rng = random.Random(20261202)
    groups = {f"g{i}": [round(rng.uniform(0, 2000), rng.choice((1, 2, 3))) for _ in range(rng.randint(1, 40))]
              for i in range(400)}
    stats = dose_stats({"t": {g: array("d", v) for g, v in groups.items()}})["t"]
    assert set(stats) == set(groups)
    for g, values in groups.items():
        expected = DoseStats(g, len(values), round(min(values), 3), round(_type7(values, 0.25), 3),
                             round(_type7(values, 0.5), 3), round(_type7(values, 0.75), 3), round(max(values), 3))
        assert stats[g] == expected, g


def test_nan_is_left_out_of_the_statistics_and_tables_are_apart() -> None:
    out = dose_stats({
        "a": {"x": array("d", [math.nan, 1.0, 3.0]), "only_nan": array("d", [math.nan])},
        "b": {"x": array("d", [7.0])},
        "empty": {},
    })
    assert out["a"] == {"x": DoseStats("x", 2, 1.0, 1.5, 2.0, 2.5, 3.0)}
    assert out["b"] == {"x": DoseStats("x", 1, 7.0, 7.0, 7.0, 7.0, 7.0)}
    assert out["empty"] == {}


def _records() -> list[StudyRecord]:
    recs = [synthetic_study(i, sex=None if i % 10 == 3 else "auto", qa=(i == 4), rt=(i == 6)) for i in range(30)]
    scan = recs[1].events[-1]
    recs[1] = recs[1].with_changes(events=(*recs[1].events[:-1], replace(scan, ctdivol_mGy=math.nan)))
    recs.append(error_record("not_a_dose_report", "not a CT dose object", study_instance_uid="1.2.3.4",
                             accession_number="ACNERR", study_date="2025-02-01"))
    return recs


def test_the_report_of_typed_records_and_evaluations(cfg: Config) -> None:
    # export and `dosereg report` both feed ReportBuilder.add_evaluated (the dict-form adapter is gone)
    rules = rules_from_config(cfg)
    typed = ReportBuilder(cfg)
    for record in _records():
        typed.add_evaluated(record, evaluate(record, rules))
    s = typed.summary()
    typed.close()

    # an error record's verdicts are null (evaluated_dict): no registry code, the error as reason
    assert s.studies == 31 and s.codes["unknown"] == 1 and s.codes["excluded"] == 1
    incomplete = {r["accession_number"]: r for r in s.details["incomplete_study"].rows}
    assert incomplete["ACNERR"]["registry_code"] == "unknown"
    assert incomplete["ACNERR"]["reasons"] == "error: not a CT dose object"
    assert incomplete["ACNERR"]["scanner"] == "(scanner not stated)"
    # study 1's NaN CTDIvol: implausible (incomplete), and out of the distribution of its protocol
    assert "ACN000000001" in incomplete
    ctdi = {d.table: d for d in s.distributions}["ctdivol_by_protocol"]
    thorax = {st.group: st for st in ctdi.stats}["Thorax std"]
    thorax_values = [r.events[-1].ctdivol_mGy for i, r in enumerate(_records()[:30]) if i % 4 == 1 and i != 1]
    assert thorax.n == len(thorax_values) == 7 and all(v == v for v in ctdi.values["Thorax std"])
    assert thorax.median == round(_type7([float(v) for v in thorax_values if v is not None], 0.5), 3)
    # completeness per scanner, by name
    assert [g.name for g in s.scanners] == sorted(g.name for g in s.scanners)
    siemens = next(g for g in s.scanners if g.name.startswith("Siemens"))
    assert (siemens.studies, siemens.complete, siemens.top_problems) == (10, 9, (("patient.sex", 1),))
    assert s.timing == (TimingSummary("PreMonitoring", 10, DoseStats("PreMonitoring", 10, 4.1, 4.1, 4.1, 4.1, 4.1)),)


def _summary() -> ReportSummary:
    row = {"accession_number": "ACN1", "study_date": "2025-01-02", "scanner": "Acme CT9 (ST1)",
           "registry_code": "G9326", "reasons": "missing patient.sex"}
    empty = {name: DetailTable(name, cols, (), 0) for name, cols in (
        ("timing_run", ("accession_number",)), ("above_notification", ("accession_number",)),
        ("dlp_disagreement", ("accession_number",)))}
    return ReportSummary(
        studies=4, complete=3, codes={"G9327": 3, "G9326": 1}, problems=(("patient.sex", 1),),
        scanners=(GroupCompleteness("Acme CT9 (ST1)", 4, 3, 0, 8, 7, (("patient.sex", 1),)),),
        protocols=(GroupCompleteness("Head routine", 4, 3, 0, 8, 7, ()),),
        distributions=(Distribution("ctdivol_by_protocol", "protocol", "CTDIvol (mGy) by protocol",
                                    (DoseStats("Head routine", 4, 50.0, 51.0, 52.5, 54.0, 55.0),),
                                    {"Head routine": [50.0, 52.0, 53.0, 55.0]}),),
        timing=(),
        details={"incomplete_study": DetailTable("incomplete_study", tuple(row), (row,), 250), **empty})


def test_the_page_is_rendered_from_a_summary_alone(cfg: Config) -> None:
    page = render_html(_summary(), cfg, batch_id="20261202T000000Z-0001")
    assert "Incomplete studies (250)" in page and "Showing the first 1 of 250; all are in the CSV." in page
    assert ">3 (75%)<" in page  # the Complete card
    assert "<code>patient.sex</code> <span class='n'>×1</span>" in page
    assert "written with export batch 20261202T000000Z-0001" in page
    assert page.count("<svg") == 1 and "Head routine (n=4)" in page
    assert "Timing runs (0)" in page and "<td class=nw>ACN1</td>" in page


def test_report_files_are_owner_only_whatever_the_umask(cfg: Config, tmp_path: Path) -> None:
    rules = rules_from_config(cfg)
    b = ReportBuilder(cfg)
    for record in _records()[:5]:
        b.add_evaluated(record, evaluate(record, rules))
    old = os.umask(0)
    try:
        paths = b.write(tmp_path / "out", "completeness-x")
    finally:
        os.umask(old)
    assert [p.name for p in paths] == ["completeness-x.html", "completeness-x.csv"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o600}
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
    with open(paths[1], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["accession_number"] for r in rows if r["table"] == "incomplete_study"] == ["ACN000000001",
                                                                                        "ACN000000003"]


def test_pandas_is_imported_only_when_a_report_is_written() -> None:
    code = "import sys, dosereg.cli, dosereg.registry_export; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
