"""``export_batch`` on study records built in code: files, contents, state, re-submission."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dosereg.conf.config import Config, load_config
from dosereg.extract import StudyRecord
from dosereg.registry_export import (
    evaluated_dict,
    export_batch,
    export_marks,
    rules_from_config,
    studies_table,
    writers,
)
from dosereg.registry_export.deid import MissingSecretError, Pseudonymizer
from dosereg.registry_export.writers import EVENT_SCHEMA, FLAG_COLUMNS, STUDY_SCHEMA
from tests.lifecycle_helpers import acknowledge_all
from tests.synthetic import synthetic_study

ROOT = Path(__file__).resolve().parent.parent
SECRET = "unit-test-secret-0123456789abcdef0123"
FLAG_HEADER = ["accession_number", "study_instance_uid", "patient_id", "study_date",
               "registry_code", "nomenclature_code", "reasons", "reported_at", "receipt"]


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("DOSEREG_SECRET", SECRET)
    return load_config(None, data_dir=str(tmp_path / "data"))


def corpus_of(n: int) -> list[StudyRecord]:
    """``n`` studies: every 10th (from 3) without patient sex, study 4 QA, study 6 RT planning."""
    return [synthetic_study(i, sex=None if i % 10 == 3 else "auto", qa=(i == 4), rt=(i == 6)) for i in range(n)]


def source(records: list[StudyRecord]):  # type: ignore[no-untyped-def]
    return lambda: iter(records)


def pseudo(uid: str) -> str:
    return Pseudonymizer(SECRET.encode()).uid(uid)


def codes(cfg: Config, records: list[StudyRecord]) -> dict[str, str]:
    rules = rules_from_config(cfg)
    return {r.study_instance_uid: evaluated_dict(r, rules)["flags"]["registry_code"] for r in records}  # type: ignore[misc]


def read_flags_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == FLAG_HEADER
        return list(reader)


def test_first_batch_writes_every_file_with_the_contracted_content(cfg: Config) -> None:
    records = corpus_of(30)
    expected = codes(cfg, records)
    g9327 = {uid for uid, c in expected.items() if c == "G9327"}
    assert 20 < len(g9327) < 30 and expected[records[4].study_instance_uid] == "excluded"  # type: ignore[index]

    result = export_batch(cfg, source(records))
    batch = result.batch_id
    assert batch is not None
    data = cfg.data_dir
    reg = data / "registry" / "FACILITY-0001" / batch
    assert result.registry_dir == reg
    assert sorted(p.name for p in reg.iterdir()) == ["events.parquet", "manifest.json", "studies.parquet",
                                                    "submission.json"]
    assert not [p for p in data.iterdir() if p.name.startswith(".staging")]
    assert result.studies_seen == 30 and result.registry_studies == len(g9327) and result.flag_rows == 30

    # studies.parquet: the explicit schema, exactly the G9327 studies, pseudonymous UIDs
    studies = pq.read_table(reg / "studies.parquet")
    assert studies.schema.equals(STUDY_SCHEMA, check_metadata=False)
    assert studies.num_rows == len(g9327)
    assert set(studies.column("study_instance_uid").to_pylist()) == {pseudo(u) for u in g9327}
    rows = {r["study_instance_uid"]: r for r in studies.to_pylist()}
    s7 = rows[pseudo(records[7].study_instance_uid)]  # type: ignore[arg-type]
    assert s7["patient_age_years"] == 27 and s7["patient_sex"] == "F"
    assert s7["facility_id"] == "FACILITY-0001" and s7["batch_id"] == batch
    assert s7["registry_profile_name"] == "acr-dir" and s7["registry_profile_version"] == "2026.1"
    # Parquet types dates as dates (issue 14)
    assert s7["equipment_manufacturer"] == "GE MEDICAL SYSTEMS" and s7["study_date"] == date(2025, 1, 8)
    assert s7["flags_registry_code"] == "G9327" and s7["completeness_status"] == "complete"
    assert s7["total_dlp_mGycm"] == pytest.approx(records[7].total_dlp_mGycm)
    assert s7["dose_objects"][0]["sop_instance_uid"] == pseudo(records[7].dose_objects[0].sop_instance_uid)

    # events.parquet: one row per event, carrying the study's pseudonym
    events = pq.read_table(reg / "events.parquet")
    assert events.schema.equals(EVENT_SCHEMA, check_metadata=False)
    n_events = sum(len(r.events) for r in records if r.study_instance_uid in g9327)
    assert events.num_rows == n_events == result.registry_events
    erows = events.to_pylist()
    assert {e["study_instance_uid"] for e in erows} == set(rows)
    by_uid = {e["irradiation_event_uid"]: e for e in erows}
    r0 = records[0]  # head exam on the 16 cm phantom, with a bolus-tracking timing run
    head = by_uid[pseudo(r0.events[-1].irradiation_event_uid)]  # type: ignore[arg-type]
    assert head["study_instance_uid"] == pseudo(r0.study_instance_uid)  # type: ignore[arg-type]
    assert head["event_index"] == 2 and head["acquisition_protocol"] == "Head routine"
    assert head["body_region"] == "head" and head["normalised_phantom"] == "head16"
    assert head["ctdivol_mGy"] == 52.0 and head["normalised_ctdivol_mGy"] == pytest.approx(52.0)
    assert head["ssde_estimate_mGy"] is None  # no size for a head exam
    timing = by_uid[pseudo(r0.events[1].irradiation_event_uid)]  # type: ignore[arg-type]
    assert timing["is_timing_run"] is True and timing["acquisition_protocol"] == "PreMonitoring"
    assert not head["is_timing_run"]
    body = by_uid[pseudo(records[1].events[-1].irradiation_event_uid)]  # type: ignore[arg-type]
    assert body["body_region"] == "body" and body["target_region_meaning"] == "Chest"
    assert body["ssde_estimate_mGy"] is not None and body["ssde_estimate_mGy"] > body["ctdivol_mGy"]
    assert body["sources"][0]["kvp_kV"] == 120.0

    # manifest: names, row counts and lowercase hex SHA-256 that match the files
    manifest = json.loads((reg / "manifest.json").read_text())
    assert manifest["batch_id"] == batch and manifest["facility_id"] == "FACILITY-0001"
    files = {f["name"]: f for f in manifest["files"]}
    assert set(files) == {"studies.parquet", "events.parquet", "submission.json"}
    assert files["studies.parquet"]["rows"] == len(g9327) and files["events.parquet"]["rows"] == n_events
    for name, f in files.items():
        digest = hashlib.sha256((reg / name).read_bytes()).hexdigest()
        assert f["sha256"] == digest and f["sha256"] == f["sha256"].lower()

    # submission.json validates against the schema the project ships
    import jsonschema

    schema = json.loads((ROOT / "conf" / "submission.schema.json").read_text())
    submission = json.loads((reg / "submission.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(submission)
    assert submission["schema"] == "dosereg.submission/1" and submission["batch_id"] == batch
    assert submission["profile"] == {"name": "acr-dir", "version": "2026.1"}
    assert len(submission["studies"]) == len(g9327)

    # billing flags: one row per evaluated study, the exact columns, ISO dates, reasons in words
    acknowledge_all(cfg)  # written once the batch is acknowledged (docs/lifecycle.md)
    flags = read_flags_csv(data / "flags" / f"{batch}.csv")
    assert len(flags) == 30
    by_acc = {f["accession_number"]: f for f in flags}
    assert by_acc["ACN000000004"]["registry_code"] == "excluded" and by_acc["ACN000000004"]["nomenclature_code"] == ""
    assert by_acc["ACN000000006"]["nomenclature_code"] == "G9320"
    assert by_acc["ACN000000003"]["registry_code"] == "G9326" and "patient.sex" in by_acc["ACN000000003"]["reasons"]
    assert by_acc["ACN000000000"]["registry_code"] == "G9327" and by_acc["ACN000000000"]["nomenclature_code"] == "G9318"
    assert by_acc["ACN000000007"]["study_instance_uid"] == records[7].study_instance_uid
    assert by_acc["ACN000000007"]["patient_id"] == "MRN00000007"
    assert by_acc["ACN000000007"]["study_date"] == "2025-01-08"
    assert "; " in by_acc["ACN000000003"]["reasons"]
    flags_pq = pq.read_table(data / "flags" / f"{batch}.parquet")
    assert flags_pq.column_names == list(FLAG_COLUMNS)
    assert flags_pq.to_pylist() == [{k: (v or None) for k, v in f.items()} for f in flags]

    assert [p.name for p in result.report_paths] == [f"completeness-{batch}.html", f"completeness-{batch}.csv"]
    assert all(p.exists() for p in result.paths)
    summary = result.summary()
    assert batch in summary and f"{len(g9327)} to the registry" in summary and "30 billing flag rows" in summary


def test_second_export_with_nothing_new_writes_nothing(cfg: Config) -> None:
    records = corpus_of(12)
    first = export_batch(cfg, source(records))
    before = sorted(str(p) for p in cfg.data_dir.rglob("*") if "export-state" not in p.name)
    again = export_batch(cfg, source(records))
    assert again.batch_id is None and again.registry_studies == 0 and again.flag_rows == 0
    assert "nothing new" in again.summary() and str(first.batch_id) in again.summary()
    after = sorted(str(p) for p in cfg.data_dir.rglob("*") if "export-state" not in p.name)
    assert after == before


def test_study_gaining_a_dose_object_is_resubmitted_under_the_same_pseudonym(cfg: Config) -> None:
    records = corpus_of(6)
    first = export_batch(cfg, source(records))
    acknowledge_all(cfg)
    reg1 = pq.read_table(first.registry_dir / "studies.parquet")  # type: ignore[operator]
    uid = records[2].study_instance_uid
    assert pseudo(uid) in reg1.column("study_instance_uid").to_pylist()  # type: ignore[arg-type]

    records[2] = synthetic_study(2, objects=2)  # a second cumulative RDSR with one more event
    records.append(synthetic_study(100))  # and one new study
    second = export_batch(cfg, source(records))
    assert second.batch_id is not None and second.batch_id != first.batch_id
    assert second.registry_studies == 2 and second.registry_resubmitted == 1
    studies = pq.read_table(second.registry_dir / "studies.parquet").to_pylist()  # type: ignore[operator]
    assert {s["study_instance_uid"] for s in studies} == {pseudo(uid), pseudo(records[-1].study_instance_uid)}  # type: ignore[arg-type]
    changed = next(s for s in studies if s["study_instance_uid"] == pseudo(uid))  # type: ignore[arg-type]
    assert changed["total_events"] == len(records[2].events) and len(changed["dose_objects"]) == 2
    events = pq.read_table(second.registry_dir / "events.parquet")  # type: ignore[operator]
    assert events.num_rows == len(records[2].events) + len(records[-1].events)
    # billing already has study 2's (unchanged) flags: only the new study gets a flags row
    acknowledge_all(cfg)
    flags = read_flags_csv(cfg.data_dir / "flags" / f"{second.batch_id}.csv")
    assert [f["accession_number"] for f in flags] == ["ACN000000100"]
    marks = export_marks(cfg)
    assert marks[uid]["batch_id"] == second.batch_id  # type: ignore[index]
    assert marks[records[0].study_instance_uid]["batch_id"] == first.batch_id  # type: ignore[index]


def test_completed_study_goes_to_registry_and_billing_gets_the_new_code(cfg: Config) -> None:
    records = corpus_of(5)
    first = export_batch(cfg, source(records))
    acknowledge_all(cfg)
    assert pseudo(records[3].study_instance_uid) not in pq.read_table(  # type: ignore[arg-type]
        first.registry_dir / "studies.parquet").column("study_instance_uid").to_pylist()  # type: ignore[operator]
    records[3] = synthetic_study(3, sex="M")  # the sex was added by a corrected dose object
    second = export_batch(cfg, source(records))
    assert second.registry_studies == 1 and second.registry_resubmitted == 0
    acknowledge_all(cfg)
    flags = read_flags_csv(cfg.data_dir / "flags" / f"{second.batch_id}.csv")
    assert [(f["accession_number"], f["registry_code"]) for f in flags] == [("ACN000000003", "G9327")]


def test_batch_with_only_flags_has_no_registry_folder(cfg: Config) -> None:
    export_batch(cfg, source(corpus_of(3)))
    result = export_batch(cfg, source([*corpus_of(3), synthetic_study(13, sex=None)]))
    assert result.batch_id is not None and result.registry_dir is None and result.flag_rows == 1
    assert not (cfg.data_dir / "registry" / "FACILITY-0001" / result.batch_id).exists()
    assert "nothing to submit" in result.summary()


def test_crash_mid_export_leaves_no_batch_and_no_state(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "CHUNK_ROWS", 4)  # so some record batches are already on disk
    records = corpus_of(20)

    def failing() -> Iterator[StudyRecord]:
        yield from records[:15]
        raise OSError("catalog read failed")

    with pytest.raises(OSError, match="catalog read failed"):
        export_batch(cfg, failing)
    data = cfg.data_dir
    assert not (data / "registry").exists() and not (data / "flags").exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".staging")]
    assert export_marks(cfg) == {}
    result = export_batch(cfg, source(records))  # everything is exported by the next run
    assert result.flag_rows == 20


def test_stale_staging_folder_is_removed_and_never_looks_like_a_batch(cfg: Config) -> None:
    stale = cfg.data_dir / ".staging-20200101T000000Z-0001" / "registry"
    stale.mkdir(parents=True)
    (stale / "studies.parquet").write_bytes(b"half")
    result = export_batch(cfg, source(corpus_of(2)))
    assert result.batch_id is not None
    assert not (cfg.data_dir / ".staging-20200101T000000Z-0001").exists()


def test_many_chunks_stream_into_row_groups(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "CHUNK_ROWS", 5)
    records = [synthetic_study(i) for i in range(40)]
    result = export_batch(cfg, source(records))
    meta = pq.ParquetFile(result.registry_dir / "studies.parquet").metadata  # type: ignore[operator]
    assert meta.num_rows == 40 and meta.num_row_groups == 8
    table = pq.read_table(result.registry_dir / "studies.parquet")  # type: ignore[operator]
    assert table.column("study_instance_uid").to_pylist() == [pseudo(r.study_instance_uid) for r in records]  # type: ignore[arg-type]


def test_missing_secret_refuses_before_writing(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOSEREG_SECRET")
    with pytest.raises(MissingSecretError, match="DOSEREG_SECRET"):
        export_batch(cfg, source(corpus_of(3)))
    assert not cfg.data_dir.exists() or not any(cfg.data_dir.iterdir())


def test_out_dir_and_year_precision(cfg: Config, tmp_path: Path) -> None:
    cfg = replace(cfg, registry=replace(cfg.registry, date_precision="year"),
                  site=replace(cfg.site, facility_id="HOSP-42"))
    out = tmp_path / "outbox"
    result = export_batch(cfg, source(corpus_of(4)), out_dir=out)
    reg = out / "registry" / "HOSP-42" / str(result.batch_id)
    studies = pq.read_table(reg / "studies.parquet").to_pylist()
    # year precision: only the year is left (a date32 column holds it as 1 January, issue 14)
    assert {s["study_date"] for s in studies} == {date(2025, 1, 1)} and all(s["study_time"] is None for s in studies)
    assert all(s["date_precision"] == "year" for s in studies)
    # --out is a preview (spec section 1): no flags, no state; the next export is unaffected
    assert result.preview and [p.name for p in result.report_paths] == [
        f"completeness-{result.batch_id}.html", f"completeness-{result.batch_id}.csv"]
    assert not (out / "flags").exists() and not (cfg.data_dir / "export-state.sqlite").exists()
    assert "preview" in result.summary() and "nothing recorded" in result.summary()
    real = export_batch(cfg, source(corpus_of(4)))
    assert real.flag_rows == 4 and real.registry_studies == result.registry_studies


def test_studies_table_is_readable(cfg: Config) -> None:
    records = corpus_of(5)
    result = export_batch(cfg, source(records))
    rules = rules_from_config(cfg)
    marks = export_marks(cfg)
    text = studies_table((evaluated_dict(r, rules, export=marks.get(r.study_instance_uid or "")) for r in records),
                         wide=True)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["Date", "Accession", "Description"]
    assert "Registry" in lines[0] and "Nomencl." in lines[0]
    body = {line.split()[1]: line for line in lines[2:-1]}
    assert "G9326" in body["ACN000000003"] and "incomplete" in body["ACN000000003"]
    assert "excluded" in body["ACN000000004"] and str(result.batch_id) in body["ACN000000000"]
    assert "CT HEAD WO CONTRAST" in body["ACN000000000"] and "880.4" in body["ACN000000000"]
    assert lines[-1] == "5 studies, 1 incomplete or in error"
    assert studies_table([]) == "no studies in the catalog\n"


def test_values_of_the_wrong_type_do_not_sink_the_batch(cfg: Config) -> None:
    odd = synthetic_study(1, extra={"total_events": 2.0})
    odd = replace(odd, patient=replace(odd.patient, weight_kg="72.5"),  # type: ignore[arg-type]
                  events=(replace(odd.events[0], pitch_factor="n/a"), *odd.events[1:]))  # type: ignore[arg-type]
    result = export_batch(cfg, source([synthetic_study(0), odd]))
    assert result.registry_studies == 2
    rows = pq.read_table(result.registry_dir / "studies.parquet").to_pylist()  # type: ignore[operator]
    assert [r["total_events"] for r in rows] == [3, 2]
    assert rows[1]["patient_weight_kg"] == 72.5
    events = pq.read_table(result.registry_dir / "events.parquet").to_pylist()  # type: ignore[operator]
    assert [e["pitch_factor"] for e in events if e["study_instance_uid"] == rows[1]["study_instance_uid"]] == [
        None, 1.2]


def test_a_second_export_while_one_runs_is_refused(cfg: Config) -> None:
    from dosereg.registry_export.state import ExportBusyError, ExportState, state_path

    holder = ExportState(state_path(cfg))
    holder.begin()
    try:
        with pytest.raises(ExportBusyError, match="another export is running"):
            export_batch(cfg, source(corpus_of(2)))
    finally:
        holder.rollback()
        holder.close()
    assert export_batch(cfg, source(corpus_of(2))).batch_id is not None


def test_month_precision_submission_validates(cfg: Config) -> None:
    import jsonschema

    cfg = replace(cfg, registry=replace(cfg.registry, date_precision="month"))
    result = export_batch(cfg, source(corpus_of(6)))
    submission = json.loads((result.registry_dir / "submission.json").read_text())  # type: ignore[operator]
    schema = json.loads((ROOT / "conf" / "submission.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(submission)
    assert submission["date_precision"] == "month"
    assert {s["study_date"] for s in submission["studies"]} == {"2025-01"}
    assert all(s["study_time"] is None for s in submission["studies"])
    # the schema rejects an identifying field slipped into a study
    bad = json.loads(json.dumps(submission))
    bad["studies"][0]["patient"]["name"] = "Doe^John"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def _state_dump(cfg: Config) -> list[tuple[object, ...]]:
    import sqlite3

    db = sqlite3.connect(cfg.data_dir / "export-state.sqlite")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [(t, *row) for t in tables for row in db.execute(f"SELECT * FROM {t} ORDER BY 1, 2")]
    finally:
        db.close()


def test_preview_changes_no_state_and_the_next_export_is_unaffected(cfg: Config, tmp_path: Path) -> None:
    records = corpus_of(6)
    first = export_batch(cfg, source(records))
    acknowledge_all(cfg)
    records[2] = synthetic_study(2, objects=2)  # changed since
    records.append(synthetic_study(50))  # and new
    before = _state_dump(cfg)
    files_before = sorted(str(p) for p in cfg.data_dir.rglob("*") if "export-state" not in p.name)
    preview = export_batch(cfg, source(records), out_dir=tmp_path / "trial")
    assert preview.preview and preview.registry_studies == 2 and preview.registry_resubmitted == 1
    assert preview.flag_rows == 1 and preview.flags_paths == []  # counted, not written
    assert preview.previous_batch == first.batch_id
    trial = pq.read_table(preview.registry_dir / "studies.parquet")  # type: ignore[operator]
    assert set(trial.column("study_instance_uid").to_pylist()) == {
        pseudo(records[2].study_instance_uid), pseudo(records[-1].study_instance_uid)}  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == ["registry", "reports"]
    assert _state_dump(cfg) == before
    assert sorted(str(p) for p in cfg.data_dir.rglob("*") if "export-state" not in p.name) == files_before
    again = export_batch(cfg, source(records), out_dir=tmp_path / "trial2")  # a preview again: the same
    assert (again.registry_studies, again.flag_rows) == (2, 1)

    real = export_batch(cfg, source(records))
    assert (real.registry_studies, real.registry_resubmitted, real.flag_rows) == (2, 1, 1)
    assert export_batch(cfg, source(records), out_dir=tmp_path / "trial3").batch_id is None


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_every_file_export_writes_is_owner_only(cfg: Config, mask: int) -> None:
    import os
    import stat

    old = os.umask(mask)
    try:
        result = export_batch(cfg, source(corpus_of(8)))
        acknowledge_all(cfg)
    finally:
        os.umask(old)
    assert result.registry_dir is not None and list((cfg.data_dir / "flags").iterdir()) and result.report_paths
    found = {str(p.relative_to(cfg.data_dir)): stat.S_IMODE(p.stat().st_mode)
             for p in [cfg.data_dir, *cfg.data_dir.rglob("*")]}
    assert "export-state.sqlite" in found and "flags" in found and "reports" in found
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (cfg.data_dir / name).is_dir() else 0o600)}
    assert not wrong, wrong


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_the_report_alone_is_owner_only(cfg: Config, mask: int) -> None:
    """``dosereg report`` writes patient data (accession numbers, protocols): its folder and
    files are owner-only whatever the umask, by the writer itself (no umask of the caller)."""
    import os
    import stat

    from dosereg.registry_export import write_report

    old = os.umask(mask)
    try:
        paths = write_report(cfg, lambda: iter(corpus_of(4)))
    finally:
        os.umask(old)
    assert sorted(p.suffix for p in paths) == [".csv", ".html"]
    assert stat.S_IMODE((cfg.data_dir / "reports").stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o600, 0o600]


def test_schema_2_state_is_migrated_and_nothing_is_exported_again(cfg: Config) -> None:
    import sqlite3

    from dosereg.registry_export.state import SCHEMA_VERSION, ExportState, state_path

    records = corpus_of(6)
    first = export_batch(cfg, source(records))
    # rewrite the state as dosereg with schema 2 kept it
    path = state_path(cfg)
    old = sqlite3.connect(path)
    batches = old.execute("SELECT seq, batch_id, created_at, facility_id, out_dir, studies_seen, registry_studies, "
                          "registry_events, flag_rows FROM batches").fetchall()
    # schema 2's columns; its input keys carried ":G9327" when the study's code was G9327
    studies = old.execute("SELECT study_uid, registry_fingerprint, registry_batch_id, flags_key, flags_batch_id, "
                          "batch_id, exported_at, input_key || CASE WHEN last_code = 'G9327' THEN ':G9327' "
                          "ELSE '' END FROM studies").fetchall()
    old.close()
    for p in path.parent.glob("export-state.sqlite*"):
        p.unlink()
    v2 = sqlite3.connect(path)
    v2.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE batches (seq INTEGER PRIMARY KEY, batch_id TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
            facility_id TEXT NOT NULL, out_dir TEXT NOT NULL, studies_seen INTEGER NOT NULL,
            registry_studies INTEGER NOT NULL, registry_events INTEGER NOT NULL, flag_rows INTEGER NOT NULL);
        CREATE TABLE studies (study_uid TEXT PRIMARY KEY, registry_fingerprint TEXT, registry_batch_id TEXT,
            flags_key TEXT, flags_batch_id TEXT, batch_id TEXT, exported_at TEXT, input_key TEXT);
        INSERT INTO meta VALUES ('schema_version', '2');
    """)
    v2.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batches)
    v2.executemany("INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, ?)", studies)
    v2.commit()
    v2.close()

    again = export_batch(cfg, source(records))
    # spec section 8: batches from before the lifecycle are legacy, never sent: their studies are offered again
    assert again.batch_id is not None and again.registry_studies == first.registry_studies
    state = ExportState(path, readonly=True)
    try:
        assert state.version == SCHEMA_VERSION == 5
        assert state.batch_states() == {first.batch_id: "legacy", again.batch_id: "pending_review"}
        members = state.members(str(first.batch_id))
        assert len(members) == 6 and sum(r for _, r, _ in members) == first.registry_studies
        assert all(f for _, _, f in members)
        assert [a["action"] for a in state.audit()][:2] == ["migrate", "secret_recorded"]
    finally:
        state.close()
    records.append(synthetic_study(60))
    acknowledge_all(cfg)
    third = export_batch(cfg, source(records))
    assert third.registry_studies == 1 and third.flag_rows == 1


def test_a_non_finite_number_fails_the_export_loudly(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules find a non-finite value implausible and the registry files carry null in its
    place; should that ever regress (simulated here by skipping the blanking), the writers'
    allow_nan=False fails the export loudly, with nothing written or recorded."""
    import dosereg.registry_export.registry_files as registry_files

    bad = synthetic_study(1, extra={"total_dlp_mGycm": float("inf")})
    with monkeypatch.context() as m:
        m.setattr(registry_files, "without_implausible", lambda d: d)
        with pytest.raises(ValueError, match="JSON compliant"):
            export_batch(cfg, source([synthetic_study(0), bad]))
    assert not (cfg.data_dir / "registry").exists() and not (cfg.data_dir / "flags").exists()
    assert export_marks(cfg) == {}
    result = export_batch(cfg, source([synthetic_study(0), bad]))
    rows = pq.read_table(result.registry_dir / "studies.parquet").to_pylist()  # type: ignore[operator]
    assert [r["total_dlp_mGycm"] is None for r in rows] == [False, True]
