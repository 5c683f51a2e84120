"""The dose review's sections of the report page (docs/dose-review.md), from a
:class:`~.review_data.ReviewSummary`, and the page's table of contents.

Head and body exams are never in one table row, statistic or chart: every table has a region
column and every chart is of one region. Effective doses are labelled as estimates.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from .report_html import _fmt, _table, svg_of
from .review_data import ABOVE_ROWS, ExamStats, Quartiles, ReviewSummary, TrendPoint

__all__ = ["review_sections", "with_toc"]

ROWS = 200
TREND_SCANNERS = 8  # lines per chart


def _q(q: Quartiles | None) -> str:
    return "—" if q is None else f"{_fmt(q.median)} [{_fmt(q.p25)}–{_fmt(q.p75)}]"


def _levels_html(e: ExamStats) -> str:
    if not e.levels:
        return "<span class='n'>none applies</span>"
    parts = []
    for c in e.levels:
        unit = "mGy·cm" if c.level.quantity == "dlp_mGycm" else "mGy"
        text = html.escape(f"{c.level.name}: {c.level.value:g} {unit}")
        parts.append(f"<span class='above'>▲ {text} (median {_fmt(c.median)})</span>" if c.above else
                     f"<span class='n'>{text}</span>")
    return "<br>".join(parts)


def _exam_table(groups: Sequence[ExamStats], label: str, local: bool) -> str:
    headers = [label, "Region", "Studies", "CTDIvol mGy median [IQR]", "DLP mGy·cm median [IQR]",
               "SSDE mGy median [IQR]",
               "Effective dose mSv (estimate, median)" if local else "Its studies' effective dose mSv (estimate, median)"]
    if local:
        headers += ["Local level CTDIvol / DLP (p75)"]
    headers += ["Reference levels"]
    rows = []
    for e in groups[:ROWS]:
        name = ("▲ " if e.above else "") + e.name
        row = [html.escape(name), e.region, f"{e.studies:,}", _q(e.ctdivol), _q(e.dlp), _q(e.ssde),
               _fmt(e.effective_dose_mSv)]
        if local:
            row.append("—" if e.local_ctdivol is None and e.local_dlp is None
                       else f"{_fmt(e.local_ctdivol)} / {_fmt(e.local_dlp)}")
        row.append(_levels_html(e))
        rows.append(tuple(row))
    out = _table(tuple(headers), rows, raw=(0, len(headers) - 1), numeric=(2, 6))
    if len(groups) > ROWS:
        out += f"<p class='more'>Showing {ROWS} of {len(groups)}.</p>"
    return out


def _trend_svg(points: Sequence[TrendPoint], region: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    mine = [p for p in points if p.region == region and p.ctdivol_median is not None and p.month != "(no date)"]
    if not mine:
        return "<p class='empty'>No dated values.</p>"
    months = sorted({p.month for p in mine})
    volume: dict[str, int] = {}
    for p in mine:
        volume[p.scanner] = volume.get(p.scanner, 0) + p.events
    scanners = sorted(volume, key=lambda s: (-volume[s], s))[:TREND_SCANNERS]
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"dosereg-{title}",
                         "font.family": "sans-serif", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(5.4, 3.4 + 0.16 * len(scanners)))
        for s in scanners:
            pts = sorted((months.index(p.month), float(p.ctdivol_median or 0.0)) for p in mine if p.scanner == s)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3,
                    label=s if len(s) <= 40 else s[:39] + "…")
        step = max(1, len(months) // 8)
        ax.set_xticks(range(0, len(months), step), months[::step], rotation=30, ha="right")
        ax.set_ylabel("median CTDIvol (mGy, " + ("16 cm" if region == "head" else "32 cm") + " phantom)")
        ax.grid(color="#e5e8eb")
        # below the plot: inside it, the legend covered the lines it names
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=1)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        return svg_of(fig, plt)  # inside the rc_context: its SVG settings apply when saving


def _trends_html(r: ReviewSummary) -> list[str]:
    parts = ["<h2>Monthly trends per scanner</h2><p class='note'>Median CTDIvol per event and median DLP "
             "per study, per month; head and body apart (16 cm and 32 cm phantom).</p>"]
    charts = [f"<figure><figcaption>{t}</figcaption>{_trend_svg(r.trends, reg, t)}</figure>"
              for reg, t in (("head", "Head exams: median CTDIvol by month"),
                             ("body", "Body exams: median CTDIvol by month"))]
    parts.append("<div class='charts'>" + "".join(charts) + "</div>")
    rows = [(html.escape(p.scanner), p.region, p.month, f"{p.events:,}", _fmt(p.ctdivol_median), f"{p.studies:,}",
             _fmt(p.dlp_median)) for p in r.trends[-ROWS:]]
    parts.append(_table(("Scanner", "Region", "Month", "Events", "Median CTDIvol mGy", "Studies",
                         "Median DLP mGy·cm"), rows, raw=(0,), numeric=(3, 4, 5, 6)))
    return parts


def _above_html(r: ReviewSummary) -> list[str]:
    parts = [f"<h2>Studies above a reference level ({r.above_level_count:,})</h2><p class='note'>Every configured "
             "level except the notification values (those events are listed above, per event); largest "
             "ratio first. Accession numbers: for use inside the hospital.</p>"]
    cols = ("accession_number", "study_date", "scanner", "exam", "region", "protocol", "quantity", "value", "level",
            "level_value")
    rows = [tuple(_fmt(row.get(c)) for c in cols) for row in r.above_level[:ABOVE_ROWS]]
    parts.append(_table(("Accession", "Study date", "Scanner", "Exam", "Region", "Protocol", "Quantity", "Value",
                         "Level", "Level value"), rows, numeric=(7, 9), nowrap=(0, 1)))
    if r.above_level_count > len(rows):
        parts.append(f"<p class='more'>Showing the first {len(rows)} of {r.above_level_count}; all are in the CSV.</p>")
    return parts


def _levels_list(r: ReviewSummary) -> list[str]:
    rows = [(html.escape(lv.name), lv.region, lv.quantity, f"{lv.stated_value:g} ({lv.phantom})", lv.kind,
             html.escape(lv.source)) for lv in r.levels]
    return ["<h3>Configured reference levels and their sources</h3>",
            _table(("Level", "Region", "Quantity", "Value", "Kind", "Source"), rows, raw=(0, 5))]


def _high_dose_html(r: ReviewSummary) -> list[str]:
    parts = [f"<h2>Highest cumulative patient dose ({len(r.high_dose)})</h2><p class='note'>Per patient, the "
             f"studies of the {r.history_days} days up to the latest: summed DLP (every event, on its standard "
             "phantom) and <b>effective-dose estimate</b> (AAPM Report 96); patients named by the accession "
             "numbers of their studies, latest first (no patient ID on this page).</p>"]
    cols = ("accession_numbers", "latest_study_date", "studies", "cumulative_dlp_mGycm", "cumulative_effective_dose_mSv")
    rows = [tuple(_fmt(row.get(c)) for c in cols) for row in r.high_dose]
    parts.append(_table(("Accession numbers", "Latest study", "Studies", "Cumulative DLP mGy·cm",
                         "Cumulative effective dose mSv (estimate)"), rows, numeric=(2, 3, 4), nowrap=(1,)))
    return parts


def review_sections(r: ReviewSummary | None) -> list[str]:
    """The review's HTML sections (empty without a review)."""
    if r is None:
        return []
    period = (f"{r.local_period[0]} to {r.local_period[1]}" if r.local_period else "no dated study")
    parts = ["<h2>Dose review by exam</h2><p class='note'>Patient studies only; timing runs and localizers "
             "left out; head exams on the 16 cm phantom and body exams on 32 cm (stated values converted by "
             "2.3). Exam: the RadLex Playbook ID of the nomenclature table, else the study description. "
             "CTDIvol and SSDE per event, DLP per study. <b>Effective doses are estimates</b> for a reference "
             "adult (AAPM Report 96 k-factors × DLP), not a patient's dose. Local levels: 75th percentile of the "
             f"site's exams, {html.escape(period)}, exams with at least {r.local_min_n} studies "
             "(ICRP Publication 135). ▲ marks an exam whose median exceeds a level.</p>",
             _exam_table(r.exams, "Exam", local=True)]
    parts += _levels_list(r)
    parts += ["<h2>Dose review by protocol</h2><p class='note'>Per event (CTDIvol, DLP and SSDE of the "
              "protocol's events); head and body apart.</p>", _exam_table(r.protocols, "Protocol", local=False)]
    parts += _trends_html(r)
    parts += _above_html(r)
    parts += _high_dose_html(r)
    return parts


_H2 = re.compile(r"<h2>(.*?)</h2>")


def with_toc(page: str) -> str:
    """``page`` with an id on every section heading and a table of contents after the subtitle."""
    entries: list[str] = []

    def anchor(m: re.Match[str]) -> str:
        n = len(entries) + 1
        title = re.sub(r"<[^>]+>", "", m.group(1))
        entries.append(f"<li><a href='#s{n}'>{title}</a></li>")
        return f"<h2 id='s{n}'>{m.group(1)}</h2>"

    page = _H2.sub(anchor, page)
    toc = "<nav class='toc'><b>Contents</b><ol>" + "".join(entries) + "</ol></nav>"
    marker = "</p>"
    at = page.find("<p class='sub'>")
    at = page.find(marker, at) + len(marker) if at >= 0 else -1
    return page[:at] + toc + page[at:] if at > 0 else page
