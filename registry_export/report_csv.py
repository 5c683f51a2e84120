"""The completeness report's CSV: the page's tables in long form (docs/report.md, "The CSV").

One header (:data:`CSV_COLUMNS`); the first column, ``table``, says which table a row
belongs to: the summary tables (``scanner``, ``protocol``, the four dose distributions (one set of rows per phantom, column ``phantom``),
``timing_runs_by_protocol``, then the dose review's tables, :mod:`.review_csv`) rendered here
from a :class:`ReportSummary`, then every row of
the detail tables, which the builder spooled to a temporary file as it went
(:func:`detail_writer`): they are unbounded, the page shows only the first of them.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from typing import IO, Any

from .report_data import ReportSummary
from .review_csv import REVIEW_COLUMNS, review_rows

_REPORT_COLUMNS = (
    "table", "scanner", "protocol", "body_region", "accession_number", "study_date", "studies",
    "events", "complete", "completeness_rate", "top_missing_or_invalid", "registry_code", "reasons",
    "acquisition_type", "ctdivol_mGy", "dlp_mGycm", "category", "notification_value_mGy",
    "stated_total_dlp_mGycm", "sum_of_events_dlp_mGycm", "difference_mGycm", "dose_objects",
    "n", "min", "p25", "median", "p75", "max", "phantom", "reported_code", "reported_at",
)
#: the header: the report's columns, then those only the dose review's rows use (:mod:`.review_csv`)
CSV_COLUMNS = _REPORT_COLUMNS + tuple(c for c in REVIEW_COLUMNS if c not in _REPORT_COLUMNS)


class DetailWriter:
    """Writes detail rows (``{"table": name, **row}``) into a spool in the CSV's columns: the row's
    values put at their columns' places in one list (a ``csv.DictWriter`` looked up every one of
    the CSV's columns in each row, most of which a detail table does not have)."""

    def __init__(self, spool: IO[str]) -> None:
        self._writer = csv.writer(spool)
        self._places = {c: i for i, c in enumerate(CSV_COLUMNS)}
        self._width = len(CSV_COLUMNS)

    def writerow(self, row: dict[str, Any]) -> None:
        out: list[Any] = [""] * self._width
        places = self._places
        for key, value in row.items():
            at = places.get(key)
            if at is not None and value is not None:
                out[at] = value
        self._writer.writerow(out)


def detail_writer(spool: IO[str]) -> DetailWriter:
    """The writer of detail rows into ``spool``, in the CSV's columns (:class:`DetailWriter`)."""
    return DetailWriter(spool)


def summary_rows(summary: ReportSummary) -> Iterator[dict[str, Any]]:
    """The summary tables' rows, in the CSV's order: scanners, protocols (each by name),
    the dose distributions (by group), the timing runs per protocol."""
    for g in summary.scanners:
        yield {"table": "scanner", "scanner": g.name, "studies": g.studies, "complete": g.complete,
               "completeness_rate": round(g.rate, 4), "top_missing_or_invalid": _top(g.top_problems)}
    for g in summary.protocols:
        yield {"table": "protocol", "protocol": g.name, "studies": g.studies, "events": g.events,
               "complete": g.complete, "completeness_rate": round(g.rate, 4),
               "top_missing_or_invalid": _top(g.top_problems)}
    for dist in summary.distributions:
        for s in dist.stats:
            yield {"table": dist.table, dist.kind: s.group, **s.as_row(), "phantom": dist.phantom}
    for t in summary.timing:
        row: dict[str, Any] = {"table": "timing_runs_by_protocol", "protocol": t.protocol, "events": t.events}
        if t.ctdivol is not None:
            row.update({k: v for k, v in t.ctdivol.as_row().items() if k != "n"})
        yield row
    yield from review_rows(summary.review)


def write_csv(fh: IO[str], summary: ReportSummary, details: IO[str]) -> None:
    """The CSV into ``fh``: header, summary rows, then the spooled detail rows of ``details``
    (read from its start)."""
    w = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in summary_rows(summary):
        w.writerow(row)
    details.flush()
    details.seek(0)
    shutil.copyfileobj(details, fh)


def _top(problems: tuple[tuple[str, int], ...]) -> str:
    return "; ".join(f"{p} ({n})" for p, n in problems)
