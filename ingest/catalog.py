"""The study catalog: embedded SQLite (WAL), versioned schema, merge on arrival.

Tables (schema version 2; a catalog of version 1 is migrated when the listener or an import opens it):

* ``received``   -- one row per object taken into the spool (listener or import), in
  received order; ``state`` is ``spooled`` until processed, then ``done``
  (``importing`` while an ``import`` run processes it itself).
* ``objects``    -- one row per usable dose object (key: SOP Instance UID) with its
  extracted record as JSON, the SHA-256 of its bytes and where its bytes are kept, and
  (since version 2) ``record_key``, a hash of the extracted record, so that a re-send whose
  bytes differ but whose content is the same changes nothing.
* ``quarantine`` -- objects that could not be used (key: SHA-256 of the bytes).
* ``studies``    -- the merged study record (JSON) per Study Instance UID, re-merged
  from its objects in received order (``dosereg.extract.merge_study``) on every change.
* ``events``     -- the merged study's events, one row each, for ad-hoc SQL.

Verdicts (completeness, flags) are not stored: they are computed when a record is read.
The spool files are the durable truth for anything not yet processed, so the catalog
runs with ``synchronous=NORMAL``: a power cut can lose the last catalog rows but never
an acknowledged object (the listener re-processes whatever is still in the spool).
The catalog file and its -wal/-shm are owner-only (0600): they hold patient data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from dosereg.conf.fsutil import PRIVATE_FILE_MODE, create_private, private_dir, utc_now
from dosereg.extract import StudyRecord, merge_study
from dosereg.extract.model import _Record

_GENERIC_TO_DICT = _Record.to_dict

log = logging.getLogger("dosereg.ingest.catalog")

SCHEMA_VERSION = 2
CATALOG_NAME = "catalog.sqlite"

# Each entry migrates the schema from version i to i + 1.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL,
        applied_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS received (
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
    );
    CREATE INDEX IF NOT EXISTS received_state ON received(state, id);
    CREATE INDEX IF NOT EXISTS received_sop ON received(sop_instance_uid);
    CREATE TABLE IF NOT EXISTS objects (
        sop_instance_uid TEXT PRIMARY KEY,
        study_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT,
        sha256 TEXT,
        raw_path TEXT,
        received_at TEXT,
        seq INTEGER NOT NULL,
        record_json TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS objects_study ON objects(study_instance_uid, seq);
    CREATE INDEX IF NOT EXISTS objects_sha ON objects(sha256);
    CREATE INDEX IF NOT EXISTS objects_seq ON objects(seq);
    CREATE TABLE IF NOT EXISTS quarantine (
        sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        sop_instance_uid TEXT,
        error_code TEXT NOT NULL,
        message TEXT NOT NULL,
        received_at TEXT,
        path TEXT
    );
    CREATE TABLE IF NOT EXISTS studies (
        study_instance_uid TEXT PRIMARY KEY,
        n_objects INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        record_json TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS events (
        study_instance_uid TEXT NOT NULL,
        position INTEGER NOT NULL,
        irradiation_event_uid TEXT,
        acquisition_protocol TEXT,
        acquisition_type TEXT,
        ctdivol_mGy REAL,
        dlp_mGycm REAL,
        PRIMARY KEY (study_instance_uid, position)
    ) WITHOUT ROWID;
    """,
    # 2: identical content = identical extracted record (a re-send through another
    # sender re-encodes the file meta and may re-encode the dataset)
    """
    ALTER TABLE objects ADD COLUMN record_key TEXT;
    """,
]


def _fill_record_keys(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT sop_instance_uid, record_json FROM objects WHERE record_key IS NULL").fetchall()
    conn.executemany(
        "UPDATE objects SET record_key = ? WHERE sop_instance_uid = ?",
        [(_key(json.loads(text)), uid) for uid, text in rows],
    )


# Data migrations run after the schema script of the same version (Python, same transaction).
_FILLS: dict[int, tuple[Any, ...]] = {2: (_fill_record_keys,)}


class CatalogError(Exception):
    """The catalog cannot be opened or is of an unknown (newer) schema."""


class CatalogBusyError(CatalogError):
    """Another writer held the catalog's write lock for too long: worth retrying later."""


def _dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))


_FIELDS: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({type(None), str, int, float, bool})


def _as_dict(obj: Any) -> Any:
    """``record.to_dict()``, faster: field names cached per class (bulk loads are dominated by it).

    Same result as the model's generic ``to_dict``; a class with its own ``to_dict`` is asked.
    """
    cls = type(obj)
    if cls in _SCALARS:
        return obj
    names = _FIELDS.get(cls)
    if names is None:
        if is_dataclass(obj) and getattr(cls, "to_dict", None) is _GENERIC_TO_DICT:
            names = _FIELDS[cls] = tuple(f.name for f in fields(obj))
        elif isinstance(obj, (list, tuple)):
            return [_as_dict(v) for v in obj]
        elif hasattr(obj, "to_dict"):
            return obj.to_dict()
        else:
            return obj
    return {n: _as_dict(getattr(obj, n)) for n in names}


def _key(d: dict[str, Any]) -> str:
    plain = dict(d)
    plain["source_file"] = None
    plain["dose_objects"] = [{**ref, "received_at": None} for ref in d.get("dose_objects") or ()]
    return hashlib.sha256(_dumps(plain).encode("utf-8")).hexdigest()


def record_key(record: StudyRecord) -> str:
    """Identity of an object's content: its record without when/where it was received."""
    return _key(_as_dict(record))


def object_uid(record: StudyRecord) -> str:
    """The SOP Instance UID of a single-object record."""
    if not record.dose_objects:
        raise ValueError("record has no dose object (no SOP Instance UID)")
    return str(record.dose_objects[0].sop_instance_uid)


class Catalog:
    """The SQLite catalog. Thread-safe: one connection guarded by a lock."""

    def __init__(self, path: Path, readonly: bool = False, autocheckpoint: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        try:
            if readonly:
                if not self.path.exists():
                    # Nothing received yet: an empty catalog, not an error.
                    self._conn = sqlite3.connect(":memory:", check_same_thread=False)
                    self._conn.executescript(_MIGRATIONS[0])
                else:
                    self._conn = sqlite3.connect(
                        f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                        timeout=30,
                    )
                    self._conn.execute("PRAGMA busy_timeout = 30000")
                    self._check_version()
            else:
                _private_catalog_files(self.path)
                self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30,
                                             isolation_level=None)
                # Writers wait for each other in _begin() with sub-millisecond retries: SQLite's
                # own busy handler sleeps in steps of several milliseconds, which would show
                # in the C-STORE round-trip when the processing process holds the write lock.
                self._conn.execute("PRAGMA busy_timeout = 0")
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                if not autocheckpoint:  # the listener: WAL checkpoints (with fsync) happen elsewhere
                    self._conn.execute("PRAGMA wal_autocheckpoint = 0")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._migrate()
        except sqlite3.Error as exc:
            raise CatalogError(f"{self.path}: cannot open the catalog: {exc}") from None

    def _rollback(self) -> None:
        """Undo the open transaction, if there still is one; never raises over the real error.

        SQLite rolls a transaction back by itself on some errors (SQLITE_FULL, SQLITE_IOERR,
        ...): a second ROLLBACK would fail with "cannot rollback - no transaction is active"
        and hide the disk-full error that matters. Called from ``except`` blocks that re-raise.
        """
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("%s: rollback after a failed write failed too: %s", self.path, exc)

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, retrying briefly while another writer holds the lock (up to 60 s)."""
        delay = 0.0001
        deadline = time.monotonic() + 60
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise CatalogBusyError(f"{self.path}: catalog locked by another writer for 60 s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.005)

    # -- schema -----------------------------------------------------------------------
    def _user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self) -> None:
        version = self._user_version()
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path}: catalog schema version {version} is newer than this dosereg ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path}: catalog schema version {version} needs migrating; run `dosereg listen` "
                "or `dosereg import` once"
            )

    def _migrate(self) -> None:
        with self._lock:
            version = self._user_version()
            if version > SCHEMA_VERSION:
                raise CatalogError(
                    f"{self.path}: catalog schema version {version} is newer than this dosereg "
                    f"({SCHEMA_VERSION})"
                )
            while version < SCHEMA_VERSION:
                self._begin()
                version = self._user_version()  # another process may have migrated meanwhile
                if version >= SCHEMA_VERSION:
                    self._conn.execute("COMMIT")
                    break
                script = _MIGRATIONS[version]
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    for fill in _FILLS.get(version + 1, ()):
                        fill(self._conn)
                    version += 1
                    self._conn.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, utc_now())
                    )
                    self._conn.execute(f"PRAGMA user_version = {version}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                log.info("catalog %s migrated to schema version %d", self.path, version)

    @property
    def schema_version(self) -> int:
        return self._user_version()

    def _next_seq(self) -> int:
        row = self._conn.execute("SELECT MAX(seq) FROM objects").fetchone()
        return int(row[0] or 0) + 1

    # -- reading ----------------------------------------------------------------------
    def iter_studies(self) -> Iterator[StudyRecord]:
        """Merged study records ordered by Study Instance UID."""
        cur = self._conn.execute("SELECT record_json FROM studies ORDER BY study_instance_uid")
        try:
            while True:
                rows = cur.fetchmany(500)
                if not rows:
                    break
                for (text,) in rows:
                    yield StudyRecord.from_dict(json.loads(text))
        finally:
            try:
                cur.close()
            except sqlite3.ProgrammingError:  # the catalog was closed before the iterator
                pass

    def get_study(self, uid: str) -> StudyRecord | None:
        row = self._conn.execute(
            "SELECT record_json FROM studies WHERE study_instance_uid = ?", (uid,)
        ).fetchone()
        return StudyRecord.from_dict(json.loads(row[0])) if row else None

    def count_studies(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0])

    def count_objects(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0])

    def object_rows(self) -> list[dict[str, Any]]:
        """Every usable object (without its record JSON), in received order."""
        cur = self._conn.execute(
            "SELECT sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path, received_at, seq "
            "FROM objects ORDER BY seq"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def received_rows(self) -> list[dict[str, Any]]:
        """Everything taken into the spool, in received order."""
        cur = self._conn.execute("SELECT * FROM received ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def quarantine_rows(self) -> list[dict[str, Any]]:
        cur = self._conn.execute("SELECT * FROM quarantine ORDER BY received_at, name")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def known_sha256(self, sha256: str) -> str | None:
        """``"object"`` or ``"quarantine"`` when bytes with this hash are already kept."""
        if self._conn.execute("SELECT 1 FROM objects WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone():
            return "object"
        if self._conn.execute("SELECT 1 FROM quarantine WHERE sha256 = ?", (sha256,)).fetchone():
            return "quarantine"
        return None

    def quarantine_path(self, sha256: str) -> str | None:
        row = self._conn.execute("SELECT path FROM quarantine WHERE sha256 = ?", (sha256,)).fetchone()
        return row[0] if row else None

    # -- the spool's ledger -------------------------------------------------------------
    def record_received(self, *, name: str, sha256: str, sop_instance_uid: str | None,
                        sop_class_uid: str | None, calling_ae_title: str | None, source: str | None,
                        received_at: str, state: str = "spooled") -> int:
        """Note an object just made durable in the spool; returns its received id.

        ``state`` is ``spooled`` (the listener's processing process takes it) or
        ``importing`` (an ``import`` run processes it itself; if that run dies, the next
        start finds the file in the spool and notes it ``spooled`` again).
        """
        with self._lock:
            self._begin()
            try:
                cur = self._conn.execute(
                    "INSERT INTO received (name, sha256, sop_instance_uid, sop_class_uid, calling_ae_title, "
                    "source, received_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET state = excluded.state RETURNING id",
                    (name, sha256, sop_instance_uid, sop_class_uid, calling_ae_title, source, received_at, state),
                )
                row = cur.fetchone()
                cur.close()
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return int(row[0])

    def pending(self) -> list[dict[str, Any]]:
        """Received but not yet processed, in received order."""
        cur = self._conn.execute("SELECT * FROM received WHERE state = 'spooled' ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def received_state_by_name(self, name: str) -> str | None:
        row = self._conn.execute("SELECT state FROM received WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def importing(self) -> list[dict[str, Any]]:
        """Objects an ``import`` run took in and is processing itself (or was, until it died)."""
        cur = self._conn.execute("SELECT * FROM received WHERE state = 'importing' ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def adopt(self, received_id: int) -> bool:
        """An ``importing`` object whose import is gone becomes ``spooled``; False if it changed meanwhile."""
        with self._lock:
            self._begin()
            try:
                cur = self._conn.execute(
                    "UPDATE received SET state = 'spooled' WHERE id = ? AND state = 'importing'", (received_id,)
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return cur.rowcount == 1

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._begin()
            try:
                self._conn.execute(sql, args)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def mark_processed(self, received_id: int, outcome: str) -> None:
        self._write("UPDATE received SET state = 'done', outcome = ? WHERE id = ?", (outcome, received_id))

    def mark_lost(self, received_id: int) -> bool:
        """A spooled object whose file is gone; False when another process finished it meanwhile."""
        with self._lock:
            self._begin()
            try:
                cur = self._conn.execute(
                    "UPDATE received SET state = 'done', outcome = 'lost' WHERE id = ? AND state != 'done'",
                    (received_id,),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return cur.rowcount == 1

    def received_state(self, received_id: int) -> str | None:
        row = self._conn.execute("SELECT state FROM received WHERE id = ?", (received_id,)).fetchone()
        return row[0] if row else None

    # -- writing ------------------------------------------------------------------------
    def add_quarantined(self, *, sha256: str, name: str, sop_instance_uid: str | None, error_code: str,
                        message: str, received_at: str | None, path: str | None,
                        received_id: int | None = None) -> str:
        """Record an unusable object; ``"new"`` or ``"duplicate"`` (same bytes already kept)."""
        with self._lock:
            self._begin()
            try:
                cur = self._conn.execute(
                    "INSERT INTO quarantine (sha256, name, sop_instance_uid, error_code, message, received_at, "
                    "path) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO NOTHING",
                    (sha256, name, sop_instance_uid, error_code, message, received_at, path),
                )
                outcome = "new" if cur.rowcount == 1 else "duplicate"
                if received_id is not None:
                    self._conn.execute(
                        "UPDATE received SET state = 'done', outcome = ? WHERE id = ?",
                        (f"quarantined:{error_code}" if outcome == "new" else "duplicate", received_id),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return outcome

    def add_object(self, record: StudyRecord, raw_path: str | None = None,
                   content_sha256: str | None = None, received_id: int | None = None) -> str:
        """Add one extracted object and re-merge its study: ``new``, ``duplicate`` or ``replaced``.

        Same SOP Instance UID with identical content (same SHA-256, or the same record
        when no hash is given) changes nothing; different content replaces the earlier
        object (last received wins, logged). The merge is computed before the write lock
        is taken and the write re-checks that the study did not change meanwhile.
        """
        if record.error is not None:
            raise ValueError(f"cannot catalog an error record ({record.error.code}); quarantine it")
        study = record.study_instance_uid
        if not study:
            raise ValueError("record has no Study Instance UID")
        sop_uid = object_uid(record)
        ref = record.dose_objects[0]
        d = _as_dict(record)
        text, key = _dumps(d), _key(d)
        with self._lock:
            for _attempt in range(50):
                row = self._conn.execute(
                    "SELECT sha256, record_key, study_instance_uid, seq FROM objects WHERE sop_instance_uid = ?",
                    (sop_uid,),
                ).fetchone()
                if row is not None:
                    same = (content_sha256 is not None and row[0] == content_sha256) or row[1] == key
                    if not same and row[1] is None:  # bulk-loaded: no key stored yet
                        stored = self._conn.execute(
                            "SELECT record_json FROM objects WHERE sop_instance_uid = ?", (sop_uid,)
                        ).fetchone()
                        same = stored is not None and _key(json.loads(stored[0])) == key
                    if same:
                        if received_id is not None:
                            self._write("UPDATE received SET state = 'done', outcome = 'duplicate' WHERE id = ?",
                                        (received_id,))
                        return "duplicate"
                outcome = "new" if row is None else "replaced"
                # Merge outside the write lock (parsing JSON and merging is the slow part).
                snapshot = self._study_snapshot(study)
                others = [
                    StudyRecord.from_dict(json.loads(t))
                    for (t,) in self._conn.execute(
                        "SELECT record_json FROM objects WHERE study_instance_uid = ? AND sop_instance_uid != ? "
                        "ORDER BY seq", (study, sop_uid),
                    )
                ]
                merged = merge_study([*others, record])
                study_row, event_rows = self._study_rows(study, len(others) + 1, merged,
                                                         text if merged is record else None)
                self._begin()
                try:
                    again = self._conn.execute(
                        "SELECT sha256, record_key, study_instance_uid, seq FROM objects "
                        "WHERE sop_instance_uid = ?", (sop_uid,),
                    ).fetchone()
                    if again != row or self._study_snapshot(study) != snapshot:
                        self._rollback()
                        continue  # another writer changed this study: merge again
                    seq = self._next_seq()
                    self._conn.execute(
                        "INSERT INTO objects (sop_instance_uid, study_instance_uid, sop_class_uid, sha256, "
                        "raw_path, received_at, seq, record_json, record_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(sop_instance_uid) DO UPDATE SET study_instance_uid = excluded.study_instance_uid, "
                        "sop_class_uid = excluded.sop_class_uid, sha256 = excluded.sha256, "
                        "raw_path = excluded.raw_path, received_at = excluded.received_at, seq = excluded.seq, "
                        "record_json = excluded.record_json, record_key = excluded.record_key",
                        (sop_uid, study, ref.sop_class_uid, content_sha256, raw_path, ref.received_at, seq, text,
                         key),
                    )
                    self._put_study(study, study_row, event_rows)
                    if row is not None and row[2] != study:
                        self._remerge(row[2])  # the object moved to another study (rare)
                    if received_id is not None:
                        self._conn.execute(
                            "UPDATE received SET state = 'done', outcome = ? WHERE id = ?", (outcome, received_id)
                        )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                if outcome == "replaced":
                    log.warning("object %s received again with different content: the newer replaces the older",
                                sop_uid)
                return outcome
        raise CatalogError(f"{self.path}: study {study} kept changing while object {sop_uid} was merged")

    def _study_snapshot(self, study: str) -> list[tuple[Any, ...]]:
        return self._conn.execute(
            "SELECT sop_instance_uid, seq, sha256 FROM objects WHERE study_instance_uid = ? ORDER BY seq", (study,)
        ).fetchall()

    @staticmethod
    def _study_rows(uid: str, n: int, rec: StudyRecord,
                    text: str | None = None) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        study_row = (uid, n, utc_now(), text if text is not None else _dumps(_as_dict(rec)))
        event_rows = [
            (uid, i, ev.irradiation_event_uid, ev.acquisition_protocol, ev.acquisition_type, ev.ctdivol_mGy,
             ev.dlp_mGycm)
            for i, ev in enumerate(rec.events)
        ]
        return study_row, event_rows

    def _put_study(self, uid: str, study_row: tuple[Any, ...], event_rows: list[tuple[Any, ...]]) -> None:
        self._conn.execute("DELETE FROM events WHERE study_instance_uid = ?", (uid,))
        self._put_rows([study_row], event_rows)

    def _put_rows(self, study_rows: list[tuple[Any, ...]], event_rows: list[tuple[Any, ...]]) -> None:
        self._conn.executemany(
            "INSERT INTO studies (study_instance_uid, n_objects, updated_at, record_json) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(study_instance_uid) DO UPDATE SET n_objects = excluded.n_objects, "
            "updated_at = excluded.updated_at, record_json = excluded.record_json",
            study_rows,
        )
        self._conn.executemany(
            "INSERT OR REPLACE INTO events (study_instance_uid, position, irradiation_event_uid, "
            "acquisition_protocol, acquisition_type, ctdivol_mGy, dlp_mGycm) VALUES (?, ?, ?, ?, ?, ?, ?)",
            event_rows,
        )

    def _remerge(self, study_uid: str) -> None:
        """Re-merge a study from its objects (inside a write transaction)."""
        rows = self._conn.execute(
            "SELECT record_json FROM objects WHERE study_instance_uid = ? ORDER BY seq", (study_uid,)
        ).fetchall()
        if not rows:
            self._conn.execute("DELETE FROM events WHERE study_instance_uid = ?", (study_uid,))
            self._conn.execute("DELETE FROM studies WHERE study_instance_uid = ?", (study_uid,))
            return
        records = [StudyRecord.from_dict(json.loads(r[0])) for r in rows]
        self._put_study(study_uid, *self._study_rows(study_uid, len(records), merge_study(records)))

    def add_objects(self, records: Iterable[StudyRecord]) -> None:
        """Bulk load in one transaction (no per-object fsync); last one wins per SOP Instance UID."""
        records = list(records)
        for r in records:
            if r.error is not None or not r.study_instance_uid or not r.dose_objects:
                raise ValueError("add_objects takes usable single-object records with a study and SOP UID")
        groups: dict[str, list[StudyRecord]] = {}
        for r in records:
            groups.setdefault(str(r.study_instance_uid), []).append(r)
        texts = [_dumps(_as_dict(r)) for r in records]
        with self._lock:
            self._begin()
            try:
                seq = self._next_seq()
                rows = []
                # record_key is left NULL (computed on demand when the object is sent again)
                for i, (r, text) in enumerate(zip(records, texts, strict=True)):
                    ref = r.dose_objects[0]
                    rows.append((ref.sop_instance_uid, r.study_instance_uid, ref.sop_class_uid, None, None,
                                 ref.received_at, seq + i, text, None))
                self._conn.executemany(
                    "INSERT OR REPLACE INTO objects (sop_instance_uid, study_instance_uid, sop_class_uid, "
                    "sha256, raw_path, received_at, seq, record_json, record_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                existing = {uid for (uid,) in self._conn.execute("SELECT study_instance_uid FROM studies")}
                texts_by_id = {id(r): t for r, t in zip(records, texts, strict=True)}
                study_rows: list[tuple[Any, ...]] = []
                event_rows: list[tuple[Any, ...]] = []
                for uid, group in groups.items():
                    if uid in existing or len(group) > 1:
                        self._remerge(uid)
                    else:
                        merged = merge_study(group)
                        srow, erows = self._study_rows(uid, 1, merged, texts_by_id.get(id(merged)))
                        study_rows.append(srow)
                        event_rows += erows
                self._put_rows(study_rows, event_rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for readers or writers)."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.OperationalError as exc:  # busy: the next one will do it
                log.debug("checkpoint skipped: %s", exc)

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _private_catalog_files(path: Path) -> None:
    """The catalog and its -wal/-shm owner-only: created 0600 before SQLite opens it.

    SQLite gives its -wal and -shm files the database file's mode. A catalog left wider by
    an earlier version (0644) is tightened, with a line in the log.
    """
    private_dir(path.parent)
    if create_private(path):
        return
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = p.stat()
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(p, PRIVATE_FILE_MODE)
                log.warning("%s was readable by others; now owner-only (it holds patient data)", p)
        except FileNotFoundError:
            pass


def catalog_path(data_dir: Path) -> Path:
    return Path(data_dir) / CATALOG_NAME
