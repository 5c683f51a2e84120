"""The alerts' durable state (docs/alerts.md): ``alerts.sqlite`` in the data directory, owner-only.

* ``alerts`` -- one row per alert (its :attr:`Alert.key` is the primary key: an alert is
  recorded once, whatever re-evaluates its study), with the alert as JSON;
* ``deliveries`` -- per alert and channel (``email``, ``webhook``): ``pending`` (with the time
  of the next attempt), ``sending`` (an attempt under way), ``sent`` or ``failed`` (given up
  after ``max_attempts``), the attempts so far and the last error (never a secret);
* ``watermark`` -- the last catalog object (``seq``, the catalog's own received order, with its
  SOP Instance UID, receipt time and SHA-256, which tell a reused ``seq`` apart) the alerts were worked
  out for. New alerts and the watermark are written in one transaction: a restart neither
  misses an object nor evaluates one twice.

An alert is recorded before anything is sent; a restart resumes the pending deliveries and
never sends a ``sent`` one again. An attempt a crash interrupted (``sending``) is made again:
the receiver sees the same ``Message-ID`` / ``Idempotency-Key`` (docs/alerts.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dosereg.conf.fsutil import create_private, private_dir, private_file, utc_now

from .alerts import Alert

__all__ = ["ALERTS_DB", "AlertStore", "Delivery", "Watermark", "pass_lock"]

ALERTS_DB = "alerts.sqlite"
ALERTS_LOCK = "alerts.lock"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alerts (
        key TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        kind TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        alert TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alerts_created ON alerts(created_at)",
    """CREATE TABLE IF NOT EXISTS deliveries (
        key TEXT NOT NULL REFERENCES alerts(key),
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT,
        sent_at TEXT,
        PRIMARY KEY (key, channel)
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at)",
    """CREATE TABLE IF NOT EXISTS watermark (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        sop_instance_uid TEXT,
        received_at TEXT,
        sha256 TEXT,
        updated_at TEXT NOT NULL
    )""",
)


@contextmanager
def pass_lock(data_dir: Path) -> Iterator[bool]:
    """An exclusive, non-blocking ``flock`` on ``alerts.lock`` for one pass: True when this process
    holds it, False when another pass runs (the listener's worker, or ``dosereg alerts --deliver``),
    so two passes never deliver the same alert at once. The kernel drops it when the process dies."""
    private_dir(data_dir)
    fd = private_file(Path(data_dir) / ALERTS_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Watermark:
    """The newest catalog object seen: its ``seq`` and what tells a reused ``seq`` apart."""

    seq: int
    sop_instance_uid: str | None
    received_at: str | None
    sha256: str | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Watermark:
        """Of a row of the catalog's ``objects_from``."""
        return cls(int(row["seq"]), row["sop_instance_uid"], row["received_at"], row.get("sha256"))

    def names(self, row: dict[str, Any]) -> bool:
        return self == Watermark.of(row)


@dataclass(frozen=True)
class Delivery:
    alert: Alert
    channel: str
    target: str  # e-mail: the addresses, comma-separated; webhook: "webhook"
    attempts: int


class AlertStore:
    """``alerts.sqlite`` of a data directory; one connection, used by one thread."""

    def __init__(self, data_dir: Path, readonly: bool = False) -> None:
        self.path = Path(data_dir) / ALERTS_DB
        if readonly:
            if not self.path.exists():
                self._conn = sqlite3.connect(":memory:", isolation_level=None)
            else:
                self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                             isolation_level=None, timeout=30)
                return
        else:
            private_dir(self.path.parent)
            create_private(self.path)  # 0600 before SQLite opens it: its -wal and -shm follow
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")  # a recorded "sent" survives a power cut
        for sql in _SCHEMA:
            self._conn.execute(sql)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()

    # -- the watermark -----------------------------------------------------------------
    def watermark(self) -> Watermark | None:
        row = self._conn.execute(
            "SELECT seq, sop_instance_uid, received_at, sha256 FROM watermark WHERE id = 1").fetchone()
        return Watermark(int(row[0]), row[1], row[2], row[3]) if row else None

    def record(self, alerts: Iterable[tuple[Alert, list[tuple[str, str]]]], watermark: Watermark) -> int:
        """Record the new alerts (each with its (channel, target) deliveries) and move the
        watermark, in one transaction; alerts already recorded are left as they are. Returns
        how many were new."""
        new = 0
        now, wall = utc_now(), time.time()
        with self._transaction() as conn:
            for alert, channels in alerts:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO alerts (key, created_at, kind, study_instance_uid, alert) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (alert.key, now, alert.kind, alert.study_instance_uid, json.dumps(alert.to_dict())))
                if cur.rowcount != 1:
                    continue
                new += 1
                conn.executemany(
                    "INSERT INTO deliveries (key, channel, target, state, next_at) VALUES (?, ?, ?, 'pending', ?)",
                    [(alert.key, channel, target, wall) for channel, target in channels])
            conn.execute(
                "INSERT INTO watermark (id, seq, sop_instance_uid, received_at, sha256, updated_at) "
                "VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, "
                "sop_instance_uid = excluded.sop_instance_uid, received_at = excluded.received_at, "
                "sha256 = excluded.sha256, updated_at = excluded.updated_at",
                (watermark.seq, watermark.sop_instance_uid, watermark.received_at, watermark.sha256, now))
        return new

    # -- deliveries --------------------------------------------------------------------
    def due(self, now: float | None = None, limit: int = 100) -> list[Delivery]:
        """Pending deliveries whose time has come, and attempts a crash interrupted, oldest first."""
        now = time.time() if now is None else now
        rows = self._conn.execute(
            "SELECT a.alert, d.channel, d.target, d.attempts FROM deliveries d JOIN alerts a ON a.key = d.key "
            "WHERE (d.state = 'pending' AND d.next_at <= ?) OR d.state = 'sending' "
            "ORDER BY a.created_at, d.key, d.channel LIMIT ?", (now, limit)).fetchall()
        return [Delivery(Alert.from_dict(json.loads(r[0])), r[1], r[2], int(r[3])) for r in rows]

    def next_due(self) -> float | None:
        row = self._conn.execute("SELECT MIN(next_at) FROM deliveries WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def begin(self, d: Delivery) -> None:
        """Note that an attempt starts (committed before anything is sent)."""
        with self._transaction() as conn:
            conn.execute("UPDATE deliveries SET state = 'sending', attempts = attempts + 1 "
                         "WHERE key = ? AND channel = ?", (d.alert.key, d.channel))

    def sent(self, d: Delivery) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE deliveries SET state = 'sent', sent_at = ?, last_error = NULL "
                         "WHERE key = ? AND channel = ?", (utc_now(), d.alert.key, d.channel))

    def failed(self, d: Delivery, error: str, retry_in_s: float | None) -> None:
        """The attempt failed: try again in ``retry_in_s`` seconds, or (None) give up."""
        with self._transaction() as conn:
            if retry_in_s is None:
                conn.execute("UPDATE deliveries SET state = 'failed', last_error = ? WHERE key = ? AND channel = ?",
                             (error[:500], d.alert.key, d.channel))
            else:
                conn.execute("UPDATE deliveries SET state = 'pending', last_error = ?, next_at = ? "
                             "WHERE key = ? AND channel = ?",
                             (error[:500], time.time() + retry_in_s, d.alert.key, d.channel))

    def counts(self) -> dict[str, int]:
        """Deliveries per state (``pending``, ``sending``, ``sent``, ``failed``)."""
        return {str(k): int(n) for k, n in self._conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")}

    # -- listing -----------------------------------------------------------------------
    def listing(self, since: str | None = None) -> list[dict[str, Any]]:
        """Every alert recorded (at ``since`` or later: an ISO UTC prefix), oldest first, with its
        deliveries: ``{created_at, alert: {...}, deliveries: {channel: {state, attempts, ...}}}``."""
        rows = self._conn.execute(
            "SELECT key, created_at, alert FROM alerts WHERE created_at >= ? ORDER BY created_at, key",
            (since or "",)).fetchall()
        out: list[dict[str, Any]] = []
        deliveries: dict[str, dict[str, Any]] = {}
        for key, channel, target, state, attempts, last_error, sent_at in self._conn.execute(
                "SELECT key, channel, target, state, attempts, last_error, sent_at FROM deliveries"):
            deliveries.setdefault(key, {})[channel] = {"target": target, "state": state, "attempts": attempts,
                                                        "last_error": last_error, "sent_at": sent_at}
        for key, created_at, alert in rows:
            out.append({"created_at": created_at, "alert": json.loads(alert), "deliveries": deliveries.get(key, {})})
        return out
