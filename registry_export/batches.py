"""Export state of the batch lifecycle (schema 5): states, held studies, deliveries, receipts.

Kept beside :mod:`.state` (same SQLite file, same transactions; docs/lifecycle.md):

``batches`` gains ``approved_by``, ``approved_at``, ``acknowledged_at``, ``flags_written_at``
and ``last_error``; its ``state`` takes the lifecycle's values (:mod:`.lifecycle`).
``batch_studies`` gains ``held`` (left out of the batch by ``dosereg hold``), ``prev`` (JSON of
the study's ``studies`` row before this batch was applied to it, NULL: it had none), ``info``
(JSON: the billing row, the dose objects, the totals ``review`` compares), ``billed_code`` and
``receipt`` (set at acknowledgement).
``holds``
    one row per held study: by whom, why, and when it was released.
``deliveries``
    one row per (batch, destination): state, receipt, attempts, last error, and the keys
    acknowledged (``done``) or stored but not yet acknowledged (``stored``) that
    :func:`.destinations.deliver` takes, so that a re-run never sends again what a destination
    acknowledged.

A batch's members are applied to ``studies`` when it is exported (so the next export offers
only what is new or changed); a study of an unfinished batch, or held, is not offered again
(:func:`blocked`). Rejecting a batch, or holding a study, puts each study's ``studies`` row back
as it was (:func:`restore`), so the next export offers it again against what the registry and
billing really have.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .lifecycle import ACKNOWLEDGED, LEGACY, REJECTED, UNFINISHED, transition

SCHEMA_5 = """
CREATE TABLE IF NOT EXISTS holds (
    batch_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    held_at TEXT NOT NULL,
    held_by TEXT,
    reason TEXT,
    released_at TEXT,
    released_by TEXT,
    PRIMARY KEY (batch_id, study_uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    batch_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,           -- acknowledged | failed | pending_commitment | sending
    receipt TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done TEXT NOT NULL DEFAULT '[]',    -- JSON list of the keys this destination acknowledged
    stored TEXT NOT NULL DEFAULT '[]',  -- JSON list of keys stored, not yet acknowledged
    skipped TEXT NOT NULL DEFAULT '[]', -- JSON list of keys this destination does not take
    updated_at TEXT,
    PRIMARY KEY (batch_id, destination)
) WITHOUT ROWID;
"""
BATCH_COLUMNS_5 = ("approved_by TEXT", "approved_at TEXT", "acknowledged_at TEXT", "flags_written_at TEXT",
                   "last_error TEXT")
MEMBER_COLUMNS_5 = ("held INTEGER NOT NULL DEFAULT 0", "prev TEXT", "info TEXT", "billed_code TEXT", "receipt TEXT")
#: the columns of ``studies`` that ``prev`` keeps
STUDY_COLUMNS = ("registry_fingerprint", "registry_batch_id", "flags_key", "flags_batch_id", "batch_id",
                 "exported_at", "input_key", "last_code", "source_version", "rules_key")


def migrate_to_5(db: sqlite3.Connection, run_script: Any, add_columns: Any) -> None:
    """Schema 4 -> 5: the lifecycle's columns and tables; batches placed before it are ``legacy``
    (never sent) and their studies are offered again (``studies`` forgets what they carried,
    keeping only the mark of the last batch)."""
    add_columns(db, "batches", BATCH_COLUMNS_5)
    add_columns(db, "batch_studies", MEMBER_COLUMNS_5)
    run_script(db, SCHEMA_5)
    db.execute("UPDATE batches SET state = ? WHERE state NOT IN ('writing', 'discarded')", (LEGACY,))
    db.execute("UPDATE studies SET registry_fingerprint = NULL, registry_batch_id = NULL, flags_key = NULL, "
               "flags_batch_id = NULL, input_key = NULL, last_code = NULL, source_version = NULL, rules_key = NULL")


def capture_prev(db: sqlite3.Connection, batch_id: str) -> None:
    """Keep in each member the ``studies`` row the batch is about to overwrite (see :func:`restore`)."""
    pairs = ", ".join(f"'{c}', s.{c}" for c in STUDY_COLUMNS)
    db.execute(f"""UPDATE batch_studies SET prev = (SELECT json_object({pairs}) FROM studies s
                   WHERE s.study_uid = batch_studies.study_uid) WHERE batch_id = ?""", (batch_id,))


def restore(db: sqlite3.Connection, batch_id: str, uids: Iterable[str] | None = None) -> None:
    """Put back the ``studies`` rows of a batch's members (all, or ``uids``) as they were before
    the batch: the next export compares the studies against what was really received."""
    rows = db.execute("SELECT study_uid, prev FROM batch_studies WHERE batch_id = ?", (batch_id,)).fetchall()
    wanted = set(uids) if uids is not None else None
    for uid, prev in rows:
        if wanted is not None and uid not in wanted:
            continue
        if prev is None:
            db.execute("DELETE FROM studies WHERE study_uid = ? AND batch_id = ?", (uid, batch_id))
            continue
        old = json.loads(prev)
        sets = ", ".join(f"{c} = ?" for c in STUDY_COLUMNS)
        db.execute(f"UPDATE studies SET {sets} WHERE study_uid = ? AND batch_id = ?",
                   (*(old.get(c) for c in STUDY_COLUMNS), uid, batch_id))


def member_info(d: dict[str, Any], row: dict[str, Any]) -> str:
    """What a member keeps for later: its billing row (written at acknowledgement), its dose
    objects (what ``send`` takes from the catalog) and what ``review`` compares."""
    events = d.get("events") or ()
    return json.dumps({
        "flags": row,
        "objects": [[o.get("sop_instance_uid"), o.get("sop_class_uid")] for o in d.get("dose_objects") or ()],
        "events": [e.get("irradiation_event_uid") for e in events],
        "total_events": d.get("total_events"),
        "total_dlp_mGycm": _finite(d.get("total_dlp_mGycm")),
    }, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)


def _finite(value: Any) -> Any:
    """A number JSON can carry (an implausible non-finite total is null here, as in the registry files)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def blocked(db: sqlite3.Connection) -> frozenset[str]:
    """Studies the next export leaves alone: those of an unfinished batch, and the held ones."""
    marks = ",".join("?" * len(UNFINISHED))
    rows = db.execute(f"""SELECT m.study_uid FROM batch_studies m JOIN batches b ON b.batch_id = m.batch_id
                          WHERE b.state IN ({marks}) AND NOT m.held
                          UNION SELECT study_uid FROM holds WHERE released_at IS NULL""", tuple(UNFINISHED))
    return frozenset(r[0] for r in rows)


# -- batches ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    state: str
    created_at: str
    facility_id: str
    registry_dir: str | None
    secret_fingerprint: str | None
    approved_by: str | None
    approved_at: str | None
    acknowledged_at: str | None
    flags_written_at: str | None
    last_error: str | None
    out_dir: str


_BATCH_SELECT = ("SELECT batch_id, state, created_at, facility_id, registry_dir, secret_fingerprint, approved_by, "
                 "approved_at, acknowledged_at, flags_written_at, last_error, out_dir FROM batches")
#: states that are not a batch of the lifecycle (an export's intent, a discarded one)
NOT_BATCHES = ("writing", "discarded")


def batch_rows(db: sqlite3.Connection) -> list[BatchRow]:
    return [BatchRow(*r) for r in db.execute(_BATCH_SELECT + " WHERE state NOT IN (?, ?) ORDER BY seq", NOT_BATCHES)]


def batch_row(db: sqlite3.Connection, batch_id: str) -> BatchRow | None:
    r = db.execute(_BATCH_SELECT + " WHERE batch_id = ? AND state NOT IN (?, ?)", (batch_id, *NOT_BATCHES)).fetchone()
    return BatchRow(*r) if r else None


def move(db: sqlite3.Connection, batch_id: str, state: str, action: str, at: str) -> str:
    """Apply ``action`` (:func:`.lifecycle.transition`) to the batch; its new state."""
    t = transition(state, action, batch_id)
    db.execute("UPDATE batches SET state = ?, state_changed_at = ? WHERE batch_id = ?", (t.after, at, batch_id))
    return t.after


@dataclass(frozen=True)
class MemberRow:
    study_uid: str
    to_registry: bool
    to_flags: bool
    held: bool
    info: dict[str, Any]
    billed_code: str | None
    receipt: str | None


def member_rows(db: sqlite3.Connection, batch_id: str) -> list[MemberRow]:
    return [MemberRow(uid, bool(r), bool(f), bool(h), json.loads(i) if i else {}, code, receipt)
            for uid, r, f, h, i, code, receipt in db.execute(
                "SELECT study_uid, to_registry, to_flags, held, info, billed_code, receipt FROM batch_studies "
                "WHERE batch_id = ? ORDER BY study_uid", (batch_id,))]


def previous_info(db: sqlite3.Connection, uid: str, batch_id: str) -> dict[str, Any] | None:
    """What the last acknowledged batch before ``batch_id`` sent to the registry for the study."""
    row = db.execute("""SELECT m.info FROM batch_studies m JOIN batches b ON b.batch_id = m.batch_id
                        WHERE m.study_uid = ? AND m.to_registry AND NOT m.held AND b.state = ?
                          AND b.seq < (SELECT seq FROM batches WHERE batch_id = ?)
                        ORDER BY b.seq DESC LIMIT 1""", (uid, ACKNOWLEDGED, batch_id)).fetchone()
    return json.loads(row[0]) if row and row[0] else None


def hold_members(db: sqlite3.Connection, batch_id: str, uids: Iterable[str], at: str, by: str | None,
                 reason: str | None) -> None:
    for uid in uids:
        db.execute("UPDATE batch_studies SET held = 1 WHERE batch_id = ? AND study_uid = ?", (batch_id, uid))
        db.execute("INSERT OR REPLACE INTO holds VALUES (?, ?, ?, ?, ?, NULL, NULL)", (batch_id, uid, at, by, reason))


def release_holds(db: sqlite3.Connection, uids: Iterable[str], at: str, by: str | None) -> list[tuple[str, str]]:
    """Release the active holds of ``uids``; (batch id, study uid) of each released."""
    out = []
    for uid in uids:
        for (batch_id,) in db.execute("SELECT batch_id FROM holds WHERE study_uid = ? AND released_at IS NULL",
                                      (uid,)).fetchall():
            db.execute("UPDATE holds SET released_at = ?, released_by = ? WHERE batch_id = ? AND study_uid = ?",
                       (at, by, batch_id, uid))
            out.append((batch_id, uid))
    return out


# -- deliveries ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeliveryRow:
    destination: str
    kind: str
    state: str
    receipt: str | None
    attempts: int
    last_error: str | None
    done: frozenset[str]
    stored: frozenset[str]
    skipped: frozenset[str]

    def public(self) -> dict[str, Any]:
        return {"name": self.destination, "state": self.state, "receipt": self.receipt,
                "last_error": self.last_error, "attempts": self.attempts}


def delivery_rows(db: sqlite3.Connection, batch_id: str) -> dict[str, DeliveryRow]:
    return {r[0]: DeliveryRow(r[0], r[1], r[2], r[3], r[4], r[5], frozenset(json.loads(r[6])),
                              frozenset(json.loads(r[7])), frozenset(json.loads(r[8])))
            for r in db.execute("SELECT destination, kind, state, receipt, attempts, last_error, done, stored, "
                                "skipped FROM deliveries WHERE batch_id = ? ORDER BY destination", (batch_id,))}


def put_delivery(db: sqlite3.Connection, batch_id: str, row: DeliveryRow, at: str) -> None:
    db.execute("INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (batch_id, row.destination, row.kind, row.state, row.receipt, row.attempts, row.last_error,
                json.dumps(sorted(row.done)), json.dumps(sorted(row.stored)), json.dumps(sorted(row.skipped)), at))


# -- what `dosereg studies` says of each study ------------------------------------------------------

@dataclass(frozen=True)
class Standing:
    """A study's place in the lifecycle, from export state alone (its code comes from the record)."""

    batch_id: str | None = None
    batch_state: str | None = None
    held: bool = False
    billed_code: str | None = None
    receipt: str | None = None
    reported_at: str | None = None


def reported(db: sqlite3.Connection) -> dict[str, tuple[str, str | None]]:
    """study uid -> (code, acknowledged at) of the latest flags row billing received for it (an
    acknowledged batch's, the study not held there): what billing acted on, to compare with
    what the rules give today (the report's "changed after submission").

    An export state of a schema before the lifecycle's (read, not migrated, by a preview) has
    no receipts: nothing was reported."""
    out: dict[str, tuple[str, str | None]] = {}
    try:
        rows = db.execute("""SELECT m.study_uid, m.billed_code, b.acknowledged_at
                             FROM batch_studies m JOIN batches b ON b.batch_id = m.batch_id
                             WHERE b.state = ? AND m.to_flags AND NOT m.held AND m.billed_code IS NOT NULL
                             ORDER BY b.seq""", (ACKNOWLEDGED,)).fetchall()
    except sqlite3.OperationalError:  # no such column / table: an earlier schema
        return out
    for uid, code, acked in rows:
        out[uid] = (code, acked)
    return out


def standings(db: sqlite3.Connection) -> dict[str, Standing]:
    """study uid -> :class:`Standing`: its latest batch (rejected and legacy ones do not count),
    an active hold, and its latest flags row (an acknowledged batch's)."""
    out: dict[str, Standing] = {}
    rows = db.execute("""SELECT m.study_uid, m.batch_id, b.state, m.held, m.to_flags, m.billed_code, m.receipt,
                                b.acknowledged_at
                         FROM batch_studies m JOIN batches b ON b.batch_id = m.batch_id
                         WHERE b.state NOT IN (?, ?, ?, ?) ORDER BY b.seq""", (*NOT_BATCHES, REJECTED, LEGACY))
    for uid, batch_id, state, held, to_flags, code, receipt, acked in rows:
        if held:
            continue
        old = out.get(uid, Standing())
        if state == ACKNOWLEDGED and to_flags:
            old = Standing(billed_code=code, receipt=receipt, reported_at=acked if code == "G9327" else None)
        out[uid] = Standing(batch_id, state, False, old.billed_code, old.receipt, old.reported_at)
    for uid, batch_id in db.execute("SELECT study_uid, batch_id FROM holds WHERE released_at IS NULL"):
        old = out.get(uid, Standing())
        out[uid] = Standing(batch_id, old.batch_state, True, old.billed_code, old.receipt, old.reported_at)
    return out
