"""The physicists' completeness report (docs/report.md; docs/files.md, the report).

One self-contained HTML page and one CSV holding the same tables in long form. It covers
every study of the catalog, evaluated with the configured profile:

* completeness per scanner and per acquisition protocol, with the most frequent missing
  or invalid elements (event paths written ``events[].ctdivol_mGy``);
* the incomplete studies with their reasons;
* CTDIvol and DLP distributions per protocol and per body region, one chart per phantom
  (timing runs left out);
* timing runs (bolus tracking, test bolus);
* events above the configured notification values (AAPM Dose Check notification defaults);
* studies whose stated total DLP disagrees with the sum of their events;
* studies whose code billing received differs from what the rules give today (changed
  after submission: a rule change reclassified them, or their record changed).

The report stays in the hospital: studies are identified by accession number and study
date only (no names, patient IDs or birth dates), as the page says.

Three parts, one concern each:

* :class:`ReportBuilder` (here) accounts for one study at a time
  (:meth:`ReportBuilder.add_evaluated`; ``export`` builds the report in the same pass that
  writes the batch) in bounded memory: counters per group, compact ``array('d')`` columns
  of dose values, the first ``HTML_ROWS`` rows of each detail table (every row spooled to
  a temporary file for the CSV). :meth:`ReportBuilder.summary` turns that into a
  :class:`~.report_data.ReportSummary`, the documented plain data (``report_data``, which
  also works out the dose statistics, once, with pandas);
* ``report_html`` renders the summary as the page, ``report_csv`` as the CSV.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from dosereg.conf.config import Config
from dosereg.conf.fsutil import private_dir, private_file
from dosereg.extract import Event, StudyRecord

from . import dosimetry
from .report_csv import detail_writer, write_csv
from .report_data import (
    DISTRIBUTIONS,
    DLP_TOLERANCE_MGYCM,
    DLP_TOLERANCE_REL,
    HTML_ROWS,
    PHANTOM_NAMES,
    PHANTOMS,
    TOP_PROBLEMS,
    DetailTable,
    Distribution,
    GroupCompleteness,
    ReportSummary,
    TimingSummary,
    dose_stats,
    phantom_key,
)
from .report_exams import ExamTally
from .review_data import ReviewBuilder
from .rules import Evaluation

__all__ = ["ReportBuilder", "ReportSummary", "scanner_label", "write_report"]

_EVENT_PATH = re.compile(r"^events\[(\d+)\]")
_INDEX = re.compile(r"\[\d+\]")

_DETAIL_COLUMNS = {
    "incomplete_study": ("accession_number", "study_date", "scanner", "registry_code", "reasons"),
    "timing_run": ("accession_number", "study_date", "scanner", "protocol", "acquisition_type",
                   "ctdivol_mGy", "dlp_mGycm"),
    "above_notification": ("accession_number", "study_date", "scanner", "protocol", "category", "ctdivol_mGy",
                           "notification_value_mGy"),
    "dlp_disagreement": ("accession_number", "study_date", "scanner", "stated_total_dlp_mGycm",
                         "sum_of_events_dlp_mGycm", "difference_mGycm", "dose_objects"),
    "changed_after_submission": ("accession_number", "study_date", "scanner", "reported_code", "reported_at",
                                 "registry_code", "reasons"),
}


def scanner_label(equipment: Mapping[str, Any], missing: str = "(scanner not stated)") -> str:
    """'Manufacturer Model (station)', as physicists and the studies table name a scanner
    (``equipment``: the record's ``equipment`` in its dict form)."""
    return _scanner_name(equipment.get("manufacturer"), equipment.get("model"), equipment.get("station_name"),
                         missing)


def _scanner_name(manufacturer: Any, model: Any, station: Any, missing: str = "(scanner not stated)") -> str:
    name = " ".join(str(p) for p in (manufacturer, model) if p)
    if station:
        name = f"{name} ({station})" if name else str(station)
    return name or missing


class _Study(NamedTuple):
    """What the report takes from one evaluated study, whichever form it came in."""

    accession_number: Any
    study_date: Any
    scanner: str
    registry_code: str  # "unknown" for an error record (its verdicts are null)
    complete: bool
    problem_paths: Sequence[str]  # the missing, then the invalid, elements' concrete paths
    reasons: Sequence[str]  # why it is incomplete
    events: Sequence[Event]
    timing_runs: Sequence[bool]  # one per event
    age_years: Any
    stated_total_dlp: Any
    summed_total_dlp: Any
    dose_objects: int


def _study(record: StudyRecord, evaluation: Evaluation) -> _Study:
    """The typed form: a record and :func:`~.rules.evaluate` of it."""
    eq = record.equipment
    scanner = _scanner_name(eq.manufacturer, eq.model, eq.station_name)
    comp, flags = evaluation.completeness, evaluation.flags
    paths: Sequence[str]
    reasons: Sequence[str]
    if record.error is not None:
        # evaluated_dict (the contract) gives an error record null verdicts: no registry
        # code, no completeness; the report says so instead of the G9326 evaluate() implies
        code, complete, paths = "unknown", False, ()
        reasons = (f"error: {record.error.message}",)
    else:
        code, complete = flags.registry_code, comp.status == "complete"
        paths = (*comp.missing, *(i.path for i in comp.invalid if i.path))
        reasons = flags.registry_reasons or _element_reasons(comp.missing, [(i.path, i.reason) for i in comp.invalid])
    return _Study(record.accession_number, record.study_date, scanner, code, complete, paths, reasons,
                  record.events, evaluation.timing_runs, record.patient.age_years, record.reported_total_dlp_mGycm,
                  record.total_dlp_mGycm, len(record.dose_objects))


def _element_reasons(missing: Sequence[str], invalid: Sequence[tuple[Any, Any]]) -> list[str]:
    """Why a study is incomplete when the registry gave no reasons: its missing and invalid elements."""
    return [f"missing {p}" for p in missing] + [f"invalid {p}: {r}" for p, r in invalid]


def _generic(path: str) -> str:
    return _INDEX.sub("[]", path)


def _problems_by_event(paths: Sequence[str]) -> dict[int, set[str]]:
    """The generic problem paths of each event, by event index (``events[3].dlp_mGycm``)."""
    by_event: dict[int, set[str]] = {}
    for p in paths:
        m = _EVENT_PATH.match(p)
        if m:
            by_event.setdefault(int(m.group(1)), set()).add(_generic(p))
    return by_event


def _region(ev: Event) -> str:
    head = dosimetry.is_head_exam(ev)
    meaning = ev.target_region.meaning if ev.target_region is not None else None
    base = "Head" if head else "Body"
    return f"{base}: {meaning}" if meaning else f"{base}: (region not stated)"


def _is_value(v: object) -> TypeGuard[float]:
    """A stated dose value that can take part in a distribution (a number, not NaN)."""
    return isinstance(v, (int, float)) and v == v


@dataclass
class _Group:
    studies: int = 0
    complete: int = 0
    excluded: int = 0
    events: int = 0
    events_complete: int = 0
    problems: Counter[str] = field(default_factory=Counter)

    def summary(self, name: str) -> GroupCompleteness:
        return GroupCompleteness(name, self.studies, self.complete, self.excluded, self.events,
                                 self.events_complete, tuple(_top(self.problems, TOP_PROBLEMS)))


@dataclass
class _Detail:
    """A detail table: the first rows for the page (every row goes to the CSV spool)."""

    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0


class ReportBuilder:
    """Accounts for evaluated studies, one at a time, in bounded memory; :meth:`summary`
    gives what the report shows, :meth:`write` writes it (once: the CSV spool is consumed)."""

    def __init__(self, cfg: Config, reported: Mapping[str, tuple[str, str | None]] | None = None) -> None:
        """``reported``: study uid -> (code, when) billing received for it
        (:func:`.submission.reported_codes`), for the "changed after submission" table."""
        self.cfg = cfg
        self.reported = reported or {}
        self.studies = 0
        self.complete = 0
        self.codes: Counter[str] = Counter()
        self.scanners: dict[str, _Group] = {}
        self.protocols: dict[str, _Group] = {}
        self.problems: Counter[str] = Counter()
        # dose values: table of DISTRIBUTIONS -> phantom (PHANTOMS) -> group -> values
        self.doses: dict[str, dict[str, dict[str, array[float]]]] = {table: {} for table, _, _ in DISTRIBUTIONS}
        # timing runs' CTDIvol per protocol (NaN where not stated: it counts as a timing run,
        # not in the statistics)
        self.timing_by_protocol: dict[str, array[float]] = {}
        self.details = {name: _Detail(name, columns) for name, columns in _DETAIL_COLUMNS.items()}
        self.exams = ExamTally()  # exams without a dose report, per scanner and day
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
        self._spool_csv = detail_writer(self._spool)
        self.review = ReviewBuilder(cfg)  # the dose review's sections (review_data, docs/dose-review.md)

    # -- accumulation -------------------------------------------------------------------
    def add_evaluated(self, record: StudyRecord, evaluation: Evaluation) -> None:
        """Account for one study: ``record`` and ``evaluate(record, rules)``."""
        s = _study(record, evaluation)
        self._account(s)
        self._check_reported(record.study_instance_uid, s)
        self.exams.add(record, s.scanner, s.study_date)
        self.review.add(record.study_description, s.accession_number, s.study_date, s.scanner, s.registry_code,
                        s.events, s.timing_runs, s.age_years, record.patient.id)

    def _account(self, s: _Study) -> None:
        self.studies += 1
        code, complete = s.registry_code, s.complete
        self.codes[code] += 1
        self.complete += complete
        generic = {_generic(p) for p in s.problem_paths}
        self.problems.update(generic)

        g = self.scanners.get(s.scanner)
        if g is None:
            g = self.scanners[s.scanner] = _Group()
        g.studies += 1
        g.complete += complete
        g.excluded += code == "excluded"
        g.problems.update(generic)

        ident = {"accession_number": s.accession_number, "study_date": s.study_date, "scanner": s.scanner}
        if not complete:
            self._detail("incomplete_study", {**ident, "registry_code": code, "reasons": "; ".join(s.reasons)})

        by_event = _problems_by_event(s.problem_paths)
        seen_protocols: set[str] = set()
        for i, (ev, timing) in enumerate(zip(s.events, s.timing_runs, strict=True)):
            protocol = ev.acquisition_protocol or "(no protocol name)"
            pg = self._protocol_group(protocol, protocol not in seen_protocols, complete, code)
            seen_protocols.add(protocol)
            pg.events += 1
            ev_problems = by_event.get(i)
            if ev_problems:
                pg.problems.update(ev_problems)
            else:
                pg.events_complete += 1
            self._add_doses(ev, timing, protocol, ident)
            self._check_notification(ev, s.age_years, protocol, ident)
        self._check_total_dlp(s, ident)

    def _detail(self, name: str, row: dict[str, Any]) -> None:
        det = self.details[name]
        det.count += 1
        if len(det.rows) < HTML_ROWS:
            det.rows.append(row)
        self._spool_csv.writerow({"table": name, **row})

    def _protocol_group(self, protocol: str, first_in_study: bool, complete: bool, code: str) -> _Group:
        """The group of ``protocol``; a study counts once per protocol (``first_in_study``:
        its first event of that protocol), however many of its events use it."""
        pg = self.protocols.get(protocol)
        if pg is None:
            pg = self.protocols[protocol] = _Group()
        if first_in_study:
            pg.studies += 1
            pg.complete += complete
            pg.excluded += code == "excluded"
        return pg

    def _add_doses(self, ev: Event, timing: bool, protocol: str, ident: dict[str, Any]) -> None:
        """One event's CTDIvol and DLP: a timing run goes to its own table and distribution,
        a constant-angle acquisition (localizer) to none, any other event to the
        distributions per protocol and per body region."""
        ctdi, dlp = ev.ctdivol_mGy, ev.dlp_mGycm
        if timing:
            self.timing_by_protocol.setdefault(protocol, array("d")).append(
                float(ctdi) if isinstance(ctdi, (int, float)) else math.nan)
            self._detail("timing_run", {**ident, "protocol": protocol, "acquisition_type": ev.acquisition_type,
                                        "ctdivol_mGy": ctdi, "dlp_mGycm": dlp})
        elif ev.acquisition_type != "constant_angle":
            region = _region(ev)
            phantom = phantom_key(ev.phantom)
            doses = self.doses
            if _is_value(ctdi):
                doses["ctdivol_by_protocol"].setdefault(phantom, {}).setdefault(protocol, array("d")).append(ctdi)
                doses["ctdivol_by_body_region"].setdefault(phantom, {}).setdefault(region, array("d")).append(ctdi)
            if _is_value(dlp):
                doses["dlp_by_protocol"].setdefault(phantom, {}).setdefault(protocol, array("d")).append(dlp)
                doses["dlp_by_body_region"].setdefault(phantom, {}).setdefault(region, array("d")).append(dlp)

    def _check_notification(self, ev: Event, age: Any, protocol: str, ident: dict[str, Any]) -> None:
        """List the event when its CTDIvol is above the configured notification value for its
        category (which depends on the patient's ``age``)."""
        above = dosimetry.above_notification(ev, age, self.cfg.notification)
        if above is not None:
            category, value = above
            self._detail("above_notification", {
                **ident, "protocol": protocol, "category": category.replace("_", " "),
                "ctdivol_mGy": ev.ctdivol_mGy, "notification_value_mGy": round(value, 2)})

    def _check_total_dlp(self, s: _Study, ident: dict[str, Any]) -> None:
        """List the study when its stated total DLP and the sum of its events' DLP disagree
        beyond the tolerance (absolute, or relative to the larger)."""
        stated, summed = s.stated_total_dlp, s.summed_total_dlp
        if isinstance(stated, (int, float)) and isinstance(summed, (int, float)):
            diff = summed - stated
            if abs(diff) > max(DLP_TOLERANCE_MGYCM, DLP_TOLERANCE_REL * max(abs(stated), abs(summed))):
                self._detail("dlp_disagreement", {
                    **ident, "stated_total_dlp_mGycm": stated, "sum_of_events_dlp_mGycm": summed,
                    "difference_mGycm": round(diff, 2), "dose_objects": s.dose_objects})

    def _check_reported(self, uid: str | None, s: _Study) -> None:
        """List the study when billing received a code for it that today's rules no longer give
        (a QC scan reported before the classification caught it, a study completed later)."""
        before = self.reported.get(uid or "")
        if before is not None and before[0] != s.registry_code:
            self._detail("changed_after_submission", {
                "accession_number": s.accession_number, "study_date": s.study_date, "scanner": s.scanner,
                "reported_code": before[0], "reported_at": before[1], "registry_code": s.registry_code,
                "reasons": "; ".join(s.reasons)})

    # -- output ---------------------------------------------------------------------------
    def summary(self) -> ReportSummary:
        """What the report shows, as plain data (the dose statistics worked out now, once)."""
        tables = {f"{table}/{ph}": groups for table, by_phantom in self.doses.items()
                  for ph, groups in by_phantom.items()}
        stats = dose_stats({**tables, "timing": self.timing_by_protocol})
        distributions = tuple(
            Distribution(table, kind, f"{title}, {PHANTOM_NAMES[ph]}",
                         tuple(stats[f"{table}/{ph}"][g] for g in sorted(groups)), groups, ph)
            for table, kind, title in DISTRIBUTIONS for ph, _ in PHANTOMS
            if (groups := self.doses[table].get(ph)))
        timing = tuple(TimingSummary(p, len(v), stats["timing"].get(p)) for p, v in sorted(self.timing_by_protocol.items()))
        return ReportSummary(
            studies=self.studies, complete=self.complete, codes=dict(self.codes),
            problems=tuple(_top(self.problems, len(self.problems))),
            scanners=tuple(g.summary(n) for n, g in sorted(self.scanners.items())),
            protocols=tuple(g.summary(n) for n, g in sorted(self.protocols.items())),
            distributions=distributions, timing=timing,
            details={n: DetailTable(n, d.columns, tuple(d.rows), d.count) for n, d in self.details.items()},
            exams_without_report=self.exams.rows(),
            review=self.review.summary())

    def write(self, folder: Path, stem: str, batch_id: str | None = None,
              batches: list[dict[str, Any]] | None = None) -> list[Path]:
        """Write ``<stem>.html`` and ``<stem>.csv`` into ``folder``; returns both paths
        (``batches``: the lifecycle section's rows, :func:`.review.list_batches`)."""
        from .report_html import render_html

        summary = self.summary()
        private_dir(folder)
        csv_path = folder / f"{stem}.csv"
        # the report holds patient data: owner-only whatever the umask
        with os.fdopen(private_file(csv_path), "w", newline="", encoding="utf-8") as fh:
            write_csv(fh, summary, self._spool)
        self.close()
        html_path = folder / f"{stem}.html"
        with os.fdopen(private_file(html_path), "w", encoding="utf-8") as fh:
            fh.write(render_html(summary, self.cfg, batch_id, batches=batches))
        return [html_path, csv_path]

    def close(self) -> None:
        """Discard the CSV spool of a report that will not be written (:meth:`write` does this)."""
        self._spool.close()


def write_report(cfg: Config, studies: Callable[[], Iterator[StudyRecord]], out_dir: Path | None = None) -> list[Path]:
    """The completeness report alone: ``reports/completeness-<UTC time>.html`` and ``.csv``, with
    every batch's state and who approved it."""
    from .review import list_batches
    from .rules import evaluate, rules_from_config
    from .submission import reported_codes

    rules = rules_from_config(cfg)
    builder = ReportBuilder(cfg, reported_codes(cfg))
    for record in studies():
        builder.add_evaluated(record, evaluate(record, rules))
    out = (Path(out_dir) if out_dir is not None else cfg.data_dir) / "reports"
    private_dir(out)
    stem = "completeness-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    staging = Path(tempfile.mkdtemp(prefix=".staging-report-", dir=out))
    try:
        written = builder.write(staging, stem, batches=list_batches(cfg))
        final = []
        for p in written:
            target = out / p.name
            os.replace(p, target)
            final.append(target)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _top(counter: Counter[str], n: int) -> list[tuple[str, int]]:
    """The ``n`` most frequent, ties by name: the same page whatever the hash seed."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
