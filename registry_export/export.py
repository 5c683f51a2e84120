"""``dosereg export``: the registry submission batch, the billing flags and the report.

One pass over the catalog's studies, in constant memory (:mod:`.scan`): each study is
evaluated with the configured rules, fed to the completeness report and, when it is new or
changed since the last batch (:mod:`.decision`), written out:

* to the registry (``registry/<facility_id>/<batch_id>/``: ``studies.parquet``,
  ``events.parquet``, ``submission.json``, ``manifest.json``; :mod:`.registry_files`) when its
  registry code is ``G9327`` and its content fingerprint differs from the one last submitted
  (never submitted, or it gained a dose object since: submitted again under the same
  pseudonymous UID);
* to billing (``flags/<batch_id>.csv`` and ``.parquet``) when its flags row differs from
  the one billing last got in what billing acts on: registry and nomenclature codes,
  accession number, study UID, patient ID and date (a reworded reason alone is not news);
* ``reports/completeness-<batch_id>.html`` and ``.csv`` cover every study of the catalog.

Before that pass, :func:`.scan.anything_new` checks whether any study is new or changed at
all (with the source's version keys, without reading a record); when none is, the export
writes nothing at all -- no empty batch -- and says so (``dosereg report`` still writes the
completeness report on demand). Parts of a batch with no rows are left out: a batch whose
studies are all ``G9326`` or ``excluded`` has flags and a report but no registry folder, and a
batch that only re-submits changed studies whose flags did not change has no flags files.

Everything is written under a staging folder ``.staging-<batch_id>`` in the data directory;
when it is complete the batch's *intent* (its studies, fingerprints and the SHA-256 of every
file) is committed to export state (``<data_dir>/export-state.sqlite``, :mod:`.state`), then
the files are renamed into place and a second transaction records the batch as exported. A
crash at any instant is repaired by the next export before anything else (:mod:`.placement`):
the batch is completed or adopted when any of its billing or registry files was placed,
discarded when none was, so a study is never submitted twice nor its flags written twice. The
export refuses a pseudonym secret other than the one export state recorded (:mod:`.secret`).
Every file and folder written is owner-only.

``export --out DIR`` is a preview: the registry files and the report of the batch the next
export would write go to DIR, nothing else is written (no flags) and no state is recorded,
so the next export is unaffected.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.extract import StudyRecord

from . import batches, billing, review
from .batch_writer import BatchWriter, ReportTarget
from .clock import Stamps, now_stamps
from .deid import Pseudonymizer
from .lifecycle import ACKNOWLEDGED, APPROVED, PENDING_REVIEW, after_export
from .placement import STAGING_PREFIX, Staging, crash_point, place, remove_stale_staging, repair
from .registry_files import submission_header, write_manifest
from .rules import Rules, rules_from_config
from .scan import Counts, Scan, anything_new
from .secret import (
    PSEUDONYMS_CHANGED_AT,
    SecretChangedError,
    change_secret,
    check_recorded,
    check_secret,
    recorded_secret,
)
from .source import StudySource, as_source
from .state import BatchFile, ExportState, StudyLookup, export_lock, state_path
from .table import studies_table
from .writer_process import open_writer

__all__ = ["STAGING_PREFIX", "ExportResult", "SecretChangedError", "change_secret", "export_batch", "export_marks",
           "recorded_secret", "repair_interrupted", "studies_table"]

log = logging.getLogger("dosereg.export")

_STATE_LINES = {
    PENDING_REVIEW: "pending_review: the batch awaits review (`dosereg review {batch}`, then `dosereg approve {batch} "
                    "--by NAME`, then `dosereg send`)",
    APPROVED: "approved at export ([review] required = false): `dosereg send` delivers it",
    ACKNOWLEDGED: "acknowledged at approval: nothing to send to the registry; billing flags written",
}


@dataclass(kw_only=True)
class ExportResult(Counts):
    """What an export did: the pass's :class:`~.scan.Counts`, and the batch it wrote."""

    batch_id: str | None
    created_at: str
    out_dir: Path
    registry_dir: Path | None = None
    flags_paths: list[Path] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    previous_batch: str | None = None
    repaired: list[str] = field(default_factory=list)  # what was done to batches an interrupted export left
    preview: bool = False  # `export --out DIR`: nothing recorded
    state: str | None = None  # the batch's lifecycle state once recorded (pending_review, approved, ...)

    def count(self, counts: Counts) -> None:
        for f in fields(Counts):  # the result is the pass's counts, and more
            setattr(self, f.name, getattr(counts, f.name))

    @property
    def paths(self) -> list[Path]:
        out = []
        if self.registry_dir is not None:
            out += [self.registry_dir / n for n in
                    ("studies.parquet", "events.parquet", "submission.json", "manifest.json")]
        return out + self.flags_paths + self.report_paths

    def summary(self) -> str:
        repaired = [f"repaired: {r}" for r in self.repaired]
        if self.batch_id is None:
            since = f" since batch {self.previous_batch}" if self.previous_batch else ""
            return "\n".join([*repaired, (
                f"nothing new to export{since}: {_n(self.studies_seen, 'study', 'studies')} in the catalog, "
                f"none new or changed; no batch written (`dosereg report` writes the completeness report)")])
        if self.preview:
            lines = [
                f"preview of batch {self.batch_id} (nothing recorded: the next export is unaffected): "
                f"{_n(self.studies_seen, 'study', 'studies')} evaluated; {self.registry_studies} would go to the "
                f"registry ({self.registry_resubmitted} re-submitted after a change, "
                f"{_n(self.registry_events, 'event')}), {_n(self.flag_rows, 'billing flag row')} would be written "
                f"(not in a preview)"
            ]
        else:
            lines = [*repaired,
                     f"batch {self.batch_id}: {_n(self.studies_seen, 'study', 'studies')} evaluated; "
                     f"{self.registry_studies} to the registry ({self.registry_resubmitted} re-submitted after a "
                     f"change, {_n(self.registry_events, 'event')}), {_n(self.flag_rows, 'billing flag row')} "
                     f"{'written' if self.state == ACKNOWLEDGED else 'when the registry acknowledges it'}",
                     f"  {_STATE_LINES.get(self.state or '', self.state or '').format(batch=self.batch_id)}"]
        if self.skipped_no_uid:
            lines.append(f"  {_n(self.skipped_no_uid, 'study', 'studies')} without a Study Instance UID "
                         f"{'was' if self.skipped_no_uid == 1 else 'were'} skipped")
        if self.registry_dir is None:
            lines.append("  registry: nothing to submit in this batch (no new or changed G9327 study)")
        lines += [f"  {p}" for p in self.paths]
        return "\n".join(lines)


def _n(count: int, one: str, many: str | None = None) -> str:
    """``1 study``, ``2 studies``: a count with its noun in the right number."""
    return f"{count} {one if count == 1 else many or one + 's'}"


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """The export allocates millions of short-lived, acyclic dicts and lists (freed by reference
    counting); the cyclic collector's passes over them cost a quarter of the time, so it is
    paused for the export and restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def export_batch(cfg: Config, source: StudySource | Callable[[], Iterable[StudyRecord]],
                 out_dir: Path | None = None) -> ExportResult:
    """Write one batch of every study not yet submitted or changed since (module docstring).

    ``source``: a :class:`.source.StudySource` (``records()``, and ``versions()`` when the
    catalog has them), or a function giving the records. With ``out_dir`` it is a preview: the
    registry files and the report go to ``out_dir``, and no state, batch or flag is recorded
    (the next export is unaffected).
    """
    pseudo = Pseudonymizer.from_config(cfg)  # refuse before touching anything
    studies = as_source(source)
    with _without_cyclic_gc():
        if out_dir is not None:
            return _preview(cfg, studies, Path(out_dir), pseudo)
        with export_lock(cfg):
            state = ExportState(state_path(cfg))
            try:
                return _export_locked(cfg, studies, state, pseudo)
            finally:
                state.rollback()
                state.close()


def repair_interrupted(state: ExportState, now: str) -> list[str]:
    """Repair every batch an interrupted export left ``writing`` (:func:`placement.repair`)."""
    return [repair(state, intent, now) for intent in state.intents()]


@dataclass(frozen=True)
class _Batch:
    """What one batch is: its id, when, where it goes and with which secret."""

    cfg: Config
    batch_id: str
    seq: int
    created_at: str
    out: Path
    pseudo: Pseudonymizer
    pseudonyms_changed_at: str | None

    @classmethod
    def at(cls, cfg: Config, now: Stamps, seq: int, out: Path, pseudo: Pseudonymizer,
           changed_at: str | None) -> _Batch:
        return cls(cfg, f"{now.compact}-{seq:04d}", seq, now.iso, out, pseudo, changed_at)


def _export_locked(cfg: Config, source: StudySource, state: ExportState, pseudo: Pseudonymizer) -> ExportResult:
    out = cfg.data_dir
    state.begin()
    now = now_stamps()
    changed_at = check_secret(state, pseudo, cfg, now.iso)
    state.exported_state = after_export(cfg.review.required)
    repaired = repair_interrupted(state, now.iso)
    state.commit()
    state.begin()
    billing.write_pending(cfg, state)  # a batch acknowledged by a command that was interrupted before its flags
    state.commit()
    state.begin()
    seq = state.next_seq()
    previous = state.last_batch()
    batch = _Batch.at(cfg, now, seq, out, pseudo, changed_at)
    result = ExportResult(batch_id=batch.batch_id, created_at=batch.created_at, out_dir=out,
                          previous_batch=previous[0] if previous else None, repaired=repaired)
    remove_stale_staging(out)
    rules = rules_from_config(cfg)
    rkey = rules.key
    blocked = state.blocked()
    settled = anything_new(source, state.lookup, rkey)
    if settled is not None:
        return _nothing_new(result, settled, state)
    staging = Staging(out, batch.batch_id)
    keep_staging = False
    try:
        files = _write_staged(batch, rules, rkey, source, staging, result, state, state.lookup, blocked,
                              batches.reported(state.db))
        if files is None:
            return _nothing_new(result, None, state)
        crash_point("after_staging")
        state.record_intent(batch.batch_id, seq, batch.created_at, cfg.site.facility_id, out, staging.root,
                            (result.studies_seen, result.registry_studies, result.registry_events,
                             result.flag_rows), files, pseudo.fingerprint, changed_at)
        state.commit()
        keep_staging = True  # from here on an interrupted batch is repaired from its staging folder
        crash_point("after_intent")
        placed = place(staging, cfg.site.facility_id, batch.batch_id, files)
        result.registry_dir = placed.registry_dir
        result.flags_paths = placed.flags_paths or []
        result.report_paths = placed.report_paths or []
        state.begin()
        placed_at = now_stamps().iso
        state.complete(batch.batch_id, placed.registry_dir, placed_at)
        result.state = state.exported_state
        if state.exported_state == APPROVED and review.auto_approve(state, batch.batch_id, placed_at):
            result.state = ACKNOWLEDGED
        crash_point("before_state_commit")
        state.commit()
        crash_point("after_state_commit")
        staging.remove()
        if result.state == ACKNOWLEDGED:
            state.begin()
            result.flags_paths = billing.write_pending(cfg, state)
            state.commit()
        log.info("export: batch %s written (%d registry studies, %d flag rows)",
                 batch.batch_id, result.registry_studies, result.flag_rows)
        return result
    finally:
        if not keep_staging:
            staging.remove()


def _nothing_new(result: ExportResult, counts: Counts | None, state: ExportState) -> ExportResult:
    """No batch: only what the studies found settled were evaluated with is recorded."""
    if counts is not None:
        result.count(counts)
    state.commit()
    result.batch_id = None
    log.info("export: nothing new (%d studies seen)", result.studies_seen)
    return result


def _preview(cfg: Config, source: StudySource, out: Path, pseudo: Pseudonymizer) -> ExportResult:
    """``export --out DIR``: the batch the next export would write, into DIR; nothing recorded."""
    path = state_path(cfg)
    state = ExportState(path, readonly=True) if path.exists() else None
    try:
        seq, previous, changed_at = 1, None, None
        if state is not None:
            check_recorded(state, pseudo, cfg)
            if state.intents():
                log.warning("export: an interrupted batch is waiting for the next export to repair it; "
                            "the preview shows what the export state says now")
            seq, previous, changed_at = state.next_seq(), state.last_batch(), state.meta(PSEUDONYMS_CHANGED_AT)
        lookup = state.lookup if state is not None else (lambda: StudyLookup(None))
        batch = _Batch.at(cfg, now_stamps(), seq, out, pseudo, changed_at)
        result = ExportResult(batch_id=batch.batch_id, created_at=batch.created_at, out_dir=out,
                              previous_batch=previous[0] if previous else None, preview=True)
        rules = rules_from_config(cfg)
        rkey = rules.key
        blocked = state.blocked() if state is not None else frozenset()
        settled = anything_new(source, lookup, rkey)
        if settled is not None:
            result.count(settled)
            result.batch_id = None
            return result
        staging = Staging(out, batch.batch_id)
        try:
            reported = batches.reported(state.db) if state is not None else {}  # read-only: never migrated
            files = _write_staged(batch, rules, rkey, source, staging, result, None, lookup, blocked, reported)
            if files is None:
                result.batch_id = None
                return result
            placed = place(staging, cfg.site.facility_id, batch.batch_id, files)
            result.registry_dir = placed.registry_dir
            result.report_paths = placed.report_paths or []
            return result
        finally:
            staging.remove()
    finally:
        if state is not None:
            state.close()


def _write_staged(batch: _Batch, rules: Rules, rkey: str, source: StudySource, staging: Staging,
                  result: ExportResult, state: ExportState | None,
                  lookup: Callable[[], StudyLookup], blocked: frozenset[str],
                  reported: Mapping[str, tuple[str, str | None]]) -> list[BatchFile] | None:
    """Evaluate every study and write the batch's files under ``staging`` (with ``state``: its
    members recorded in the open transaction); the staged files, or None when nothing is new."""
    cfg = batch.cfg
    header = submission_header(cfg, rules, batch.batch_id, batch.created_at)
    writer = open_writer(lambda: BatchWriter(cfg, staging.registry, header, batch.pseudo, reported))
    try:
        scan = Scan(rules, rkey, batch.batch_id, writer, staging.flags, state, blocked)
        counts = scan.run(source, lookup)
        result.count(counts)
        note = _report_note(batch.cfg, state is None)
        report_to = None if counts.nothing_new else ReportTarget(
            staging.reports, f"completeness-{batch.batch_id}", batch.batch_id + note)
        written = writer.finish(report_to)
    except BaseException:
        writer.abort()
        raise
    if counts.nothing_new:
        return None
    hashes: dict[str, tuple[str, int]] = {}
    if written.registry_rows is not None:
        hashes = write_manifest(staging.registry, header, written.registry_rows, batch.pseudonyms_changed_at)
    staging.make_private()
    return staging.files(hashes)


def _report_note(cfg: Config, preview: bool) -> str:
    """What the report says of its batch's place in the lifecycle (docs/lifecycle.md)."""
    if preview:
        return " (a preview: nothing recorded)"
    if cfg.review.required:
        return " (awaiting review: `dosereg review` it, then approve; billing flags follow the registry's receipt)"
    return " (approved at export: [review] required = false; billing flags follow the registry's receipt)"


def last_export(cfg: Config) -> dict[str, str] | None:
    """``{"batch_id", "created_at"}`` of the last batch placed (``dosereg status``), None before the first."""
    path = state_path(cfg)
    if not path.exists():
        return None
    state = ExportState(path, readonly=True)
    try:
        last = state.last_batch()
    finally:
        state.close()
    return {"batch_id": last[0], "created_at": last[1]} if last else None


def export_marks(cfg: Config) -> dict[str, dict[str, Any]]:
    """study_instance_uid -> {"batch_id", "exported_at"} of the last batch the study was in."""
    path = state_path(cfg)
    if not path.exists():
        return {}
    state = ExportState(path, readonly=True)
    try:
        return state.marks()
    finally:
        state.close()
