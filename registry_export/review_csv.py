"""The dose review's tables as rows of the completeness report's CSV (docs/dose-review.md, "The CSV").

The page's review sections, every row of each (the page shows the first of the long ones):

* ``review_exam`` / ``review_protocol`` -- one row per exam (or protocol) and region: studies,
  CTDIvol, DLP and SSDE quartiles (``*_p25``, ``*_median``, ``*_p75``, ``*_n``), the median
  effective-dose estimate, the local levels (exams only) and the configured levels the median
  exceeds (``above_levels``);
* ``reference_level`` -- each configured level with its value on the standard phantom, as the
  file states it, and its source;
* ``review_trend`` -- the monthly medians per scanner and region;
* ``review_above_level`` -- the studies (events) above a reference level, largest ratio first;
* ``review_high_dose`` -- the patients with the highest cumulative DLP, named by accession numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .review_data import ExamStats, Quartiles, ReviewSummary

#: The CSV columns these rows use beyond the report's own (appended to its header).
REVIEW_COLUMNS = (
    "exam", "region", "ctdivol_n", "ctdivol_p25", "ctdivol_median", "ctdivol_p75",
    "dlp_n", "dlp_p25", "dlp_median", "dlp_p75", "ssde_n", "ssde_p25", "ssde_median", "ssde_p75",
    "effective_dose_mSv", "local_ctdivol_mGy", "local_dlp_mGycm", "above_levels",
    "level", "quantity", "value", "level_value", "stated_value", "stated_phantom", "kind", "source",
    "month", "ctdivol_median_mGy", "dlp_median_mGycm",
    "accession_numbers", "latest_study_date", "cumulative_dlp_mGycm", "cumulative_effective_dose_mSv",
)


def _quartiles(prefix: str, q: Quartiles | None) -> dict[str, Any]:
    if q is None:
        return {}
    return {f"{prefix}_n": q.n, f"{prefix}_p25": q.p25, f"{prefix}_median": q.median, f"{prefix}_p75": q.p75}


def _group_row(table: str, key: str, e: ExamStats) -> dict[str, Any]:
    return {"table": table, key: e.name, "region": e.region, "studies": e.studies,
            **_quartiles("ctdivol", e.ctdivol), **_quartiles("dlp", e.dlp), **_quartiles("ssde", e.ssde),
            "effective_dose_mSv": e.effective_dose_mSv, "local_ctdivol_mGy": e.local_ctdivol,
            "local_dlp_mGycm": e.local_dlp, "above_levels": "; ".join(c.level.name for c in e.above)}


def review_rows(r: ReviewSummary | None) -> Iterator[dict[str, Any]]:
    """The review's rows in the page's order (none without a review)."""
    if r is None:
        return
    for e in r.exams:
        yield _group_row("review_exam", "exam", e)
    for lv in r.levels:
        yield {"table": "reference_level", "level": lv.name, "exam": lv.exam, "region": lv.region,
               "quantity": lv.quantity, "level_value": lv.value, "stated_value": lv.stated_value,
               "stated_phantom": lv.phantom, "kind": lv.kind, "category": lv.category, "source": lv.source}
    for e in r.protocols:
        yield _group_row("review_protocol", "protocol", e)
    for t in r.trends:
        yield {"table": "review_trend", "scanner": t.scanner, "region": t.region, "month": t.month,
               "events": t.events, "ctdivol_median_mGy": t.ctdivol_median, "studies": t.studies,
               "dlp_median_mGycm": t.dlp_median}
    for row in r.above_level:
        yield {"table": "review_above_level", **row}
    for row in r.high_dose:
        yield {"table": "review_high_dose", **row}
