"""The study catalog: embedded SQLite (WAL), versioned schema, merge on arrival.

Tables (schema version 4, :mod:`.catalog_schema`; an older catalog is migrated in place when
the listener or an import opens it):

* ``received``   -- one row per object taken into the spool (listener or import), in
  received order; ``state`` is ``spooled`` until processed, then ``done``
  (``importing`` while an ``import`` run processes it itself).
* ``objects``    -- one row per usable dose object (unique: SOP Instance UID; ``seq``, the
  rowid, is the received order) with its extracted record (compressed JSON,
  :mod:`.catalog_codec`), the SHA-256 of its dataset and where its bytes are kept.
* ``quarantine`` -- objects that could not be used (key: SHA-256 of the bytes).
* ``studies``    -- per Study Instance UID: how many objects, when it last changed, the
  ``version`` key of its merged record, and the merged record itself when the study has
  several objects (a study of one object *is* that object's record: stored once, in
  ``objects``). Re-merged from its objects in received order (``dosereg.extract.merge_study``)
  on every change.
* ``events``     -- the merged study's events, one row each, for ad-hoc SQL.
* ``exams``, ``reconcile_days`` -- CT exams without a dose report and reconcile progress
  (schema 4, :mod:`.catalog_exams`): the open exams are read among the studies.

Verdicts (completeness, flags) are not stored: they are computed when a record is read.
The spool files are the durable truth for anything not yet processed, so the catalog
runs with ``synchronous=NORMAL``: a power cut can lose the last catalog rows but never
an acknowledged object (the listener re-processes whatever is still in the spool).
The catalog file and its -wal/-shm are owner-only (0600): they hold patient data.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dosereg.conf.fsutil import PRIVATE_FILE_MODE, create_private, private_dir, utc_now
from dosereg.extract import StudyRecord, merge_study

from .catalog_codec import (
    StoredRecord,
    content_key,
    pack,
    record_text,
    stored_record,
    unpack,
    unpack_text,
    version_key,
)
from .catalog_exams import ExamsMixin
from .catalog_schema import SCHEMA_VERSION, add_functions, apply, compact_after_migration, create_in_memory

log = logging.getLogger("dosereg.ingest.catalog")

CATALOG_NAME = "catalog.sqlite"
# Page cache of a writing connection (KiB): the indexes a write touches stay in memory for
# longer (SQLite's default is 2 MiB).
_WRITER_CACHE_KIB = 32 * 1024
# A study's record: its own (several objects), else its one object's.
_STUDY_RECORD = (
    "COALESCE(s.record, (SELECT o.record FROM objects o WHERE o.study_instance_uid = s.study_instance_uid "
    "ORDER BY o.seq DESC LIMIT 1))"
)

__all__ = ["CATALOG_NAME", "SCHEMA_VERSION", "Catalog", "CatalogBusyError", "CatalogError", "catalog_path",
           "object_uid"]


class CatalogError(Exception):
    """The catalog cannot be opened or is of an unknown (newer) schema."""


class CatalogBusyError(CatalogError):
    """Another writer held the catalog's write lock for too long: worth retrying later."""


class _StudyChanged(Exception):
    """Another writer changed the study between the merge and the write: merge again."""


def object_uid(record: StudyRecord) -> str:
    """The SOP Instance UID of a single-object record."""
    if not record.dose_objects:
        raise ValueError("record has no dose object (no SOP Instance UID)")
    return str(record.dose_objects[0].sop_instance_uid)


class Catalog(ExamsMixin):
    """The SQLite catalog. Thread-safe: one connection guarded by a lock."""

    def __init__(self, path: Path, readonly: bool = False, autocheckpoint: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        try:
            if readonly:
                if not self.path.exists():
                    # Nothing received yet: an empty catalog, not an error.
                    self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                    create_in_memory(self._conn)
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
                self._conn.execute(f"PRAGMA cache_size = -{_WRITER_CACHE_KIB}")
                if not autocheckpoint:  # the listener: WAL checkpoints (with fsync) happen elsewhere
                    self._conn.execute("PRAGMA wal_autocheckpoint = 0")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._migrate()
        except sqlite3.Error as exc:
            raise CatalogError(f"{self.path}: cannot open the catalog: {exc}") from None

    # -- transactions -------------------------------------------------------------------
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

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back when it raises.

        Holds the connection's lock throughout; a failed COMMIT is rolled back too (unless
        SQLite already did, see :meth:`_rollback`) and its error raised.
        """
        with self._lock:
            self._begin()
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        with self._transaction() as conn:
            return conn.execute(sql, args).rowcount

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
        add_functions(self._conn)
        with self._lock:
            version = self._user_version()
            if version > SCHEMA_VERSION:
                raise CatalogError(
                    f"{self.path}: catalog schema version {version} is newer than this dosereg "
                    f"({SCHEMA_VERSION})"
                )
            migrated = False
            while version < SCHEMA_VERSION:
                with self._transaction() as conn:
                    version = self._user_version()  # another process may have migrated meanwhile
                    if version >= SCHEMA_VERSION:
                        break
                    version = apply(conn, version)
                migrated = True
                log.info("catalog %s migrated to schema version %d", self.path, version)
            if migrated:
                compact_after_migration(self._conn, self.path)

    @property
    def schema_version(self) -> int:
        return self._user_version()

    # -- reading ----------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of a query, fetched a few hundred at a time (constant memory)."""
        cur = self._conn.execute(sql, args)
        try:
            while True:
                rows = cur.fetchmany(500)
                if not rows:
                    break
                yield from rows
        finally:
            try:
                cur.close()
            except sqlite3.ProgrammingError:  # the catalog was closed before the iterator
                pass

    def iter_studies(self) -> Iterator[StudyRecord]:
        """Merged study records ordered by Study Instance UID, the open exams without a dose
        report among them (:meth:`iter_exams`)."""
        studies = (unpack(blob) for (blob,) in
                   self._rows(f"SELECT {_STUDY_RECORD} FROM studies s ORDER BY s.study_instance_uid"))
        if not self.has_open_exams():
            yield from studies
            return
        yield from heapq.merge(studies, self.iter_exams(), key=lambda r: r.study_instance_uid or "")

    def get_study(self, uid: str) -> StudyRecord | None:
        row = self._conn.execute(f"SELECT {_STUDY_RECORD} FROM studies s WHERE s.study_instance_uid = ?",
                                 (uid,)).fetchone()
        return unpack(row[0]) if row else self.get_exam(uid)

    def study_versions(self) -> Iterator[tuple[str, str]]:
        """(Study Instance UID, version key) of every study, ordered by UID, no record decoded.

        The key is 16 hex digits of the merged record's JSON: it changes whenever the study's
        merged record changes (an object added or replaced), and only then.
        """
        versions = ((str(uid), str(version)) for uid, version in
                    self._rows("SELECT study_instance_uid, version FROM studies ORDER BY study_instance_uid"))
        if not self.has_open_exams():
            yield from versions
            return
        yield from heapq.merge(versions, self.exam_versions())

    def count_studies(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0])

    def count_objects(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0])

    def _dicts(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def object_rows(self) -> list[dict[str, Any]]:
        """Every usable object (without its record), in received order."""
        return self._dicts("SELECT sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path, "
                           "received_at, seq FROM objects ORDER BY seq")

    def objects_from(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        """The usable objects whose ``seq`` (received order) is ``seq`` or later, at most ``limit``,
        without their records: what a follower of the catalog (the dose alerts) reads since the last
        object it saw. ``seq``, ``sop_instance_uid``, ``study_instance_uid``, ``sha256``, ``received_at``:
        an object replaced after the newest one was read may take that one's ``seq`` again, which
        its SOP Instance UID and receipt time tell apart."""
        with self._lock:
            return self._dicts("SELECT seq, sop_instance_uid, study_instance_uid, sha256, received_at FROM objects "
                               "WHERE seq >= ? ORDER BY seq LIMIT ?", (seq, limit))

    def last_object_seq(self) -> int:
        """The ``seq`` of the newest object (0 for none)."""
        with self._lock:
            return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM objects").fetchone()[0])

    def received_rows(self) -> list[dict[str, Any]]:
        """Everything taken into the spool, in received order."""
        return self._dicts("SELECT * FROM received ORDER BY id")

    def quarantine_rows(self) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM quarantine ORDER BY received_at, name")

    def known_sha256(self, sha256: str) -> str | None:
        """``"object"`` or ``"quarantine"`` when bytes with this hash are already kept.

        Safe while another thread writes (an import's take-in threads ask while it stores).
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT 'object' FROM objects WHERE sha256 = ?1 UNION ALL "
                "SELECT 'quarantine' FROM quarantine WHERE sha256 = ?1 LIMIT 1", (sha256,)).fetchone()
        return str(row[0]) if row else None

    def quarantined_by_sop(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        """The quarantine rows of one SOP Instance UID (the same object may arrive in several encodings)."""
        return self._dicts("SELECT * FROM quarantine WHERE sop_instance_uid = ? ORDER BY received_at",
                           (sop_instance_uid,))

    def received_by_name(self, name: str) -> dict[str, Any] | None:
        """The ledger row of the spool file ``name`` (its sender, its source), if any."""
        rows = self._dicts("SELECT * FROM received WHERE name = ? ORDER BY id LIMIT 1", (name,))
        return rows[0] if rows else None

    def remove_quarantined(self, sha256: str) -> bool:
        """Forget a quarantined object (it is being reprocessed or purged); False if it was not there."""
        return self._write("DELETE FROM quarantine WHERE sha256 = ?", (sha256,)) == 1

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
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO received (name, sha256, sop_instance_uid, sop_class_uid, calling_ae_title, "
                "source, received_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET state = excluded.state RETURNING id",
                (name, sha256, sop_instance_uid, sop_class_uid, calling_ae_title, source, received_at, state),
            )
            row = cur.fetchone()
            cur.close()
        return int(row[0])

    def pending(self) -> list[dict[str, Any]]:
        """Received but not yet processed, in received order."""
        return self._dicts("SELECT * FROM received WHERE state = 'spooled' ORDER BY id")

    def received_state_by_name(self, name: str) -> str | None:
        row = self._conn.execute("SELECT state FROM received WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def importing(self) -> list[dict[str, Any]]:
        """Objects an ``import`` run took in and is processing itself (or was, until it died)."""
        return self._dicts("SELECT * FROM received WHERE state = 'importing' ORDER BY id")

    def adopt(self, received_id: int) -> bool:
        """An ``importing`` object whose import is gone becomes ``spooled``; False if it changed meanwhile."""
        return self._write("UPDATE received SET state = 'spooled' WHERE id = ? AND state = 'importing'",
                           (received_id,)) == 1

    def mark_processed(self, received_id: int, outcome: str) -> None:
        self._write("UPDATE received SET state = 'done', outcome = ? WHERE id = ?", (outcome, received_id))

    def mark_lost(self, received_id: int) -> bool:
        """A spooled object whose file is gone; False when another process finished it meanwhile."""
        return self._write("UPDATE received SET state = 'done', outcome = 'lost' WHERE id = ? AND state != 'done'",
                           (received_id,)) == 1

    def received_state(self, received_id: int) -> str | None:
        row = self._conn.execute("SELECT state FROM received WHERE id = ?", (received_id,)).fetchone()
        return row[0] if row else None

    # -- writing ------------------------------------------------------------------------
    def add_quarantined(self, *, sha256: str, name: str, sop_instance_uid: str | None, error_code: str,
                        message: str, received_at: str | None, path: str | None,
                        received_id: int | None = None) -> str:
        """Record an unusable object; ``"new"`` or ``"duplicate"`` (same bytes already kept)."""
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO quarantine (sha256, name, sop_instance_uid, error_code, message, received_at, "
                "path) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO NOTHING",
                (sha256, name, sop_instance_uid, error_code, message, received_at, path),
            )
            outcome = "new" if cur.rowcount == 1 else "duplicate"
            if received_id is not None:
                conn.execute(
                    "UPDATE received SET state = 'done', outcome = ? WHERE id = ?",
                    (f"quarantined:{error_code}" if outcome == "new" else "duplicate", received_id),
                )
        return outcome

    def add_object(self, record: StudyRecord, raw_path: str | None = None,
                   content_sha256: str | None = None, received_id: int | None = None,
                   stored: StoredRecord | None = None) -> str:
        """Add one extracted object and re-merge its study: ``new``, ``duplicate`` or ``replaced``.

        Same SOP Instance UID with identical content (same SHA-256, or the same record but
        for when and where it was received) changes nothing; different content replaces the
        earlier object (last received wins, logged). The merge is computed before the write
        lock is taken and the write re-checks that the study did not change meanwhile.
        ``stored``: ``stored_record(record)``, when the caller has it already.
        """
        if record.error is not None:
            raise ValueError(f"cannot catalog an error record ({record.error.code}); quarantine it")
        study = record.study_instance_uid
        if not study:
            raise ValueError("record has no Study Instance UID")
        sop_uid = object_uid(record)
        ref = record.dose_objects[0]
        if stored is None:
            stored = stored_record(record)
        with self._lock:
            for _attempt in range(50):
                # the object itself (when it was received before, maybe in another study) and its study's objects
                found = self._conn.execute(
                    "SELECT seq, sop_instance_uid, study_instance_uid, sha256, record FROM objects "
                    "WHERE sop_instance_uid = ? OR study_instance_uid = ? ORDER BY seq", (sop_uid, study),
                ).fetchall()
                row = next((f for f in found if f[1] == sop_uid), None)
                if row is not None and self._same_content(row, record, content_sha256):
                    if received_id is not None:
                        self.mark_processed(received_id, "duplicate")
                    return "duplicate"
                # Merge outside the write lock (decoding the others and merging is the slow part).
                others = [unpack(f[4]) for f in found if f is not row]
                merged = merge_study([*others, record])
                rows = self._study_rows(study, len(others) + 1, merged,
                                        (None, stored.version) if merged is record and not others else None)
                try:
                    with self._transaction() as conn:
                        if self._neighbours(sop_uid, study) != [f[:4] for f in found]:
                            raise _StudyChanged
                        if row is not None:
                            conn.execute("DELETE FROM objects WHERE seq = ?", (row[0],))
                        conn.execute(
                            "INSERT INTO objects (sop_instance_uid, study_instance_uid, sop_class_uid, sha256, "
                            "raw_path, received_at, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (sop_uid, study, ref.sop_class_uid, content_sha256, raw_path, ref.received_at,
                             stored.blob),
                        )
                        self._put_study(study, *rows)
                        if row is not None and row[2] != study:
                            self._remerge(row[2])  # the object moved to another study (rare)
                        if received_id is not None:
                            conn.execute("UPDATE received SET state = 'done', outcome = ? WHERE id = ?",
                                         ("new" if row is None else "replaced", received_id))
                except _StudyChanged:
                    continue  # another writer changed this study: merge again
                if row is None:
                    return "new"
                log.warning("object %s received again with different content: the newer replaces the older",
                            sop_uid)
                return "replaced"
        raise CatalogError(f"{self.path}: study {study} kept changing while object {sop_uid} was merged")

    def _neighbours(self, sop_uid: str, study: str) -> list[tuple[Any, ...]]:
        """(seq, SOP Instance UID, study, sha256) of the object and of its study's objects, in received order."""
        return self._conn.execute(
            "SELECT seq, sop_instance_uid, study_instance_uid, sha256 FROM objects "
            "WHERE sop_instance_uid = ? OR study_instance_uid = ? ORDER BY seq", (sop_uid, study),
        ).fetchall()

    @staticmethod
    def _same_content(row: tuple[Any, ...], record: StudyRecord, content_sha256: str | None) -> bool:
        """Whether ``record`` is the content of the stored object ``row`` (seq, SOP, study, sha256, record):
        the same bytes, or the same record but for when and where it was received."""
        if content_sha256 is not None and row[3] == content_sha256:
            return True
        return content_key(json.loads(unpack_text(row[4]))) == content_key(record.to_dict())

    @staticmethod
    def _study_rows(uid: str, n: int, merged: StudyRecord, own: tuple[None, str] | None = None,
                    ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """The ``studies`` row and ``events`` rows of a merged study. ``own``: (no record, version)
        for a study of one object, whose record is that object's (not stored twice)."""
        if own is None:
            text = record_text(merged)
            blob: bytes | None = pack(text)
            version = version_key(text)
        else:
            blob, version = own
        study_row = (uid, n, utc_now(), version, blob)
        event_rows = [
            (uid, i, ev.irradiation_event_uid, ev.acquisition_protocol, ev.acquisition_type, ev.ctdivol_mGy,
             ev.dlp_mGycm)
            for i, ev in enumerate(merged.events)
        ]
        return study_row, event_rows

    def _put_study(self, uid: str, study_row: tuple[Any, ...], event_rows: list[tuple[Any, ...]]) -> None:
        self._conn.execute("DELETE FROM events WHERE study_instance_uid = ?", (uid,))
        self._put_rows([study_row], event_rows)

    def _put_rows(self, study_rows: list[tuple[Any, ...]], event_rows: list[tuple[Any, ...]]) -> None:
        self._conn.executemany(
            "INSERT INTO studies (study_instance_uid, n_objects, updated_at, version, record) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(study_instance_uid) DO UPDATE SET n_objects = excluded.n_objects, "
            "updated_at = excluded.updated_at, version = excluded.version, record = excluded.record",
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
            "SELECT record FROM objects WHERE study_instance_uid = ? ORDER BY seq", (study_uid,)
        ).fetchall()
        if not rows:
            self._conn.execute("DELETE FROM events WHERE study_instance_uid = ?", (study_uid,))
            self._conn.execute("DELETE FROM studies WHERE study_instance_uid = ?", (study_uid,))
            return
        records = [unpack(r[0]) for r in rows]
        merged = merge_study(records)
        own = (None, version_key(unpack_text(rows[0][0]))) if len(records) == 1 and merged is records[0] else None
        self._put_study(study_uid, *self._study_rows(study_uid, len(records), merged, own))

    def add_objects(self, records: Iterable[StudyRecord]) -> None:
        """Bulk load in one transaction (no per-object fsync); last one wins per SOP Instance UID."""
        records = list(records)
        for r in records:
            if r.error is not None or not r.study_instance_uid or not r.dose_objects:
                raise ValueError("add_objects takes usable single-object records with a study and SOP UID")
        last: dict[str, StudyRecord] = {}
        for r in records:
            uid = object_uid(r)
            last.pop(uid, None)
            last[uid] = r  # received order: the last of a SOP Instance UID, where it came
        groups: dict[str, list[StudyRecord]] = {}
        for r in last.values():
            groups.setdefault(str(r.study_instance_uid), []).append(r)
        texts = {id(r): record_text(r) for r in last.values()}
        with self._transaction() as conn:
            existing = {uid for (uid,) in conn.execute("SELECT study_instance_uid FROM studies")}
            moved: set[str] = set()  # studies an object was replaced in (or moved away from)
            for uid in last:
                old = conn.execute("SELECT study_instance_uid FROM objects WHERE sop_instance_uid = ?",
                                   (uid,)).fetchone()
                if old is not None:
                    conn.execute("DELETE FROM objects WHERE sop_instance_uid = ?", (uid,))
                    moved.add(old[0])
            conn.executemany(
                "INSERT INTO objects (sop_instance_uid, study_instance_uid, sop_class_uid, sha256, raw_path, "
                "received_at, record) VALUES (?, ?, ?, NULL, NULL, ?, ?)",
                [(uid, r.study_instance_uid, r.dose_objects[0].sop_class_uid, r.dose_objects[0].received_at,
                  pack(texts[id(r)])) for uid, r in last.items()],
            )
            study_rows: list[tuple[Any, ...]] = []
            event_rows: list[tuple[Any, ...]] = []
            for uid, group in groups.items():
                if uid in existing or uid in moved or len(group) > 1:
                    self._remerge(uid)
                    continue
                merged = merge_study(group)
                own = (None, version_key(texts[id(group[0])])) if merged is group[0] else None
                srow, erows = self._study_rows(uid, 1, merged, own)
                study_rows.append(srow)
                event_rows += erows
            self._put_rows(study_rows, event_rows)
            for uid in moved - groups.keys():
                self._remerge(uid)  # an object moved away from a study

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
