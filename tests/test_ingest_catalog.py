"""The SQLite catalog on records built directly (no DICOM): merge on arrival, re-sends, schema."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from dosereg.conf.config import Config, StorageSettings
from dosereg.extract import DoseObjectRef, Event, Patient, StudyRecord, error_record
from dosereg.ingest import SCHEMA_VERSION, Catalog, CatalogError, open_catalog
from dosereg.ingest.catalog_codec import unpack_text

RDSR = "1.2.840.10008.5.1.4.1.1.88.67"


def record(study: str, sop: str, events: list[tuple[str, float]], *, received_at: str = "2026-11-25T10:00:00Z",
           description: str = "CT CHEST") -> StudyRecord:
    return StudyRecord(
        study_instance_uid=study,
        study_description=description,
        modality="SR",
        patient=Patient(sex="F", age_years=50.0),
        dose_objects=(DoseObjectRef(sop, RDSR, "rdsr", received_at),),
        total_events=len(events),
        total_dlp_mGycm=sum(d for _, d in events),
        reported_total_dlp_mGycm=sum(d for _, d in events),
        events=tuple(Event(irradiation_event_uid=u, acquisition_type="spiral", ctdivol_mGy=10.0, dlp_mGycm=d)
                     for u, d in events),
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(storage=StorageSettings(data_dir=str(tmp_path / "data")))


@pytest.fixture
def catalog(cfg: Config) -> Catalog:
    c = open_catalog(cfg)
    yield c
    c.close()


def test_new_duplicate_replaced(catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    a = record("1.2.3", "1.2.3.1", [("9.1", 100.0)])
    assert catalog.add_object(a, raw_path="objects/aa.dcm", content_sha256="aa") == "new"
    assert catalog.add_object(a, raw_path="objects/aa.dcm", content_sha256="aa") == "duplicate"
    assert catalog.count_studies() == 1
    study = catalog.get_study("1.2.3")
    assert study is not None and study.events[0].dlp_mGycm == 100.0

    b = record("1.2.3", "1.2.3.1", [("9.1", 120.0)], description="CT CHEST W")
    with caplog.at_level(logging.WARNING, logger="dosereg.ingest.catalog"):
        assert catalog.add_object(b, raw_path="objects/bb.dcm", content_sha256="bb") == "replaced"
    assert "1.2.3.1 received again with different content" in caplog.text
    study = catalog.get_study("1.2.3")
    assert study is not None
    assert study.study_description == "CT CHEST W"  # last received wins
    assert [e.dlp_mGycm for e in study.events] == [120.0]
    assert catalog.count_objects() == 1
    assert catalog.object_rows()[0]["raw_path"] == "objects/bb.dcm"


def test_duplicate_without_hash_compares_records(catalog: Catalog) -> None:
    a = record("1.2.4", "1.2.4.1", [("9.1", 100.0)])
    assert catalog.add_object(a) == "new"
    assert catalog.add_object(a) == "duplicate"
    assert catalog.add_object(record("1.2.4", "1.2.4.1", [("9.1", 101.0)])) == "replaced"


def test_study_merged_from_objects_in_received_order(catalog: Catalog) -> None:
    # cumulative pair: the second repeats the first event
    first = record("1.2.5", "1.2.5.1", [("9.1", 100.0)], received_at="2026-11-25T10:00:00Z")
    second = record("1.2.5", "1.2.5.2", [("9.1", 100.0), ("9.2", 50.0)], received_at="2026-11-25T10:05:00Z")
    assert catalog.add_object(first) == "new"
    assert catalog.add_object(second) == "new"
    study = catalog.get_study("1.2.5")
    assert study is not None
    assert [o.sop_instance_uid for o in study.dose_objects] == ["1.2.5.1", "1.2.5.2"]
    assert [e.irradiation_event_uid for e in study.events] == ["9.1", "9.2"]
    assert study.total_events == 2
    assert study.total_dlp_mGycm == pytest.approx(150.0)
    # the events table mirrors the merged study
    conn = sqlite3.connect(catalog.path)
    rows = conn.execute("SELECT position, irradiation_event_uid, dlp_mGycm FROM events "
                        "WHERE study_instance_uid = '1.2.5' ORDER BY position").fetchall()
    conn.close()
    assert rows == [(0, "9.1", 100.0), (1, "9.2", 50.0)]


def test_error_records_are_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="quarantine"):
        catalog.add_object(error_record("not_dicom", "x.dcm: not a DICOM file"))


def test_add_objects_bulk(catalog: Catalog) -> None:
    records = [record(f"1.9.{i:05d}", f"1.9.{i:05d}.1", [(f"8.{i}", float(i))]) for i in range(2000)]
    records.append(record("1.9.00007", "1.9.00007.2", [("8.7", 7.0), ("8.x", 1.0)]))  # a second object
    catalog.add_objects(reversed(records))
    assert catalog.count_studies() == 2000
    assert catalog.count_objects() == 2001
    uids = [s.study_instance_uid for s in catalog.iter_studies()]
    assert uids == sorted(uids) and len(uids) == 2000
    s7 = catalog.get_study("1.9.00007")
    assert s7 is not None and len(s7.dose_objects) == 2 and s7.total_events == 2
    s8 = catalog.get_study("1.9.00008")
    assert s8 is not None and s8.total_dlp_mGycm == 8.0
    # an identical re-send of a bulk-loaded object changes nothing; a different one replaces it
    assert catalog.add_object(records[3]) == "duplicate"
    assert catalog.add_object(record("1.9.00003", "1.9.00003.1", [("8.3", 4.0)])) == "replaced"
    # a later bulk load merges with what is there
    catalog.add_objects([record("1.9.00008", "1.9.00008.2", [("8.8b", 2.0)])])
    s8 = catalog.get_study("1.9.00008")
    assert s8 is not None and s8.total_events == 2


def test_schema_version_and_migration(cfg: Config, catalog: Catalog) -> None:
    assert catalog.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(catalog.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    catalog.close()
    again = open_catalog(cfg)  # re-opening does not migrate twice
    assert again.schema_version == SCHEMA_VERSION
    again.close()
    conn = sqlite3.connect(catalog.path)
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogError, match="schema version 99 is newer"):
        open_catalog(cfg)


def test_migrates_a_version_1_catalog(cfg: Config) -> None:
    from dosereg.ingest.catalog import catalog_path
    from dosereg.ingest.catalog_schema import MIGRATIONS

    path = catalog_path(cfg.data_dir)
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(";".join(MIGRATIONS[0]))
    a = record("1.5.1", "1.5.1.1", [("9.1", 1.0)])
    conn.execute("INSERT INTO objects (sop_instance_uid, study_instance_uid, seq, record_json) VALUES (?, ?, 1, ?)",
                 ("1.5.1.1", "1.5.1", json.dumps(a.to_dict())))
    conn.execute("INSERT INTO studies VALUES ('1.5.1', 1, '2026-01-01T00:00:00Z', ?)", (json.dumps(a.to_dict()),))
    conn.execute("INSERT INTO schema_version VALUES (1, '2026-01-01T00:00:00Z')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogError, match="needs migrating"):
        open_catalog(cfg, readonly=True)
    catalog = open_catalog(cfg)
    try:
        assert catalog.schema_version == SCHEMA_VERSION
        assert catalog.count_studies() == 1
        # the migration computed the content key of the old row: an identical re-send changes nothing
        assert catalog.add_object(a) == "duplicate"
        assert catalog.add_object(record("1.5.1", "1.5.1.1", [("9.1", 2.0)])) == "replaced"
    finally:
        catalog.close()


def test_same_record_different_bytes_is_duplicate(catalog: Catalog) -> None:
    a = record("1.6.1", "1.6.1.1", [("9.1", 1.0)], received_at="2026-11-25T10:00:00Z")
    b = record("1.6.1", "1.6.1.1", [("9.1", 1.0)], received_at="2026-11-25T11:00:00Z")
    assert catalog.add_object(a, content_sha256="aa") == "new"
    assert catalog.add_object(b.with_changes(source_file="elsewhere.dcm"), content_sha256="bb") == "duplicate"
    study = catalog.get_study("1.6.1")
    assert study is not None and study.dose_objects[0].received_at == "2026-11-25T10:00:00Z"


def test_readonly_reads_while_a_writer_is_open(cfg: Config, catalog: Catalog) -> None:
    catalog.add_object(record("1.3.1", "1.3.1.1", [("9.1", 1.0)]))
    reader = open_catalog(cfg, readonly=True)
    try:
        it = reader.iter_studies()
        assert next(it).study_instance_uid == "1.3.1"
        it.close()
        catalog.add_object(record("1.3.2", "1.3.2.1", [("9.2", 2.0)]))  # writer goes on
        assert reader.count_studies() == 2
        with pytest.raises(sqlite3.OperationalError):
            reader._conn.execute("DELETE FROM studies")
    finally:
        reader.close()


def test_readonly_without_catalog_is_empty(tmp_path: Path) -> None:
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "nothing-yet")))
    reader = open_catalog(cfg, readonly=True)
    assert list(reader.iter_studies()) == [] and reader.count_studies() == 0
    reader.close()
    assert not (tmp_path / "nothing-yet").exists()


def test_record_json_round_trip(catalog: Catalog) -> None:
    a = record("1.4.1", "1.4.1.1", [("9.1", 3.5)])
    catalog.add_object(a)
    conn = sqlite3.connect(catalog.path)
    (blob,) = conn.execute("SELECT record FROM objects").fetchone()
    conn.close()
    assert json.loads(unpack_text(blob)) == a.to_dict()
