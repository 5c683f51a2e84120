"""Catalog schema 4 (exams without a dose report, reconcile progress), the migration from 3, the
exam's verdicts and report table, and the ``[pacs]`` settings."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dosereg.conf.config import Config, ConfigError, StorageSettings, default_config, parse_config
from dosereg.extract import Equipment, ExamRecord, Patient, StudyRecord
from dosereg.ingest import SCHEMA_VERSION, Catalog, CatalogError, open_catalog
from dosereg.ingest.catalog import catalog_path
from dosereg.registry_export import evaluated_dict, rules_from_config
from dosereg.registry_export.report import ReportBuilder
from dosereg.registry_export.rules import evaluate

from .synthetic import synthetic_study


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(storage=StorageSettings(data_dir=str(tmp_path / "data")))


def exam(uid: str | None, accession: str = "ACC1", source: str = "pacs", station: str = "CT9",
         description: str = "CT HEAD WO CONTRAST", patient_id: str = "P1") -> ExamRecord:
    return ExamRecord(study_instance_uid=uid, accession_number=accession, study_date="2026-11-20",
                      study_description=description, modality="CT", patient=Patient(id=patient_id),
                      equipment=Equipment(station_name=station), source=source)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def as_version_3(path: Path) -> None:
    """Undo migration 4 in place: the catalog as schema 3 left it."""
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER exams_retire; DROP TABLE exams; DROP TABLE reconcile_days; "
                       "DELETE FROM schema_version WHERE version = 4; PRAGMA user_version = 3;")
    conn.close()


def test_a_version_3_catalog_is_migrated_and_keeps_its_studies(cfg: Config) -> None:
    records = [synthetic_study(i) for i in range(30)]
    with open_catalog(cfg) as catalog:
        catalog.add_objects(records)
        before = [r.to_json() for r in catalog.iter_studies()]
        versions = list(catalog.study_versions())
    path = catalog_path(cfg.data_dir)
    as_version_3(path)
    with pytest.raises(CatalogError, match="needs migrating"):
        Catalog(path, readonly=True)
    with open_catalog(cfg) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION == 4
        assert [r.to_json() for r in catalog.iter_studies()] == before
        assert list(catalog.study_versions()) == versions
        assert catalog.exam_rows() == []
    assert [v for (v,) in rows(path, "SELECT version FROM schema_version ORDER BY version")] == [1, 2, 3, 4]
    # the trigger came with the migration: an exam of a study retires when its object arrives
    with open_catalog(cfg) as catalog:
        new = synthetic_study(99)
        assert catalog.add_exam(exam(new.study_instance_uid)) == "new"
        catalog.add_object(new)
        assert catalog.exam_rows()[0]["retired_at"] is not None
        assert list(catalog.iter_exams()) == []


def test_exams_are_read_among_the_studies_in_uid_order(cfg: Config) -> None:
    records = [synthetic_study(i) for i in (1, 3, 5)]
    with open_catalog(cfg) as catalog:
        catalog.add_objects(records)
        uids = sorted(r.study_instance_uid or "" for r in records)
        between = uids[0] + "0"  # sorts after the first study, before the second
        assert catalog.add_exam(exam(between)) == "new"
        assert catalog.add_exam(exam("9.9.9", accession="ACC2")) == "new"
        studies = list(catalog.iter_studies())
        assert [s.study_instance_uid for s in studies] == sorted([*uids, between, "9.9.9"])
        got = next(s for s in studies if s.study_instance_uid == between)
        assert isinstance(got, ExamRecord) and got.source == "pacs"
        assert got.dose_objects == () and got.events == ()
        assert got.equipment.station_name == "CT9" and got.patient.id == "P1"
        assert [u for u, _ in catalog.study_versions()] == [s.study_instance_uid for s in studies]
        assert catalog.get_study(between) == got
        # same again: nothing changes; a change: a new version
        version = dict(catalog.study_versions())[between]
        assert catalog.add_exam(exam(between)) == "same"
        assert catalog.add_exam(exam(between, description="CT HEAD W CONTRAST")) == "updated"
        assert dict(catalog.study_versions())[between] != version
        # known from the RIS too: the first source stays
        assert catalog.add_exam(exam(between, source="ris", description="CT HEAD W CONTRAST")) == "same"
        # a study with a dose object is never an exam
        assert catalog.add_exam(exam(records[0].study_instance_uid)) == "has_dose_object"
        assert len(catalog.exam_rows()) == 2


def test_accession_only_exams_are_kept_but_not_read_as_studies(cfg: Config) -> None:
    with open_catalog(cfg) as catalog:
        assert catalog.add_exam(exam(None, accession="RIS7", source="ris")) == "new"
        assert catalog.add_exam(exam(None, accession="RIS7", source="ris")) == "same"
        assert list(catalog.iter_studies()) == []
        assert catalog.retire_exams_of_accession("RIS7") == 1
        assert catalog.exam_rows()[0]["retired_at"] is not None
        with pytest.raises(ValueError):
            catalog.add_exam(exam(None, accession=""))


def test_held_instances_and_reconciled_days(cfg: Config) -> None:
    record = synthetic_study(4)
    sop = record.dose_objects[0].sop_instance_uid
    with open_catalog(cfg) as catalog:
        catalog.add_object(record)
        assert catalog.held_instances([sop, "1.2.3"]) == {sop}
        assert catalog.has_dose_object(record.study_instance_uid or "")
        assert not catalog.has_dose_object("1.2.3")
        catalog.mark_day_reconciled("20261120", 12)
        done = catalog.reconciled_days("20261101", "20261130")
        assert list(done) == ["20261120"] and done["20261120"].startswith("20")
        assert catalog.reconciled_days("20261121", "20261130") == {}


def test_an_exam_is_g9326_no_dose_report_received() -> None:
    rules = rules_from_config(default_config())
    d = evaluated_dict(exam("1.2.3.4"), rules)
    assert d["source"] == "pacs" and d["dose_objects"] == [] and d["events"] == []
    assert d["completeness"]["status"] == "incomplete"
    assert d["completeness"]["missing"] == ["dose_objects"]
    assert d["flags"]["registry_code"] == "G9326"
    assert d["flags"]["registry_reasons"] == ["no dose report received"]
    # the non-patient rules apply to what is known of it
    cfg = parse_config({"classification": {"non_patient": {"study_description": ["*PHANTOM*"]}}}, Path("x.toml"),
                       default_config())
    qa = evaluated_dict(exam("1.2.3.5", description="CT PHANTOM QA"), rules_from_config(cfg))
    assert qa["flags"]["registry_code"] == "excluded"
    assert qa["classification"]["patient_study"] is False
    # a record with a dose object keeps its JSON: no "source" key
    assert "source" not in synthetic_study(1).to_dict()
    assert "source" not in StudyRecord().to_dict()


def test_the_report_lists_exams_per_scanner_and_day(cfg: Config) -> None:
    rules = rules_from_config(default_config())
    builder = ReportBuilder(default_config())
    records = [exam("1.1", station="CT1"), exam("1.2", station="CT1"), exam("1.3", station="CT2"),
               synthetic_study(1)]
    for r in records:
        builder.add_evaluated(r, evaluate(r, rules))
    summary = builder.summary()
    builder.close()
    assert summary.exams_without_report == (("CT1", "2026-11-20", 2), ("CT2", "2026-11-20", 1))
    from dosereg.registry_export.report_html import render_html

    page = render_html(summary, default_config())
    assert "CT exams without a dose report (3)" in page
    assert "<td>CT1</td><td>2026-11-20</td><td>2</td>" in page


def test_pacs_settings_are_checked_and_named() -> None:
    where = Path("site.toml")
    base = {"ae_title": "PACS", "host": "10.0.0.5", "port": 104}
    pacs = parse_config({"pacs": base, "listener": {"ae_title": "DOSEREG9"}}, where).pacs
    assert pacs is not None
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.calling_ae_title, pacs.retrieve, pacs.timeout_s) == \
        ("PACS", "10.0.0.5", 104, "DOSEREG9", "c-get", 60.0)
    assert parse_config({}, where).pacs is None
    assert parse_config({"pacs": {**base, "retrieve": "c-move", "calling_ae_title": "ME"}}, where).pacs == \
        pacs.__class__(**{**base, "retrieve": "c-move", "calling_ae_title": "ME"})
    bad = [
        ({"ae_title": "PACS", "host": "h"}, "site.toml: pacs.port is required"),
        ({**base, "retrieve": "wado"}, "pacs.retrieve must be one of c-get, c-move"),
        ({**base, "port": 70000}, "pacs.port must be between 1 and 65535"),
        ({**base, "timeout": 3}, "unknown key pacs.timeout"),
        ({**base, "timeout_s": "3"}, "pacs.timeout_s must be a number"),
        ({**base, "ae_title": "A" * 17}, "pacs.ae_title must be 1-16 characters"),
        ({**base, "host": " "}, "pacs.host must not be empty"),
        ({**base, "tls_certificate": "c.pem"}, "pacs.tls_private_key"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            parse_config({"pacs": table}, where)


def test_the_next_batch_flags_the_exam_g9326_then_g9327_once_its_rdsr_arrived(cfg: Config, tmp_path: Path) -> None:
    import csv

    from .conftest import run_cli
    from .lifecycle_helpers import acknowledge_all_in

    late = synthetic_study(7)
    uid = late.study_instance_uid or ""
    with open_catalog(cfg) as catalog:
        catalog.add_objects([synthetic_study(i) for i in range(3)])
        catalog.add_exam(exam(uid, accession=late.accession_number or ""))
    env = {"DOSEREG_SECRET": "reconcile-tests-secret-0123456789abcdef"}

    def flags_rows() -> dict[str, dict[str, str]]:
        r = run_cli("export", "--data-dir", str(cfg.data_dir), env=env)
        assert r.returncode == 0, r.stderr
        acknowledge_all_in(cfg.data_dir, env)  # billing flags follow the registry's receipt
        newest = sorted((cfg.data_dir / "flags").glob("*.csv"))[-1]
        with open(newest, newline="") as fh:
            return {row["study_instance_uid"]: row for row in csv.DictReader(fh)}

    def submission() -> dict[str, Any]:
        r = run_cli("studies", "--json", "--data-dir", str(cfg.data_dir), env=env)
        assert r.returncode == 0, r.stderr
        (d,) = [json.loads(line) for line in r.stdout.splitlines() if json.loads(line)["study_instance_uid"] == uid]
        return dict(d["submission"])

    assert submission()["state"] == "no_dose_report"
    first = flags_rows()
    assert submission() == {**submission(), "state": "no_dose_report", "billed_code": "G9326"}
    assert first[uid]["registry_code"] == "G9326"
    assert first[uid]["reasons"].split("; ")[0] == "no dose report received"
    with open_catalog(cfg) as catalog:
        catalog.add_object(late)  # the RDSR arrives: the exam is retired
        assert list(catalog.iter_exams()) == []
    second = flags_rows()
    assert second[uid]["registry_code"] == "G9327"
    assert uid in second and len(second) == 1  # only the study that changed
