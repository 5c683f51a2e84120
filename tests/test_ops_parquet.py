"""The registry Parquet files type their values (issue 14): dates as dates, date-times as timestamps,
counts as integers, totals the exact sum of the stated values; read with pyarrow and DuckDB."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dosereg.registry_export.writers import as_local, as_time, as_utc, event_row

from .conftest import SAMPLES, run_cli

SECRET = {"DOSEREG_SECRET": "s" * 40}
FILES = ["ct_siemens_single_source.dcm", "ct_siemens_dual_source.dcm", "ct_datetime_offset.dcm",
         "ct_head_sequenced.dcm", "ct_ge_enhanced_sr.dcm", "ct_toshiba_dose_check.dcm"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parquet")
    data = root / "data"
    r = run_cli("import", *(str(SAMPLES / f) for f in FILES), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    r = run_cli("export", "--out", str(root / "out"), "--data-dir", str(data), env=SECRET)
    assert r.returncode == 0, r.stderr
    (folder,) = (root / "out" / "registry").glob("*/*")
    return folder


def test_arrow_types(batch: Path) -> None:
    studies = pq.read_table(batch / "studies.parquet")
    events = pq.read_table(batch / "events.parquet")
    assert studies.num_rows >= 3 and events.num_rows > studies.num_rows
    s, e = studies.schema, events.schema
    assert s.field("study_date").type == pa.date32()
    assert s.field("study_time").type == pa.time64("us")
    assert s.field("report_start_datetime").type == pa.timestamp("us")
    assert s.field("dose_objects").type.value_type.field("received_at").type == pa.timestamp("us", tz="UTC")
    assert s.field("total_events").type == pa.int32()
    assert e.field("number_of_xray_sources").type == pa.int32()
    assert e.field("start_datetime").type == pa.timestamp("us")
    assert e.field("start_datetime_utc_offset_min").type == pa.int16()
    rows = studies.to_pylist()
    assert all(isinstance(r["study_date"], date) for r in rows)
    assert {x["number_of_xray_sources"] for x in events.to_pylist()} <= {1, 2, None}
    assert 2 in {x["number_of_xray_sources"] for x in events.to_pylist()}  # the dual-source scanner
    offset = [x for x in events.to_pylist() if x["start_datetime_utc_offset_min"] is not None]
    assert offset and all(x["start_datetime_utc_offset_min"] == 60 for x in offset)
    assert any(x["start_datetime"] == datetime(2024, 3, 5, 10, 16, 10, 250000) for x in offset)
    # the JSON files keep their contract: ISO text
    sub = json.loads((batch / "submission.json").read_text())
    assert all(isinstance(st["study_date"], str) for st in sub["studies"])


def test_totals_are_the_exact_sum_of_the_stated_values(batch: Path) -> None:
    studies = pq.read_table(batch / "studies.parquet").to_pylist()
    events = pq.read_table(batch / "events.parquet").to_pylist()
    for st in studies:
        mine = [e for e in events if e["study_instance_uid"] == st["study_instance_uid"]]
        assert len(mine) == st["total_events"]
        stated = [e["dlp_mGycm"] for e in mine if e["dlp_mGycm"] is not None]
        assert st["total_dlp_mGycm"] == math.fsum(stated)
        norm = [e["normalised_dlp_mGycm"] for e in mine
                if e["normalised_dlp_mGycm"] is not None and not e["is_timing_run"]]
        assert st["normalised_total_dlp_mGycm"] == (math.fsum(norm) if norm else None)


def test_duckdb_reads_dates_integers_and_joins_on_the_pseudonymous_study_uid(batch: Path) -> None:
    duckdb = pytest.importorskip("duckdb", reason="duckdb (test extra) could not be installed")
    con = duckdb.connect()
    studies, events = str(batch / "studies.parquet"), str(batch / "events.parquet")
    types = {name: t for name, t, *_ in con.execute(f"DESCRIBE SELECT * FROM '{studies}'").fetchall()}
    assert types["study_date"] == "DATE" and types["total_events"] == "INTEGER"
    assert types["report_start_datetime"] == "TIMESTAMP"
    etypes = {name: t for name, t, *_ in con.execute(f"DESCRIBE SELECT * FROM '{events}'").fetchall()}
    assert etypes["number_of_xray_sources"] == "INTEGER" and etypes["start_datetime"] == "TIMESTAMP"
    joined = con.execute(
        f"SELECT s.study_instance_uid, count(*), any_value(s.total_events), sum(e.dlp_mGycm) "
        f"FROM '{events}' e JOIN '{studies}' s USING (study_instance_uid) GROUP BY 1").fetchall()
    n_events = con.execute(f"SELECT count(*) FROM '{events}'").fetchone()
    assert n_events is not None and sum(r[1] for r in joined) == n_events[0]
    assert all(r[1] == r[2] for r in joined)
    assert all(uid.startswith("2.25.") for uid, *_ in joined)
    year = con.execute(f"SELECT DISTINCT year(study_date) FROM '{studies}'").fetchall()
    assert year and all(isinstance(y, int) for (y,) in year)


def test_value_conversions() -> None:
    assert as_local("2024-03-05T10:22:12.5+01:00") == (datetime(2024, 3, 5, 10, 22, 12, 500000), 60)
    assert as_local("2024-03") == (datetime(2024, 3, 1), None)
    assert as_utc("2026-12-02T19:20:32.906496Z") == datetime(2026, 12, 2, 19, 20, 32, 906496, tzinfo=timezone.utc)
    assert as_time("10:15:30.25") is not None and as_time("nonsense") is None
    assert event_row({"number_of_xray_sources": 1.5, "start_datetime": None})["number_of_xray_sources"] is None
    assert event_row({"number_of_xray_sources": 2.0})["number_of_xray_sources"] == 2
