"""Conformance on real vendor dose reports (../shared/corpus), compared by its README's rules.

The vendor files are not part of the project: this module is a layer on top of the tests
that run on ``sample_dicom/`` (every behaviour here is also tested there), and the whole
module is skipped, as one, when ../shared/corpus is absent.

Every CT file is extracted by the real CLI in one call; each output line must validate
against the project's schema and match ``expected/<stem>.json``. The not-CT files must be
refused with an error record saying why. The listener, import and pipeline scenarios of
``test_listener``, ``test_import`` and ``test_ingest_pipeline`` run on the corpus too.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from dosereg.extract import extract_bytes, extract_file, merge_study
from tests.compare import assert_matches
from tests.conftest import CORPUS_MISSING, corpus_present, corpus_set, jsonl, run_cli, validate_record
from tests.test_import import check_import_folder_twice
from tests.test_ingest_pipeline import check_enhanced_sr_processed
from tests.test_listener import (
    Listener,
    check_import_while_listening_then_resend,
    check_no_patient_identifiers_in_logs,
    check_storescu_twice,
    check_studies_json_while_listening,
)

if not corpus_present():
    pytest.skip(CORPUS_MISSING, allow_module_level=True)


def _ct_files(corpus: Path) -> list[Path]:
    return sorted(corpus.glob("*.dcm"))


@pytest.fixture(scope="module")
def extracted(corpus: Path) -> dict[str, dict]:
    files = _ct_files(corpus)
    proc = run_cli("extract", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    lines = jsonl(proc.stdout)
    assert len(lines) == len(files), "one JSON line per input file"
    return {f.stem: rec for f, rec in zip(files, lines, strict=True)}


def test_corpus_has_the_nine_ct_files(corpus: Path) -> None:
    assert len(_ct_files(corpus)) == 9
    assert len(list((corpus / "expected").glob("CT-*.json"))) == 9


@pytest.mark.parametrize("stem", [
    "CT-ESR-GE_VCT", "CT-RDSR-GEPixelMed", "CT-RDSR-Siemens-Multi-1", "CT-RDSR-Siemens-Multi-2",
    "CT-RDSR-Siemens-Multi-3", "CT-RDSR-Siemens_Flash-TAP-SS", "CT-RDSR-ToshibaPixelMed",
    "CT-RDSR-Toshiba_MultiValSD", "CT-SC-Philips_Brilliance16P",
])
def test_extract_matches_expected(corpus: Path, extracted: dict[str, dict], stem: str) -> None:
    expected = json.loads((corpus / "expected" / f"{stem}.json").read_text())
    record = extracted[stem]
    validate_record(record)
    assert record["error"] is None
    assert_matches(expected["record"], record)


@pytest.mark.parametrize("name, words", [
    ("DX-RDSR-Canon_CXDI.dcm", "projection x-ray"),
    ("RF-RDSR-Siemens-Zee.dcm", "projection x-ray"),
    ("ESR_non-dose.dcm", "not 'x-ray radiation dose report'"),
])
def test_not_ct_is_refused_with_reason(corpus: Path, name: str, words: str) -> None:
    proc = run_cli("extract", str(corpus / "not-ct" / name))
    assert proc.returncode == 1
    (record,) = jsonl(proc.stdout)
    validate_record(record)
    assert record["error"]["code"] in ("not_ct_dose", "not_dose_report")
    assert name in record["error"]["message"]
    assert words in record["error"]["message"].lower()


def test_junk_and_truncated_files_do_not_stop_the_others(corpus: Path, tmp_path: Path) -> None:
    good1 = corpus / "CT-RDSR-Siemens-Multi-1.dcm"
    good2 = corpus / "CT-SC-Philips_Brilliance16P.dcm"
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file at all\n" * 20)
    data = (corpus / "CT-RDSR-Siemens_Flash-TAP-SS.dcm").read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    missing = tmp_path / "no-such-file.dcm"
    proc = run_cli("extract", str(good1), str(junk), str(truncated), str(missing), str(good2))
    assert proc.returncode == 1
    out = jsonl(proc.stdout)
    assert len(out) == 5
    for rec in out:
        validate_record(rec)
    assert out[0]["error"] is None and out[0]["total_events"] == 1
    assert out[1]["error"]["code"] == "not_dicom" and "junk.dcm" in out[1]["error"]["message"]
    assert out[2]["error"]["code"] == "truncated" and "truncated.dcm" in out[2]["error"]["message"]
    assert out[3]["error"]["code"] == "unreadable" and "no-such-file.dcm" in out[3]["error"]["message"]
    assert out[4]["error"] is None and out[4]["total_events"] == 4
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("cut", [200, 1000, 5000, 9000, 15000, 20000, 24000])
def test_truncation_anywhere_is_detected(corpus: Path, cut: int) -> None:
    data = (corpus / "CT-RDSR-Siemens_Flash-TAP-SS.dcm").read_bytes()
    rec = extract_bytes(data[:cut], source="cut.dcm")
    assert rec.error is not None and rec.error.code == "truncated", rec.error


def test_merges(corpus: Path) -> None:
    merges = json.loads((corpus / "expected" / "merges.json").read_text())
    rng = random.Random(7)
    for m in merges:
        records = [extract_file(corpus / f"{stem}.dcm") for stem in m["files"]]
        orders = list(itertools.permutations(records))
        # any order, any number of times
        orders.append(tuple(records + records[::-1] + [rng.choice(records)]))
        for order in orders:
            merged = merge_study(list(order))
            assert merged.study_instance_uid == m["study_instance_uid"]
            assert merged.total_events == m["total_events"]
            assert merged.total_dlp_mGycm == pytest.approx(m["total_dlp_mGycm"], rel=1e-6)
            assert len({e.irradiation_event_uid for e in merged.events}) == m["total_events"]
            assert len(merged.dose_objects) == len(m["files"])


def test_cumulative_reported_total_is_the_newest_objects(corpus: Path) -> None:
    recs = [extract_file(corpus / f"CT-RDSR-Siemens-Multi-{i}.dcm") for i in (1, 2, 3)]
    merged = merge_study(recs)
    assert merged.reported_total_dlp_mGycm == pytest.approx(236.09)


def test_utf8_under_latin1_is_recovered(corpus: Path) -> None:
    rec = extract_file(corpus / "CT-RDSR-Siemens_Flash-TAP-SS.dcm")
    assert rec.events[0].acquisition_protocol == "testæøå"


def test_code_item_without_concept_code_is_one_invalid_element(corpus: Path) -> None:
    rec = extract_file(corpus / "CT-RDSR-Toshiba_MultiValSD.dcm")
    paths = [p.path for p in rec.problems]
    assert paths == ["events[0].target_region", "events[1].target_region", "events[2].target_region"]
    assert all("Concept Code Sequence" in p.reason for p in rec.problems)
    assert rec.events[2].ctdivol_mGy == 3.2  # the rest of the event is kept


# --------------------------------------------------------------------------------------------
# The ingest scenarios (listener over dcmtk, import, pipeline) on the vendor files
# --------------------------------------------------------------------------------------------


def test_storescu_corpus_twice(corpus: Path, tmp_path: Path) -> None:
    with Listener(tmp_path / "data") as lst:
        check_storescu_twice(corpus_set(corpus), lst, tmp_path / "data")


def test_studies_json_while_listening_to_the_corpus(corpus: Path, tmp_path: Path) -> None:
    with Listener(tmp_path / "data") as lst:
        check_studies_json_while_listening(corpus_set(corpus), lst, tmp_path / "data")


def test_import_corpus_while_listening_then_resend(corpus: Path, tmp_path: Path) -> None:
    with Listener(tmp_path / "data") as lst:
        check_import_while_listening_then_resend(corpus_set(corpus), lst, tmp_path / "data")


def test_no_corpus_patient_identifiers_in_logs_above_debug(corpus: Path, tmp_path: Path) -> None:
    with Listener(tmp_path / "data") as lst:
        check_no_patient_identifiers_in_logs(corpus_set(corpus), lst, tmp_path / "data")


def test_import_corpus_folder_twice(corpus: Path, tmp_path: Path) -> None:
    check_import_folder_twice(corpus_set(corpus), tmp_path)


def test_vendor_enhanced_sr_processed_into_catalog(corpus: Path, tmp_path: Path) -> None:
    check_enhanced_sr_processed((corpus / "CT-ESR-GE_VCT.dcm").read_bytes(), tmp_path / "data")
