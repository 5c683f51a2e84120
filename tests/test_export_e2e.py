"""End to end on the real vendor corpus: `dosereg import` -> `dosereg export` (issue 5's "done when")."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from dosereg.registry_export.deid import pseudonym_uid
from tests.conftest import jsonl, run_cli, validate_record

SECRET = "e2e-site-secret-0123456789abcdef0123"
ENV = {"DOSEREG_SECRET": SECRET}
PSEUDONYM = re.compile(r"2\.25\.\d+")


def _identifiers(studies: list[dict[str, Any]]) -> set[str]:
    """Every identifying value of the catalog's records (what must never reach the registry)."""
    out: set[str] = set()
    for s in studies:
        p = s.get("patient") or {}
        for v in (p.get("id"), p.get("birth_date"), s.get("accession_number"), s.get("study_instance_uid"),
                  (s.get("equipment") or {}).get("institution_name"),
                  (s.get("equipment") or {}).get("device_observer_uid")):
            if v:
                out.add(str(v))
        if p.get("birth_date"):
            out.add(p["birth_date"].replace("-", ""))
        name = p.get("name")
        if name:
            out.add(name)
            out.update(part for part in re.split(r"[\^=\s,]+", name) if len(part) >= 4)
        out.update(o["sop_instance_uid"] for o in s.get("dose_objects") or ())
        out.update(e["irradiation_event_uid"] for e in s.get("events") or () if e.get("irradiation_event_uid"))
        for e in s.get("events") or ():
            if (e.get("dose_check") or {}).get("person"):
                out.add(e["dose_check"]["person"])
    return out


def _study_uid(path: Path) -> str:
    res = run_cli("extract", str(path))
    return jsonl(res.stdout)[0]["study_instance_uid"]


def _new_study_file(corpus: Path, tmp: Path) -> Path:
    """A study the catalog has never seen: a corpus object with new study/SOP UIDs and accession."""
    import pydicom

    ds = pydicom.dcmread(corpus / "CT-ESR-GE_VCT.dcm")
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7777.55.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7777.55.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = "NEWACC0001"
    out = tmp / "new-study.dcm"
    ds.save_as(out)
    return out


def test_import_export_reexport_and_incremental(corpus: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = run_cli("import", str(corpus), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    studies = jsonl(run_cli("studies", "--json", "--data-dir", str(data)).stdout)
    assert len(studies) == 7
    g9327 = {s["study_instance_uid"] for s in studies if s["flags"]["registry_code"] == "G9327"}
    assert len(g9327) == 3  # Siemens Flash, Siemens-Multi (RT planning), GE VCT

    # without the secret: refused with one clear line, nothing written
    res = run_cli("export", "--data-dir", str(data))
    assert res.returncode != 0
    assert "DOSEREG_SECRET" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (data / "registry").exists()

    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0, res.stderr
    batches = list((data / "registry").glob("*/*"))
    assert len(batches) == 1
    reg = batches[0]
    batch_id = reg.name
    assert reg.parent.name == "FACILITY-0001" and batch_id in res.stdout

    # the Parquet files hold exactly the G9327 studies, under their pseudonyms
    expected = {pseudonym_uid(SECRET.encode(), u) for u in g9327}
    table = pq.read_table(reg / "studies.parquet")
    assert set(table.column("study_instance_uid").to_pylist()) == expected and table.num_rows == 3
    events = pq.read_table(reg / "events.parquet")
    assert set(events.column("study_instance_uid").to_pylist()) == expected
    n_events = sum(s["total_events"] for s in studies if s["study_instance_uid"] in g9327)
    assert events.num_rows == n_events
    ages = table.column("patient_age_years").to_pylist()
    assert all(isinstance(a, int) and 0 <= a <= 90 for a in ages)

    # no identifier anywhere in the registry files: raw bytes and decoded values
    idents = _identifiers(studies)
    assert len(idents) > 30
    decoded = json.dumps([pq.read_table(reg / n).to_pylist() for n in ("studies.parquet", "events.parquet")],
                         default=str, ensure_ascii=False)
    for f in sorted(reg.iterdir()):
        raw = f.read_bytes()
        text = PSEUDONYM.sub("<p>", raw.decode("utf-8", "replace"))
        for ident in idents:
            if len(ident) >= 8:
                assert ident.encode() not in raw, (f.name, ident)
            assert not re.search(rf"(?<![\w.]){re.escape(ident)}(?![\w.])", text), (f.name, ident)
    decoded = PSEUDONYM.sub("<p>", decoded)
    for ident in idents:
        assert not re.search(rf"(?<![\w.]){re.escape(ident)}(?![\w.])", decoded), ident

    # manifest hashes match the files
    manifest = json.loads((reg / "manifest.json").read_text())
    assert {f["name"] for f in manifest["files"]} == {"studies.parquet", "events.parquet", "submission.json"}
    for f in manifest["files"]:
        assert f["sha256"] == hashlib.sha256((reg / f["name"]).read_bytes()).hexdigest()
    assert {f["name"]: f["rows"] for f in manifest["files"]}["studies.parquet"] == 3

    # billing flags: one row per study, with the expected codes
    with open(data / "flags" / f"{batch_id}.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["accession_number", "study_instance_uid", "patient_id", "study_date",
                                     "registry_code", "nomenclature_code", "reasons"]
        flags = {r["study_instance_uid"]: r for r in reader}
    assert len(flags) == 7
    assert flags[_study_uid(corpus / "CT-RDSR-ToshibaPixelMed.dcm")]["registry_code"] == "excluded"
    assert flags[_study_uid(corpus / "CT-RDSR-Siemens-Multi-1.dcm")]["nomenclature_code"] == "G9320"
    toshiba = flags[_study_uid(corpus / "CT-RDSR-Toshiba_MultiValSD.dcm")]
    assert toshiba["registry_code"] == "G9326" and "patient.sex" in toshiba["reasons"]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["study_date"]) for r in flags.values())

    # the report names patient.sex among the missing elements and has charts
    page = (data / "reports" / f"completeness-{batch_id}.html").read_text(encoding="utf-8")
    assert "<code>patient.sex</code>" in page and "<svg" in page

    # `studies --json` carries the export mark
    marked = jsonl(run_cli("studies", "--json", "--data-dir", str(data)).stdout)
    assert all(s["export"]["batch_id"] == batch_id for s in marked)
    for s in marked:
        validate_record(s)

    # exporting again submits nothing
    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0, res.stderr
    assert "nothing new" in res.stdout
    assert len(list((data / "registry").glob("*/*"))) == 1 and len(list((data / "flags").glob("*.csv"))) == 1

    # one new study: the next batch submits only it
    new_file = _new_study_file(corpus, tmp_path)
    res = run_cli("import", str(new_file), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0, res.stderr
    second = [b for b in (data / "registry").glob("*/*") if b.name != batch_id]
    assert len(second) == 1
    t2 = pq.read_table(second[0] / "studies.parquet")
    assert t2.column("study_instance_uid").to_pylist() == [
        pseudonym_uid(SECRET.encode(), "1.2.826.0.1.3680043.9.7777.55.1")]
    with open(data / "flags" / f"{second[0].name}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["accession_number"], r["registry_code"]) for r in rows] == [("NEWACC0001", "G9327")]


def test_report_command_writes_the_report_alone(corpus: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("import", str(corpus), "--data-dir", str(data)).returncode == 0
    res = run_cli("report", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    paths = [Path(line) for line in res.stdout.split()]
    assert [p.suffix for p in paths] == [".html", ".csv"] and all(p.exists() for p in paths)
    assert "<code>patient.sex</code>" in paths[0].read_text(encoding="utf-8")
    assert not (data / "registry").exists() and not (data / "export-state.sqlite").exists()


def test_studies_table_lists_the_corpus(corpus: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("import", str(corpus), "--data-dir", str(data)).returncode == 0
    res = run_cli("studies", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Date") and len(lines) == 2 + 7 + 1
    assert any("ACC12345601" in line and "G9327" in line for line in lines)
    assert lines[-1] == "7 studies, 4 incomplete or in error"


def test_cumulative_objects_resubmit_the_study_under_the_same_pseudonym(corpus: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("import", str(corpus / "CT-RDSR-Siemens-Multi-1.dcm"), "--data-dir", str(data)).returncode == 0
    assert run_cli("export", "--data-dir", str(data), env=ENV).returncode == 0
    (first,) = list((data / "registry").glob("*/*"))
    t1 = pq.read_table(first / "studies.parquet").to_pylist()
    assert len(t1) == 1 and t1[0]["total_events"] == 1

    for name in ("CT-RDSR-Siemens-Multi-2.dcm", "CT-RDSR-Siemens-Multi-3.dcm"):
        assert run_cli("import", str(corpus / name), "--data-dir", str(data)).returncode == 0
    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0, res.stderr
    assert "1 re-submitted after a change" in res.stdout
    (second,) = [b for b in (data / "registry").glob("*/*") if b != first]
    t2 = pq.read_table(second / "studies.parquet").to_pylist()
    assert len(t2) == 1 and t2[0]["study_instance_uid"] == t1[0]["study_instance_uid"]
    assert t2[0]["total_events"] == 3 and len(t2[0]["dose_objects"]) == 3
    assert pq.read_table(second / "events.parquet").num_rows == 3
    # the flags did not change (still G9327 / G9320): billing gets no new row, so no flags file
    assert len(list((data / "flags").glob("*.csv"))) == 1
