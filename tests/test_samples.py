"""End-to-end extraction of the project's own synthetic dose objects (sample_dicom/).

``sample_dicom/generate.py`` writes each ``<stem>.dcm`` together with
``sample_dicom/expected/<stem>.json``: the values a correct ``dosereg extract`` must print,
known exactly because the generator wrote them. The files stand in for vendor objects the
project has no real copy of (dual-source, Toshiba Dose Check, GE Enhanced SR, continuation
objects, mammography and fluoroscopy RDSRs, ...), plus junk, truncated and re-encoded files.

Every sample goes through the real CLI in ONE call, so the test also checks that bad files
yield error records while the good ones still come out in input order, exit status 1.

Every behaviour the vendor-corpus conformance layer (``test_conformance``,
``test_rules_corpus``) checks is checked here on the samples: refusals and their reasons,
bad files among good ones, truncation at any point, merges, mis-declared character sets,
CODE items without a Concept Code Sequence, and each sample's flags, reasons and timing runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dosereg.conf.config import default_config
from dosereg.extract import StudyRecord, extract_bytes, extract_file
from dosereg.registry_export import evaluated_dict, rules_from_config
from tests.compare import assert_matches, mismatches
from tests.conftest import SAMPLE_RDSR, SAMPLES, jsonl, run_cli, validate_record

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


# --------------------------------------------------------------------------------------------
# Refusals, bad files among good ones, truncation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem, words", [
    ("dx_projection_rdsr", "projection x-ray"),
    ("rf_fluoro_rdsr", "projection x-ray"),
    ("mg_mammo_rdsr", "mammography"),
    ("sr_not_dose", "not 'x-ray radiation dose report'"),
])
def test_not_ct_is_refused_with_reason(stem: str, words: str) -> None:
    proc = run_cli("extract", str(SAMPLES / f"{stem}.dcm"))
    assert proc.returncode == 1
    (record,) = jsonl(proc.stdout)
    validate_record(record)
    assert record["error"]["code"] in ("not_ct_dose", "not_dose_report")
    assert f"{stem}.dcm" in record["error"]["message"]
    assert words in record["error"]["message"].lower()
    assert (record["completeness"], record["classification"], record["flags"]) == (None, None, None)


def test_junk_truncated_and_missing_files_do_not_stop_the_others(tmp_path: Path) -> None:
    good1 = SAMPLES / "ct_cumulative_1.dcm"
    good2 = SAMPLES / "ct_philips_dose_info.dcm"
    truncated = tmp_path / "truncated.dcm"
    data = SAMPLE_RDSR.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    missing = tmp_path / "no-such-file.dcm"
    proc = run_cli("extract", str(good1), str(SAMPLES / "junk_not_dicom.dcm"), str(truncated), str(missing),
                   str(good2))
    assert proc.returncode == 1
    out = jsonl(proc.stdout)
    assert len(out) == 5
    for rec in out:
        validate_record(rec)
    assert out[0]["error"] is None and out[0]["total_events"] == _expected("ct_cumulative_1")["record"]["total_events"]
    assert out[1]["error"]["code"] == "not_dicom" and "junk_not_dicom.dcm" in out[1]["error"]["message"]
    assert out[2]["error"]["code"] == "truncated" and "truncated.dcm" in out[2]["error"]["message"]
    assert out[3]["error"]["code"] == "unreadable" and "no-such-file.dcm" in out[3]["error"]["message"]
    assert out[4]["error"] is None
    assert out[4]["total_events"] == _expected("ct_philips_dose_info")["record"]["total_events"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.999])
def test_truncation_anywhere_is_detected(fraction: float) -> None:
    data = SAMPLE_RDSR.read_bytes()
    rec = extract_bytes(data[: int(len(data) * fraction)], source="cut.dcm")
    assert rec.error is not None and rec.error.code == "truncated", rec.error


# --------------------------------------------------------------------------------------------
# Vendor habits the samples reproduce
# --------------------------------------------------------------------------------------------


def _with_protocol_bytes(raw: bytes, protocol: str, text: bytes) -> bytes:
    """``raw`` with every Acquisition Protocol TEXT value ``protocol`` replaced by ``text`` as is."""
    ds = pydicom.dcmread(BytesIO(raw))
    stack = list(ds.ContentSequence)
    while stack:
        item = stack.pop()
        if "TextValue" in item and item.TextValue == protocol:
            item["TextValue"].value = text.decode("latin-1")  # written back byte for byte under ISO_IR 100
        stack.extend(item.get("ContentSequence", []))
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_utf8_under_latin1_is_recovered() -> None:
    """Text encoded as UTF-8 in a dataset declaring ISO_IR 100 (a Siemens habit) reads as meant."""
    assert pydicom.dcmread(SAMPLE_RDSR).SpecificCharacterSet == "ISO_IR 100"
    raw = _with_protocol_bytes(SAMPLE_RDSR.read_bytes(), "Topogram", "testæøå".encode())
    rec = extract_bytes(raw, source="utf8.dcm")
    assert rec.error is None
    assert rec.events[0].acquisition_protocol == "testæøå"
    assert [e.acquisition_protocol for e in rec.events[1:]] == ["PreMonitoring", "Monitoring", "ThoraxRoutine"]


def test_code_item_without_concept_code_is_one_invalid_element() -> None:
    rec = extract_file(SAMPLES / "ct_pixelmed_like.dcm")
    assert [p.path for p in rec.problems] == ["events[0].target_region", "events[1].target_region"]
    assert all("Concept Code Sequence" in p.reason for p in rec.problems)
    assert [e.target_region for e in rec.events] == [None, None]
    want = _expected("ct_pixelmed_like")["record"]["events"]
    assert [e.ctdivol_mGy for e in rec.events] == [w["ctdivol_mGy"] for w in want]  # the rest of each event is kept


# --------------------------------------------------------------------------------------------
# Flags, reasons and timing runs of every sample on the default configuration
# --------------------------------------------------------------------------------------------

COMPLETE = ["complete against registry profile acr-dir 2026.1"]
# file stem -> (registry_code, nomenclature_code, exact registry reasons or None to skip); "..." ends a prefix
SAMPLE_FLAGS: dict[str, tuple[str, str | None, list[str] | None]] = {
    "ct_siemens_single_source": ("G9327", "G9319", COMPLETE),
    "ct_siemens_dual_source": ("G9327", "G9319", COMPLETE),
    "ct_head_sequenced": ("G9327", "G9319", COMPLETE),
    "ct_ge_enhanced_sr": ("G9327", "G9318", COMPLETE),  # its description is in the nomenclature table
    "ct_pixelmed_like": ("G9327", "G9319", COMPLETE),
    "ct_toshiba_dose_check": ("G9327", "G9319", COMPLETE),
    "ct_unit_spellings": ("G9327", "G9319", COMPLETE),
    "ct_datetime_offset": ("G9327", "G9319", COMPLETE),
    "ct_big_endian": ("G9327", "G9319", COMPLETE),
    "ct_implicit_vr": ("G9327", "G9319", COMPLETE),
    "ct_deflated": ("G9327", "G9319", COMPLETE),
    "ct_cumulative_1": ("G9327", "G9319", None),
    "ct_cumulative_2": ("G9327", "G9319", None),
    "ct_continuation_1": ("G9327", "G9319", None),
    "ct_continuation_2": ("G9327", "G9319", None),
    "ct_rt_sim": ("G9327", "G9320", COMPLETE),
    "ct_qa_phantom": ("excluded", None, [
        "not a patient study: patient.name matches non-patient pattern '*phantom*'",
        "not a patient study: patient.id matches non-patient pattern 'qa*'",
        # issue 13: the description and every event's protocol are evidence too
        "not a patient study: study_description 'Daily QA' matches non-patient pattern '*[_ ]qa'",
        "not a patient study: events[].acquisition_protocol of all 1 event ('QA_Head_Axial') match non-patient "
        r"pattern classification.non_patient.acquisition_protocol '\bqa\b'",
    ]),
    "ct_incomplete": ("G9326", "G9319", ["patient.sex missing", "events[1].ctdivol_mGy missing (protocol ..."]),
    # extracted: "'abc' could not be read"; its expected record (no extraction problems in it): "missing"
    "ct_invalid_num": ("G9326", "G9319", ["events[1].ctdivol_mGy ..."]),
    "ct_philips_dose_info": ("G9326", "G9319", [
        "patient.sex missing",
        # the screen's events have no UID; their protocol (series description) may be read or not
        "events[1].phantom missing (...",
        "events[2].phantom missing (...",
    ]),
}
# events marked as timing runs (by index) where the file has them
SAMPLE_TIMING = {"ct_siemens_single_source": [1, 2]}  # PreMonitoring, Monitoring


def resolve_expected(x: Any) -> Any:
    """A concrete record from a partial expectation ($any -> first, $approx -> value)."""
    if isinstance(x, dict):
        if "$any" in x:
            return resolve_expected(x["$any"][0])
        if "$approx" in x:
            return x["$approx"]
        return {k: resolve_expected(v) for k, v in x.items()}
    if isinstance(x, list):
        return [resolve_expected(v) for v in x]
    return x


def check_flags(d: dict[str, Any], want: tuple[str, str | None, list[str] | None], timing: list[int]) -> None:
    """``d``'s verdicts are ``want`` (codes and reasons) and its timing runs the events ``timing``."""
    validate_record(d)
    registry, nomenclature, reasons = want
    flags = d["flags"]
    assert (flags["registry_code"], flags["nomenclature_code"]) == (registry, nomenclature), flags
    if reasons is not None:
        actual = flags["registry_reasons"]
        assert len(actual) == len(reasons), actual
        for got, expected in zip(actual, reasons, strict=True):
            # "..." ends an expected prefix
            assert got.startswith(expected[:-3]) if expected.endswith("...") else got == expected, actual
    if registry != "excluded":
        assert d["completeness"]["status"] == ("complete" if registry == "G9327" else "incomplete")
    assert d["classification"]["patient_study"] is (registry != "excluded")
    assert d["classification"]["rt_planning"] is (nomenclature == "G9320")
    marked = [i for i, e in enumerate(d["events"]) if e["is_timing_run"]]
    assert marked == timing


def test_flags_table_covers_every_ct_sample() -> None:
    ct = [s for s in STEMS if not _expected(s)["record"].get("error")]
    assert sorted(SAMPLE_FLAGS) == ct


@pytest.mark.parametrize("stem", sorted(SAMPLE_FLAGS))
def test_expected_records_get_the_flags(stem: str) -> None:
    """The rules alone, on the record the generator says the file holds."""
    record = StudyRecord.from_dict(resolve_expected(_expected(stem)["record"]))
    d = evaluated_dict(record, rules_from_config(default_config()))
    check_flags(d, SAMPLE_FLAGS[stem], SAMPLE_TIMING.get(stem, []))


@pytest.mark.parametrize("stem", sorted(SAMPLE_FLAGS))
def test_dosereg_extract_gives_the_flags(stem: str, extracted: tuple[Any, dict[str, dict[str, Any]]]) -> None:
    """Extraction and rules: the real CLI's line for the file."""
    check_flags(extracted[1][stem], SAMPLE_FLAGS[stem], SAMPLE_TIMING.get(stem, []))
