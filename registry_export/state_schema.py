"""Export state's tables and their migrations (the reference for :mod:`.state`'s description).

Schema versions: 2: ``studies.input_key``; 3: batch state, membership, files, audit log, secret
fingerprint; 4: ``last_code``, ``source_version`` and ``rules_key`` columns (the ``:G9327`` suffix
of input keys becomes ``last_code``); 5: the batch lifecycle (:mod:`.batches`: held studies,
deliveries, receipts; earlier batches are ``legacy``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from . import batches

SCHEMA_VERSION = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    facility_id TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    studies_seen INTEGER NOT NULL,
    registry_studies INTEGER NOT NULL,
    registry_events INTEGER NOT NULL,
    flag_rows INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'exported',
    state_changed_at TEXT,
    staging_dir TEXT,              -- where the files wait until placed (intent)
    registry_dir TEXT,             -- the registry folder, once placed (NULL: the batch has none)
    secret_fingerprint TEXT,       -- of the secret its pseudonyms were made with
    pseudonyms_changed_at TEXT     -- the last `dosereg secret change` before it, if any
);
CREATE INDEX IF NOT EXISTS batches_state ON batches (state);
CREATE TABLE IF NOT EXISTS batch_studies (
    batch_id TEXT NOT NULL REFERENCES batches (batch_id),
    study_uid TEXT NOT NULL,
    to_registry INTEGER NOT NULL,  -- 1: the study's record is in the registry files
    to_flags INTEGER NOT NULL,     -- 1: the study has a billing flags row
    registry_fingerprint TEXT,     -- content fingerprint submitted (when to_registry)
    flags_key TEXT,                -- key of the flags row (when to_flags)
    input_key TEXT,                -- record + rules it was evaluated with
    last_code TEXT,                -- the registry code that evaluation gave
    source_version TEXT,           -- the source's version key of the record, when the source has them
    rules_key TEXT,                -- the rules it was evaluated with
    PRIMARY KEY (batch_id, study_uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_studies_study ON batch_studies (study_uid);
CREATE TABLE IF NOT EXISTS batch_files (
    batch_id TEXT NOT NULL REFERENCES batches (batch_id),
    kind TEXT NOT NULL,            -- 'registry' | 'flags' | 'report'
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (batch_id, kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    registry_fingerprint TEXT,   -- content fingerprint when last submitted to the registry
    registry_batch_id TEXT,
    flags_key TEXT,              -- hash of the flags row billing last received
    flags_batch_id TEXT,
    batch_id TEXT,               -- the last batch the study was part of (registry or flags)
    exported_at TEXT,
    input_key TEXT,              -- record + rules the study was last evaluated with, once settled
    last_code TEXT,              -- the registry code of that evaluation (NULL: not known)
    source_version TEXT,         -- the source's version key of that record (NULL: none given)
    rules_key TEXT               -- the rules key of that evaluation
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    batch_id TEXT,               -- NULL for site-wide actions (secret change, migration)
    action TEXT NOT NULL,
    actor TEXT,                  -- the person (--by, web login); NULL for dosereg itself
    os_user TEXT,
    comment TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_log_append_only_u BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_append_only_d BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"""

_BATCH_COLUMNS_3 = (  # added to `batches` by the migration to schema 3
    "state TEXT NOT NULL DEFAULT 'exported'", "state_changed_at TEXT", "staging_dir TEXT", "registry_dir TEXT",
    "secret_fingerprint TEXT", "pseudonyms_changed_at TEXT",
)
_EVALUATED_COLUMNS_4 = ("last_code TEXT", "source_version TEXT", "rules_key TEXT")  # studies, batch_studies
#: what schema 3 appended to an input key when the study's code was G9327 (schema 4: last_code)
SUBMITTED_SUFFIX_3 = ":G9327"


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """The statements of ``script`` one by one, inside the open transaction (``executescript``
    would commit it first)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                db.execute(pending)
            pending = ""


def _add_columns(db: sqlite3.Connection, table: str, columns: Iterable[str]) -> None:
    """``ALTER TABLE table ADD COLUMN`` for each of ``columns`` (``"name TYPE"``) it lacks."""
    present = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    for column in columns:
        if column.split()[0] not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _suffix_to_last_code(db: sqlite3.Connection) -> None:
    """Schema 3 marked the input key of a study whose code was G9327 with a ``:G9327`` suffix;
    schema 4 keeps the key bare and the code in ``last_code``."""
    n = len(SUBMITTED_SUFFIX_3)
    for table in ("studies", "batch_studies"):
        db.execute(f"UPDATE {table} SET last_code = 'G9327', input_key = substr(input_key, 1, length(input_key) - ?) "
                   f"WHERE input_key LIKE ?", (n, "%" + SUBMITTED_SUFFIX_3))


def create(db: sqlite3.Connection) -> None:
    """The current schema in an empty file, inside the open transaction."""
    _run_script(db, SCHEMA)
    batches.migrate_to_5(db, _run_script, _add_columns)


def migrate(db: sqlite3.Connection, version: int) -> str:
    """An older schema brought to :data:`SCHEMA_VERSION` step by step, inside the open
    transaction; returns what changed, for the one audit entry."""
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    if version < 3:
        _migrate_to_3(db)
    _add_columns(db, "studies", _EVALUATED_COLUMNS_4)
    _add_columns(db, "batch_studies", _EVALUATED_COLUMNS_4)
    _suffix_to_last_code(db)
    batches.migrate_to_5(db, _run_script, _add_columns)
    return (f"export state schema {version} -> {SCHEMA_VERSION}"
            + ("; membership known for each study's last registry and flags batch" if version < 3 else "")
            + ("; the ':G9327' mark of input keys is last_code" if version < 4 else "")
            + "; earlier batches are 'legacy' (never sent) and their studies are offered again")


def _migrate_to_3(db: sqlite3.Connection) -> None:
    """Schema 1 or 2 -> 3: the batches get a state (``exported``: they were placed and recorded),
    the membership of each study's last registry and flags batch is filled in from ``studies``
    (what earlier versions kept; older memberships were not recorded)."""
    _add_columns(db, "studies", ("input_key TEXT",))  # 1 -> 2
    _add_columns(db, "batches", _BATCH_COLUMNS_3)
    _run_script(db, SCHEMA)
    db.execute("""UPDATE batches SET registry_dir = out_dir || '/registry/' || facility_id || '/' || batch_id
                  WHERE registry_studies > 0 AND registry_dir IS NULL""")
    db.execute("""INSERT OR IGNORE INTO batch_studies
                      (batch_id, study_uid, to_registry, to_flags, registry_fingerprint, flags_key, input_key)
                  SELECT registry_batch_id, study_uid, 1, 0, registry_fingerprint, NULL, NULL
                  FROM studies WHERE registry_batch_id IS NOT NULL""")
    db.execute("""INSERT INTO batch_studies
                      (batch_id, study_uid, to_registry, to_flags, registry_fingerprint, flags_key, input_key)
                  SELECT flags_batch_id, study_uid, 0, 1, NULL, flags_key, NULL
                  FROM studies WHERE flags_batch_id IS NOT NULL AND true
                  ON CONFLICT (batch_id, study_uid) DO UPDATE SET to_flags = 1, flags_key = excluded.flags_key""")
