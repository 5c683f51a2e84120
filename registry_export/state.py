"""Export state: the batches, what each holds, what was submitted, and what billing was told.

Kept in its own SQLite file ``<data_dir>/export-state.sqlite`` (never in the catalog), owner-only.
Tables (schema 5; :mod:`.state_schema` and :mod:`.batches` for the lifecycle's are the reference):

``meta``
    ``schema_version``, ``secret_fingerprint`` (HMAC of a fixed message with the pseudonym
    secret: recognises the secret, never reveals it), ``secret_recorded_at``,
    ``pseudonyms_changed_at`` (when ``dosereg secret change`` last changed it).
``batches``
    one row per batch, with its ``state``: ``writing`` (the intent: every file is staged, none
    may be placed yet), then the lifecycle's states once placed (:mod:`.lifecycle`), ``discarded`` (an interrupted batch
    none of whose billing or registry files had been placed). The batch lifecycle of the
    review step (``pending_review``, ``approved``, ``sending``, ``acknowledged``, ``failed``,
    ``rejected``, and ``legacy`` for the batches exported before it) are further values of the
    same column.
``batch_studies``
    the membership: one row per (batch, study) with what the batch does for the study
    (``to_registry``, ``to_flags``) and the fingerprints that go with it.
``batch_files``
    every file of a batch with its SHA-256, recorded with the intent: an interrupted batch
    is completed or adopted only with files that verify.
``studies``
    per study, what the registry and billing last *received* (the fingerprints of the last
    completed batch that carried it): the next export compares against these. And what the
    study was last evaluated with, once it had nothing more to send (``input_key``: record and
    rules; ``source_version`` and ``rules_key``: the source's version of the study and the rules
    key; ``last_code``: the registry code it got), so that an export can pass over a study
    nothing changed for without evaluating it (:func:`.decision.settled`).
``audit_log``
    append-only: time, action, person (``actor``), operating-system user, comment.

An export is: (1) one write transaction that evaluates the catalog and records the batch's
intent (the ``writing`` row, its members and files) while the files are staged; (2) the files
placed; (3) one transaction that applies the members to ``studies`` and marks the batch
``exported``. A crash between (1) and (3) leaves a ``writing`` batch that the next export
repairs before anything else (``export.repair_interrupted``). An advisory lock on
``export-state.lock`` keeps a second export (or ``dosereg secret change``) out for the
whole of it.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.conf.fsutil import PRIVATE_FILE_MODE, create_private, private_dir, private_file

from . import batches, state_schema
from .lifecycle import PENDING_REVIEW
from .state_schema import SCHEMA_VERSION, SUBMITTED_SUFFIX_3

STATE_FILE = "export-state.sqlite"
LOCK_FILE = "export-state.lock"

#: batch states this module sets (the review lifecycle adds its own)
WRITING, EXPORTED, DISCARDED = "writing", "exported", "discarded"



class ExportBusyError(RuntimeError):
    """Another export holds the state file."""


def state_path(cfg: Config) -> Path:
    return cfg.data_dir / STATE_FILE


def os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@contextmanager
def export_lock(cfg: Config) -> Iterator[None]:
    """Hold ``<data_dir>/export-state.lock`` for an export or a secret change; refuse when held."""
    private_dir(cfg.data_dir)
    path = cfg.data_dir / LOCK_FILE
    fd = private_file(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportBusyError(f"{path}: another export is running (the export lock is held)") from None
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Evaluated:
    """What a study was evaluated with, and the code it got, in the export that settled it
    (after which its registry fingerprint and flags key are what that evaluation gives)."""

    input_key: str | None = None  # record + rules (fingerprint.input_key)
    last_code: str | None = None  # its registry code (None: not known, e.g. migrated from schema 3)
    source_version: str | None = None  # the source's version key of the record, when it has them
    rules_key: str | None = None


NOT_EVALUATED = Evaluated()


@dataclass(frozen=True)
class StudyState:
    """What the registry and billing last received for a study, and what it was last evaluated with."""

    registry_fingerprint: str | None
    flags_key: str | None
    evaluated: Evaluated = NOT_EVALUATED


@dataclass(frozen=True)
class Member:
    """One study of the batch being written: what the batch does for it and what it then records."""

    uid: str
    to_registry: bool
    to_flags: bool
    registry_fingerprint: str | None  # the content fingerprint submitted (when to_registry)
    flags_key: str | None  # the key of its flags row (when to_flags)
    evaluated: Evaluated
    info: str | None = None  # :func:`.batches.member_info`: billing row, dose objects, totals


@dataclass(frozen=True)
class BatchFile:
    kind: str  # "registry" | "flags" | "report"
    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Intent:
    """A batch recorded as ``writing``: staged, maybe partly placed (an interrupted export)."""

    batch_id: str
    facility_id: str
    out_dir: Path
    staging_dir: Path
    files: tuple[BatchFile, ...]


def _tighten(path: Path) -> None:
    """The state file and SQLite's companions owner-only (a file made by an older version may be wider)."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            pass


class ExportState:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        #: the state a batch gets once placed (:func:`.lifecycle.after_export`; set by the export)
        self.exported_state = PENDING_REVIEW
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            self.version = self._version()
        else:
            private_dir(path.parent)
            create_private(path)
            _tighten(path)
            self._db = sqlite3.connect(str(path), timeout=5, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            _tighten(path)
            self.version = self._version()
            if self.version != SCHEMA_VERSION:
                self._set_up()

    def _version(self) -> int:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "batches" not in tables:
            return 0
        if "meta" not in tables:
            return 1
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 1

    def _set_up(self) -> None:
        """Create the schema, or migrate an older one, in one transaction."""
        self.begin()
        try:
            version = self._version()  # again, under the lock
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: export state schema {version} is newer than this dosereg "
                                   f"understands ({SCHEMA_VERSION})")
            if version == 0:
                state_schema.create(self._db)
            elif version < SCHEMA_VERSION:
                self.log(None, "migrate", state_schema.migrate(self._db, version))
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE "
                             "SET value=excluded.value", (str(SCHEMA_VERSION),))
            self.commit()
        finally:
            self.rollback()
        self.version = SCHEMA_VERSION

    def close(self) -> None:
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for :mod:`.batches` (same file, same transactions)."""
        return self._db

    def blocked(self) -> frozenset[str]:
        """Studies the next export leaves alone (:func:`.batches.blocked`)."""
        return batches.blocked(self._db) if self.version >= 5 else frozenset()

    # -- transactions -----------------------------------------------------------------------
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

    # -- site-wide ---------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        if self.version < 1:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (key, value))

    def log(self, batch_id: str | None, action: str, comment: str | None = None, at: str | None = None,
            actor: str | None = None) -> None:
        """Append to the audit log."""
        self._db.execute(
            "INSERT INTO audit_log (at, batch_id, action, actor, os_user, comment) "
            "VALUES (COALESCE(?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')), ?, ?, ?, ?, ?)",
            (at, batch_id, action, actor, os_user(), comment))

    def audit(self) -> list[dict[str, str | None]]:
        cur = self._db.execute("SELECT at, batch_id, action, actor, os_user, comment FROM audit_log ORDER BY id")
        return [dict(zip(("at", "batch_id", "action", "actor", "os_user", "comment"), row, strict=True))
                for row in cur]

    # -- batches -----------------------------------------------------------------------------
    def next_seq(self) -> int:
        if self.version < 1:
            return 1
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()
        return int(row[0])

    def last_batch(self) -> tuple[str, str] | None:
        """The last batch that was placed (not an intent, not a discarded one)."""
        if self.version < 1:
            return None
        sql = "SELECT batch_id, created_at FROM batches {} ORDER BY seq DESC LIMIT 1".format(
            "WHERE state NOT IN (?, ?)" if self.version >= 3 else "WHERE ? IS NOT ?")
        row = self._db.execute(sql, (WRITING, DISCARDED)).fetchone()
        return (row[0], row[1]) if row else None

    def batch_states(self) -> dict[str, str]:
        if self.version < 3:
            return {}
        return dict(self._db.execute("SELECT batch_id, state FROM batches ORDER BY seq"))

    def add_members(self, batch_id: str, members: Iterable[Member]) -> None:
        """Studies of the batch being written (recorded with its intent)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO batch_studies (batch_id, study_uid, to_registry, to_flags, registry_fingerprint, "
            "flags_key, input_key, last_code, source_version, rules_key, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((batch_id, m.uid, int(m.to_registry), int(m.to_flags), m.registry_fingerprint, m.flags_key,
              *_evaluated_row(m.evaluated), m.info) for m in members))

    def record_intent(self, batch_id: str, seq: int, created_at: str, facility_id: str, out_dir: Path,
                      staging_dir: Path, counts: tuple[int, int, int, int], files: Iterable[BatchFile],
                      secret_fingerprint: str, pseudonyms_changed_at: str | None) -> None:
        """The batch as ``writing``: committed before any of its files is placed."""
        studies_seen, registry_studies, registry_events, flag_rows = counts
        self._db.execute(
            "INSERT INTO batches (seq, batch_id, created_at, facility_id, out_dir, studies_seen, registry_studies, "
            "registry_events, flag_rows, state, state_changed_at, staging_dir, secret_fingerprint, "
            "pseudonyms_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, batch_id, created_at, facility_id, str(out_dir), studies_seen, registry_studies, registry_events,
             flag_rows, WRITING, created_at, str(staging_dir), secret_fingerprint, pseudonyms_changed_at))
        self._db.executemany("INSERT INTO batch_files VALUES (?, ?, ?, ?, ?)",
                             [(batch_id, f.kind, f.name, f.sha256, f.bytes) for f in files])
        self.log(batch_id, "intent", f"{registry_studies} registry studies, {flag_rows} flag rows staged",
                 at=created_at)

    def intents(self) -> list[Intent]:
        """Batches left ``writing`` by an interrupted export, oldest first."""
        if self.version < 3:
            return []
        out = []
        for batch_id, facility, out_dir, staging in self._db.execute(
                "SELECT batch_id, facility_id, out_dir, staging_dir FROM batches WHERE state=? ORDER BY seq",
                (WRITING,)).fetchall():
            files = tuple(BatchFile(*row) for row in self._db.execute(
                "SELECT kind, name, sha256, bytes FROM batch_files WHERE batch_id=? ORDER BY kind, name",
                (batch_id,)))
            out.append(Intent(batch_id, facility, Path(out_dir), Path(staging), files))
        return out

    def complete(self, batch_id: str, registry_dir: Path | None, at: str, registry: bool = True,
                 flags: bool = True, comment: str | None = None) -> None:
        """The batch's files are placed: what it carried is now what the registry and billing have.

        ``registry`` / ``flags`` False: that part of an interrupted batch could not be placed or did
        not verify, so its studies are not marked as having received it (and are evaluated again).
        """
        # a study whose part of the batch was not delivered forgets what it was evaluated with
        # (so it is evaluated, and offered, again)
        undelivered = "(m.to_registry AND NOT ?2) OR (m.to_flags AND NOT ?3)"
        batches.capture_prev(self._db, batch_id)
        self._db.execute(
            f"""INSERT INTO studies (study_uid, registry_fingerprint, registry_batch_id, flags_key,
                                    flags_batch_id, batch_id, exported_at, input_key, last_code, source_version,
                                    rules_key)
               SELECT m.study_uid,
                      CASE WHEN m.to_registry AND ?2 THEN m.registry_fingerprint END,
                      CASE WHEN m.to_registry AND ?2 THEN m.batch_id END,
                      CASE WHEN m.to_flags AND ?3 THEN m.flags_key END,
                      CASE WHEN m.to_flags AND ?3 THEN m.batch_id END,
                      m.batch_id, b.created_at,
                      CASE WHEN {undelivered} THEN NULL ELSE m.input_key END,
                      CASE WHEN {undelivered} THEN NULL ELSE m.last_code END,
                      CASE WHEN {undelivered} THEN NULL ELSE m.source_version END,
                      CASE WHEN {undelivered} THEN NULL ELSE m.rules_key END
               FROM batch_studies m JOIN batches b ON b.batch_id = m.batch_id
               WHERE m.batch_id = ?1 AND ((m.to_registry AND ?2) OR (m.to_flags AND ?3))
               ON CONFLICT (study_uid) DO UPDATE SET
                 input_key = excluded.input_key, last_code = excluded.last_code,
                 source_version = excluded.source_version, rules_key = excluded.rules_key,
                 registry_fingerprint = COALESCE(excluded.registry_fingerprint, registry_fingerprint),
                 registry_batch_id = COALESCE(excluded.registry_batch_id, registry_batch_id),
                 flags_key = COALESCE(excluded.flags_key, flags_key),
                 flags_batch_id = COALESCE(excluded.flags_batch_id, flags_batch_id),
                 batch_id = excluded.batch_id, exported_at = excluded.exported_at""",
            (batch_id, int(registry), int(flags)))
        self._db.execute("UPDATE batches SET state=?, state_changed_at=?, registry_dir=? WHERE batch_id=?",
                         (self.exported_state, at, str(registry_dir) if registry_dir is not None else None, batch_id))
        self.log(batch_id, "exported", comment, at=at)

    def discard(self, batch_id: str, at: str, comment: str) -> None:
        """An interrupted batch none of whose billing or registry files was placed: its studies are
        offered again by the next export."""
        self._db.execute("UPDATE batches SET state=?, state_changed_at=? WHERE batch_id=?",
                         (DISCARDED, at, batch_id))
        self.log(batch_id, "discarded", comment, at=at)

    # -- studies -----------------------------------------------------------------------------
    def study(self, uid: str) -> StudyState | None:
        if self.version < 1:
            return None
        row = self._db.execute(f"SELECT {_study_columns(self.version)} FROM studies WHERE study_uid=?",
                               (uid,)).fetchone()
        return _study_state(row) if row else None

    def lookup(self) -> StudyLookup:
        """The recorded state of each study, for a pass over the catalog (:class:`StudyLookup`)."""
        return StudyLookup(self.path if self.version >= 1 else None, self.version)

    def settle(self, rows: Iterable[tuple[str, Evaluated]]) -> None:
        """Record what studies (uid, evaluated) with nothing to send were evaluated with."""
        self._db.executemany(
            "UPDATE studies SET input_key = ?2, last_code = ?3, source_version = ?4, rules_key = ?5 "
            "WHERE study_uid = ?1", ((uid, *_evaluated_row(e)) for uid, e in rows))

    def members(self, batch_id: str) -> list[tuple[str, bool, bool]]:
        """(study uid, to registry, to flags) of a batch."""
        return [(uid, bool(r), bool(f)) for uid, r, f in self._db.execute(
            "SELECT study_uid, to_registry, to_flags FROM batch_studies WHERE batch_id=? ORDER BY study_uid",
            (batch_id,))]

    def marks(self) -> dict[str, dict[str, str]]:
        return {
            uid: {"batch_id": batch_id, "exported_at": exported_at}
            for uid, batch_id, exported_at in self._db.execute(
                "SELECT study_uid, batch_id, exported_at FROM studies WHERE batch_id IS NOT NULL"
            )
        }


def _study_columns(version: int) -> str:
    """The columns of a :class:`StudyState` in a state of schema ``version`` (a read-only state, as
    a preview opens it, is not migrated)."""
    if version >= 4:
        return "registry_fingerprint, flags_key, input_key, last_code, source_version, rules_key"
    if version >= 2:
        return "registry_fingerprint, flags_key, input_key, NULL, NULL, NULL"
    return "registry_fingerprint, flags_key, NULL, NULL, NULL, NULL"


def _study_state(row: tuple[str | None, ...]) -> StudyState:
    fp, key, ikey, code, version, rkey = row
    if ikey is not None and ikey.endswith(SUBMITTED_SUFFIX_3):  # an unmigrated schema 3 state
        ikey, code = ikey[: -len(SUBMITTED_SUFFIX_3)], "G9327"
    evaluated = NOT_EVALUATED if ikey is None and code is None and version is None and rkey is None else (
        Evaluated(ikey, code, version, rkey))
    return StudyState(fp, key, evaluated)


def _evaluated_row(e: Evaluated) -> tuple[str | None, str | None, str | None, str | None]:
    return e.input_key, e.last_code, e.source_version, e.rules_key


class StudyLookup:
    """The recorded state of studies asked for one by one in study UID order, as the catalog
    yields them: one forward scan of ``studies`` (ordered by ``study_uid``, SQLite's byte order,
    which is Python's string order) on a read-only connection of its own, so memory does not grow
    with the number of studies, and the export's own writes in its open transaction never
    disturb the scan. A UID asked for out of order is looked up by itself.
    """

    def __init__(self, path: Path | None, version: int = SCHEMA_VERSION) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) if path is not None else None
        self._columns = _study_columns(version)
        self._rows: Iterator[tuple[Any, ...]] = iter(())
        self._row: tuple[Any, ...] | None = None
        self._last: str | None = None
        if self._db is not None:
            cur = self._db.execute(f"SELECT study_uid, {self._columns} FROM studies ORDER BY study_uid")
            self._rows = iter(cur)
            self._row = next(self._rows, None)

    def get(self, uid: str) -> StudyState | None:
        if self._db is None:
            return None
        if self._last is not None and uid < self._last:  # out of order: by itself
            row = self._db.execute(f"SELECT {self._columns} FROM studies WHERE study_uid=?", (uid,)).fetchone()
            return _study_state(row) if row else None
        self._last = uid
        while self._row is not None and self._row[0] < uid:
            self._row = next(self._rows, None)
        if self._row is not None and self._row[0] == uid:
            return _study_state(self._row[1:])
        return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> StudyLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
