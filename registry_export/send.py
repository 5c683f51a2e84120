"""``dosereg send``: every approved (or failed, or interrupted) batch to every configured destination.

For each batch and destination, export state keeps what the destination acknowledged so far
(:mod:`.batches`, ``deliveries``); :func:`.destinations.deliver` is given those keys, so a
re-run -- after a failure, or after ``kill -9`` at any instant -- never sends again what a
destination acknowledged. Each destination's outcome is committed as soon as it is known.
The batch is ``acknowledged`` when every configured destination is; then its billing flags
are written (:mod:`.billing`). Otherwise it is ``failed`` with each destination's reason, and
the next ``send`` goes on from there. Tokens, passwords and keys never reach the state or
the logs (the destinations redact what a peer echoes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config, DestinationSettings

from . import batches, billing
from .clock import now_stamps
from .deid import Pseudonymizer
from .destinations import Delivery, Parcel, ParcelObject, deliver, require_destinations
from .lifecycle import ACKNOWLEDGED, APPROVED, FAILED, SENDING
from .placement import crash_point
from .review import BatchNotFoundError, acknowledge, flags_after_commit, locked_state
from .state import ExportState

log = logging.getLogger("dosereg.send")

#: the catalog's usable objects (``Catalog.object_rows``): sop_instance_uid, study_instance_uid,
#: sop_class_uid, raw_path (relative to the data directory)
ObjectRows = Callable[[], Iterable[Mapping[str, Any]]]
SENDABLE = (APPROVED, FAILED, SENDING)


@dataclass
class SendResult:
    batches: list[dict[str, Any]] = field(default_factory=list)  # batch_id, state, destinations
    flags_paths: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(b["state"] == ACKNOWLEDGED for b in self.batches)

    def summary(self) -> str:
        if not self.batches:
            return "nothing to send: no batch is approved or failed"
        lines = []
        for b in self.batches:
            lines.append(f"batch {b['batch_id']}: {b['state']}")
            for d in b["destinations"]:
                lines.append(f"  {d['name']}: {d['state']}" + (f", receipt {d['receipt']}" if d["receipt"] else "")
                             + (f" ({d['last_error']})" if d["last_error"] and d["state"] != ACKNOWLEDGED else ""))
        return "\n".join(lines + [f"  {p}" for p in self.flags_paths])


def send(cfg: Config, object_rows: ObjectRows, batch_id: str | None = None, by: str | None = None) -> SendResult:
    """Send ``batch_id`` (or every approved or failed batch) to every configured destination
    (module docstring); refuses with :class:`.destinations.NoDestinationError` when none is."""
    dests = require_destinations(cfg)
    pseudo = Pseudonymizer.from_config(cfg)
    result = SendResult()
    with locked_state(cfg) as state:
        result.flags_paths += billing.write_pending(cfg, state)
        state.commit()
        state.begin()
        if batch_id is not None:
            row = batches.batch_row(state.db, batch_id)
            if row is None:
                raise BatchNotFoundError(f"{state.path}: no batch {batch_id!r} (`dosereg batches` lists them)")
            targets = [row]
        else:
            targets = [b for b in batches.batch_rows(state.db) if b.state in SENDABLE]
        objects = _objects(cfg, object_rows) if targets else {}
        for b in targets:
            result.flags_paths += _send_batch(cfg, state, b, dests, pseudo, objects, by)
            result.batches.append({"batch_id": b.batch_id, "state": batches.batch_row(state.db, b.batch_id).state,  # type: ignore[union-attr]
                                   "destinations": [d.public() for d in batches.delivery_rows(state.db, b.batch_id).values()
                                                    if d.destination in {x.name for x in dests}]})
    return result


def _objects(cfg: Config, object_rows: ObjectRows) -> dict[str, Path]:
    """SOP Instance UID -> the stored file of each usable object of the catalog."""
    return {str(r["sop_instance_uid"]): cfg.data_dir / str(r["raw_path"]) for r in object_rows() if r.get("raw_path")}


def _parcel(cfg: Config, state: ExportState, b: batches.BatchRow, pseudo: Pseudonymizer,
            objects: Mapping[str, Path]) -> Parcel:
    parts = []
    for m in batches.member_rows(state.db, b.batch_id):
        if m.held or not m.to_registry:
            continue
        for sop, cls in m.info.get("objects") or ():
            path = objects.get(sop)
            if path is None:
                log.warning("send: batch %s: a dose object of a study is no longer in the catalog", b.batch_id)
                continue
            parts.append(ParcelObject(m.study_uid, sop, cls, path))
    return Parcel(b.facility_id, b.batch_id, Path(b.registry_dir or ""), tuple(parts), pseudo,
                  cfg.registry.date_precision)


def _send_batch(cfg: Config, state: ExportState, b: batches.BatchRow, dests: tuple[DestinationSettings, ...],
                pseudo: Pseudonymizer, objects: Mapping[str, Path], by: str | None) -> list[Path]:
    at = now_stamps().iso
    batches.move(state.db, b.batch_id, b.state, "send", at)
    state.log(b.batch_id, "send", f"to {', '.join(d.name for d in dests)}", at=at, actor=by)
    state.commit()
    state.begin()
    if b.secret_fingerprint is not None and b.secret_fingerprint != pseudo.fingerprint:
        return _fail(state, b.batch_id, "the pseudonym secret is not the one this batch was written with")
    parcel = _parcel(cfg, state, b, pseudo, objects)
    known = batches.delivery_rows(state.db, b.batch_id)
    for dest in dests:
        row = known.get(dest.name)
        if row is not None and row.state == ACKNOWLEDGED:
            continue
        new = _deliver_one(dest, parcel, row)
        batches.put_delivery(state.db, b.batch_id, new, now_stamps().iso)
        state.log(b.batch_id, "deliver", f"{dest.name} ({dest.kind}): {new.state}"
                  + (f", receipt {new.receipt}" if new.state == ACKNOWLEDGED else f": {new.last_error}"))
        log.info("send: batch %s to %s: %s, receipt %s", b.batch_id, dest.name, new.state, new.receipt)
        state.commit()
        crash_point("send_after_record")
        state.begin()
        known[dest.name] = new
    done = {d.name: known[d.name] for d in dests}
    if all(r.state == ACKNOWLEDGED for r in done.values()):
        acknowledge(state, b.batch_id, now_stamps().iso, {n: r.receipt for n, r in done.items()},
                    {d.name: d for d in dests}, "every destination acknowledged")
        crash_point("send_before_ack_commit")
        return flags_after_commit(cfg, state)
    errors = "; ".join(f"{n}: {r.last_error or r.state}" for n, r in done.items() if r.state != ACKNOWLEDGED)
    return _fail(state, b.batch_id, errors)


def _fail(state: ExportState, batch_id: str, reason: str) -> list[Path]:
    at = now_stamps().iso
    row = batches.batch_row(state.db, batch_id)
    batches.move(state.db, batch_id, row.state if row else SENDING, "fail", at)
    state.db.execute("UPDATE batches SET last_error = ? WHERE batch_id = ?", (reason[:2000], batch_id))
    state.log(batch_id, "fail", reason[:2000], at=at)
    log.warning("send: batch %s failed: %s", batch_id, reason)
    return []


def _deliver_one(dest: DestinationSettings, parcel: Parcel, row: batches.DeliveryRow | None) -> batches.DeliveryRow:
    """One destination's delivery, after what it acknowledged before (``row``)."""
    done = row.done if row is not None else frozenset()
    stored = row.stored if row is not None else frozenset()
    attempts = row.attempts if row is not None else 0
    crash_point("send_before_deliver")
    try:
        d: Delivery = deliver(dest, parcel, done, stored)
    except (OSError, ValueError) as exc:  # an unusable manifest, certificate or file: nothing sent
        return batches.DeliveryRow(dest.name, dest.kind, FAILED, None, attempts, str(exc)[:1000], done, stored,
                                   row.skipped if row is not None else frozenset())
    crash_point("send_after_deliver")
    state = ACKNOWLEDGED if d.state == "acknowledged" else d.state
    receipt = d.receipt if d.receipt is not None else (row.receipt if row is not None else None)
    if state == ACKNOWLEDGED and receipt is None:
        receipt = row.receipt if row is not None else None
    return batches.DeliveryRow(dest.name, dest.kind, state, receipt, attempts + d.attempts, d.last_error,
                               done | d.acknowledged, d.stored, frozenset(k for k, _ in d.skipped))
