"""``dosereg import``: recursive, same path as a received object, summary, safe to re-run.

Runs on the project's ``sample_dicom/`` files; ``tests/test_conformance.py`` runs
``check_import_folder_twice`` on the vendor corpus too.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from dosereg.conf.config import Config, StorageSettings
from dosereg.ingest import ImportSummary, import_paths, open_catalog

from .conftest import SAMPLE_RDSR, SAMPLES, DoseSet, jsonl, run_cli, sample_set, validate_record
from .test_listener import synthetic

SUMMARY = re.compile(
    r"^imported (\d+), already known (\d+), quarantined (\d+)(?: \(([^)]*)\))?, failed (\d+)"
    r"(?:, skipped \d+ \(SOP class not accepted by the listener\))?(?:, skipped \d+ \(not DICOM, found in a folder\))?$"
)


def parse(line: str) -> tuple[int, int, int, dict[str, int], int]:
    m = SUMMARY.match(line.strip())
    assert m, line
    reasons = dict((k, int(v)) for k, v in (x.split(": ") for x in m.group(4).split(", "))) if m.group(4) else {}
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), reasons, int(m.group(5))


def test_summary_line() -> None:
    s = ImportSummary(imported=7, known=2)
    s.count("quarantined:not_ct_dose")
    s.count("quarantined:not_ct_dose")
    s.count("quarantined:not_dicom")
    assert s.line() == "imported 7, already known 2, quarantined 3 (not_ct_dose: 2, not_dicom: 1), failed 0"
    assert s.ok
    s.fail("x.dcm: cannot read: Permission denied")
    assert not s.ok and s.line().endswith("failed 1")
    assert ImportSummary().line() == "imported 0, already known 0, quarantined 0, failed 0"


def check_import_folder_twice(dose: DoseSet, tmp_path: Path) -> None:
    """The CT files named one by one and the refused ones as a folder; a second run changes nothing."""
    data = tmp_path / "data"
    refused_folder = tmp_path / "not-ct"
    refused_folder.mkdir()
    for f in dose.refused:
        shutil.copyfile(f, refused_folder / f.name)
    args = [*map(str, dose.ct_files), str(refused_folder)]  # files and a folder
    n_ct, n_refused = len(dose.ct_files), len(dose.refused)
    r = run_cli("import", *args, "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    imported, known, quarantined, reasons, failed = parse(r.stdout.strip().splitlines()[-1])
    assert (imported, known, quarantined, failed) == (n_ct, 0, n_refused, 0)
    assert sum(reasons.values()) == n_refused

    out = run_cli("studies", "--json", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    records = jsonl(out.stdout)
    assert len(records) == dose.n_studies
    for rec in records:
        validate_record(rec)
    multi = next(x for x in records if x["study_instance_uid"] == dose.multi_study)
    assert multi["total_events"] == dose.multi_events and len(multi["dose_objects"]) == dose.multi_objects
    assert multi["total_dlp_mGycm"] == pytest.approx(dose.multi_dlp_mGycm, rel=1e-6)

    # same path as a received object: ledger rows, raw bytes kept, quarantine with reasons
    conn = sqlite3.connect(data / "catalog.sqlite")
    sources = {s for (s,) in conn.execute("SELECT source FROM received")}
    assert str(dose.enhanced_sr) in sources
    raw_paths = [p for (p,) in conn.execute("SELECT raw_path FROM objects")]
    conn.close()
    assert len(raw_paths) == n_ct and all((data / p).is_file() for p in raw_paths)
    assert len(list((data / "quarantine").glob("*.reason.txt"))) == n_refused

    # safe to re-run: nothing changes
    before = sorted((data / "objects").rglob("*"))
    r = run_cli("import", *args, "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout.strip().splitlines()[-1]) == (0, n_ct + n_refused, 0, {}, 0)
    assert sorted((data / "objects").rglob("*")) == before
    assert jsonl(run_cli("studies", "--json", "--data-dir", str(data)).stdout) == records


def test_import_samples_folder_twice(tmp_path: Path) -> None:
    check_import_folder_twice(sample_set(), tmp_path)


def test_import_junk_truncated_and_missing(tmp_path: Path) -> None:
    src = tmp_path / "src" / "deep" / "er"
    src.mkdir(parents=True)
    (src / "junk.txt").write_text("not dicom at all")
    raw = SAMPLE_RDSR.read_bytes()
    (src / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    data = tmp_path / "data"
    r = run_cli("import", str(tmp_path / "src"), str(SAMPLES / "ct_philips_dose_info.dcm"),
                "--data-dir", str(data))
    assert r.returncode == 0, r.stderr  # quarantined is not a failure
    line = r.stdout.strip().splitlines()[-1]
    imported, known, quarantined, reasons, failed = parse(line)
    assert (imported, quarantined, failed) == (1, 1, 0)
    # a non-DICOM file found in a folder is left where it is, counted, not quarantined
    assert line.endswith(", skipped 1 (not DICOM, found in a folder)")
    reason_texts = [p.read_text() for p in (data / "quarantine").glob("*.reason.txt")]
    assert any(str(src / "truncated.dcm") in t for t in reason_texts)
    assert not any("junk.txt" in t for t in reason_texts)

    # named on the command line, the same file is taken in like a received object: quarantined
    r = run_cli("import", str(src / "junk.txt"), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout.strip().splitlines()[-1])[2:4] == (1, {"not_dicom": 1})
    reason_texts = [p.read_text() for p in (data / "quarantine").glob("*.reason.txt")]
    assert any(str(src / "junk.txt") in t for t in reason_texts)

    r = run_cli("import", str(tmp_path / "no-such-folder"), "--data-dir", str(data))
    assert r.returncode == 1
    assert "no-such-folder: no such file or directory" in r.stderr
    assert parse(r.stdout.strip().splitlines()[-1])[4] == 1
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_unreadable_file_fails(tmp_path: Path) -> None:
    f = tmp_path / "src" / "secret.dcm"
    f.parent.mkdir()
    f.write_bytes(b"x")
    f.chmod(0)
    r = run_cli("import", str(f.parent), "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 1
    assert "secret.dcm: cannot read" in r.stderr


def test_import_in_parallel_api(tmp_path: Path) -> None:
    made = synthetic(tmp_path / "src", 40)
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "data")))
    summary = import_paths(cfg, [tmp_path / "src"], jobs=2, progress=True)
    assert summary.ok
    assert (summary.imported, summary.known, summary.total_quarantined) == (40, 0, 0)
    catalog = open_catalog(cfg, readonly=True)
    try:
        assert catalog.count_studies() == 40
        assert sorted(s.study_instance_uid or "" for s in catalog.iter_studies()) == sorted(u for _, u, _ in made)
        # applied in file order: the ledger follows the sorted walk
        assert [r["source"] for r in catalog.received_rows()] == [str(p) for p, _, _ in made]
    finally:
        catalog.close()
    again = import_paths(cfg, [tmp_path / "src"], jobs=2)
    assert (again.imported, again.known) == (0, 40)


def test_other_sop_classes_are_skipped_like_at_the_listener(tmp_path: Path) -> None:
    """An archive export holds images too: they are not taken in (the listener refuses them)."""
    import pydicom
    from pydicom.uid import CTImageStorage, generate_uid

    from dosereg.ingest.classes import ACCEPTED_SOP_CLASSES, meta_sop_class

    src = tmp_path / "archive"
    src.mkdir()
    ds = pydicom.dcmread(SAMPLE_RDSR)
    assert meta_sop_class(SAMPLE_RDSR.read_bytes()) in ACCEPTED_SOP_CLASSES
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(src / "image.dcm", enforce_file_format=True)
    assert meta_sop_class((src / "image.dcm").read_bytes()[:4096]) == CTImageStorage
    (src / "report.dcm").write_bytes(SAMPLE_RDSR.read_bytes())
    data = tmp_path / "data"
    r = run_cli("import", str(src), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line == ("imported 1, already known 0, quarantined 0, failed 0, "
                    "skipped 1 (SOP class not accepted by the listener)")
    assert list((data / "quarantine").iterdir()) == []


def test_import_processes_what_a_crashed_listener_left(tmp_path: Path) -> None:
    """No listener running: import takes over objects a crash left in the spool."""
    from dosereg.ingest import Catalog, Pipeline
    from dosereg.ingest.catalog import catalog_path

    data = tmp_path / "data"
    catalog = Catalog(catalog_path(data))
    Pipeline(data, catalog).receive((SAMPLES / "ct_ge_enhanced_sr.dcm").read_bytes(), calling_ae_title="PACS")
    catalog.close()  # "crash" before processing
    (tmp_path / "empty").mkdir()
    r = run_cli("import", str(tmp_path / "empty"), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout.strip().splitlines()[-1]) == (1, 0, 0, {}, 0)
    assert list((data / "spool").iterdir()) == []
    assert len(jsonl(run_cli("studies", "--json", "--data-dir", str(data)).stdout)) == 1
