"""A truncated object's error record keeps the header read before the cut and says where it is (issue 14)."""

from __future__ import annotations

from pathlib import Path

from dosereg.extract import extract_bytes, extract_file

from .conftest import SAMPLES, jsonl, run_cli, validate_record

INTACT = SAMPLES / "ct_siemens_single_source.dcm"


def test_sample_cut_in_its_content_keeps_every_header_value() -> None:
    whole = extract_file(INTACT)
    cut_file = SAMPLES / "ct_truncated.dcm"  # the same object cut in the middle of its Content Sequence
    r = run_cli("extract", str(cut_file))
    assert r.returncode == 1
    (rec,) = jsonl(r.stdout)
    validate_record(rec)
    assert rec["error"]["code"] == "truncated"
    size = cut_file.stat().st_size
    assert f"cut at byte {size}: the file ends at byte {size}" in rec["error"]["message"]
    assert rec["study_instance_uid"] == whole.study_instance_uid
    assert rec["accession_number"] == whole.accession_number == "ACC0001"
    assert rec["patient"]["id"] == whole.patient.id == "PID0001"
    assert rec["study_date"] == whole.study_date
    assert rec["equipment"]["manufacturer"] == whole.equipment.manufacturer
    assert rec["equipment"]["serial_number"] == whole.equipment.serial_number
    assert rec["events"] == []


def test_cut_inside_the_header_keeps_what_precedes_it(tmp_path: Path) -> None:
    data = INTACT.read_bytes()
    cut = data.index(b"PID0001") + 12  # after Patient ID, before the Study Instance UID
    rec = extract_bytes(data[:cut], source="cut.dcm")
    assert rec.error is not None and rec.error.code == "truncated"
    assert f"cut at byte {cut}" in rec.error.message
    assert rec.accession_number == "ACC0001" and rec.patient.id == "PID0001"
    assert rec.equipment.manufacturer == "SIEMENS"
    assert rec.study_instance_uid is None  # it follows the cut
    validate_record(rec.to_dict())
