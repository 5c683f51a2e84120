"""``dosereg reconcile``: every CT study of the PACS ends with a dose object or as an exam without one.

Day by day from ``since`` to ``until`` (docs/reconcile.md): the day's CT studies are asked
for (:class:`.qr_find.StudyFinder`); a study the catalog has a dose object for is already
complete; for any other, its dose objects (SR, Philips dose screens: :mod:`.qr_retrieve`) not
already held are fetched through the ingest path, and a study that still has none is kept as
an exam without a dose report (:meth:`Catalog.add_exam`). A day whose studies were all dealt
with is noted (``reconcile_days``): a backfill (``--since 2016-01-01``) that is interrupted
resumes at the first day not done, and nothing already held is fetched twice. A day is done
for good only once it was reconciled at least :data:`SETTLE_DAYS` days after it ended (a PACS
still receives a day's studies for a while); more recent days are asked again by every run.
Failures of the PACS (statuses, timeouts) are reported per study; an unreachable PACS ends the
run (exit status 1).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from dosereg.conf.config import Config, ConfigError
from dosereg.conf.pacs import PacsSettings
from dosereg.extract import Equipment, ExamRecord, Patient

from .catalog import Catalog, catalog_path
from .importer import ImportSummary, _recover_left_over
from .pipeline import Pipeline, extract_limits
from .qr_find import Series, Study, StudyFinder, series_instances, study_series
from .qr_retrieve import Retriever, is_dose_object, worth_listing
from .qr_session import PacsUnreachable, QueryError, Session, echo

log = logging.getLogger("dosereg.ingest.reconcile")

#: a day reconciled at least this long after it ended is not asked again (unless ``again``)
SETTLE_DAYS = 7


class ReconcileError(Exception):
    """Reconcile cannot run (no [pacs], C-MOVE without a listener, the PACS unreachable)."""


@dataclass
class ReconcileSummary:
    ct_studies: int = 0
    already_complete: int = 0
    retrieved: int = 0
    without_dose_report: int = 0
    days: int = 0
    days_skipped: int = 0  # reconciled (and settled) by an earlier run
    ignored_rows: int = 0  # --from-csv: rows of another modality
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def line(self) -> str:
        line = (f"CT studies found {self.ct_studies}, already complete {self.already_complete}, "
                f"dose objects retrieved {self.retrieved}, still without a dose report {self.without_dose_report}")
        if self.days_skipped:
            line += f", days already reconciled {self.days_skipped}"
        if self.ignored_rows:
            line += f", rows not CT ignored {self.ignored_rows}"
        if self.failures:
            line += f", failures {len(self.failures)}"
        return line


def iso_date(text: str | None) -> str | None:
    """``YYYYMMDD`` or ``YYYY-MM-DD`` -> ``YYYY-MM-DD`` (as study records state dates); else None."""
    if not text:
        return None
    m = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})", text.strip())
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3])).isoformat()
    except ValueError:
        return None


def iso_time(text: str | None) -> str | None:
    """``HHMMSS[.ffffff]`` -> ``HH:MM:SS[.ffffff]``; else None."""
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", (text or "").strip())
    if not m:
        return None
    return f"{m[1]}:{m[2] or '00'}:{m[3] or '00'}{m[4] or ''}"


def days_between(since: date, until: date) -> Iterator[date]:
    day = since
    while day <= until:
        yield day
        day += timedelta(days=1)


def _settled(day: date, completed_at: str | None) -> bool:
    if not completed_at:
        return False
    when = datetime.strptime(completed_at[:10], "%Y-%m-%d").date()
    return when >= day + timedelta(days=SETTLE_DAYS + 1)


def _listener_address(cfg: Config) -> str:
    host = cfg.listener.host
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _check_listener(cfg: Config, pacs: PacsSettings) -> None:
    """C-MOVE sends to the listener: it must answer a C-ECHO, else reconcile refuses."""
    host, port, ae = _listener_address(cfg), cfg.listener.port, cfg.listener.ae_title
    if not echo(ae, host, port, pacs.calling_ae_title, min(pacs.timeout_s, 10.0)):
        raise ReconcileError(
            f"pacs.retrieve = \"c-move\" sends the dose objects to {ae} at {host}:{port}, which does not answer "
            "a C-ECHO: start `dosereg listen` first (or use pacs.retrieve = \"c-get\")")


class _Run:
    """One reconcile: the session, the catalog, the counts."""

    def __init__(self, cfg: Config, pacs: PacsSettings, catalog: Catalog, pipeline: Pipeline,
                 summary: ReconcileSummary) -> None:
        self.cfg, self.catalog, self.summary = cfg, catalog, summary
        self.retriever = Retriever(None, pipeline, catalog, pacs.retrieve, cfg.listener.ae_title, pacs.timeout_s)
        self.session = Session(pacs, self.retriever.on_store if pacs.retrieve == "c-get" else None)
        self.retriever.session = self.session
        self.finder = StudyFinder(self.session, pacs.max_results)
        self.blind = False  # the PACS answered a series without its description: screens unrecognisable

    def day(self, day: date) -> None:
        text = day.strftime("%Y%m%d")
        n, ok = 0, True
        try:
            for study in self.finder.ct_studies(text):
                n += 1
                self.summary.ct_studies += 1
                ok = self.study(study) and ok
        except PacsUnreachable:
            raise
        except QueryError as exc:
            self._fail(f"{day.isoformat()}: {exc}")
            ok = False
        if ok:
            self.catalog.mark_day_reconciled(text, n)

    def study(self, study: Study) -> bool:
        """One CT study: already complete, or its dose objects fetched, or kept as an exam."""
        uid = study.study_instance_uid
        if self.catalog.has_dose_object(uid):
            self.summary.already_complete += 1
            return True
        ok = True
        series: list[Series] = []
        try:
            series, status, comment = study_series(self.session, uid)
            if status not in (0x0000, None):
                raise QueryError(f"C-FIND of its series: status 0x{status:04X} {comment}".rstrip())
            wanted = self._wanted(uid, series)
            if wanted:
                fetched = self.retriever.fetch(uid, wanted)
                self.summary.retrieved += fetched.new
                for failure in fetched.failures:
                    self._fail(f"study {uid}: {failure}")
                ok = not fetched.failures
        except PacsUnreachable:
            raise
        except QueryError as exc:
            self._fail(f"study {uid}: {exc}")
            ok = False
        if not self.catalog.has_dose_object(uid):
            station = next((s.station_name for s in series if s.modality == "CT" and s.station_name), None)
            self.catalog.add_exam(exam_of(study, station))
            self.summary.without_dose_report += 1
        return ok

    def _wanted(self, uid: str, series: list[Series]) -> list[tuple[Series, list[str], bool]]:
        wanted = []
        for s in series:
            if s.modality != "SR" and not s.series_description and s.instances is None:
                self.blind = True
            if not worth_listing(s):
                continue
            instances, status, comment = series_instances(self.session, uid, s.series_instance_uid)
            if status not in (0x0000, None):
                raise QueryError(f"C-FIND of the instances of series {s.series_instance_uid}: "
                                 f"status 0x{status:04X} {comment}".rstrip())
            dose = [i.sop_instance_uid for i in instances if is_dose_object(s, i)]
            held = self.catalog.held_instances(dose)
            missing = [u for u in dose if u not in held]
            wanted.append((s, missing, not held and len(dose) == len(instances)))
        return wanted

    def _fail(self, message: str) -> None:
        log.error("reconcile: %s", message)
        self.summary.failures.append(message)


def exam_of(study: Study, station: str | None) -> ExamRecord:
    return ExamRecord(
        study_instance_uid=study.study_instance_uid, accession_number=study.accession_number,
        study_date=iso_date(study.study_date), study_time=iso_time(study.study_time),
        study_description=study.study_description, modality="CT", patient=Patient(id=study.patient_id),
        equipment=Equipment(station_name=station), source="pacs",
    )


def default_period(today: date | None = None) -> tuple[date, date]:
    """The last 7 days, today included."""
    today = today or datetime.now(timezone.utc).date()
    return today - timedelta(days=6), today


def reconcile(cfg: Config, since: date, until: date, progress: bool = False, again: bool = False,
              tick: Callable[[ReconcileSummary], object] | None = None) -> ReconcileSummary:
    """Reconcile the days from ``since`` to ``until`` with ``[pacs]`` (see the module's docstring).

    ``again``: ask even the days an earlier run settled. ``tick``: called after each day.
    """
    pacs = cfg.pacs
    if pacs is None:
        raise ConfigError(f"{cfg.path}: [pacs] is not configured (pacs.ae_title, pacs.host, pacs.port): "
                          "reconcile needs the PACS to ask, or --from-csv")
    if until < since:
        raise ReconcileError(f"--until {until} is before --since {since}")
    if pacs.retrieve == "c-move":
        _check_listener(cfg, pacs)
    if not log.isEnabledFor(logging.DEBUG):  # pynetdicom logs identifiers (patient IDs) at INFO
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    summary = ReconcileSummary()
    data_dir = cfg.data_dir.resolve()
    catalog = Catalog(catalog_path(data_dir))
    pipeline = Pipeline(data_dir, catalog, limits=extract_limits(cfg))
    run = _Run(cfg, pacs, catalog, pipeline, summary)
    days = list(days_between(since, until))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(days), unit="day", desc="reconcile", leave=False)
    try:
        _recover_left_over(pipeline, data_dir, ImportSummary())  # what a killed run left in the spool
        done = catalog.reconciled_days(days[0].strftime("%Y%m%d"), days[-1].strftime("%Y%m%d"))
        for day in days:
            summary.days += 1
            if not again and _settled(day, done.get(day.strftime("%Y%m%d"))):
                summary.days_skipped += 1
            else:
                try:
                    run.day(day)
                except PacsUnreachable as exc:
                    raise ReconcileError(str(exc)) from None
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"CT {summary.ct_studies}, retrieved {summary.retrieved}, "
                                    f"without {summary.without_dose_report}", refresh=False)
            if tick is not None:
                tick(summary)
    finally:
        if bar is not None:
            bar.close()
        run.session.close()
        pipeline.close()
        catalog.close()
    summary.warnings.extend(run.finder.warnings)
    if run.blind:
        summary.warnings.append(
            "the PACS answers series without Series Description (0008,103E) or Number of Series Related "
            "Instances: Philips dose screens cannot be told from other images there and were not fetched "
            "(only SR dose reports were)")
    return summary


__all__ = ["SETTLE_DAYS", "ReconcileError", "ReconcileSummary", "default_period", "exam_of", "iso_date",
           "reconcile"]
