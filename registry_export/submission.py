"""``submission`` of a study record: where the study stands in the batch lifecycle (spec section 8).

``{state, batch_id, billed_code, receipt, reported_at}``: ``state`` from the study's latest
batch (:func:`.lifecycle.submission_state`: ``eligible``, ``pending_review``, ``approved``,
``sending``, ``failed``, ``acknowledged``, ``held``, ``not_eligible``, ``no_dose_report``); ``billed_code`` and
``receipt`` are those of the study's latest billing row (an acknowledged batch's), else null.
Billing reads the flags files, never ``flags.registry_code`` (what the study is eligible for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dosereg.conf.config import Config

from . import batches
from .lifecycle import FINISHED, submission_state
from .state import ExportState, state_path

Submission = dict[str, Any]

#: ``source`` of a study record the PACS or RIS told of (docs/reconcile.md)
EXAM_SOURCES = ("pacs", "ris")


def submission_of(standing: batches.Standing | None, registry_code: str | None,
                  no_dose_report: bool = False) -> Submission:
    s = standing or batches.Standing()
    state = submission_state(s.batch_state, s.held, registry_code, no_dose_report)
    in_batch = s.held or (s.batch_state is not None and (s.batch_state not in FINISHED or state == "acknowledged"))
    return {"state": state, "batch_id": s.batch_id if in_batch else None, "billed_code": s.billed_code,
            "receipt": s.receipt, "reported_at": s.reported_at}


def submission_lookup(cfg: Config) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that sets ``submission`` on an evaluated study record (and returns it), from
    export state read once."""
    path = state_path(cfg)
    standings: dict[str, batches.Standing] = {}
    if path.exists():
        state = ExportState(path)
        try:
            standings = batches.standings(state.db)
        finally:
            state.close()

    def add(d: dict[str, Any]) -> dict[str, Any]:
        code = (d.get("flags") or {}).get("registry_code")
        exam = d.get("source") in EXAM_SOURCES and not d.get("dose_objects")  # an exam without a dose report
        d["submission"] = submission_of(standings.get(d.get("study_instance_uid") or ""), code, exam)
        return d

    return add


def reported_codes(cfg: Config) -> dict[str, tuple[str, str | None]]:
    """:func:`.batches.reported` from the export state of ``cfg`` (empty before any export)."""
    path = state_path(cfg)
    if not path.exists():
        return {}
    state = ExportState(path)
    try:
        return batches.reported(state.db)
    finally:
        state.close()
