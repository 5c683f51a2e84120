"""Catalog schema 3: records stored once and compressed, study version keys, in-place migration
of a version-2 catalog (built here with the version-2 DDL and rows as version 2 wrote them)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dosereg.conf.config import Config, StorageSettings
from dosereg.extract import StudyRecord, extract_file, merge_study
from dosereg.ingest import SCHEMA_VERSION, Catalog, CatalogError, open_catalog
from dosereg.ingest.catalog import catalog_path
from dosereg.ingest.catalog_codec import content_key, pack, unpack, unpack_text, version_key
from dosereg.ingest.catalog_schema import MIGRATIONS

from .synthetic import synthetic_study

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dicom"
# (study of two objects each): a cumulative pair and a continuation pair
PAIRS = (("ct_cumulative_1", "ct_cumulative_2"), ("ct_continuation_1", "ct_continuation_2"))
SINGLES = ("ct_siemens_single_source", "ct_toshiba_dose_check", "ct_philips_dose_info", "ct_ge_enhanced_sr")


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(storage=StorageSettings(data_dir=str(tmp_path / "data")))


def sample(name: str, received_at: str) -> StudyRecord:
    r = extract_file(SAMPLES / f"{name}.dcm")
    assert r.error is None, r.error
    ref = r.dose_objects[0]
    return r.with_changes(dose_objects=(ref.__class__(ref.sop_instance_uid, ref.sop_class_uid, ref.kind, received_at),))


def objects_in_order() -> list[StudyRecord]:
    """The sample objects (pairs share a study) and 400 synthetic one-object studies, in received order."""
    out = []
    for k, (a, b) in enumerate(PAIRS):
        out += [sample(a, f"2026-11-25T10:0{k}:00.000000Z"), sample(b, f"2026-11-25T10:0{k}:30.000000Z")]
    out += [sample(name, f"2026-11-25T11:0{k}:00.000000Z") for k, name in enumerate(SINGLES)]
    out += [synthetic_study(i) for i in range(400)]
    return out


def _v2_dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))  # version 2's stored JSON


def build_v2_catalog(path: Path, records: list[StudyRecord]) -> dict[str, str]:
    """A version-2 catalog, with the version-2 DDL and the rows version 2 wrote for ``records``
    (received in that order); returns each study's stored JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0] + MIGRATIONS[1]:
        conn.execute(statement)
    conn.executemany("INSERT INTO schema_version VALUES (?, '2026-01-01T00:00:00Z')", [(1,), (2,)])
    by_study: dict[str, list[StudyRecord]] = {}
    for seq, r in enumerate(records, start=1):
        ref = r.dose_objects[0]
        sha = hashlib.sha256(ref.sop_instance_uid.encode()).hexdigest()
        text = _v2_dumps(r.to_dict())
        conn.execute("INSERT INTO received (name, sha256, source, received_at, state, outcome) "
                     "VALUES (?, ?, ?, ?, 'done', 'new')", (f"obj{seq}.dcm", sha, f"obj{seq}.dcm", ref.received_at))
        conn.execute("INSERT INTO objects (sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path, "
                     "received_at, seq, record_json, record_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (ref.sop_instance_uid, r.study_instance_uid, ref.sop_class_uid, sha, f"objects/{sha}.dcm",
                      ref.received_at, seq, text, content_key(r.to_dict())))
        by_study.setdefault(str(r.study_instance_uid), []).append(r)
    stored: dict[str, str] = {}
    for uid, group in by_study.items():
        merged = merge_study(group)
        stored[uid] = _v2_dumps(merged.to_dict())
        conn.execute("INSERT INTO studies VALUES (?, ?, '2026-01-01T00:00:00Z', ?)", (uid, len(group), stored[uid]))
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (uid, i, e.irradiation_event_uid, e.acquisition_protocol, e.acquisition_type, e.ctdivol_mGy, e.dlp_mGycm)
            for i, e in enumerate(merged.events)])
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    return stored


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def catalog_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_migrates_a_version_2_catalog_in_place(cfg: Config) -> None:
    path = catalog_path(cfg.data_dir)
    records = objects_in_order()
    stored = build_v2_catalog(path, records)
    objects_before = rows(path, "SELECT sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path, "
                                "received_at, seq FROM objects ORDER BY seq")
    events_before = rows(path, "SELECT * FROM events ORDER BY study_instance_uid, position")
    received_before = rows(path, "SELECT * FROM received ORDER BY id")
    size_before = catalog_bytes(path)
    with pytest.raises(CatalogError, match="version 2 needs migrating"):
        open_catalog(cfg, readonly=True)  # readers never migrate

    catalog = open_catalog(cfg)  # the listener or an import opens it: migrated in place
    try:
        assert catalog.schema_version == SCHEMA_VERSION == 4
        # the same studies, read back
        assert {uid: json.loads(text) for uid, text in stored.items()} == {
            r.study_instance_uid: r.to_dict() for r in catalog.iter_studies()}
        assert [r.study_instance_uid for r in catalog.iter_studies()] == sorted(stored)
        for uid, text in stored.items():
            got = catalog.get_study(uid)
            assert got is not None and got.to_dict() == json.loads(text)
        assert [uid for uid, _ in catalog.study_versions()] == sorted(stored)
        assert dict(catalog.study_versions()) == {uid: version_key(text) for uid, text in stored.items()}
        assert catalog.count_objects() == len(records) and catalog.count_studies() == len(stored)
        # identical re-sends change nothing; a different one replaces its object
        versions = dict(catalog.study_versions())
        assert catalog.add_object(records[0]) == "duplicate"
        assert catalog.add_object(records[-1]) == "duplicate"
        changed = records[-1].with_changes(study_description="CT CHEST (corrected)")
        assert catalog.add_object(changed) == "replaced"
        after = dict(catalog.study_versions())
        assert after.pop(changed.study_instance_uid) != versions.pop(changed.study_instance_uid)
        assert after == versions
    finally:
        catalog.close()
    migrated_objects = rows(path, "SELECT sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path, "
                                  "received_at, seq FROM objects ORDER BY seq")
    assert migrated_objects[:-1] == objects_before[:-1]  # (the last one was replaced just now)
    assert rows(path, "SELECT * FROM events ORDER BY study_instance_uid, position") == events_before
    assert rows(path, "SELECT * FROM received ORDER BY id") == received_before
    assert [v for (v,) in rows(path, "SELECT version FROM schema_version ORDER BY version")] == [1, 2, 3, 4]
    # each record once: a study of one object keeps no record of its own
    multi = {str(r.study_instance_uid) for r in records[:4]}
    own = dict(rows(path, "SELECT study_instance_uid, record IS NOT NULL FROM studies"))
    assert {uid for uid, has in own.items() if has} == multi
    # and compacted (these records are small: a quarter of the bytes; bench/import.py measures real ones)
    assert catalog_bytes(path) < size_before / 4

    reader = open_catalog(cfg, readonly=True)
    try:
        got = {r.study_instance_uid: r.to_dict() for r in reader.iter_studies()}
        assert got[records[0].study_instance_uid] == json.loads(stored[str(records[0].study_instance_uid)])
    finally:
        reader.close()


def test_each_record_stored_once_and_compressed(cfg: Config) -> None:
    catalog = open_catalog(cfg)
    try:
        records = objects_in_order()[:8]
        for r in records:
            assert catalog.add_object(r) == "new"
        path = catalog.path
        blobs = dict(rows(path, "SELECT sop_instance_uid, record FROM objects"))
        for r in records:
            text = r.to_json(separators=(",", ":"))
            blob = blobs[r.dose_objects[0].sop_instance_uid]
            assert json.loads(unpack_text(blob)) == r.to_dict()
            assert len(blob) < len(text.encode()) / 3
        studies = dict(rows(path, "SELECT study_instance_uid, record FROM studies"))
        for a, b in zip(records[:4:2], records[1:4:2], strict=True):
            assert unpack(studies[a.study_instance_uid]) == merge_study([a, b])
        for r in records[4:]:
            assert studies[r.study_instance_uid] is None  # the object's record is the study's
            got = catalog.get_study(str(r.study_instance_uid))
            assert got is not None and got.to_dict() == r.to_dict()
    finally:
        catalog.close()


def test_study_versions_change_with_the_merged_record_only(cfg: Config) -> None:
    catalog = open_catalog(cfg)
    try:
        assert list(catalog.study_versions()) == []
        cum1, cum2 = objects_in_order()[:2]
        other = synthetic_study(7)
        assert catalog.add_object(cum1) == "new"
        assert catalog.add_object(other) == "new"
        v1 = dict(catalog.study_versions())
        assert list(v1) == sorted([cum1.study_instance_uid, other.study_instance_uid])
        assert all(len(k) == 16 and int(k, 16) >= 0 for k in v1.values())
        assert catalog.add_object(cum1) == "duplicate"
        assert dict(catalog.study_versions()) == v1
        assert catalog.add_object(cum2) == "new"  # a second object: the merged record changes
        v2 = dict(catalog.study_versions())
        assert v2[cum1.study_instance_uid] != v1[cum1.study_instance_uid]
        assert v2[other.study_instance_uid] == v1[other.study_instance_uid]
        assert catalog.add_object(other.with_changes(accession_number="A-2")) == "replaced"
        v3 = dict(catalog.study_versions())
        assert v3[other.study_instance_uid] != v2[other.study_instance_uid]
        assert v3[cum1.study_instance_uid] == v2[cum1.study_instance_uid]
        # the same merged record gives the same key, however it came about
        assert v3[other.study_instance_uid] == version_key(
            json.dumps(other.with_changes(accession_number="A-2").to_dict(), ensure_ascii=False,
                       separators=(",", ":")))
        # read without decoding any record: records made unreadable do not matter to it
        conn = sqlite3.connect(catalog.path)
        conn.execute("UPDATE objects SET record = x'00'")
        conn.execute("UPDATE studies SET record = x'00' WHERE record IS NOT NULL")
        conn.commit()
        conn.close()
        assert dict(catalog.study_versions()) == v3
        with pytest.raises(ValueError, match="unknown format"):
            list(catalog.iter_studies())
    finally:
        catalog.close()
    reader = open_catalog(Config(storage=StorageSettings(data_dir=str(cfg.data_dir / "none"))), readonly=True)
    assert list(reader.study_versions()) == []
    reader.close()


def test_an_object_moving_to_another_study_leaves_both_right(cfg: Config) -> None:
    catalog = open_catalog(cfg)
    try:
        cum1, cum2 = objects_in_order()[:2]
        assert catalog.add_object(cum1) == "new"
        assert catalog.add_object(cum2) == "new"
        moved = cum2.with_changes(study_instance_uid="2.25.999")
        assert catalog.add_object(moved) == "replaced"
        left = catalog.get_study(str(cum1.study_instance_uid))
        assert left is not None and left.to_dict() == cum1.to_dict()
        new = catalog.get_study("2.25.999")
        assert new is not None and new.to_dict() == moved.to_dict()
        assert dict(rows(catalog.path, "SELECT study_instance_uid, n_objects FROM studies")) == {
            cum1.study_instance_uid: 1, "2.25.999": 1}
    finally:
        catalog.close()


def test_a_failed_write_leaves_nothing_behind(cfg: Config) -> None:
    catalog = open_catalog(cfg)
    try:
        a = synthetic_study(1)
        with pytest.raises(RuntimeError), catalog._transaction() as conn:
            conn.execute("INSERT INTO studies (study_instance_uid, n_objects, updated_at, version) "
                         "VALUES ('x', 1, 'now', 'k')")
            raise RuntimeError("boom")
        assert not catalog._conn.in_transaction and catalog.count_studies() == 0
        assert catalog.add_object(a) == "new"
        assert [uid for uid, _ in catalog.study_versions()] == [a.study_instance_uid]
    finally:
        catalog.close()


def test_unknown_record_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        unpack_text(b"\x07abc")
    text = _v2_dumps(synthetic_study(3).to_dict())
    assert unpack_text(pack(text)) == text


def test_bulk_load_matches_one_by_one(tmp_path: Path) -> None:
    records = objects_in_order()[:30]
    one = Catalog(tmp_path / "one.sqlite")
    bulk = Catalog(tmp_path / "bulk.sqlite")
    try:
        for r in records:
            one.add_object(r)
        bulk.add_objects(records)
        assert [r.to_dict() for r in bulk.iter_studies()] == [r.to_dict() for r in one.iter_studies()]
        assert list(bulk.study_versions()) == list(one.study_versions())
    finally:
        one.close()
        bulk.close()


def _as_earlier_versions_stored(d: dict[str, Any]) -> dict[str, Any]:
    """A record dict as catalogs stored it while the model held ``is_timing_run`` (after ``dose_check``)."""
    out = dict(d)
    events = []
    for e in d["events"]:
        items = list(e.items())
        at = [k for k, _ in items].index("dose_check") + 1
        events.append(dict(items[:at] + [("is_timing_run", False)] + items[at:]))
    out["events"] = events
    return out


def test_an_unchanged_object_stored_by_an_earlier_version_is_a_duplicate(cfg: Config) -> None:
    record = sample("ct_siemens_single_source", "2026-11-25T10:00:00.000000Z")
    d = record.to_dict()
    assert "is_timing_run" not in d["events"][0]
    assert content_key(_as_earlier_versions_stored(d)) == content_key(d)
    changed = dict(d, accession_number="OTHER")
    assert content_key(_as_earlier_versions_stored(changed)) != content_key(d)

    catalog = open_catalog(cfg)
    try:
        assert catalog.add_object(record) == "new"
        # the stored record rewritten as an earlier version wrote it, with is_timing_run in its events
        conn = sqlite3.connect(catalog_path(cfg.data_dir))
        (blob,) = conn.execute("SELECT record FROM objects").fetchone()
        old = _as_earlier_versions_stored(json.loads(unpack_text(blob)))
        conn.execute("UPDATE objects SET record = ?, sha256 = NULL", (pack(json.dumps(old)),))
        conn.commit()
        conn.close()
        assert catalog.add_object(record) == "duplicate"
    finally:
        catalog.close()
