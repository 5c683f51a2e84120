"""The review step of the batch lifecycle: list, review, approve, hold, release, reject (docs/lifecycle.md).

Each function opens export state itself (under the export lock for a change), so the CLI
(``dosereg batches``, ``review``, ...) and the web workbench call the same code. Every change
is one transaction with its audit-log entry (person ``by``, operating-system user, time,
action, comment). :func:`acknowledge` ends a batch: every destination acknowledged what it
takes (``send``), or there was nothing to send (at approval); the billing flags follow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config, DestinationSettings

from . import batches, billing
from .clock import now_stamps
from .lifecycle import APPROVED, PENDING_REVIEW, TransitionError
from .rewrite import rewrite_without
from .state import ExportState, export_lock, state_path


class BatchNotFoundError(ValueError):
    """No batch of that id in export state."""


@contextmanager
def locked_state(cfg: Config) -> Iterator[ExportState]:
    """Export state under the export lock, in one transaction committed when the block ends."""
    with export_lock(cfg):
        state = ExportState(state_path(cfg))
        try:
            state.begin()
            yield state
            state.commit()
        finally:
            state.rollback()
            state.close()


@contextmanager
def reading_state(cfg: Config) -> Iterator[ExportState | None]:
    """Export state to read (None when nothing was ever exported)."""
    path = state_path(cfg)
    if not path.exists():
        yield None
        return
    state = ExportState(path)  # brings an older schema up to date first
    try:
        yield state
    finally:
        state.close()


def _batch(state: ExportState, batch_id: str) -> batches.BatchRow:
    row = batches.batch_row(state.db, batch_id)
    if row is None:
        raise BatchNotFoundError(f"{state.path}: no batch {batch_id!r} (`dosereg batches` lists them)")
    return row


def _counts(members: list[batches.MemberRow]) -> dict[str, int]:
    counts = {"G9327": 0, "G9326": 0, "excluded": 0, "held": 0}
    for m in members:
        if m.held:
            counts["held"] += 1
            continue
        code = m.billed_code or (m.info.get("flags") or {}).get("registry_code")
        if code in counts:
            counts[code] += 1
    return counts


def batch_dict(state: ExportState, b: batches.BatchRow) -> dict[str, Any]:
    """One batch as ``dosereg batches --json`` lists it (spec section 8)."""
    return {"batch_id": b.batch_id, "state": b.state, "created_at": b.created_at,
            "counts": _counts(batches.member_rows(state.db, b.batch_id)),
            "approved_by": b.approved_by, "approved_at": b.approved_at, "acknowledged_at": b.acknowledged_at,
            "last_error": b.last_error,
            "destinations": [d.public() for d in batches.delivery_rows(state.db, b.batch_id).values()]}


def list_batches(cfg: Config) -> list[dict[str, Any]]:
    """Every batch, oldest first (``dosereg batches``)."""
    with reading_state(cfg) as state:
        if state is None:
            return []
        return [batch_dict(state, b) for b in batches.batch_rows(state.db)]


def _changes(state: ExportState, m: batches.MemberRow, batch_id: str) -> dict[str, Any] | None:
    """For a study re-submitted after a later dose object: what differs from what the registry has."""
    if not m.to_registry:
        return None
    before = batches.previous_info(state.db, m.study_uid, batch_id)
    if before is None:
        return None
    had = set(before.get("events") or ())
    return {"events_added": [e for e in m.info.get("events") or () if e not in had],
            "total_events": {"before": before.get("total_events"), "after": m.info.get("total_events")},
            "total_dlp_mGycm": {"before": before.get("total_dlp_mGycm"), "after": m.info.get("total_dlp_mGycm")}}


def review_batch(cfg: Config, batch_id: str) -> list[dict[str, Any]]:
    """The batch's studies (``dosereg review BATCH``): one dict per study (spec section 8)."""
    with reading_state(cfg) as state:
        if state is None:
            raise BatchNotFoundError(f"{state_path(cfg)}: no batch {batch_id!r}: nothing was exported yet")
        _batch(state, batch_id)
        out = []
        for m in batches.member_rows(state.db, batch_id):
            row = m.info.get("flags") or {}
            out.append({"study_instance_uid": m.study_uid, "accession_number": row.get("accession_number"),
                        "registry_code": row.get("registry_code"), "nomenclature_code": row.get("nomenclature_code"),
                        "reasons": [r for r in str(row.get("reasons") or "").split("; ") if r],
                        "to_registry": m.to_registry, "held": m.held, "changes": _changes(state, m, batch_id)})
        return out


@dataclass
class Outcome:
    """What a lifecycle command did (its summary line) and the files it wrote."""

    batch_id: str
    state: str
    message: str
    paths: list[Path] = field(default_factory=list)


def _has_registry_studies(state: ExportState, batch_id: str) -> bool:
    return any(m.to_registry and not m.held for m in batches.member_rows(state.db, batch_id))


def approve(cfg: Config, batch_id: str, by: str, comment: str | None = None) -> Outcome:
    """``pending_review`` -> ``approved``; a batch with no study for the registry is acknowledged at once."""
    with locked_state(cfg) as state:
        b = _batch(state, batch_id)
        at = now_stamps().iso
        batches.move(state.db, batch_id, b.state, "approve", at)
        state.db.execute("UPDATE batches SET approved_by = ?, approved_at = ? WHERE batch_id = ?", (by, at, batch_id))
        state.log(batch_id, "approve", comment, at=at, actor=by)
        finish_if_nothing_to_send(state, batch_id, at)
        paths = flags_after_commit(cfg, state)
        after = _batch(state, batch_id).state
    message = f"batch {batch_id} approved by {by}"
    return Outcome(batch_id, after, message + ("; nothing to send: acknowledged, billing flags written"
                                               if after != APPROVED else ""), paths)


def finish_if_nothing_to_send(state: ExportState, batch_id: str, at: str) -> bool:
    """An approved batch with no study for the registry is acknowledged at approval."""
    if _has_registry_studies(state, batch_id):
        return False
    acknowledge(state, batch_id, at, {}, {}, "nothing to send: acknowledged at approval")
    return True


def flags_after_commit(cfg: Config, state: ExportState) -> list[Path]:
    """Commit what the open transaction did, then write the flags of every acknowledged batch
    still without them (:func:`.billing.write_pending`), in a transaction of its own."""
    state.commit()
    state.begin()
    return billing.write_pending(cfg, state)


def hold(cfg: Config, batch_id: str, study_uids: Sequence[str], by: str, reason: str) -> Outcome:
    """Leave studies (original Study Instance UIDs) out of a ``pending_review`` batch: its registry
    files and manifest are rewritten; they come back in the first export after :func:`release`."""
    with locked_state(cfg) as state:
        b = _batch(state, batch_id)
        if b.state != PENDING_REVIEW:
            raise TransitionError(f"cannot hold studies of batch {batch_id}: it is {b.state}, and hold needs "
                                  f"{PENDING_REVIEW}")
        members = {m.study_uid: m for m in batches.member_rows(state.db, batch_id)}
        unknown = [u for u in study_uids if u not in members]
        if unknown:
            raise ValueError(f"batch {batch_id} has no study {', '.join(unknown)}")
        uids = [u for u in dict.fromkeys(study_uids) if not members[u].held]
        at = now_stamps().iso
        batches.restore(state.db, batch_id, uids)
        batches.hold_members(state.db, batch_id, uids, at, by, reason)
        if any(members[u].to_registry for u in uids):
            rewrite_without(cfg, state, b, [u for u, m in members.items() if m.held or u in uids])
        state.log(batch_id, "hold", f"{len(uids)} studies held: {reason}", at=at, actor=by)
    return Outcome(batch_id, PENDING_REVIEW, f"batch {batch_id}: {len(uids)} studies held; registry files rewritten")


def release(cfg: Config, study_uids: Sequence[str], by: str, comment: str | None = None) -> list[tuple[str, str]]:
    """Release held studies: the next export offers them again. (batch id, study uid) of each."""
    with locked_state(cfg) as state:
        at = now_stamps().iso
        released = batches.release_holds(state.db, study_uids, at, by)
        for batch_id, uid in released:
            state.log(batch_id, "release", f"{uid}" + (f": {comment}" if comment else ""), at=at, actor=by)
        return released


def reject(cfg: Config, batch_id: str, by: str, reason: str) -> Outcome:
    """Withdraw a ``pending_review`` batch: its studies are offered again by the next export."""
    with locked_state(cfg) as state:
        b = _batch(state, batch_id)
        at = now_stamps().iso
        after = batches.move(state.db, batch_id, b.state, "reject", at)
        batches.restore(state.db, batch_id)
        state.log(batch_id, "reject", reason, at=at, actor=by)
    return Outcome(batch_id, after, f"batch {batch_id} rejected by {by}: its studies go into the next export")


def _accepting(dests: Sequence[DestinationSettings], m: batches.MemberRow) -> list[str]:
    """The destinations that take this study: the registry files' kinds every study, a DICOM
    gateway those with a dose object of a SOP class it takes."""
    out = []
    for d in dests:
        if d.kind != "dicom" or any(cls in d.sop_classes for _, cls in m.info.get("objects") or ()):
            out.append(d.name)
    return out


def acknowledge(state: ExportState, batch_id: str, at: str, receipts: Mapping[str, str | None],
                dests: Mapping[str, DestinationSettings], comment: str) -> None:
    """End the batch: each study's billed code and receipt, and the state (the flags files
    follow once this is committed: :func:`flags_after_commit`)."""
    b = _batch(state, batch_id)
    batches.move(state.db, batch_id, b.state, "acknowledge", at)
    for m in batches.member_rows(state.db, batch_id):
        if m.held:
            continue
        code = (m.info.get("flags") or {}).get("registry_code")
        receipt = None
        if code == billing.REPORTED:
            names = _accepting(list(dests.values()), m) if m.to_registry else []
            if names:
                receipt = ";".join(f"{n}={receipts.get(n) or ''}" for n in names)
            else:
                code = billing.NOT_REPORTED
                why = (f"not reported: no configured destination ({', '.join(dests)}) takes any of its dose objects"
                       if m.to_registry else "not reported: this batch did not carry it to the registry")
                state.db.execute("UPDATE batch_studies SET info = json_set(info, '$.unreported', ?) "
                                 "WHERE batch_id = ? AND study_uid = ?", (why, batch_id, m.study_uid))
        state.db.execute("UPDATE batch_studies SET billed_code = ?, receipt = ? WHERE batch_id = ? AND study_uid = ?",
                         (code, receipt, batch_id, m.study_uid))
    state.db.execute("UPDATE batches SET acknowledged_at = ?, last_error = NULL WHERE batch_id = ?", (at, batch_id))
    state.log(batch_id, "acknowledge", comment, at=at)


def auto_approve(state: ExportState, batch_id: str, at: str) -> bool:
    """``[review] required = false``: the export approves its batch at once, logged as such;
    True when it was then acknowledged (nothing to send)."""
    state.db.execute("UPDATE batches SET approved_at = ? WHERE batch_id = ?", (at, batch_id))
    state.log(batch_id, "approve", "approved at export: [review] required = false", at=at)
    return finish_if_nothing_to_send(state, batch_id, at)


def study_batches(cfg: Config, study_uid: str) -> list[dict[str, Any]]:
    """The batches a study (original Study Instance UID) was in, oldest first, each as
    :func:`list_batches` gives it, with ``held`` (the study was held out of it) and the
    study's ``billed_code`` and ``receipt`` there."""
    with reading_state(cfg) as state:
        if state is None:
            return []
        out = []
        for b in batches.batch_rows(state.db):
            m = {r.study_uid: r for r in batches.member_rows(state.db, b.batch_id)}.get(study_uid)
            if m is not None:
                out.append({**batch_dict(state, b), "held": m.held, "billed_code": m.billed_code,
                            "receipt": m.receipt})
        return out


def flags_since(cfg: Config, since: str | None = None) -> list[dict[str, Any]]:
    """The rows of every billing flags file written at or after ``since`` (an ISO datetime;
    None: all), in writing order, each with its ``batch_id`` and ``written_at``.

    Raises ValueError for a ``since`` that is not an ISO datetime."""
    cutoff = billing.parse_since(since)
    with reading_state(cfg) as state:
        if state is None:
            return []
        return billing.written_rows(state.db, cutoff)
