"""End to end: `dosereg import` -> `dosereg export` (issue 5's "done when").

Runs on the project's own ``sample_dicom/`` files (always: a clone runs the export end to end)
and, as a conformance layer, on the real vendor corpus when it is there.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dosereg.registry_export.deid import Pseudonymizer
from tests.conftest import SAMPLES, jsonl, run_cli, validate_record
from tests.lifecycle_helpers import acknowledge_all_in

SECRET = "e2e-site-secret-0123456789abcdef0123"
ENV = {"DOSEREG_SECRET": SECRET}
PSEUDONYM = re.compile(r"2\.25\.\d+(?![\d.])")  # a pseudonym, not an original 2.25 UID with more components
DEVICE_CONCEPTS = ("121012", "121013")  # Device Observer Serial Number, Device Observer Name


@dataclass(frozen=True)
class ExportSet:
    """Dose objects to run the export on, with what a correct export makes of them."""

    name: str
    folder: Path  # imported whole
    n_studies: int
    n_g9327: int
    excluded: str  # a file whose study is not a patient study
    rt_planning: str  # a file whose study is RT planning (G9320)
    missing_sex: str  # a file whose study is G9326 for patient.sex
    multi: tuple[str, ...]  # the objects of one study, the first exported alone, then the rest
    multi_events: tuple[int, int]  # events after the first object, after all
    new_study_source: str  # a G9327 object copied under new UIDs as a study the catalog never saw
    table_accession: str  # an accession number of a G9327 study
    table_last_line: str


SAMPLE_SET = ExportSet(
    name="samples", folder=SAMPLES, n_studies=18, n_g9327=14, excluded="ct_qa_phantom.dcm",
    rt_planning="ct_rt_sim.dcm", missing_sex="ct_incomplete.dcm", multi=("ct_cumulative_1.dcm", "ct_cumulative_2.dcm"),
    multi_events=(2, 3), new_study_source="ct_ge_enhanced_sr.dcm", table_accession="ACC0001",
    table_last_line="18 studies, 4 incomplete or in error")


def corpus_set(corpus: Path) -> ExportSet:
    return ExportSet(
        name="corpus", folder=corpus, n_studies=7, n_g9327=3,  # Siemens Flash, Siemens-Multi (RT planning), GE VCT
        excluded="CT-RDSR-ToshibaPixelMed.dcm", rt_planning="CT-RDSR-Siemens-Multi-1.dcm",
        missing_sex="CT-RDSR-Toshiba_MultiValSD.dcm",
        multi=("CT-RDSR-Siemens-Multi-1.dcm", "CT-RDSR-Siemens-Multi-2.dcm", "CT-RDSR-Siemens-Multi-3.dcm"),
        multi_events=(1, 3), new_study_source="CT-ESR-GE_VCT.dcm", table_accession="ACC12345601",
        table_last_line="7 studies, 4 incomplete or in error")


@pytest.fixture(params=["samples", "corpus"])
def dose_set(request: pytest.FixtureRequest) -> ExportSet:
    if request.param == "samples":
        return SAMPLE_SET
    return corpus_set(request.getfixturevalue("corpus"))  # skipped when the corpus is absent


def _device_identifiers(folder: Path) -> set[str]:
    """Station names and serial numbers as the dose objects state them: the header's Station Name and
    Device Serial Number, the SR's Device Observer Name and Serial Number."""
    import pydicom

    out: set[str] = set()

    def walk(items: Any) -> None:
        for item in items:
            names = getattr(item, "ConceptNameCodeSequence", None)
            if names and names[0].CodeValue in DEVICE_CONCEPTS and getattr(item, "TextValue", None):
                out.add(str(item.TextValue).strip())
            walk(getattr(item, "ContentSequence", ()))

    for path in sorted(folder.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - the samples include files that are not DICOM on purpose
            continue
        for keyword in ("StationName", "DeviceSerialNumber"):
            if ds.get(keyword):
                out.add(str(ds.get(keyword)).strip())
        walk(getattr(ds, "ContentSequence", ()))
    return {v for v in out if len(v) >= 4}  # three letters ("vct") are found inside ordinary words


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
        for key in ("station_name", "serial_number"):  # device identifiers (HIPAA)
            if (s.get("equipment") or {}).get(key):
                out.add(s["equipment"][key])
    return out


def _assert_absent(reg: Path, idents: set[str]) -> None:
    """No identifier in any file of ``reg``: in the raw bytes, and in the decoded Parquet values."""
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


def _study_uid(path: Path) -> str:
    res = run_cli("extract", str(path))
    return jsonl(res.stdout)[0]["study_instance_uid"]


def _new_study_file(source: Path, tmp: Path) -> Path:
    """A study the catalog has never seen: a dose object with new study/SOP UIDs and accession."""
    import pydicom

    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7777.55.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7777.55.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = "NEWACC0001"
    out = tmp / "new-study.dcm"
    ds.save_as(out)
    return out


def test_import_export_reexport_and_incremental(dose_set: ExportSet, tmp_path: Path) -> None:
    folder = dose_set.folder
    data = tmp_path / "data"
    res = run_cli("import", str(folder), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    studies = jsonl(run_cli("studies", "--json", "--data-dir", str(data)).stdout)
    assert len(studies) == dose_set.n_studies
    g9327 = {s["study_instance_uid"] for s in studies if s["flags"]["registry_code"] == "G9327"}
    assert len(g9327) == dose_set.n_g9327

    # without the secret: refused with one clear line, nothing written
    res = run_cli("export", "--data-dir", str(data))
    assert res.returncode != 0
    assert "DOSEREG_SECRET" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (data / "registry").exists()

    # a preview (--out): the registry files and the report, no flags, and nothing recorded
    preview = tmp_path / "preview"
    res = run_cli("export", "--data-dir", str(data), "--out", str(preview), env=ENV)
    assert res.returncode == 0, res.stderr
    assert "preview" in res.stdout and "nothing recorded" in res.stdout
    (trial,) = list((preview / "registry").glob("*/*"))
    assert pq.read_table(trial / "studies.parquet").num_rows == len(g9327)
    assert len(list((preview / "reports").glob("completeness-*.html"))) == 1
    assert not (preview / "flags").exists()
    assert not (data / "export-state.sqlite").exists() and not (data / "registry").exists()
    assert not (data / "flags").exists() and not (data / "reports").exists()

    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0, res.stderr
    batches = list((data / "registry").glob("*/*"))
    assert len(batches) == 1
    reg = batches[0]
    batch_id = reg.name
    assert reg.parent.name == "FACILITY-0001" and batch_id in res.stdout

    # the Parquet files hold exactly the G9327 studies, under their pseudonyms
    expected = {Pseudonymizer(SECRET.encode()).uid(u) for u in g9327}
    table = pq.read_table(reg / "studies.parquet")
    assert set(table.column("study_instance_uid").to_pylist()) == expected and table.num_rows == len(g9327)
    events = pq.read_table(reg / "events.parquet")
    assert set(events.column("study_instance_uid").to_pylist()) == expected
    n_events = sum(s["total_events"] for s in studies if s["study_instance_uid"] in g9327)
    assert events.num_rows == n_events
    ages = table.column("patient_age_years").to_pylist()
    assert all(isinstance(a, int) and 0 <= a <= 90 for a in ages)

    # no identifier anywhere in the registry files: raw bytes and decoded values
    idents = _identifiers(studies)
    assert len(idents) > 30
    _assert_absent(reg, idents)
    # nor any station name or serial number the dose objects state (header or device observer),
    # which the registry gets as keyed pseudonyms that fit their VRs
    devices = _device_identifiers(folder)
    assert len(devices) >= 4
    _assert_absent(reg, devices)
    _assert_absent(trial, idents | devices)
    equipment = table.select(["equipment_station_name", "equipment_serial_number"]).to_pylist()
    assert all(re.fullmatch(r"S[0-9A-F]{15}", e["equipment_station_name"]) for e in equipment)
    assert all(e["equipment_serial_number"] is None or re.fullmatch(r"SN[0-9A-F]{30}", e["equipment_serial_number"])
               for e in equipment)

    # manifest hashes match the files
    manifest = json.loads((reg / "manifest.json").read_text())
    assert {f["name"] for f in manifest["files"]} == {"studies.parquet", "events.parquet", "submission.json"}
    for f in manifest["files"]:
        assert f["sha256"] == hashlib.sha256((reg / f["name"]).read_bytes()).hexdigest()
    assert {f["name"]: f["rows"] for f in manifest["files"]}["studies.parquet"] == len(g9327)

    # billing flags: one row per study, with the expected codes, once the batch is acknowledged
    acknowledge_all_in(data, ENV)
    with open(data / "flags" / f"{batch_id}.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["accession_number", "study_instance_uid", "patient_id", "study_date",
                                     "registry_code", "nomenclature_code", "reasons", "reported_at", "receipt"]
        flags = {r["study_instance_uid"]: r for r in reader}
    assert len(flags) == dose_set.n_studies
    assert flags[_study_uid(folder / dose_set.excluded)]["registry_code"] == "excluded"
    assert flags[_study_uid(folder / dose_set.rt_planning)]["nomenclature_code"] == "G9320"
    no_sex = flags[_study_uid(folder / dose_set.missing_sex)]
    assert no_sex["registry_code"] == "G9326" and "patient.sex" in no_sex["reasons"]
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
    new_file = _new_study_file(folder / dose_set.new_study_source, tmp_path)
    res = run_cli("import", str(new_file), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0, res.stderr
    second = [b for b in (data / "registry").glob("*/*") if b.name != batch_id]
    assert len(second) == 1
    t2 = pq.read_table(second[0] / "studies.parquet")
    assert t2.column("study_instance_uid").to_pylist() == [
        Pseudonymizer(SECRET.encode()).uid("1.2.826.0.1.3680043.9.7777.55.1")]
    acknowledge_all_in(data, ENV)
    with open(data / "flags" / f"{second[0].name}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["accession_number"], r["registry_code"]) for r in rows] == [("NEWACC0001", "G9327")]


def test_report_command_writes_the_report_alone(dose_set: ExportSet, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("import", str(dose_set.folder), "--data-dir", str(data)).returncode == 0
    res = run_cli("report", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    paths = [Path(line) for line in res.stdout.split()]
    assert [p.suffix for p in paths] == [".html", ".csv"] and all(p.exists() for p in paths)
    assert "<code>patient.sex</code>" in paths[0].read_text(encoding="utf-8")
    assert not (data / "registry").exists() and not (data / "export-state.sqlite").exists()


def test_studies_table_lists_the_dose_objects(dose_set: ExportSet, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("import", str(dose_set.folder), "--data-dir", str(data)).returncode == 0
    res = run_cli("studies", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Date") and len(lines) == 2 + dose_set.n_studies + 1
    assert any(dose_set.table_accession in line and "G9327" in line for line in lines)
    assert lines[-1] == dose_set.table_last_line


def test_cumulative_objects_resubmit_the_study_under_the_same_pseudonym(dose_set: ExportSet, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first_object, *later = dose_set.multi
    first_events, all_events = dose_set.multi_events
    assert run_cli("import", str(dose_set.folder / first_object), "--data-dir", str(data)).returncode == 0
    assert run_cli("export", "--data-dir", str(data), env=ENV).returncode == 0
    (first,) = list((data / "registry").glob("*/*"))
    t1 = pq.read_table(first / "studies.parquet").to_pylist()
    assert len(t1) == 1 and t1[0]["total_events"] == first_events
    acknowledge_all_in(data, ENV)  # the registry acknowledged the first version

    for name in later:
        assert run_cli("import", str(dose_set.folder / name), "--data-dir", str(data)).returncode == 0
    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0, res.stderr
    assert "1 re-submitted after a change" in res.stdout
    (second,) = [b for b in (data / "registry").glob("*/*") if b != first]
    t2 = pq.read_table(second / "studies.parquet").to_pylist()
    assert len(t2) == 1 and t2[0]["study_instance_uid"] == t1[0]["study_instance_uid"]
    assert t2[0]["total_events"] == all_events and len(t2[0]["dose_objects"]) == len(dose_set.multi)
    assert pq.read_table(second / "events.parquet").num_rows == all_events
    # the flags did not change (still G9327 / G9320): billing gets no new row, so no flags file
    assert len(list((data / "flags").glob("*.csv"))) == 1
