"""Export state (:mod:`dosereg.registry_export.state`): the schema 3 -> 4 migration, and the
study lookup an export streams along the catalog."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dosereg.conf.config import Config, load_config
from dosereg.registry_export import export_batch, rules_from_config
from dosereg.registry_export.state import (
    SCHEMA_VERSION,
    Evaluated,
    ExportState,
    Member,
    StudyLookup,
    StudyState,
    state_path,
)
from tests.lifecycle_helpers import acknowledge_all
from tests.synthetic import synthetic_study

SECRET = "state-test-secret-0123456789abcdef0123"


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("DOSEREG_SECRET", SECRET)
    return load_config(None, data_dir=str(tmp_path / "data"))


def corpus(n: int) -> list:  # type: ignore[type-arg]
    return [synthetic_study(i, sex=None if i % 10 == 3 else "auto", qa=(i == 4)) for i in range(n)]


V3_TABLES = {  # as schema 3 defined them
    "studies": ("study_uid TEXT PRIMARY KEY, registry_fingerprint TEXT, registry_batch_id TEXT, flags_key TEXT, "
                "flags_batch_id TEXT, batch_id TEXT, exported_at TEXT, input_key TEXT"),
    "batch_studies": ("batch_id TEXT NOT NULL REFERENCES batches (batch_id), study_uid TEXT NOT NULL, "
                      "to_registry INTEGER NOT NULL, to_flags INTEGER NOT NULL, registry_fingerprint TEXT, "
                      "flags_key TEXT, input_key TEXT, PRIMARY KEY (batch_id, study_uid)"),
}


V3_COLUMNS = {
    "studies": ["study_uid", "registry_fingerprint", "registry_batch_id", "flags_key", "flags_batch_id", "batch_id",
                "exported_at", "input_key"],
    "batch_studies": ["batch_id", "study_uid", "to_registry", "to_flags", "registry_fingerprint", "flags_key",
                      "input_key"],
}


def as_schema_3(path: Path) -> None:
    """Rewrite a schema 4 state the way schema 3 kept it: no last_code / source_version / rules_key
    columns, and ":G9327" appended to the input key of each study whose code was G9327."""
    db = sqlite3.connect(path)
    try:
        for table, columns in V3_TABLES.items():
            names = V3_COLUMNS[table]
            select = ", ".join("input_key || CASE WHEN last_code = 'G9327' THEN ':G9327' ELSE '' END"
                               if n == "input_key" else n for n in names)
            db.execute(f"CREATE TABLE old_{table} AS SELECT {select} FROM {table}")
            db.execute(f"DROP TABLE {table}")
            db.execute(f"CREATE TABLE {table} ({columns})")
            db.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM old_{table}")
            db.execute(f"DROP TABLE old_{table}")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        db.commit()
    finally:
        db.close()


def dump(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_schema_3_with_suffixed_input_keys_migrates_and_behaves_the_same(cfg: Config, tmp_path: Path) -> None:
    records = corpus(12)
    first = export_batch(cfg, lambda: iter(records))
    g9327 = first.registry_studies
    assert 0 < g9327 < 12
    path = state_path(cfg)
    keys_before = dump(path, "SELECT study_uid, input_key, last_code FROM studies ORDER BY study_uid")
    assert sum(code == "G9327" for _, _, code in keys_before) == g9327
    as_schema_3(path)
    suffixed = dump(path, "SELECT input_key FROM studies WHERE input_key LIKE '%:G9327'")
    assert len(suffixed) == g9327

    # spec section 8: batches from before the lifecycle (schema < 5) are legacy, never sent, and
    # their studies are offered again
    again = export_batch(cfg, lambda: iter(records))  # migrates, then offers every study again
    assert again.batch_id is not None and again.studies_seen == 12 and again.registry_studies == g9327
    state = ExportState(path, readonly=True)
    try:
        assert state.version == SCHEMA_VERSION == 5
        migrate = [a for a in state.audit() if a["action"] == "migrate"][-1]
        assert "last_code" in migrate["comment"] and "legacy" in migrate["comment"]  # type: ignore[operator]
        assert state.batch_states()[str(first.batch_id)] == "legacy"
    finally:
        state.close()
    assert dump(path, "SELECT COUNT(*) FROM batch_studies WHERE input_key LIKE '%:%'") == [(0,)]

    # and the next change is exported as without the migration: one study, one resubmission
    acknowledge_all(cfg)
    records[2] = synthetic_study(2, objects=2)
    third = export_batch(cfg, lambda: iter(records))
    assert (third.registry_studies, third.registry_resubmitted, third.flag_rows) == (1, 1, 0)


def test_the_migration_strips_the_mark_from_batch_members_too(cfg: Config) -> None:
    """The members of a batch (one left 'writing' by schema 3 is completed from them by the repair)
    lose the ':G9327' mark of their input key and carry the code in last_code."""
    export_batch(cfg, lambda: iter(corpus(5)))
    path = state_path(cfg)
    members = dump(path, "SELECT study_uid, input_key, last_code FROM batch_studies ORDER BY study_uid")
    assert [code for _, _, code in members] == ["G9327", "G9327", "G9327", "G9326", "excluded"]
    as_schema_3(path)
    assert len(dump(path, "SELECT 1 FROM batch_studies WHERE input_key LIKE '%:G9327'")) == 3
    ExportState(path).close()  # migrates
    assert dump(path, "SELECT study_uid, input_key, last_code FROM batch_studies ORDER BY study_uid") == [
        (uid, key, code if code == "G9327" else None) for uid, key, code in members]


def test_lookup_streams_in_uid_order_and_answers_out_of_order_too(tmp_path: Path) -> None:
    path = tmp_path / "export-state.sqlite"
    state = ExportState(path)
    uids = [f"1.2.{i}" for i in (5, 1, 30, 7, 100)]
    try:
        state.begin()
        state.record_intent("B1", 1, "2026-01-01T00:00:00Z", "F", tmp_path, tmp_path, (5, 5, 5, 5), [], "fp", None)
        state.add_members("B1", [Member(uid, True, True, f"fp-{uid}", f"key-{uid}",
                                        Evaluated(f"ik-{uid}", "G9327", None, "r1")) for uid in uids])
        state.complete("B1", None, "2026-01-01T00:00:01Z")
        state.commit()
    finally:
        state.close()
    state = ExportState(path, readonly=True)
    try:
        with state.lookup() as lookup:
            asked = ["1.0", "1.2.1", "1.2.100", "1.2.30", "1.2.31", "1.2.5", "1.2.5", "1.2.7", "1.2.100", "9"]
            got = [lookup.get(uid) for uid in asked]
    finally:
        state.close()
    expected = {uid: StudyState(f"fp-{uid}", f"key-{uid}", Evaluated(f"ik-{uid}", "G9327", None, "r1"))
                for uid in uids}
    assert got == [expected.get(uid) for uid in asked]
    with StudyLookup(None) as nothing:  # no state file yet
        assert nothing.get("1.2.5") is None


def test_settled_studies_record_what_they_were_evaluated_with(cfg: Config) -> None:
    """A rules change re-evaluates every study; those with nothing to send record the new rules
    key, so the export after finds nothing new without evaluating them again."""
    records = corpus(6)
    export_batch(cfg, lambda: iter(records))
    path = state_path(cfg)
    db = sqlite3.connect(path)
    try:
        db.execute("UPDATE studies SET input_key = 'from-other-rules', rules_key = 'other'")
        db.commit()
    finally:
        db.close()
    again = export_batch(cfg, lambda: iter(records))
    assert again.batch_id is None and again.studies_seen == 6
    key = rules_from_config(cfg).key
    assert dump(path, "SELECT DISTINCT rules_key FROM studies") == [(key,)]
    assert dump(path, "SELECT COUNT(*) FROM studies WHERE input_key = 'from-other-rules'") == [(0,)]


def test_a_preview_reads_a_schema_3_state_without_migrating_it(cfg: Config, tmp_path: Path) -> None:
    records = corpus(8)
    first = export_batch(cfg, lambda: iter(records))
    path = state_path(cfg)
    as_schema_3(path)
    before = dump(path, "SELECT * FROM studies ORDER BY 1")
    preview = export_batch(cfg, lambda: iter(records), out_dir=tmp_path / "preview")
    assert preview.batch_id is None and preview.already_submitted == first.registry_studies
    records[1] = synthetic_study(1, objects=2)
    preview = export_batch(cfg, lambda: iter(records), out_dir=tmp_path / "preview")
    assert (preview.registry_studies, preview.registry_resubmitted, preview.flag_rows) == (1, 1, 0)
    assert dump(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]
    assert dump(path, "SELECT * FROM studies ORDER BY 1") == before
