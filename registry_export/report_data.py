"""What the completeness report shows, as plain data (docs/report.md, "The summary").

:class:`ReportSummary` is the one structure that passes from the accumulation
(:class:`~dosereg.registry_export.report.ReportBuilder`) to the renderers (``report_html``,
``report_csv``): frozen dataclasses of numbers, names and rows, nothing the renderers
would have to work out again. The dose statistics are worked out here, once per report, by
:func:`dose_stats` with pandas (imported only then: it is heavy, and the CLI starts
without it).

Quartiles are by linear interpolation between the closest ranks, ``(n - 1) * p``
(Hyndman and Fan type 7, the default of pandas, numpy and spreadsheet ``PERCENTILE``),
as the report has always computed them; every statistic is rounded to 3 decimals.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HTML_ROWS = 200  # rows of each detail table shown on the page (the CSV has them all)
TOP_PROBLEMS = 3  # most frequent problems named per scanner / protocol
CHART_GROUPS = 14  # protocols / regions per chart
DLP_TOLERANCE_MGYCM = 1.0  # stated total DLP vs the sum of events: absolute ...
DLP_TOLERANCE_REL = 0.01  # ... or relative to the larger, whichever is larger

#: The four dose distributions, in the order the report shows them: (table name, what
#: groups them -- the CSV column holding the group --, chart title).
DISTRIBUTIONS = (
    ("ctdivol_by_protocol", "protocol", "CTDIvol (mGy) by protocol"),
    ("dlp_by_protocol", "protocol", "DLP (mGy·cm) by protocol"),
    ("ctdivol_by_body_region", "body_region", "CTDIvol (mGy) by body region"),
    ("dlp_by_body_region", "body_region", "DLP (mGy·cm) by body region"),
)
QUANTILES = (0.25, 0.5, 0.75)

#: The phantoms a distribution is drawn on, in the order the report shows them, with their
#: names: one chart per table and phantom, so a chart never mixes the 16 cm and 32 cm
#: phantoms (CTDIvol on the head phantom is about 2.3 times that on the body phantom for
#: the same technique). Values are as the scanner states them, never converted here (the
#: dose review compares on the standard phantom of each region).
PHANTOMS = (
    ("head16", "16 cm head phantom"),
    ("body32", "32 cm body phantom"),
    ("other", "other phantom (NEMA XR 21)"),
    ("", "phantom not stated"),
)
PHANTOM_NAMES = dict(PHANTOMS)


def phantom_key(phantom: str | None) -> str:
    """The :data:`PHANTOMS` key of an event's stated phantom (``""``: not stated or not known)."""
    return phantom if phantom in PHANTOM_NAMES else ""


@dataclass(frozen=True)
class GroupCompleteness:
    """Completeness of the studies of one scanner or one acquisition protocol.

    For a protocol, a study counts once however many of its events use it, and
    ``events`` / ``events_complete`` count its events (complete: no missing or invalid
    element of that event). ``top_problems``: the most frequent missing or invalid
    elements (generic paths such as ``events[].ctdivol_mGy``) with the number of studies
    (scanner) or events (protocol) that have them, most frequent first, ties by name.
    """

    name: str
    studies: int
    complete: int
    excluded: int
    events: int
    events_complete: int
    top_problems: tuple[tuple[str, int], ...]

    @property
    def rate(self) -> float:
        """Complete studies over studies (0 when there are none)."""
        return self.complete / self.studies if self.studies else 0.0


@dataclass(frozen=True)
class DoseStats:
    """n, minimum, quartiles and maximum of one group's values (rounded to 3 decimals)."""

    group: str
    n: int
    min: float
    p25: float
    median: float
    p75: float
    max: float

    def as_row(self) -> dict[str, Any]:
        """The CSV columns ``n, min, p25, median, p75, max``."""
        return {"n": self.n, "min": self.min, "p25": self.p25, "median": self.median, "p75": self.p75,
                "max": self.max}


@dataclass(frozen=True)
class Distribution:
    """One dose distribution (a table of :data:`DISTRIBUTIONS`) on one phantom: statistics
    per group, sorted by group name, and every value of each group for its chart (in the
    order accounted). ``phantom``: the :data:`PHANTOMS` key its values are stated on (the
    title names it); a table has one distribution per phantom that has values."""

    table: str
    kind: str  # "protocol" | "body_region"
    title: str
    stats: tuple[DoseStats, ...]
    values: Mapping[str, Sequence[float]]
    phantom: str = ""


@dataclass(frozen=True)
class TimingSummary:
    """The timing runs of one protocol: how many, and the statistics of those whose
    CTDIvol is stated (None when none is)."""

    protocol: str
    events: int
    ctdivol: DoseStats | None


@dataclass(frozen=True)
class DetailTable:
    """A detail table: its first rows (at most ``HTML_ROWS``; the CSV has them all) and
    how many rows it has in all. Each row maps every name of ``columns`` to a value."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[Mapping[str, Any], ...]
    count: int

    @property
    def more(self) -> int:
        """Rows left out of :attr:`rows`."""
        return self.count - len(self.rows)


@dataclass(frozen=True)
class ReportSummary:
    """Everything the report shows.

    * ``studies``, ``complete``: studies accounted, and those complete;
    * ``codes``: studies per registry code (``G9327``, ``G9326``, ``excluded``, ``unknown``
      for an error record, whose verdicts are null);
    * ``problems``: every missing or invalid element (generic path) with the number of
      studies that have it, most frequent first, ties by name;
    * ``scanners``, ``protocols``: completeness per group, sorted by name;
    * ``distributions``: the four of :data:`DISTRIBUTIONS` that have values, in that order,
      each split by phantom in the order of :data:`PHANTOMS`;
    * ``timing``: timing runs per protocol, sorted by protocol;
    * ``details``: the detail tables by name (``incomplete_study``, ``timing_run``,
      ``above_notification``, ``dlp_disagreement``);
    * ``exams_without_report``: exams without a dose report per scanner and day.
    """

    studies: int
    complete: int
    codes: Mapping[str, int]
    problems: tuple[tuple[str, int], ...]
    scanners: tuple[GroupCompleteness, ...]
    protocols: tuple[GroupCompleteness, ...]
    distributions: tuple[Distribution, ...]
    timing: tuple[TimingSummary, ...]
    details: Mapping[str, DetailTable]
    #: (scanner, day, exams) of the CT exams without a dose report (:mod:`.report_exams`)
    exams_without_report: tuple[tuple[str, str, int], ...] = ()
    review: Any = None  # the dose review (review_data.ReviewSummary; docs/dose-review.md)

    @property
    def rate(self) -> float:
        return self.complete / self.studies if self.studies else 0.0


def dose_stats(tables: Mapping[str, Mapping[str, array[float]]]) -> dict[str, dict[str, DoseStats]]:
    """n, min, quartiles and max of every group of every table, one pandas aggregation per table.

    ``tables``: table name -> group -> values (compact ``array('d')`` columns, as
    accumulated). NaN values are left out (a group of only NaN gets no statistics).
    Returns table -> group -> :class:`DoseStats`. Memory: a table's values are copied once
    into one column beside an int32 column of group numbers; the grouped sort takes about
    as much again, one table at a time.

    pandas' grouped ``quantile`` interpolates as ``v[i] + (v[i+1] - v[i]) * frac`` on the
    sorted values, bit for bit what the report computed by hand before it; ``numpy.quantile``
    interpolates from the upper neighbour above the midpoint, which can differ in the last
    bit and so, after rounding, in the third decimal (tests/test_report_stats.py).
    """
    return {table: _table_stats(groups) for table, groups in tables.items()}


def _table_stats(groups: Mapping[str, array[float]]) -> dict[str, DoseStats]:
    import numpy as np
    import pandas as pd

    names = list(groups)
    if not names:
        return {}
    values = pd.Series(np.concatenate([np.frombuffer(groups[g], dtype=np.float64) for g in names]), copy=False)
    codes = np.repeat(np.arange(len(names), dtype=np.int32), [len(groups[g]) for g in names])
    grouped = values.groupby(codes, sort=True)
    counts, lows, highs = grouped.count(), grouped.min(), grouped.max()
    quartiles = grouped.quantile(list(QUANTILES), interpolation="linear").unstack()
    out: dict[str, DoseStats] = {}
    for code, n in counts.items():
        if n:
            q = [quartiles.at[code, p] for p in QUANTILES]
            out[names[int(code)]] = DoseStats(names[int(code)], int(n), _round(lows.at[code]), _round(q[0]),
                                              _round(q[1]), _round(q[2]), _round(highs.at[code]))
    return out


def _round(value: Any) -> float:
    """Rounded to 3 decimals as Python rounds a float (``numpy.round`` can differ: it
    scales by 1000 first)."""
    return round(float(value), 3)
