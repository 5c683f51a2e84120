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

SCHEMA_VERSION = 2  # 2: studies.input_key
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
    exported_at TEXT,
    input_key TEXT               -- record + rules the study was last evaluated with, once settled
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
    #: the record and rules the study was last evaluated with, in an export that settled it
    #: (afterwards its registry fingerprint and flags key are what that evaluation gives)
    input_key: str | None = None


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
            elif int(row[0]) < SCHEMA_VERSION:
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(studies)")}
                if "input_key" not in columns:  # 1 -> 2
                    self._db.execute("ALTER TABLE studies ADD COLUMN input_key TEXT")
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

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
        return {uid: StudyState(fp, key, ik) for uid, fp, key, ik in self._db.execute(
            "SELECT study_uid, registry_fingerprint, flags_key, input_key FROM studies")}

    def settle(self, rows: list[tuple[str, str]]) -> None:
        """Set the input key of studies (uid, input key) evaluated with nothing to send."""
        self._db.executemany("UPDATE studies SET input_key = ?2 WHERE study_uid = ?1", rows)

    def record_study(self, uid: str, batch_id: str, exported_at: str,
                     registry_fingerprint: str | None, flags_key: str | None) -> None:
        """Record that ``uid`` went into ``batch_id`` (to the registry, to billing or both)."""
        self.record_studies([(uid, registry_fingerprint, flags_key, batch_id, exported_at)])

    def record_studies(self, rows: list[tuple[str, str | None, str | None, str, str]] |
                       list[tuple[str, str | None, str | None, str, str, str | None]]) -> None:
        """:meth:`record_study` for many (uid, registry fingerprint, flags key, batch id, exported at
        [, input key])."""
        self._db.executemany(
            """INSERT INTO studies (study_uid, registry_fingerprint, registry_batch_id, flags_key,
                                    flags_batch_id, batch_id, exported_at, input_key)
               VALUES (?1, ?2, CASE WHEN ?2 IS NULL THEN NULL ELSE ?4 END, ?3,
                       CASE WHEN ?3 IS NULL THEN NULL ELSE ?4 END, ?4, ?5, ?6)
               ON CONFLICT(study_uid) DO UPDATE SET
                 input_key = ?6,
                 registry_fingerprint = COALESCE(?2, registry_fingerprint),
                 registry_batch_id = CASE WHEN ?2 IS NULL THEN registry_batch_id ELSE ?4 END,
                 flags_key = COALESCE(?3, flags_key),
                 flags_batch_id = CASE WHEN ?3 IS NULL THEN flags_batch_id ELSE ?4 END,
                 batch_id = ?4, exported_at = ?5""",
            [row if len(row) == 6 else (*row, None) for row in rows],
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
