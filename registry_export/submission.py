"""``submission`` of a study record: where the study stands in the batch lifecycle (spec section 8).

``{state, batch_id, billed_code, receipt, reported_at}``: ``state`` from the study's latest
batch (:func:`.lifecycle.submission_state`: ``eligible``, ``pending_review``, ``approved``,
``sending``, ``failed``, ``acknowledged``, ``held``, ``not_eligible``, ``no_dose_report``); ``billed_code`` and
``receipt`` are those of the study's latest billing row (an acknowledged batch's), else null.
Billing reads the flags files, never ``flags.registry_code`` (what the study is eligible for).

:func:`read_submissions` reads every study's standing once; :func:`export_state_stamp` says
when export state changed since (a cache of the states, like the workbench's study index,
reads them again only then).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dosereg.conf.config import Config
from dosereg.conf.fsutil import sqlite_stamp
from dosereg.extract import ExamRecord, StudyRecord

from . import batches
from .lifecycle import FINISHED, SUBMISSION_STATES, submission_state
from .state import ExportState, state_path

Submission = dict[str, Any]

#: ``source`` of a study record the PACS or RIS told of (docs/reconcile.md)
EXAM_SOURCES = ("pacs", "ris")

__all__ = ["EXAM_SOURCES", "SUBMISSION_STATES", "Submission", "Submissions", "export_state_stamp",
           "no_dose_report", "read_submissions", "submission_lookup", "submission_of"]


def submission_of(standing: batches.Standing | None, registry_code: str | None,
                  no_dose_report: bool = False) -> Submission:
    s = standing or batches.Standing()
    state = submission_state(s.batch_state, s.held, registry_code, no_dose_report)
    in_batch = s.held or (s.batch_state is not None and (s.batch_state not in FINISHED or state == "acknowledged"))
    return {"state": state, "batch_id": s.batch_id if in_batch else None, "billed_code": s.billed_code,
            "receipt": s.receipt, "reported_at": s.reported_at}


def no_dose_report(record: StudyRecord) -> bool:
    """An exam the PACS or RIS knows of that no dose object came for (the ``no_dose_report`` state)."""
    return isinstance(record, ExamRecord) and not record.dose_objects


@dataclass(frozen=True)
class Submissions:
    """Every study's standing in the lifecycle, read once from export state (:func:`read_submissions`)."""

    standings: Mapping[str, batches.Standing] = field(default_factory=dict)

    def of(self, study_uid: str, registry_code: str | None, no_dose_report: bool = False) -> Submission:
        """The ``submission`` object of the study ``study_uid``, eligible for ``registry_code``."""
        return submission_of(self.standings.get(study_uid), registry_code, no_dose_report)


def export_state_stamp(cfg: Config) -> tuple[Any, ...]:
    """What changes whenever export state changes (its files' size and modification time): read
    it before :func:`read_submissions`, and a change after that read shows as another stamp."""
    return sqlite_stamp(state_path(cfg))


def read_submissions(cfg: Config) -> Submissions:
    """Every study's standing from export state (none yet: every study eligible or not)."""
    path = state_path(cfg)
    if not path.exists():
        return Submissions()
    state = ExportState(path)
    try:
        return Submissions(batches.standings(state.db))
    finally:
        state.close()


def submission_lookup(cfg: Config) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that sets ``submission`` on an evaluated study record (and returns it), from
    export state read once."""
    subs = read_submissions(cfg)

    def add(d: dict[str, Any]) -> dict[str, Any]:
        code = (d.get("flags") or {}).get("registry_code")
        exam = d.get("source") in EXAM_SOURCES and not d.get("dose_objects")  # an exam without a dose report
        d["submission"] = subs.of(d.get("study_instance_uid") or "", code, exam)
        return d

    return add


def reported_codes(cfg: Config) -> dict[str, tuple[str, str | None]]:
    """:func:`.batches.reported` from the export state of ``cfg``, read without migrating it
    (empty before any export)."""
    path = state_path(cfg)
    if not path.exists():
        return {}
    state = ExportState(path, readonly=True)
    try:
        return batches.reported(state.db)
    finally:
        state.close()
