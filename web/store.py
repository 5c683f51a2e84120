"""Accounts, API tokens, sessions, failed logins and the audit log: ``web.sqlite``.

One small SQLite file in the data directory, owner-only (it names the people who may see
patient data and what they looked at). Passwords are Argon2id hashes (argon2-cffi's
defaults, RFC 9106's second recommended setting); API tokens and session ids are random
256-bit values, so a SHA-256 of each is enough to keep them unrecoverable from the file.
The audit table is append-only: triggers refuse UPDATE and DELETE on it.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from dosereg.conf.fsutil import PRIVATE_FILE_MODE, create_private, private_dir

F = TypeVar("F", bound=Callable[..., Any])
STORE_NAME = "web.sqlite"
ROLES = ("viewer", "billing", "physicist")  # each may do what the ones before it may
TOKEN_ROLES = ("viewer", "billing")  # a token is for a program: it never approves
MIN_PASSWORD = 12
TOKEN_PREFIX = "drt_"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tokens (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
        last_used_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id_sha256 TEXT PRIMARY KEY, user TEXT NOT NULL, role TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS login_failures (kind TEXT NOT NULL, subject TEXT NOT NULL, at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS login_failures_subject ON login_failures(kind, subject, at)",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT, os_user TEXT, address TEXT,
        action TEXT NOT NULL, target TEXT, detail TEXT)""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit(at)",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
]


class AccountError(ValueError):
    """A refused account or token operation (unknown name, short password, bad role)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a person (``kind`` "user") or a program (``kind`` "token")."""

    name: str
    role: str
    kind: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container): leave it out
        return None


def _locked(method: F) -> F:
    @functools.wraps(method)
    def run(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, run)


class Store:
    """``web.sqlite`` of a data directory. Thread-safe: one connection, each method under a lock
    (the server calls it from its event loop and from worker threads)."""

    def __init__(self, data_dir: Path) -> None:
        private_dir(data_dir)
        self.path = Path(data_dir) / STORE_NAME
        create_private(self.path)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        for sql in _SCHEMA:
            self._db.execute(sql)
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, PRIVATE_FILE_MODE)
        self._hasher = PasswordHasher()  # Argon2id
        self._lock = threading.RLock()

    @_locked
    def close(self) -> None:
        self._db.close()

    # -- users -----------------------------------------------------------------------------
    @_locked
    def add_user(self, name: str, role: str, password: str) -> None:
        _check_name(name)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
        try:
            self._db.execute("INSERT INTO users VALUES (?, ?, ?, ?)",
                             (name, role, self._hasher.hash(password), now_iso()))
        except sqlite3.IntegrityError:
            raise AccountError(f"user {name!r} exists already (dosereg user remove first)") from None

    @_locked
    def users(self) -> list[dict[str, Any]]:
        return _dicts(self._db.execute("SELECT name, role, created_at FROM users ORDER BY name"))

    @_locked
    def remove_user(self, name: str) -> None:
        with self._db:
            if not self._db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                raise AccountError(f"no user {name!r}")
            self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))  # logged out everywhere

    @_locked
    def check_password(self, name: str, password: str) -> Principal | None:
        """The user when ``password`` is theirs; None otherwise (also for an unknown name, after
        the same work: a hash is verified either way, so timing does not tell names apart)."""
        row = self._db.execute("SELECT role, password_hash FROM users WHERE name = ?", (name,)).fetchone()
        stored = row[1] if row else _dummy_hash()
        try:
            self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self._hasher.check_needs_rehash(stored):
            self._db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (self._hasher.hash(password), name))
        return Principal(name, row[0], "user")

    # -- tokens ----------------------------------------------------------------------------
    @_locked
    def add_token(self, name: str, role: str) -> str:
        """A new token for a program (billing's flag pick-up); returned once, kept hashed."""
        _check_name(name)
        if role not in TOKEN_ROLES:
            raise AccountError(f"a token's role must be one of {', '.join(TOKEN_ROLES)}, not {role!r}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            self._db.execute("INSERT INTO tokens (name, role, token_sha256, created_at) VALUES (?, ?, ?, ?)",
                             (name, role, _sha256(token), now_iso()))
        except sqlite3.IntegrityError:
            raise AccountError(f"token {name!r} exists already (dosereg token revoke first)") from None
        return token

    @_locked
    def tokens(self) -> list[dict[str, Any]]:
        return _dicts(self._db.execute("SELECT name, role, created_at, last_used_at FROM tokens ORDER BY name"))

    @_locked
    def revoke_token(self, name: str) -> None:
        if not self._db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount:
            raise AccountError(f"no token {name!r}")

    @_locked
    def check_token(self, token: str) -> Principal | None:
        row = self._db.execute("SELECT name, role FROM tokens WHERE token_sha256 = ?", (_sha256(token),)).fetchone()
        if row is None:
            return None
        self._db.execute("UPDATE tokens SET last_used_at = ? WHERE name = ?", (now_iso(), row[0]))
        return Principal(row[0], row[1], "token")

    # -- sessions --------------------------------------------------------------------------
    @_locked
    def new_session(self, who: Principal, hours: float) -> tuple[str, str]:
        """(session id for the cookie, CSRF token of the session)."""
        sid, csrf, t = secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time()
        with self._db:
            self._db.execute("DELETE FROM sessions WHERE expires_at < ?", (t,))
            self._db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                             (_sha256(sid), who.name, who.role, csrf, t, t + hours * 3600))
        return sid, csrf

    @_locked
    def session(self, sid: str) -> tuple[Principal, str] | None:
        """The session's user (with the role they have now) and CSRF token, while it lasts."""
        row = self._db.execute(
            "SELECT s.user, u.role, s.csrf FROM sessions s JOIN users u ON u.name = s.user "
            "WHERE s.id_sha256 = ? AND s.expires_at > ?", (_sha256(sid), time.time())).fetchone()
        return (Principal(row[0], row[1], "user"), row[2]) if row else None

    @_locked
    def end_session(self, sid: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_sha256(sid),))

    # -- failed logins -----------------------------------------------------------------------
    @_locked
    def note_failure(self, account: str, address: str) -> None:
        t = time.time()
        with self._db:
            self._db.execute("DELETE FROM login_failures WHERE at < ?", (t - FAILURE_WINDOW_S,))
            self._db.executemany("INSERT INTO login_failures VALUES (?, ?, ?)",
                                 [("account", account, t), ("address", address, t)])

    @_locked
    def clear_failures(self, account: str) -> None:
        self._db.execute("DELETE FROM login_failures WHERE kind = 'account' AND subject = ?", (account,))

    @_locked
    def login_wait(self, account: str, address: str) -> float:
        """Seconds before another login attempt for ``account`` from ``address`` is heard: 0
        for the first few failures in the window, then doubling with each one (capped)."""
        t = time.time()
        wait = 0.0
        for kind, subject, free in (("account", account, FREE_ACCOUNT_FAILURES),
                                    ("address", address, FREE_ADDRESS_FAILURES)):
            n, last = self._db.execute(
                "SELECT COUNT(*), MAX(at) FROM login_failures WHERE kind = ? AND subject = ? AND at >= ?",
                (kind, subject, t - FAILURE_WINDOW_S)).fetchone()
            if n >= free and last is not None:
                delay = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (n - free))
                wait = max(wait, last + delay - t)
        return max(0.0, wait)

    # -- audit -------------------------------------------------------------------------------
    @_locked
    def audit(self, action: str, actor: str | None, address: str | None = None, target: str | None = None,
              detail: str | None = None) -> None:
        self._db.execute("INSERT INTO audit (at, actor, os_user, address, action, target, detail) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (now_iso(), actor, _os_user(), address, action, target, detail))

    @_locked
    def audit_rows(self, since: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT at, actor, os_user, address, action, target, detail FROM audit"
        if since:
            return _dicts(self._db.execute(sql + " WHERE at >= ? ORDER BY id", (since,)))
        return _dicts(self._db.execute(sql + " ORDER BY id"))


# Failed logins: the first few in the window cost nothing (typing errors), then each one
# doubles the wait before the next attempt is even checked, per account (guessing one
# person's password from many addresses) and per address (one machine trying many names).
FAILURE_WINDOW_S = 900.0
FREE_ACCOUNT_FAILURES = 5
FREE_ADDRESS_FAILURES = 20
BASE_DELAY_S = 1.0
MAX_DELAY_S = 300.0

@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to verify against for an unknown name (made once, on first need: an Argon2id
    hash takes 64 MiB and a fraction of a second, not something to do at import)."""
    return PasswordHasher().hash("not a password of anyone's")


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError(f"a name is 1-64 letters, digits or . _ - @, not {name!r}")


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
