"""The workbench's study index: each study's evaluated verdicts as indexed columns.

Verdicts are computed when a record is read (docs/registry-profile.md): filtering 100,000
studies by registry code would mean decoding and evaluating all of them on every page. The
index keeps, per study, what the pages filter and list by, keyed by (Study Instance UID,
the catalog's version key of the study, ``Rules.key``): a study is evaluated again when its
merged record changed (``Catalog.study_versions``) and every study when the rules changed.
It is a cache: ``web-index.sqlite`` may be deleted at any time (it is rebuilt). Owner-only:
it holds accession numbers and descriptions.

Each study's ``submission`` (its place in the batch lifecycle: ``submission.state``, batch,
billed code, receipt) is kept in a table of its own, computed by the lifecycle's
:class:`~dosereg.registry_export.Submissions` from export state: again for every study when
export state changed (:func:`~dosereg.registry_export.export_state_stamp`; only the rows whose
submission changed are written), and for a study whenever it is evaluated again (its registry
code decides between ``eligible`` and ``not_eligible``).

Each study is addressed by an opaque key, an HMAC of its Study Instance UID under a secret
of the data directory: the URLs of the workbench carry no identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.conf.fsutil import PRIVATE_FILE_MODE, create_private, private_dir, sqlite_stamp
from dosereg.extract import StudyRecord
from dosereg.ingest import open_catalog
from dosereg.registry_export import (
    SUBMISSION_STATES,
    Evaluation,
    Rules,
    Submissions,
    evaluate,
    export_state_stamp,
    no_dose_report,
    read_submissions,
    rules_from_config,
    scanner_label,
)

INDEX_NAME = "web-index.sqlite"
KEY_NAME = "web-secret"
# more changed studies than this: one pass over the catalog instead of one look-up each
_BULK = 2000
# the index's layout: another value (an older dosereg's index) is dropped and rebuilt
INDEX_VERSION = 4
RULES_TTL_S = 2.0
_CHUNK = 5000

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS studies (
        sid INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, study_uid TEXT NOT NULL UNIQUE, version TEXT NOT NULL,
        study_date TEXT NOT NULL, accession TEXT, description TEXT, scanner TEXT NOT NULL,
        registry_code TEXT NOT NULL, nomenclature_code TEXT NOT NULL, completeness TEXT NOT NULL,
        events INTEGER NOT NULL, total_dlp REAL, max_ctdivol REAL, reasons TEXT NOT NULL)""",
    # each filter column, then the listing order (read backwards: newest first, no sort step)
    "CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date, sid)",
    "CREATE INDEX IF NOT EXISTS studies_scanner ON studies(scanner, study_date, sid)",
    "CREATE INDEX IF NOT EXISTS studies_registry ON studies(registry_code, study_date, sid)",
    "CREATE INDEX IF NOT EXISTS studies_nomenclature ON studies(nomenclature_code, study_date, sid)",
    "CREATE INDEX IF NOT EXISTS studies_completeness ON studies(completeness, study_date, sid)",
    # each study's submission, a narrow table of its own: a pass over every study after export
    # state changed reads and writes only these rows (``exam``: no dose report)
    """CREATE TABLE IF NOT EXISTS submissions (
        sid INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, study_date TEXT NOT NULL, registry_code TEXT NOT NULL,
        exam INTEGER NOT NULL, state TEXT NOT NULL, batch_id TEXT, billed_code TEXT, receipt TEXT,
        reported_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS submissions_state ON submissions(state, study_date, sid)",
    """CREATE TABLE IF NOT EXISTS protocols (protocol TEXT NOT NULL, sid INTEGER NOT NULL,
        PRIMARY KEY (protocol, sid)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS protocols_sid ON protocols(sid)",
]

# the fields of the study record's ``submission``, as the listing's columns ``submission_<field>``
SUBMISSION_FIELDS = ("state", "batch_id", "billed_code", "receipt", "reported_at")
# the columns a listing gives (API and page; the CSV's header), in this order
COLUMNS = ("key", "study_instance_uid", "study_date", "accession_number", "study_description", "scanner",
           "registry_code", "nomenclature_code", "completeness", "events", "total_dlp_mGycm", "max_ctdivol_mGy",
           "reasons", *(f"submission_{f}" for f in SUBMISSION_FIELDS))
_SELECT = ("s.key, s.study_uid, s.study_date, s.accession, s.description, s.scanner, s.registry_code, "
           "s.nomenclature_code, s.completeness, s.events, s.total_dlp, s.max_ctdivol, s.reasons, "
           "u.state, u.batch_id, u.billed_code, u.receipt, u.reported_at")
_JOINED = "studies s JOIN submissions u ON u.sid = s.sid"
FILTERS = ("date_from", "date_to", "scanner", "protocol", "registry_code", "nomenclature_code", "completeness",
           "submission_state")


@dataclass(frozen=True)
class Query:
    """A studies filter: each empty field matches everything."""

    date_from: str = ""
    date_to: str = ""
    scanner: str = ""
    protocol: str = ""
    registry_code: str = ""
    nomenclature_code: str = ""
    completeness: str = ""
    submission_state: str = ""

    @classmethod
    def of(cls, params: Any) -> Query:
        return cls(**{name: str(params.get(name) or "").strip()[:200] for name in FILTERS})

    def problem(self) -> str | None:
        """Why this filter cannot be applied (a value the contract does not know), or None."""
        if self.submission_state and self.submission_state not in SUBMISSION_STATES:
            return f"submission_state must be one of {', '.join(SUBMISSION_STATES)}"
        return None

    def where(self) -> tuple[str, list[Any]]:
        # filtered by submission state, the submissions table leads (its index gives the order)
        lead = "u" if self.submission_state else "s"
        clauses, args = [], []
        for column, value, op in ((f"{lead}.study_date", self.date_from, ">="),
                                  (f"{lead}.study_date", self.date_to, "<="),
                                  ("s.scanner", self.scanner, "="), ("s.registry_code", self.registry_code, "="),
                                  ("s.nomenclature_code", self.nomenclature_code, "="),
                                  ("s.completeness", self.completeness, "="),
                                  ("u.state", self.submission_state, "=")):
            if value:
                clauses.append(f"{column} {op} ?")
                args.append(value)
        if self.protocol:
            clauses.append("s.sid IN (SELECT sid FROM protocols WHERE protocol = ?)")
            args.append(self.protocol)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def statements(self) -> tuple[str, str, list[Any]]:
        """(the count's SQL, the listing's SQL, their arguments): the listing newest first, each
        row the :data:`COLUMNS` (every study, or ``LIMIT ? OFFSET ?`` appended for a page)."""
        where, args = self.where()
        lead = "u" if self.submission_state else "s"
        count = f"SELECT COUNT(*) FROM {_JOINED if self.submission_state else 'studies s'}{where}"
        listing = f"SELECT {_SELECT} FROM {_JOINED}{where} ORDER BY {lead}.study_date DESC, {lead}.sid DESC"
        return count, listing, args

    def params(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FILTERS if getattr(self, name)}


def study_secret(data_dir: Path) -> bytes:
    """The data directory's secret for study keys and session signing (made once, owner-only)."""
    private_dir(data_dir)
    path = Path(data_dir) / KEY_NAME
    if create_private(path):
        with open(path, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
    secret = path.read_bytes()
    if len(secret) < 32:
        raise OSError(f"{path}: the web secret is damaged (delete it: sessions end, study links change)")
    return secret


def _submission(subs: Submissions, uid: str, registry_code: str, exam: bool,
                memo: dict[tuple[Any, ...], tuple[Any, ...]] | None = None) -> tuple[Any, ...]:
    """The index's submission columns of a study (``state, batch_id, billed_code, receipt, reported_at``).
    ``memo``: for a pass over every study (the studies of one batch, and those in none, share
    their standing: computed once each)."""
    key = (subs.standings.get(uid), registry_code, exam)
    if memo is not None and key in memo:
        return memo[key]
    sub = subs.of(uid, registry_code, exam)
    out = tuple(sub[f] for f in SUBMISSION_FIELDS)
    if memo is not None:
        memo[key] = out
    return out


def _row(key: str, uid: str, version: str, record: StudyRecord, ev: Evaluation) -> tuple[Any, ...]:
    doses = [e.ctdivol_mGy for e in record.events if e.ctdivol_mGy is not None]
    flags = ev.flags
    reasons = "; ".join(flags.registry_reasons) if flags.registry_code != "G9327" else ""
    return (key, uid, version, record.study_date or "", record.accession_number, record.study_description,
            scanner_label(record.equipment.to_dict()), flags.registry_code or "", flags.nomenclature_code or "",
            ev.completeness.status, len(record.events), record.total_dlp_mGycm, max(doses) if doses else None,
            reasons[:2000])


def listing_row(row: dict[str, Any]) -> dict[str, Any]:
    """A listing's row as the API's JSON gives it: the ``submission_*`` columns as the study
    record's ``submission`` object (``{state, batch_id, billed_code, receipt, reported_at}``)."""
    out = {k: v for k, v in row.items() if not k.startswith("submission_")}
    out["submission"] = {f: row.get(f"submission_{f}") for f in SUBMISSION_FIELDS}
    return out


class StudyIndex:
    """``web-index.sqlite``: kept in step with the catalog by :meth:`refresh`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.path = cfg.data_dir / INDEX_NAME
        self._secret = hmac.new(study_secret(cfg.data_dir), b"study-key", hashlib.sha256).digest()
        create_private(self.path)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
            with self._transaction():
                for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    self._db.execute(f'DROP TABLE IF EXISTS "{name}"')
                self._db.execute(f"PRAGMA user_version = {INDEX_VERSION}")
        for sql in _SCHEMA:
            self._db.execute(sql)
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, PRIVATE_FILE_MODE)
        self._lock = threading.RLock()  # one connection: reads wait for a refresh in progress
        self._stamp: tuple[Any, ...] | None = None
        self._export_stamp: tuple[Any, ...] | None = None
        self._rules: tuple[float, Rules] | None = None
        self._choices: tuple[Any, dict[str, list[str]]] | None = None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction (the connection is in autocommit mode, where ``with connection:``
        would commit each statement on its own: a write, and a sync, per study)."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def rules(self) -> Rules:
        """The configured rules, read again at most every :data:`RULES_TTL_S` seconds (a changed
        profile or nomenclature table shows within that; each request would otherwise parse them)."""
        now = time.monotonic()
        if self._rules is None or now - self._rules[0] > RULES_TTL_S:
            self._rules = (now, rules_from_config(self.cfg))
        return self._rules[1]

    def close(self) -> None:
        self._db.close()

    def key_of(self, uid: str) -> str:
        return hmac.new(self._secret, uid.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    # -- keeping in step ---------------------------------------------------------------------
    def _catalog_stamp(self, rules_key: str) -> tuple[Any, ...]:
        return (rules_key, *sqlite_stamp(self.cfg.data_dir / "catalog.sqlite"))

    def refresh(self, rules: Rules | None = None) -> int:
        """Bring the index in step with the catalog, the rules and export state; the number of
        studies (re-)evaluated. Cheap when nothing changed (the catalog's and export state's
        files' stat and the rules key)."""
        with self._lock:
            rules = rules or self.rules()
            stamp = self._catalog_stamp(rules.key)
            export_stamp = export_state_stamp(self.cfg)  # before it is read: a later change shows next time
            if stamp == self._stamp and export_stamp == self._export_stamp:
                return 0
            subs: list[Submissions] = []

            def submissions() -> Submissions:  # read once, and only when a study needs it
                if not subs:
                    subs.append(read_submissions(self.cfg))
                return subs[0]

            n = self._sync(rules, submissions) if stamp != self._stamp else 0
            self._stamp = stamp
            if export_stamp != self._export_stamp:
                self._resubmit(submissions())
                self._export_stamp = export_stamp
            return n

    def stamp(self) -> tuple[Any, ...] | None:
        """What the index was last brought in step with (rules key, catalog files): equal
        stamps, equal catalog and rules."""
        self.refresh()
        return self._stamp

    def _sync(self, rules: Rules, submissions: Callable[[], Submissions]) -> int:
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE name = 'rules_key'").fetchone()
        if row is None or row[0] != rules.key:
            with self._transaction():
                db.execute("DELETE FROM protocols")
                db.execute("DELETE FROM submissions")
                db.execute("DELETE FROM studies")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('rules_key', ?)", (rules.key,))
        cached = dict(db.execute("SELECT study_uid, version FROM studies"))
        catalog = open_catalog(self.cfg, readonly=True)
        try:
            # versions first: a study that changes after this read is seen changed next time
            versions = dict(catalog.study_versions())
            changed = {uid: v for uid, v in versions.items() if cached.get(uid) != v}
            gone = [uid for uid in cached if uid not in versions]
            if gone:
                self._delete(gone)
            if len(changed) > _BULK:
                records: Iterable[StudyRecord] = (r for r in catalog.iter_studies()
                                                  if (r.study_instance_uid or "") in changed)
            else:
                records = (r for r in (catalog.get_study(uid) for uid in changed) if r is not None)
            batch: list[tuple[str, StudyRecord]] = []
            for record in records:
                batch.append((changed[record.study_instance_uid or ""], record))
                if len(batch) >= _CHUNK:
                    self._put(batch, rules, submissions())
                    batch = []
            if batch:
                self._put(batch, rules, submissions())
        finally:
            catalog.close()
        return len(changed)

    def _delete(self, uids: list[str]) -> None:
        with self._transaction():
            for uid in uids:
                self._delete_one(uid)

    def _put(self, batch: list[tuple[str, StudyRecord]], rules: Rules, subs: Submissions) -> None:
        with self._transaction():
            for version, record in batch:
                uid = record.study_instance_uid or ""
                self._delete_one(uid)
                row = _row(self.key_of(uid), uid, version, record, evaluate(record, rules))
                cur = self._db.execute(
                    "INSERT INTO studies (key, study_uid, version, study_date, accession, description, scanner, "
                    "registry_code, nomenclature_code, completeness, events, total_dlp, max_ctdivol, reasons) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                date, code, exam = row[3], row[7], no_dose_report(record)
                self._db.execute("INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (cur.lastrowid, uid, date, code, int(exam), *_submission(subs, uid, code, exam)))
                protocols = {e.acquisition_protocol for e in record.events if e.acquisition_protocol}
                self._db.executemany("INSERT INTO protocols VALUES (?, ?)", [(p, cur.lastrowid) for p in protocols])

    def _resubmit(self, subs: Submissions) -> int:
        """Every study's submission columns from ``subs``; the rows that changed are written
        (after an approval, only that batch's studies). How many."""
        changed = []
        memo: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for sid, uid, code, exam, *old in self._db.execute(
                "SELECT sid, study_uid, registry_code, exam, state, batch_id, billed_code, receipt, reported_at "
                "FROM submissions"):  # read to the end before the writes below
            new = _submission(subs, uid, code, bool(exam), memo)
            if tuple(old) != new:
                changed.append((*new, sid))
        with self._transaction():
            self._db.executemany("UPDATE submissions SET state = ?, batch_id = ?, billed_code = ?, receipt = ?, "
                                 "reported_at = ? WHERE sid = ?", changed)
        return len(changed)

    def _delete_one(self, uid: str) -> None:
        row = self._db.execute("SELECT sid FROM studies WHERE study_uid = ?", (uid,)).fetchone()
        if row:
            for table in ("protocols", "submissions", "studies"):
                self._db.execute(f"DELETE FROM {table} WHERE sid = ?", (row[0],))

    # -- reading -----------------------------------------------------------------------------
    def search(self, q: Query, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many match, the ``limit`` studies from ``offset``), newest first."""
        with self._lock:
            count, listing, args = q.statements()
            total = int(self._db.execute(count, args).fetchone()[0])
            rows = self._db.execute(f"{listing} LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
            return total, [dict(zip(COLUMNS, r, strict=True)) for r in rows]

    def iter_search(self, q: Query) -> Iterator[tuple[Any, ...]]:
        """Every matching study, newest first, through a connection of its own (a CSV of
        100,000 studies streams while other requests use the index)."""
        _, listing, args = q.statements()
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            cur = db.execute(listing, args)
            while rows := cur.fetchmany(1000):
                yield from rows
        finally:
            db.close()

    def submission_of(self, key: str) -> dict[str, Any] | None:
        """The study record's ``submission`` of the study ``key``, as the index last saw it."""
        with self._lock:
            row = self._db.execute("SELECT u.state, u.batch_id, u.billed_code, u.receipt, u.reported_at FROM "
                                   f"{_JOINED} WHERE s.key = ?", (key,)).fetchone()
            return dict(zip(SUBMISSION_FIELDS, row, strict=True)) if row else None

    def uid_of(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT study_uid FROM studies WHERE key = ?", (key,)).fetchone()
            return str(row[0]) if row else None

    def choices(self) -> dict[str, list[str]]:
        """The values each dropdown filter offers (computed again only when the index changed)."""
        cached = self._choices
        if cached is not None and cached[0] == self._stamp:
            return cached[1]
        out = self._distinct()
        self._choices = (self._stamp, out)
        return out

    def _distinct(self) -> dict[str, list[str]]:
        with self._lock:
            out = {}
            for name, sql in (("scanner", "SELECT DISTINCT scanner FROM studies ORDER BY 1"),
                              ("protocol", "SELECT DISTINCT protocol FROM protocols ORDER BY 1"),
                              ("registry_code", "SELECT DISTINCT registry_code FROM studies ORDER BY 1"),
                              ("nomenclature_code", "SELECT DISTINCT nomenclature_code FROM studies ORDER BY 1"),
                              ("completeness", "SELECT DISTINCT completeness FROM studies ORDER BY 1")):
                out[name] = [str(r[0]) for r in self._db.execute(sql)]
            out["submission_state"] = list(SUBMISSION_STATES)  # every state of the contract, in its order
            return out

    def summary(self) -> dict[str, Any]:
        """What the report page charts: counts per scanner and code, DLP per protocol."""
        with self._lock:
            db = self._db
            per_scanner = db.execute(
                "SELECT scanner, COUNT(*), SUM(completeness = 'complete'), SUM(registry_code = 'G9327') "
                "FROM studies GROUP BY scanner ORDER BY scanner").fetchall()
            codes = db.execute("SELECT registry_code, COUNT(*) FROM studies GROUP BY 1 ORDER BY 1").fetchall()
            top = [r[0] for r in db.execute("SELECT protocol FROM protocols GROUP BY protocol "
                                            "ORDER BY COUNT(*) DESC, protocol LIMIT 12")]
            dlp: dict[str, list[float]] = {}
            for p in top:
                dlp[p] = [float(r[0]) for r in db.execute(
                    "SELECT s.total_dlp FROM protocols p JOIN studies s ON s.sid = p.sid "
                    "WHERE p.protocol = ? AND s.total_dlp IS NOT NULL ORDER BY s.sid DESC LIMIT 5000", (p,))]
            return {"scanners": [{"scanner": r[0], "studies": r[1], "complete": r[2] or 0, "G9327": r[3] or 0}
                                 for r in per_scanner],
                    "codes": {str(r[0]): r[1] for r in codes}, "dlp_by_protocol": dlp}
