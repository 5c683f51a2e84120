"""The completeness report's HTML page, rendered from a :class:`ReportSummary` (docs/report.md).

One self-contained page: inline CSS, charts as inline SVG drawn by matplotlib with the Agg
backend (imported only when a page is rendered, so the CLI starts without it), nothing
fetched from anywhere. This module reads nothing but the summary and the configuration it
is given; the orderings of the page (worst completeness first, largest groups first) are
decided here.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from dosereg.conf.config import Config

from .report_batches import batches_html
from .report_data import (
    CHART_GROUPS,
    DLP_TOLERANCE_MGYCM,
    DLP_TOLERANCE_REL,
    HTML_ROWS,
    DetailTable,
    Distribution,
    GroupCompleteness,
    ReportSummary,
)
from .report_exams import exams_html

_DETAIL_HEADERS = {
    "incomplete_study": ("Accession", "Study date", "Scanner", "Registry code", "Reasons"),
    "timing_run": ("Accession", "Study date", "Scanner", "Protocol", "Acquisition", "CTDIvol mGy", "DLP mGy·cm"),
    "above_notification": ("Accession", "Study date", "Scanner", "Protocol", "Category", "CTDIvol mGy",
                           "Notification mGy"),
    "dlp_disagreement": ("Accession", "Study date", "Scanner", "Stated total mGy·cm", "Sum of events mGy·cm",
                         "Difference", "Dose objects"),
    "changed_after_submission": ("Accession", "Study date", "Scanner", "Billed code", "Acknowledged",
                                 "Code today", "Why"),
}


def render_html(summary: ReportSummary, cfg: Config, batch_id: str | None = None,
                now: datetime | None = None, batches: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The page for ``summary``: facility, profile and notification values from ``cfg``;
    ``batch_id`` names the export batch it was written with; ``now`` (UTC) when it was
    generated (default: now); ``batches``: the batches' lifecycle (:mod:`.report_batches`; None:
    no such section, as in the report an export writes for its own batch)."""
    when = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    details = summary.details
    parts: list[str] = [_HEAD.format(title=html.escape(f"dosereg completeness report — {cfg.site.facility_id}"))]
    subtitle = f"Facility {cfg.site.facility_id} · profile {cfg.registry.profile} · generated {when}"
    if batch_id:
        subtitle += f" · written with export batch {batch_id}"
    parts.append(f"<h1>CT dose-report completeness</h1><p class='sub'>{html.escape(subtitle)}</p>")
    parts.append(
        "<p class='note'>Covers every study in the catalog, evaluated with the current registry profile. "
        "<b>For use inside the hospital:</b> studies are identified by accession number and study date "
        "only; no patient names, patient IDs or birth dates appear in this report.</p>")
    parts.append(_cards(summary))
    if summary.problems:
        parts.append("<h2>Most frequent missing or invalid elements</h2>")
        parts.append(_table(("Element", "Studies"), [
            (_code_html(p), str(n)) for p, n in summary.problems[:10]], raw=(0,)))
    parts += _completeness_sections(summary)

    det = details["incomplete_study"]
    parts.append(f"<h2>Incomplete studies ({det.count})</h2>")
    parts.append(_detail_html(det))
    parts.append(exams_html(summary.exams_without_report))

    parts.append("<h2>Dose distributions</h2><p class='note'>Per event, as stated by the scanner on its own "
                 "phantom, one chart per phantom (a chart never mixes the 16 cm and 32 cm phantoms); timing runs and "
                 "localizers left out. Boxes: quartiles and median; whiskers: 1.5 IQR.</p>")
    parts.append(_charts(summary.distributions))
    parts += _timing_section(summary)

    det = details["above_notification"]
    n = cfg.notification
    parts.append(f"<h2>Events above the notification values ({det.count})</h2><p class='note'>CTDIvol "
                 f"notification values (mGy): adult head {n.adult_head:g}, adult body {n.adult_body:g}, "
                 f"paediatric head &lt;2 y {n.paediatric_head_under_2y:g}, 2–5 y {n.paediatric_head_2_to_5y:g}, "
                 f"paediatric body &lt;10 y {n.paediatric_body_under_10y:g}, brain perfusion {n.brain_perfusion:g}, "
                 f"cardiac prospective {n.cardiac_prospective:g} / retrospective {n.cardiac_retrospective:g}; "
                 "compared on the phantom the scanner states.</p>")
    parts.append(_detail_html(det))

    det = details["dlp_disagreement"]
    parts.append(f"<h2>Stated total DLP differs from the sum of events ({det.count})</h2><p class='note'>"
                 f"Tolerance: {DLP_TOLERANCE_MGYCM:g} mGy·cm or {DLP_TOLERANCE_REL:.0%}, whichever is larger.</p>")
    parts.append(_detail_html(det))

    changed = details.get("changed_after_submission")
    if changed is not None:
        parts.append(f"<h2>Changed after submission ({changed.count})</h2><p class='note'>Studies whose code billing "
                     "received (in an acknowledged batch) differs from what the rules give today: a rule change "
                     "reclassified them (a QC scan caught by a new pattern, for example) or their record changed. "
                     "The next export sends billing the new code; a study the registry received as G9327 and no "
                     "longer eligible stays there until the registry is asked to withdraw it.</p>")
        parts.append(_detail_html(changed))
    from .review_html import review_sections, with_toc  # the dose review (docs/dose-review.md)
    parts += review_sections(summary.review)
    if batches is not None:
        parts.append(batches_html(batches))
    parts.append("</main></body></html>\n")
    return with_toc("\n".join(parts))


def _cards(summary: ReportSummary) -> str:
    codes, details = summary.codes, summary.details
    cards = [
        ("Studies", f"{summary.studies:,}"),
        ("Complete", f"{summary.complete:,} ({summary.rate:.0%})"),
        ("G9327 (registry)", f"{codes.get('G9327', 0):,}"),
        ("G9326 (not sent)", f"{codes.get('G9326', 0):,}"),
        ("Excluded (QA, phantom)", f"{codes.get('excluded', 0):,}"),
        ("Timing runs", f"{details['timing_run'].count:,}"),
        ("Above notification", f"{details['above_notification'].count:,}"),
        ("DLP disagreements", f"{details['dlp_disagreement'].count:,}"),
    ]
    return "<div class='cards'>" + "".join(
        f"<div class='card'><div class='v'>{html.escape(v)}</div><div class='k'>{html.escape(k)}</div></div>"
        for k, v in cards) + "</div>"


def _completeness_sections(summary: ReportSummary) -> list[str]:
    """Completeness by scanner (worst rate first) and by protocol (worst rate, then most
    studies, first; the first ``HTML_ROWS``)."""
    parts = ["<h2>Completeness by scanner</h2>"]
    scanner_rows = sorted(summary.scanners, key=lambda g: (g.rate, g.name))
    parts.append(_table(
        ("Scanner", "Studies", "Complete", "Rate", "Excluded", "Most frequent missing / invalid"),
        [(html.escape(g.name), f"{g.studies:,}", f"{g.complete:,}", _rate_html(g.rate), str(g.excluded),
          _problems_html(g)) for g in scanner_rows],
        raw=(0, 3, 5), numeric=(1, 2, 4)))

    parts.append("<h2>Completeness by acquisition protocol</h2>")
    proto_rows = sorted(summary.protocols, key=lambda g: (g.rate, -g.studies, g.name))
    parts.append(_table(
        ("Protocol", "Studies", "Events", "Events complete", "Study rate", "Most frequent missing / invalid (its events)"),
        [(html.escape(g.name), f"{g.studies:,}", f"{g.events:,}", f"{g.events_complete:,}", _rate_html(g.rate),
          _problems_html(g)) for g in proto_rows[:HTML_ROWS]],
        raw=(0, 4, 5), numeric=(1, 2, 3)))
    if len(proto_rows) > HTML_ROWS:
        parts.append(f"<p class='more'>{len(proto_rows) - HTML_ROWS} more protocols in the CSV.</p>")
    return parts


def _timing_section(summary: ReportSummary) -> list[str]:
    det = summary.details["timing_run"]
    parts = [f"<h2>Timing runs ({det.count})</h2><p class='note'>Bolus tracking and test-bolus scans "
             "(protocol names, or CTDIvol above DLP on a stationary acquisition); excluded from dose "
             "comparisons.</p>"]
    if summary.timing:
        rows = [(t.protocol, f"{t.events:,}", _fmt(t.ctdivol.median if t.ctdivol else None))
                for t in sorted(summary.timing, key=lambda t: (-t.events, t.protocol))]
        parts.append(_table(("Protocol", "Timing runs", "Median CTDIvol mGy"), rows[:HTML_ROWS], numeric=(1, 2)))
        parts.append("<h3>Each timing run</h3>")
    parts.append(_detail_html(det))
    return parts


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def _code_html(path: str) -> str:
    return f"<code>{html.escape(path)}</code>"


def _problems_html(g: GroupCompleteness) -> str:
    if not g.top_problems:
        return "<span class='ok'>none</span>"
    return ", ".join(f"{_code_html(p)} <span class='n'>×{n}</span>" for p, n in g.top_problems)


def _rate_html(rate: float) -> str:
    cls = "good" if rate >= 0.95 else "warn" if rate >= 0.5 else "bad"
    return (f"<span class='nw'><span class='bar'><span class='fill {cls}' style='width:{rate * 100:.0f}%'>"
            f"</span></span> {rate:.0%}</span>")


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], raw: tuple[int, ...] = (),
           numeric: tuple[int, ...] = (), nowrap: tuple[int, ...] = ()) -> str:
    if not rows:
        return "<p class='empty'>None.</p>"
    out = ["<table><thead><tr>"]
    out += [f"<th{' class=num' if i in numeric else ''}>{html.escape(h)}</th>" for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(
            f"<td{' class=num' if i in numeric else ' class=nw' if i in nowrap else ''}>"
            f"{c if i in raw else html.escape(c)}</td>"
            for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _detail_html(det: DetailTable) -> str:
    numeric = tuple(i for i, c in enumerate(det.columns) if c.endswith(("_mGy", "_mGycm", "dose_objects")))
    nowrap = tuple(i for i, c in enumerate(det.columns) if c in ("accession_number", "study_date", "registry_code"))
    rows = [tuple(_fmt(r.get(c)) for c in det.columns) for r in det.rows]
    out = _table(_DETAIL_HEADERS[det.name], rows, numeric=numeric, nowrap=nowrap)
    if det.more > 0:
        out += f"<p class='more'>Showing the first {len(det.rows)} of {det.count}; all are in the CSV.</p>"
    return out


def _charts(distributions: Sequence[Distribution]) -> str:
    charted = [d for d in distributions if d.values]
    if not any(d.table in ("ctdivol_by_protocol", "dlp_by_protocol") for d in charted):
        return "<p class='empty'>No dose values to chart.</p>"
    blocks = [f"<figure><figcaption>{html.escape(d.title)}</figcaption>{_boxplot_svg(d.values, d.title)}</figure>"
              for d in charted]
    return "<div class='charts'>" + "".join(blocks) + "</div>"


def _mpl_version(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _boxplot_svg(source: Mapping[str, Sequence[float]], title: str) -> str:
    """A horizontal box plot of the ``CHART_GROUPS`` largest groups (largest at the top),
    as inline SVG (text kept as text; ids salted by the title, so the page is the same
    from run to run)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    groups = sorted(source.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:CHART_GROUPS]
    groups.reverse()  # largest group at the top of a horizontal chart
    labels = [f"{(k if len(k) <= 34 else k[:33] + '…')} (n={len(v)})" for k, v in groups]
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"dosereg-{title}",
                         "font.family": "sans-serif", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(5.4, 0.42 * len(groups) + 1.0))
        horizontal = ({"orientation": "horizontal"} if _mpl_version(matplotlib.__version__) >= (3, 10)
                      else {"vert": False})
        ax.boxplot([v for _, v in groups], **horizontal, widths=0.6, patch_artist=True,
                   boxprops={"facecolor": "#cfe0f3", "edgecolor": "#2f5d8a"},
                   medianprops={"color": "#c0392b", "linewidth": 1.6},
                   whiskerprops={"color": "#2f5d8a"}, capprops={"color": "#2f5d8a"},
                   flierprops={"marker": ".", "markersize": 3, "markeredgecolor": "#7f8c8d"})
        ax.set_yticks(range(1, len(groups) + 1), labels)
        ax.set_xlabel(title.split(" by ")[0])
        ax.grid(axis="x", color="#e5e8eb")
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        return svg_of(fig, plt)  # inside the rc_context: its SVG settings apply when saving


def svg_of(fig: Any, plt: Any) -> str:
    """A matplotlib figure as inline SVG (the XML prolog and DOCTYPE dropped), then closed."""
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1f2933; background: #f6f7f9; margin: 0; }}
main {{ max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }}
h1 {{ font-size: 24px; margin: 0 0 4px; }}
h3 {{ font-size: 15px; margin: 16px 0 6px; }}
h2 {{ font-size: 18px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #e4e7eb; }}
.sub {{ color: #52606d; margin: 0 0 12px; }}
.note {{ color: #52606d; font-size: 13px; margin: 4px 0 10px; }}
.cards {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 16px 0; }}
.card {{ border: 1px solid #d9e2ec; border-radius: 6px; padding: 10px 12px; background: #f8fafc; }}
.card .v {{ font-size: 20px; font-weight: 600; }}
.card .k {{ color: #52606d; font-size: 12px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
th, td {{ text-align: left; padding: 5px 8px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }}
th {{ background: #f0f4f8; font-weight: 600; }}
td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tbody tr:nth-child(even) {{ background: #fafbfc; }}
code {{ font: 12px ui-monospace, "DejaVu Sans Mono", monospace; background: #eef2f6; padding: 1px 4px; border-radius: 3px; }}
.nw {{ white-space: nowrap; }}
.n {{ color: #7b8794; font-size: 12px; }}
.ok {{ color: #2f855a; }}
.bar {{ display: inline-block; width: 60px; height: 8px; background: #e4e7eb; border-radius: 4px; vertical-align: middle; }}
.fill {{ display: block; height: 8px; border-radius: 4px; }}
.good {{ background: #38a169; }} .warn {{ background: #dd6b20; }} .bad {{ background: #e53e3e; }}
.charts {{ display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }}
figure {{ margin: 0; border: 1px solid #e4e7eb; border-radius: 6px; padding: 8px; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
.above {{ color: #c53030; font-weight: 600; }}
nav.toc {{ border: 1px solid #e4e7eb; border-radius: 6px; padding: 8px 14px; margin: 12px 0; font-size: 13px; }}
nav.toc ol {{ margin: 4px 0 0; columns: 2; }}
figure svg {{ width: 100%; height: auto; }}
.more, .empty {{ color: #7b8794; font-style: italic; }}
</style></head><body><main>"""
