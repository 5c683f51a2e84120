"""End-to-end extraction of the project's own synthetic dose objects (sample_dicom/).

``sample_dicom/generate.py`` writes each ``<stem>.dcm`` together with
``sample_dicom/expected/<stem>.json``: the values a correct ``dosereg extract`` must print,
known exactly because the generator wrote them. The files stand in for vendor objects the
project has no real copy of (dual-source, Toshiba Dose Check, GE Enhanced SR, continuation
objects, mammography and fluoroscopy RDSRs, ...), plus junk, truncated and re-encoded files.

Every sample goes through the real CLI in ONE call, so the test also checks that bad files
yield error records while the good ones still come out in input order, exit status 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.compare import assert_matches, mismatches
from tests.conftest import SAMPLES, jsonl, run_cli, validate_record

EXPECTED_DIR = SAMPLES / "expected"
STEMS = sorted(p.stem for p in EXPECTED_DIR.glob("*.json") if p.name != "merges.json")
MERGES: list[dict[str, Any]] = json.loads((EXPECTED_DIR / "merges.json").read_text())


def _expected(stem: str) -> dict[str, Any]:
    return json.loads((EXPECTED_DIR / f"{stem}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def extracted() -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    """All samples through ``dosereg extract`` in one call, in sorted order.

    Sorted order puts the junk and truncated files between good ones.
    """
    files = [str(SAMPLES / f"{stem}.dcm") for stem in STEMS]
    proc = run_cli("extract", *files)
    records = jsonl(proc.stdout)
    assert len(records) == len(files), (
        f"expected one JSON line per input file ({len(files)}), got {len(records)}; stderr:\n{proc.stderr[-2000:]}")
    return proc, dict(zip(STEMS, records, strict=True))


def test_sample_set_is_complete() -> None:
    dcm = sorted(p.stem for p in SAMPLES.glob("*.dcm"))
    assert dcm == STEMS, "every sample file needs an expected/<stem>.json and vice versa"
    for needed in ("ct_siemens_single_source", "ct_siemens_dual_source", "ct_head_sequenced", "ct_ge_enhanced_sr",
                   "ct_incomplete", "ct_rt_sim", "ct_qa_phantom", "ct_cumulative_1", "ct_cumulative_2",
                   "dx_projection_rdsr", "junk_not_dicom", "ct_truncated"):
        assert needed in STEMS


def test_extract_exit_status_and_order(extracted: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    proc, records = extracted
    # junk, truncated and refused objects are in the call: exit 1 after processing all of them
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for stem, record in records.items():
        want = _expected(stem)["record"]
        if want.get("error"):
            assert record["error"] is not None, f"{stem}: expected an error record, got a study"
            continue
        # the good files still come out, each at its own input position
        assert record["error"] is None, f"{stem}: unexpected error {record['error']}"
        assert record["dose_objects"][0]["sop_instance_uid"] == want["dose_objects"][0]["sop_instance_uid"], (
            f"{stem}: output line is not this file's record (input order lost?)")


@pytest.mark.parametrize("stem", STEMS)
def test_every_record_validates(stem: str, extracted: tuple[Any, dict[str, dict[str, Any]]]) -> None:
    validate_record(extracted[1][stem])


@pytest.mark.parametrize("stem", STEMS)
def test_sample_matches_expected(stem: str, extracted: tuple[Any, dict[str, dict[str, Any]]]) -> None:
    doc = _expected(stem)
    record = extracted[1][stem]
    assert_matches(doc["record"], record)
    checks = doc.get("checks", {})
    missing = (record.get("completeness") or {}).get("missing") or []
    for needle in checks.get("missing_contains", []):
        assert any(needle in m for m in missing), f"{stem}: no completeness.missing entry names {needle!r}: {missing}"
    invalid = (record.get("completeness") or {}).get("invalid") or []
    for needle in checks.get("invalid_contains", []):
        assert any(needle in (i.get("path") or "") for i in invalid), (
            f"{stem}: no completeness.invalid entry names {needle!r}: {invalid}")


@pytest.mark.parametrize("stem", [s for s in STEMS if _expected(s)["record"].get("error")])
def test_error_records_say_why(stem: str, extracted: tuple[Any, dict[str, dict[str, Any]]]) -> None:
    error = extracted[1][stem]["error"]
    assert error["code"] == _expected(stem)["record"]["error"]["code"]
    assert f"{stem}.dcm" in error["message"], f"error message should name the file: {error['message']!r}"
    assert len(error["message"]) > len(f"{stem}.dcm") + 5, "error message should say why"


def test_timing_runs_marked(extracted: tuple[Any, dict[str, dict[str, Any]]]) -> None:
    events = extracted[1]["ct_siemens_single_source"]["events"]
    assert [(e["acquisition_protocol"], e["is_timing_run"]) for e in events] == [
        ("Topogram", False), ("PreMonitoring", True), ("Monitoring", True), ("ThoraxRoutine", False)]


def test_dual_source_has_one_source_per_tube(extracted: tuple[Any, dict[str, dict[str, Any]]]) -> None:
    events = extracted[1]["ct_siemens_dual_source"]["events"]
    assert [[s["id"] for s in e["sources"]] for e in events] == [["A"], ["A", "B"], ["A", "B"]]
    assert [s["kvp_kV"] for s in events[1]["sources"]] == [100, 150]


def test_invalid_num_keeps_the_rest(extracted: tuple[Any, dict[str, dict[str, Any]]]) -> None:
    record = extracted[1]["ct_invalid_num"]
    assert [e["ctdivol_mGy"] for e in record["events"]] == [0.13, None, 6.41]
    assert [e["dlp_mGycm"] for e in record["events"]] == [6.6, 244.3, 244.3]
    assert record["events"][2]["sources"][0]["max_tube_current_mA"] is None
    assert record["events"][2]["sources"][0]["tube_current_mA"] == 187


# --------------------------------------------------------------------------------------------
# Merging (spec section 3) on records extracted from the sample pairs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", MERGES, ids=[m["files"][0].rsplit("_", 1)[0] for m in MERGES])
def test_merge_pairs(merge: dict[str, Any]) -> None:
    from dosereg.extract import extract_file, merge_study

    first, second = (extract_file(str(SAMPLES / f"{stem}.dcm")) for stem in merge["files"])
    for rec in (first, second):
        assert rec.error is None, rec.error
    orders = {"in order": [first, second], "second resent": [first, second, second],
              "first resent at once": [first, first, second], "first resent later": [first, second, first],
              "reversed": [second, first], "reversed, resent": [second, first, second]}
    for name, order in orders.items():
        merged = merge_study(order).to_dict()
        assert merged["study_instance_uid"] == merge["study_instance_uid"], name
        uids = [e["irradiation_event_uid"] for e in merged["events"]]
        # every event exactly once, whatever the order and repetitions (spec section 3)
        assert merged["total_events"] == merge["total_events"], (name, uids)
        assert len(uids) == merge["total_events"] and len(set(uids)) == len(uids), (name, uids)
        assert merged["total_dlp_mGycm"] == pytest.approx(merge["total_dlp_mGycm"], rel=1e-6), name
        # in any order: a cumulative report supersedes the one whose events it repeats (its
        # stated total stands); continuation reports' stated totals add up
        assert merged["reported_total_dlp_mGycm"] == pytest.approx(
            merge["reported_total_dlp_mGycm"], rel=1e-6), name


# --------------------------------------------------------------------------------------------
# The committed files are exactly what the generator writes
# --------------------------------------------------------------------------------------------


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SAMPLES / "generate.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fresh = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*")
                       if p.is_file() and (p.suffix in (".dcm", ".json")))
    assert fresh == committed
    differ = [name for name in fresh if (tmp_path / name).read_bytes() != (SAMPLES / name).read_bytes()]
    assert not differ, f"re-running the generator changed: {differ} (regenerate and commit)"


# --------------------------------------------------------------------------------------------
# The comparison rules themselves (tests/compare.py, shared with the corpus conformance tests)
# --------------------------------------------------------------------------------------------


def test_compare_rules() -> None:
    actual = {"a": 1.0000001, "b": None, "c": [1, 2], "code": {"value": "51185008", "scheme": "SCT", "meaning": "x"},
              "t": "10:00:00.000", "n": {"x": 5, "extra": 1}}
    assert mismatches({"a": 1, "code": {"value": "T-D3000", "scheme": "SRT"}, "n": {"x": 5}}, actual) == []
    assert mismatches({"t": {"$any": ["10:00:00", "10:00:00.000"]}}, actual) == []
    assert mismatches({"a": {"$approx": 1.01, "abs": 0.02}}, actual) == []
    assert mismatches({"a": {"$approx": 1.1, "abs": 0.02}}, actual) == ["record.a: expected 1.1 (abs 0.02), got 1.0000001"]
    assert mismatches({"b": 0}, actual) == ["record.b: expected number 0, got None"]
    assert mismatches({"c": [1, 2, 3]}, actual) == ["record.c: expected 3 item(s), got 2"]
    assert mismatches({"c": [1, 3]}, actual) == ["record.c[1]: expected 3, got 2"]
    assert mismatches({"missing": None}, actual) == ["record.missing: missing from output (expected None)"]
    assert mismatches({"code": {"value": "T-D4000", "scheme": "SRT"}}, actual) == [
        "record.code: expected code (T-D4000, SRT), got (51185008, SCT)"]
    assert mismatches({"n": {"x": None}}, actual) == ["record.n.x: expected null (value not stated), got 5"]
    assert mismatches({"flag": True}, {"flag": 1}) == ["record.flag: expected True, got 1"]
    with pytest.raises(AssertionError, match=r"record\.c\[1\]"):
        assert_matches({"c": [1, 3]}, actual)
