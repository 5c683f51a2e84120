"""The catalog's schema: each version's DDL and data migration, applied in order.

A new catalog runs every migration from version 1 (they are quick on empty tables), so there
is one path to the current schema, whichever version a catalog starts from. Each migration
runs in one write transaction with its ``schema_version`` row and ``user_version``.

Version 3 stores each thing once, compressed (:mod:`.catalog_codec`): ``objects.record`` is
the object's record; ``studies.record`` is the merged study record only when it differs from
the study's one object's record (NULL otherwise: read the object's), and ``studies.version``
is the short key of the merged record (:func:`.catalog_codec.version_key`). Versions 1 and 2
kept the JSON of both, uncompressed (about 10 times the bytes).

Version 4 adds the CT exams without a dose report (``exams``, docs/reconcile.md): one row per
exam the PACS or the RIS knows and no dose object came for, open until a dose object of its
study arrives (a trigger on ``objects`` retires it, whichever path the object took), and
``reconcile_days``, the days a reconcile finished (a backfill resumes after the last one).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from dosereg.conf.fsutil import utc_now

from .catalog_codec import content_key, pack, version_key

log = logging.getLogger("dosereg.ingest.catalog")

SCHEMA_VERSION = 4

_V1 = [
    """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL,
        applied_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS received (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        sha256 TEXT NOT NULL,
        sop_instance_uid TEXT,
        sop_class_uid TEXT,
        calling_ae_title TEXT,
        source TEXT,
        received_at TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'spooled',
        outcome TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS received_state ON received(state, id)",
    "CREATE INDEX IF NOT EXISTS received_sop ON received(sop_instance_uid)",
    """CREATE TABLE IF NOT EXISTS objects (
        sop_instance_uid TEXT PRIMARY KEY,
        study_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT,
        sha256 TEXT,
        raw_path TEXT,
        received_at TEXT,
        seq INTEGER NOT NULL,
        record_json TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS objects_study ON objects(study_instance_uid, seq)",
    "CREATE INDEX IF NOT EXISTS objects_sha ON objects(sha256)",
    "CREATE INDEX IF NOT EXISTS objects_seq ON objects(seq)",
    """CREATE TABLE IF NOT EXISTS quarantine (
        sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        sop_instance_uid TEXT,
        error_code TEXT NOT NULL,
        message TEXT NOT NULL,
        received_at TEXT,
        path TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS studies (
        study_instance_uid TEXT PRIMARY KEY,
        n_objects INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        record_json TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        study_instance_uid TEXT NOT NULL,
        position INTEGER NOT NULL,
        irradiation_event_uid TEXT,
        acquisition_protocol TEXT,
        acquisition_type TEXT,
        ctdivol_mGy REAL,
        dlp_mGycm REAL,
        PRIMARY KEY (study_instance_uid, position)
    ) WITHOUT ROWID""",
]

# 2: identical content = identical extracted record (a re-send through another sender
# re-encodes the file meta and may re-encode the dataset)
_V2 = ["ALTER TABLE objects ADD COLUMN record_key TEXT"]

# 3: each record once, compressed. ``seq`` (received order) is the rowid; a study's objects
# are found through objects_study in received order (the rowid ends each index entry).
# ``studies`` holds small rows (the merged record only for studies of several objects),
# clustered by Study Instance UID: reading studies in UID order is one pass over it.
_V3 = [
    """CREATE TABLE objects_v3 (
        seq INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        study_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT,
        sha256 TEXT,
        raw_path TEXT,
        received_at TEXT,
        record_key TEXT,
        record BLOB NOT NULL
    )""",
    """INSERT INTO objects_v3 (seq, sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path,
                               received_at, record_key, record)
       SELECT seq, sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path, received_at,
              record_key, dosereg_pack(record_json)
       FROM objects ORDER BY seq""",
    """CREATE TABLE studies_v3 (
        study_instance_uid TEXT PRIMARY KEY,
        n_objects INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        version TEXT NOT NULL,
        record BLOB
    ) WITHOUT ROWID""",
    # the merged record is dropped where it is the study's one object's record, byte for byte
    """INSERT INTO studies_v3 (study_instance_uid, n_objects, updated_at, version, record)
       SELECT s.study_instance_uid, s.n_objects, s.updated_at, dosereg_version(s.record_json),
              CASE WHEN (SELECT COUNT(*) FROM objects o WHERE o.study_instance_uid = s.study_instance_uid) = 1
                        AND s.record_json = (SELECT o.record_json FROM objects o
                                             WHERE o.study_instance_uid = s.study_instance_uid)
                   THEN NULL ELSE dosereg_pack(s.record_json) END
       FROM studies s""",
    "DROP TABLE objects",
    "DROP TABLE studies",
    "ALTER TABLE objects_v3 RENAME TO objects",
    "ALTER TABLE studies_v3 RENAME TO studies",
    "CREATE INDEX objects_study ON objects(study_instance_uid)",
    "CREATE INDEX objects_sha ON objects(sha256)",
]

# 4: exams without a dose report; the days a reconcile finished
_V4 = [
    """CREATE TABLE exams (
        id INTEGER PRIMARY KEY,
        study_instance_uid TEXT UNIQUE,
        accession_number TEXT,
        study_date TEXT,
        study_time TEXT,
        study_description TEXT,
        station_name TEXT,
        modality TEXT,
        patient_id TEXT,
        source TEXT NOT NULL CHECK (source IN ('pacs', 'ris')),
        learned_at TEXT NOT NULL,
        retired_at TEXT,
        version TEXT NOT NULL
    )""",
    "CREATE INDEX exams_accession ON exams(accession_number)",
    # the moment any dose object of the study is catalogued (listener, import, reconcile)
    """CREATE TRIGGER exams_retire AFTER INSERT ON objects BEGIN
        UPDATE exams SET retired_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        WHERE study_instance_uid = NEW.study_instance_uid AND retired_at IS NULL;
    END""",
    """CREATE TABLE reconcile_days (
        day TEXT PRIMARY KEY,
        completed_at TEXT NOT NULL,
        ct_studies INTEGER NOT NULL
    ) WITHOUT ROWID""",
]

#: Each entry migrates the schema from version i to i + 1 (statements, then Python fills).
MIGRATIONS: list[list[str]] = [_V1, _V2, _V3, _V4]


def _fill_record_keys(conn: sqlite3.Connection) -> None:
    import json

    rows = conn.execute("SELECT sop_instance_uid, record_json FROM objects WHERE record_key IS NULL").fetchall()
    conn.executemany(
        "UPDATE objects SET record_key = ? WHERE sop_instance_uid = ?",
        [(content_key(json.loads(text)), uid) for uid, text in rows],
    )


# Data migrations run after the statements of the same version (Python, same transaction).
_FILLS: dict[int, tuple[Callable[[sqlite3.Connection], None], ...]] = {2: (_fill_record_keys,)}


def add_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions the migrations call (the stored form is computed in Python)."""
    conn.create_function("dosereg_pack", 1, pack, deterministic=True)
    conn.create_function("dosereg_version", 1, version_key, deterministic=True)


def apply(conn: sqlite3.Connection, version: int) -> int:
    """Run migration ``version`` -> ``version + 1`` inside the caller's transaction; the new version."""
    for statement in MIGRATIONS[version]:
        conn.execute(statement)
    for fill in _FILLS.get(version + 1, ()):
        fill(conn)
    version += 1
    conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, utc_now()))
    conn.execute(f"PRAGMA user_version = {version}")
    return version


def create_in_memory(conn: sqlite3.Connection) -> None:
    """The current schema in an empty (in-memory) database."""
    add_functions(conn)
    version = 0
    while version < SCHEMA_VERSION:
        version = apply(conn, version)


def compact_after_migration(conn: sqlite3.Connection, path: Path) -> None:
    """VACUUM once a migration freed most of the file (version 3 keeps a tenth of the bytes).

    Outside any transaction; readers keep reading meanwhile (WAL). A failure (a disk too full
    for the copy VACUUM writes) leaves the catalog as it is, only larger: logged, not raised.
    """
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0]) * page_size
    total = int(conn.execute("PRAGMA page_count").fetchone()[0]) * page_size
    if free < 1 << 20 or free < total // 4:
        return
    log.info("catalog %s: compacting (%.1f of %.1f MB are free after the migration)", path, free / 1e6, total / 1e6)
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("catalog %s: cannot compact it now (%s); it works as it is, %.1f MB larger than needed",
                    path, exc, free / 1e6)
        return
    size = int(conn.execute("PRAGMA page_count").fetchone()[0]) * page_size
    log.info("catalog %s: compacted to %.1f MB", path, size / 1e6)
