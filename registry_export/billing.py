"""Billing follows receipts: ``flags/<batch_id>.csv`` and ``.parquet``, written once a batch is acknowledged.

A ``G9327`` row means the registry acknowledged the study (docs/lifecycle.md): the flags of a
batch are written only when every destination acknowledged every study it takes, one row per
study of the batch whose billing row is new or changed (held studies have none):

* ``G9327`` with ``reported_at`` (the acknowledgement) and ``receipt`` (each destination that
  took the study: ``name=receipt``, joined with ``;``);
* ``G9326`` with its reasons: incomplete studies, studies no destination takes (the reason
  names the destinations), and the CT exams the PACS or RIS knows but no dose report arrived
  for (they are the batch's members like studies, docs/reconcile.md);
* ``excluded`` for non-patient studies.

The rows come from export state alone (kept with the batch's members at export), so writing
them again after a crash gives the same bytes: the files are written under a temporary name,
fsynced and renamed, then ``flags_written_at`` is recorded; a batch acknowledged but without it
gets its flags at the next lifecycle command (:func:`write_pending`).
"""

from __future__ import annotations

import csv
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.conf.fsutil import PRIVATE_FILE_MODE, fsync_dir, parse_utc

from . import batches
from .placement import crash_point, private_folder
from .state import ExportState
from .writers import FlagsWriter, sha256_file

log = logging.getLogger("dosereg.billing")

REPORTED = "G9327"
NOT_REPORTED = "G9326"

def billing_rows(db: Any, batch_id: str, acknowledged_at: str | None) -> list[dict[str, Any]]:
    """The flags rows of an acknowledged batch, from its members (module docstring)."""
    out = []
    for m in batches.member_rows(db, batch_id):
        if m.held or not m.to_flags:
            continue
        row = dict(m.info.get("flags") or {})
        code = m.billed_code or row.get("registry_code")
        if code != row.get("registry_code"):
            why = m.info.get("unreported")
            row["reasons"] = "; ".join(r for r in (row.get("reasons"), why) if r)
        row["registry_code"] = code
        row["reported_at"] = acknowledged_at if code == REPORTED else None
        row["receipt"] = m.receipt if code == REPORTED else None
        out.append(row)
    return out


def write_flags(cfg: Config, state: ExportState, batch_id: str) -> list[Path]:
    """Write the batch's flags files (module docstring) and record it in the open transaction."""
    row = batches.batch_row(state.db, batch_id)
    if row is None or row.acknowledged_at is None:
        raise ValueError(f"batch {batch_id} is not acknowledged: no billing flags before the registry's receipt")
    rows = billing_rows(state.db, batch_id, row.acknowledged_at)
    folder = private_folder(Path(row.out_dir) / "flags")
    paths = []
    if rows:
        final = [folder / f"{batch_id}.csv", folder / f"{batch_id}.parquet"]
        tmp = [p.with_name(f".{p.name}.partial") for p in final]
        writer = FlagsWriter(tmp[0], tmp[1])
        for r in rows:
            writer.append(r)
        writer.close()
        for i, (t, f) in enumerate(zip(tmp, final, strict=True)):
            os.chmod(t, PRIVATE_FILE_MODE)
            with open(t, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(t, f)
            fsync_dir(folder)
            if i == 0:
                crash_point("flags_mid")
            state.db.execute("INSERT OR REPLACE INTO batch_files VALUES (?, 'flags', ?, ?, ?)",
                             (batch_id, f.name, sha256_file(f), f.stat().st_size))
        paths = final
    state.db.execute("UPDATE batches SET flags_written_at = ?, flag_rows = ? WHERE batch_id = ?",
                     (row.acknowledged_at, len(rows), batch_id))
    state.log(batch_id, "flags", f"{len(rows)} billing rows written ({sum(r['registry_code'] == REPORTED for r in rows)}"
              f" {REPORTED}, each with its receipt)")
    log.info("billing: batch %s: %d flag rows written", batch_id, len(rows))
    return paths


def write_pending(cfg: Config, state: ExportState) -> list[Path]:
    """Flags of every acknowledged batch whose flags were not yet written (a crash in between)."""
    out: list[Path] = []
    for b in batches.batch_rows(state.db):
        if b.acknowledged_at is not None and b.flags_written_at is None:
            out += write_flags(cfg, state, b.batch_id)
    return out


def parse_since(since: str | None) -> datetime | None:
    """``since`` as an aware UTC datetime (a naive one is taken as UTC); ValueError naming it."""
    if since is None or not since.strip():
        return None
    when = parse_utc(since)
    if when is None:
        raise ValueError(f"since: {since!r} is not an ISO date or datetime (e.g. 2026-12-01T00:00:00Z)")
    return when


def written_rows(db: Any, cutoff: datetime | None) -> list[dict[str, Any]]:
    """The rows of the flags files written at or after ``cutoff``, oldest file first."""
    out: list[dict[str, Any]] = []
    for b in sorted((b for b in batches.batch_rows(db) if b.flags_written_at), key=lambda b: str(b.flags_written_at)):
        written = parse_since(b.flags_written_at)
        if cutoff is not None and written is not None and written < cutoff:
            continue
        path = Path(b.out_dir) / "flags" / f"{b.batch_id}.csv"
        if not path.exists():
            continue  # a batch whose flags had no row writes no file
        with open(path, newline="", encoding="utf-8") as fh:
            out += [{**row, "batch_id": b.batch_id, "written_at": b.flags_written_at} for row in csv.DictReader(fh)]
    return out
