"""Export state: what was submitted, when, and what billing was last told.

Kept in its own SQLite file ``<data_dir>/export-state.sqlite`` (never in the catalog).
One export is one write transaction: the batch's rows are recorded while its files are
written, and committed only after the files are renamed into place, so a crash leaves
either a complete, recorded batch or nothing recorded (the studies are then exported
again in the next batch). The write lock also keeps two exports from running at once.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from dosereg.config import Config

SCHEMA_VERSION = 1
STATE_FILE = "export-state.sqlite"

_SCHEMA = """
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
    flag_rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    registry_fingerprint TEXT,   -- content fingerprint when last submitted to the registry
    registry_batch_id TEXT,
    flags_key TEXT,              -- hash of the flags row billing last received
    flags_batch_id TEXT,
    batch_id TEXT,               -- the last batch the study was part of (registry or flags)
    exported_at TEXT
);
"""


class ExportBusyError(RuntimeError):
    """Another export holds the state file."""


def state_path(cfg: Config) -> Path:
    return cfg.data_dir / STATE_FILE


@dataclass(frozen=True)
class StudyState:
    registry_fingerprint: str | None
    flags_key: str | None


class ExportState:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=5, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(f"{path}: export state schema {row[0]} is newer than this dosereg "
                                   f"understands ({SCHEMA_VERSION})")

    def close(self) -> None:
        self._db.close()

    # -- one export = one transaction -------------------------------------------------
    def begin(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise ExportBusyError(f"{self.path}: another export is running (the state file is locked)") from None
            raise

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def next_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()
        return int(row[0])

    def last_batch(self) -> tuple[str, str] | None:
        row = self._db.execute("SELECT batch_id, created_at FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def study(self, uid: str) -> StudyState | None:
        row = self._db.execute(
            "SELECT registry_fingerprint, flags_key FROM studies WHERE study_uid=?", (uid,)
        ).fetchone()
        return StudyState(row[0], row[1]) if row else None

    def studies(self) -> dict[str, StudyState]:
        """Every study's state at once (an export looks up each study of the catalog)."""
        return {uid: StudyState(fp, key) for uid, fp, key in self._db.execute(
            "SELECT study_uid, registry_fingerprint, flags_key FROM studies")}

    def record_study(self, uid: str, batch_id: str, exported_at: str,
                     registry_fingerprint: str | None, flags_key: str | None) -> None:
        """Record that ``uid`` went into ``batch_id`` (to the registry, to billing or both)."""
        self.record_studies([(uid, registry_fingerprint, flags_key, batch_id, exported_at)])

    def record_studies(self, rows: list[tuple[str, str | None, str | None, str, str]]) -> None:
        """:meth:`record_study` for many (uid, registry fingerprint, flags key, batch id, exported at)."""
        self._db.executemany(
            """INSERT INTO studies (study_uid, registry_fingerprint, registry_batch_id, flags_key,
                                    flags_batch_id, batch_id, exported_at)
               VALUES (?1, ?2, CASE WHEN ?2 IS NULL THEN NULL ELSE ?4 END, ?3,
                       CASE WHEN ?3 IS NULL THEN NULL ELSE ?4 END, ?4, ?5)
               ON CONFLICT(study_uid) DO UPDATE SET
                 registry_fingerprint = COALESCE(?2, registry_fingerprint),
                 registry_batch_id = CASE WHEN ?2 IS NULL THEN registry_batch_id ELSE ?4 END,
                 flags_key = COALESCE(?3, flags_key),
                 flags_batch_id = CASE WHEN ?3 IS NULL THEN flags_batch_id ELSE ?4 END,
                 batch_id = ?4, exported_at = ?5""",
            rows,
        )

    def record_batch(self, batch_id: str, seq: int, created_at: str, facility_id: str, out_dir: str,
                     studies_seen: int, registry_studies: int, registry_events: int, flag_rows: int) -> None:
        self._db.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, batch_id, created_at, facility_id, out_dir, studies_seen, registry_studies,
             registry_events, flag_rows),
        )

    def marks(self) -> dict[str, dict[str, str]]:
        return {
            uid: {"batch_id": batch_id, "exported_at": exported_at}
            for uid, batch_id, exported_at in self._db.execute(
                "SELECT study_uid, batch_id, exported_at FROM studies WHERE batch_id IS NOT NULL"
            )
        }
