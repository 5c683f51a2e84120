"""The physicists' completeness report (docs/files.md, the report).

One self-contained HTML page (inline CSS, charts as inline SVG drawn by matplotlib with
the Agg backend, imported only when a report is written) and one CSV holding the same
tables in long form (first column ``table`` says which). It covers every study of the
catalog, evaluated with the configured profile:

* completeness per scanner and per acquisition protocol, with the most frequent missing
  or invalid elements (event paths written ``events[].ctdivol_mGy``);
* the incomplete studies with their reasons;
* CTDIvol and DLP distributions per protocol and per body region (timing runs left out);
* timing runs (bolus tracking, test bolus);
* events above the configured notification values (AAPM Dose Check notification defaults);
* studies whose stated total DLP disagrees with the sum of their events.

The report stays in the hospital: studies are identified by accession number and study
date only (no names, patient IDs or birth dates), as the page says.

:class:`ReportBuilder` is fed one study at a time (``export`` builds the report in the
same pass that writes the batch); long detail tables keep their first
``HTML_ROWS`` rows in memory for the page and spool every row to the CSV.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import re
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.conf.fsutil import private_dir, private_file
from dosereg.extract import Event, StudyRecord

from . import dosimetry

HTML_ROWS = 200  # rows of each detail table shown on the page (the CSV has them all)
TOP_PROBLEMS = 3
CHART_GROUPS = 14  # protocols / regions per chart
DLP_TOLERANCE_MGYCM = 1.0
DLP_TOLERANCE_REL = 0.01

CSV_COLUMNS = (
    "table", "scanner", "protocol", "body_region", "accession_number", "study_date", "studies",
    "events", "complete", "completeness_rate", "top_missing_or_invalid", "registry_code", "reasons",
    "acquisition_type", "ctdivol_mGy", "dlp_mGycm", "category", "notification_value_mGy",
    "stated_total_dlp_mGycm", "sum_of_events_dlp_mGycm", "difference_mGycm", "dose_objects",
    "n", "min", "p25", "median", "p75", "max",
)

_EVENT_PATH = re.compile(r"^events\[(\d+)\]")
_INDEX = re.compile(r"\[\d+\]")


def scanner_label(equipment: dict[str, Any], missing: str = "(scanner not stated)") -> str:
    """'Manufacturer Model (station)', as physicists and the studies table name a scanner."""
    parts = [equipment.get("manufacturer"), equipment.get("model")]
    name = " ".join(str(p) for p in parts if p)
    station = equipment.get("station_name")
    if station:
        name = f"{name} ({station})" if name else str(station)
    return name or missing


def _problem_paths(d: dict[str, Any]) -> list[str]:
    comp = d.get("completeness") or {}
    paths = [str(p) for p in comp.get("missing") or ()]
    paths += [str(i.get("path")) for i in comp.get("invalid") or () if i.get("path")]
    return paths


def _generic(path: str) -> str:
    return _INDEX.sub("[]", path)


def _incomplete_reasons(d: dict[str, Any], comp: dict[str, Any], flags: dict[str, Any]) -> list[str]:
    """Why a study is incomplete: the registry's reasons, else its missing and invalid
    elements; an extraction error first."""
    reasons = list(flags.get("registry_reasons") or ())
    if not reasons:
        reasons = [f"missing {p}" for p in comp.get("missing") or ()]
        reasons += [f"invalid {i.get('path')}: {i.get('reason')}" for i in comp.get("invalid") or ()]
    if d.get("error"):
        reasons.insert(0, f"error: {(d.get('error') or {}).get('message')}")
    return reasons


def _problems_by_event(paths: list[str]) -> dict[int, set[str]]:
    """The generic problem paths of each event, by event index (``events[3].dlp_mGycm``)."""
    by_event: dict[int, set[str]] = {}
    for p in paths:
        m = _EVENT_PATH.match(p)
        if m:
            by_event.setdefault(int(m.group(1)), set()).add(_generic(p))
    return by_event


def _event_objects(record: StudyRecord | None, dicts: Sequence[dict[str, Any]],
                   events: Sequence[Event] | None) -> Sequence[Event]:
    """The Event objects of a study: ``events``, else the record's, else (when those do not
    match the evaluated event dicts one for one) rebuilt from the dicts."""
    if events is None and record is not None:
        events = record.events
    if events is None or len(events) != len(dicts):
        events = [Event.from_dict(e) for e in dicts]
    return events


def _region(ev: Event) -> str:
    head = dosimetry.is_head_exam(ev)
    meaning = ev.target_region.meaning if ev.target_region is not None else None
    base = "Head" if head else "Body"
    return f"{base}: {meaning}" if meaning else f"{base}: (region not stated)"


@dataclass
class _Group:
    studies: int = 0
    complete: int = 0
    excluded: int = 0
    events: int = 0
    events_complete: int = 0
    problems: Counter[str] = field(default_factory=Counter)

    def rate(self) -> float:
        return self.complete / self.studies if self.studies else 0.0

    def top(self) -> str:
        return "; ".join(f"{p} ({n})" for p, n in _top(self.problems, TOP_PROBLEMS))


@dataclass
class _Detail:
    """A detail table: the first rows for the page, every row to the CSV spool."""

    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0


class ReportBuilder:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.studies = 0
        self.complete = 0
        self.codes: Counter[str] = Counter()
        self.scanners: dict[str, _Group] = {}
        self.protocols: dict[str, _Group] = {}
        self.ctdi_by_protocol: dict[str, array[float]] = {}
        self.dlp_by_protocol: dict[str, array[float]] = {}
        self.ctdi_by_region: dict[str, array[float]] = {}
        self.dlp_by_region: dict[str, array[float]] = {}
        self.problems: Counter[str] = Counter()
        self.timing_by_protocol: dict[str, array[float]] = {}
        self.details = {
            "incomplete_study": _Detail("incomplete_study", (
                "accession_number", "study_date", "scanner", "registry_code", "reasons")),
            "timing_run": _Detail("timing_run", (
                "accession_number", "study_date", "scanner", "protocol", "acquisition_type",
                "ctdivol_mGy", "dlp_mGycm")),
            "above_notification": _Detail("above_notification", (
                "accession_number", "study_date", "scanner", "protocol", "category", "ctdivol_mGy",
                "notification_value_mGy")),
            "dlp_disagreement": _Detail("dlp_disagreement", (
                "accession_number", "study_date", "scanner", "stated_total_dlp_mGycm",
                "sum_of_events_dlp_mGycm", "difference_mGycm", "dose_objects")),
        }
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
        self._spool_csv = csv.DictWriter(self._spool, CSV_COLUMNS, extrasaction="ignore")

    # -- accumulation -------------------------------------------------------------------
    def _detail(self, name: str, row: dict[str, Any]) -> None:
        det = self.details[name]
        det.count += 1
        if len(det.rows) < HTML_ROWS:
            det.rows.append(row)
        self._spool_csv.writerow({"table": name, **row})

    def add(self, record: StudyRecord | None, d: dict[str, Any], events: Sequence[Event] | None = None) -> None:
        """Account for one evaluated study (``d`` is ``evaluated_dict(record, rules)``; its
        Event objects are ``events``, else the record's, else rebuilt from ``d``)."""
        self.studies += 1
        comp = d.get("completeness") or {}
        flags = d.get("flags") or {}
        code = flags.get("registry_code") or "unknown"
        self.codes[code] += 1
        complete = comp.get("status") == "complete" and not d.get("error")
        self.complete += complete
        scanner = scanner_label(d.get("equipment") or {})
        paths = _problem_paths(d)
        generic = [_generic(p) for p in paths]
        self.problems.update(set(generic))

        g = self.scanners.get(scanner)
        if g is None:
            g = self.scanners[scanner] = _Group()
        g.studies += 1
        g.complete += complete
        g.excluded += code == "excluded"
        g.problems.update(set(generic))

        ident = {"accession_number": d.get("accession_number"), "study_date": d.get("study_date"),
                 "scanner": scanner}
        if not complete:
            self._detail("incomplete_study", {**ident, "registry_code": code,
                                              "reasons": "; ".join(_incomplete_reasons(d, comp, flags))})

        by_event = _problems_by_event(paths)
        dicts = d.get("events") or ()
        events = _event_objects(record, dicts, events)
        age = (d.get("patient") or {}).get("age_years")
        seen_protocols: set[str] = set()
        for i, (ev, ed) in enumerate(zip(events, dicts, strict=True)):
            protocol = ev.acquisition_protocol or "(no protocol name)"
            pg = self._protocol_group(protocol, protocol not in seen_protocols, complete, code)
            seen_protocols.add(protocol)
            pg.events += 1
            ev_problems = by_event.get(i)
            if ev_problems:
                pg.problems.update(ev_problems)
            else:
                pg.events_complete += 1
            self._add_doses(ev, bool(ed.get("is_timing_run")), protocol, ident)
            self._check_notification(ev, age, protocol, ident)
        self._check_total_dlp(d, ident)

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
            if isinstance(ctdi, (int, float)):
                self.ctdi_by_protocol.setdefault(protocol, array("d")).append(ctdi)
                self.ctdi_by_region.setdefault(region, array("d")).append(ctdi)
            if isinstance(dlp, (int, float)):
                self.dlp_by_protocol.setdefault(protocol, array("d")).append(dlp)
                self.dlp_by_region.setdefault(region, array("d")).append(dlp)

    def _check_notification(self, ev: Event, age: Any, protocol: str, ident: dict[str, Any]) -> None:
        """List the event when its CTDIvol is above the configured notification value for its
        category (which depends on the patient's ``age``)."""
        ctdi = ev.ctdivol_mGy
        if isinstance(ctdi, (int, float)):
            category, value = dosimetry.notification_value_mGy(ev, age, self.cfg.notification)
            if ctdi > value:
                self._detail("above_notification", {
                    **ident, "protocol": protocol, "category": category.replace("_", " "),
                    "ctdivol_mGy": ctdi, "notification_value_mGy": round(value, 2)})

    def _check_total_dlp(self, d: dict[str, Any], ident: dict[str, Any]) -> None:
        """List the study when its stated total DLP and the sum of its events' DLP disagree
        beyond the tolerance (absolute, or relative to the larger)."""
        stated, summed = d.get("reported_total_dlp_mGycm"), d.get("total_dlp_mGycm")
        if isinstance(stated, (int, float)) and isinstance(summed, (int, float)):
            diff = summed - stated
            if abs(diff) > max(DLP_TOLERANCE_MGYCM, DLP_TOLERANCE_REL * max(abs(stated), abs(summed))):
                self._detail("dlp_disagreement", {
                    **ident, "stated_total_dlp_mGycm": stated, "sum_of_events_dlp_mGycm": summed,
                    "difference_mGycm": round(diff, 2), "dose_objects": len(d.get("dose_objects") or ())})

    # -- output ---------------------------------------------------------------------------
    def _summary_rows(self) -> Iterator[dict[str, Any]]:
        for name, g in sorted(self.scanners.items()):
            yield {"table": "scanner", "scanner": name, "studies": g.studies, "complete": g.complete,
                   "completeness_rate": round(g.rate(), 4), "top_missing_or_invalid": g.top()}
        for name, g in sorted(self.protocols.items()):
            yield {"table": "protocol", "protocol": name, "studies": g.studies, "events": g.events,
                   "complete": g.complete, "completeness_rate": round(g.rate(), 4),
                   "top_missing_or_invalid": g.top()}
        for kind, table, source in (("protocol", "ctdivol_by_protocol", self.ctdi_by_protocol),
                                    ("protocol", "dlp_by_protocol", self.dlp_by_protocol),
                                    ("body_region", "ctdivol_by_body_region", self.ctdi_by_region),
                                    ("body_region", "dlp_by_body_region", self.dlp_by_region)):
            for name, values in sorted(source.items()):
                yield {"table": table, kind: name, **_stats(values)}
        for name, values in sorted(self.timing_by_protocol.items()):
            known = array("d", (v for v in values if not math.isnan(v)))
            row = {"table": "timing_runs_by_protocol", "protocol": name, "events": len(values)}
            if known:
                row.update({f"{k}": v for k, v in _stats(known).items() if k != "n"})
            yield row

    def write(self, folder: Path, stem: str, batch_id: str | None = None) -> list[Path]:
        """Write ``<stem>.html`` and ``<stem>.csv`` into ``folder``; returns both paths."""
        private_dir(folder)
        csv_path = folder / f"{stem}.csv"
        # the report holds patient data: owner-only whatever the umask
        with os.fdopen(private_file(csv_path), "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in self._summary_rows():
                w.writerow(row)
            self._spool.flush()
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, fh)
        self._spool.close()
        html_path = folder / f"{stem}.html"
        with os.fdopen(private_file(html_path), "w", encoding="utf-8") as fh:
            fh.write(self._html(batch_id))
        return [html_path, csv_path]

    def _html(self, batch_id: str | None) -> str:
        cfg = self.cfg
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        rate = self.complete / self.studies if self.studies else 0.0
        parts: list[str] = [_HEAD.format(title=html.escape(f"dosereg completeness report — {cfg.site.facility_id}"))]
        subtitle = f"Facility {cfg.site.facility_id} · profile {cfg.registry.profile} · generated {now}"
        if batch_id:
            subtitle += f" · written with export batch {batch_id}"
        parts.append(f"<h1>CT dose-report completeness</h1><p class='sub'>{html.escape(subtitle)}</p>")
        parts.append(
            "<p class='note'>Covers every study in the catalog, evaluated with the current registry profile. "
            "<b>For use inside the hospital:</b> studies are identified by accession number and study date "
            "only; no patient names, patient IDs or birth dates appear in this report.</p>")
        cards = [
            ("Studies", f"{self.studies:,}"),
            ("Complete", f"{self.complete:,} ({rate:.0%})"),
            ("G9327 (registry)", f"{self.codes.get('G9327', 0):,}"),
            ("G9326 (not sent)", f"{self.codes.get('G9326', 0):,}"),
            ("Excluded (QA, phantom)", f"{self.codes.get('excluded', 0):,}"),
            ("Timing runs", f"{self.details['timing_run'].count:,}"),
            ("Above notification", f"{self.details['above_notification'].count:,}"),
            ("DLP disagreements", f"{self.details['dlp_disagreement'].count:,}"),
        ]
        parts.append("<div class='cards'>" + "".join(
            f"<div class='card'><div class='v'>{html.escape(v)}</div><div class='k'>{html.escape(k)}</div></div>"
            for k, v in cards) + "</div>")
        if self.problems:
            parts.append("<h2>Most frequent missing or invalid elements</h2>")
            parts.append(_table(("Element", "Studies"), [
                (_code_html(p), str(n)) for p, n in _top(self.problems, 10)], raw=(0,)))

        parts.append("<h2>Completeness by scanner</h2>")
        scanner_rows = sorted(self.scanners.items(), key=lambda kv: (kv[1].rate(), kv[0]))
        parts.append(_table(
            ("Scanner", "Studies", "Complete", "Rate", "Excluded", "Most frequent missing / invalid"),
            [(html.escape(n), f"{g.studies:,}", f"{g.complete:,}", _rate_html(g.rate()), str(g.excluded),
              _problems_html(g)) for n, g in scanner_rows],
            raw=(0, 3, 5), numeric=(1, 2, 4)))

        parts.append("<h2>Completeness by acquisition protocol</h2>")
        proto_rows = sorted(self.protocols.items(), key=lambda kv: (kv[1].rate(), -kv[1].studies, kv[0]))
        parts.append(_table(
            ("Protocol", "Studies", "Events", "Events complete", "Study rate", "Most frequent missing / invalid (its events)"),
            [(html.escape(n), f"{g.studies:,}", f"{g.events:,}", f"{g.events_complete:,}", _rate_html(g.rate()),
              _problems_html(g)) for n, g in proto_rows[:HTML_ROWS]],
            raw=(0, 4, 5), numeric=(1, 2, 3)))
        if len(proto_rows) > HTML_ROWS:
            parts.append(f"<p class='more'>{len(proto_rows) - HTML_ROWS} more protocols in the CSV.</p>")

        det = self.details["incomplete_study"]
        parts.append(f"<h2>Incomplete studies ({det.count})</h2>")
        parts.append(_detail_html(det, ("Accession", "Study date", "Scanner", "Registry code", "Reasons")))

        parts.append("<h2>Dose distributions</h2><p class='note'>Per event, as stated by the scanner on its own "
                     "phantom; timing runs and localizers left out. Boxes: quartiles and median; whiskers: 1.5 IQR.</p>")
        parts.append(_charts(self))

        det = self.details["timing_run"]
        parts.append(f"<h2>Timing runs ({det.count})</h2><p class='note'>Bolus tracking and test-bolus scans "
                     "(protocol names, or CTDIvol above DLP on a stationary acquisition); excluded from dose "
                     "comparisons.</p>")
        if self.timing_by_protocol:
            summary = []
            for name, values in sorted(self.timing_by_protocol.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                known = array("d", (v for v in values if not math.isnan(v)))
                med = _stats(known)["median"] if known else None
                summary.append((name, f"{len(values):,}", _fmt(med)))
            parts.append(_table(("Protocol", "Timing runs", "Median CTDIvol mGy"), summary[:HTML_ROWS], numeric=(1, 2)))
            parts.append("<h3>Each timing run</h3>")
        parts.append(_detail_html(det, ("Accession", "Study date", "Scanner", "Protocol", "Acquisition",
                                        "CTDIvol mGy", "DLP mGy·cm")))

        det = self.details["above_notification"]
        n = cfg.notification
        parts.append(f"<h2>Events above the notification values ({det.count})</h2><p class='note'>CTDIvol "
                     f"notification values (mGy): adult head {n.adult_head:g}, adult body {n.adult_body:g}, "
                     f"paediatric head &lt;2 y {n.paediatric_head_under_2y:g}, 2–5 y {n.paediatric_head_2_to_5y:g}, "
                     f"paediatric body &lt;10 y {n.paediatric_body_under_10y:g}, brain perfusion {n.brain_perfusion:g}, "
                     f"cardiac prospective {n.cardiac_prospective:g} / retrospective {n.cardiac_retrospective:g}; "
                     "compared on the phantom the scanner states.</p>")
        parts.append(_detail_html(det, ("Accession", "Study date", "Scanner", "Protocol", "Category",
                                        "CTDIvol mGy", "Notification mGy")))

        det = self.details["dlp_disagreement"]
        parts.append(f"<h2>Stated total DLP differs from the sum of events ({det.count})</h2><p class='note'>"
                     f"Tolerance: {DLP_TOLERANCE_MGYCM:g} mGy·cm or {DLP_TOLERANCE_REL:.0%}, whichever is larger.</p>")
        parts.append(_detail_html(det, ("Accession", "Study date", "Scanner", "Stated total mGy·cm",
                                        "Sum of events mGy·cm", "Difference", "Dose objects")))
        parts.append("</main></body></html>\n")
        return "\n".join(parts)


def _stats(values: array[float]) -> dict[str, Any]:
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:
        if n == 1:
            return s[0]
        k = (n - 1) * p
        lo = math.floor(k)
        hi = min(lo + 1, n - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"n": n, "min": round(s[0], 3), "p25": round(q(0.25), 3), "median": round(q(0.5), 3),
            "p75": round(q(0.75), 3), "max": round(s[-1], 3)}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def _code_html(path: str) -> str:
    return f"<code>{html.escape(path)}</code>"


def _problems_html(g: _Group) -> str:
    if not g.problems:
        return "<span class='ok'>none</span>"
    return ", ".join(f"{_code_html(p)} <span class='n'>×{n}</span>" for p, n in _top(g.problems, TOP_PROBLEMS))


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


def _detail_html(det: _Detail, headers: tuple[str, ...]) -> str:
    numeric = tuple(i for i, c in enumerate(det.columns) if c.endswith(("_mGy", "_mGycm", "dose_objects")))
    nowrap = tuple(i for i, c in enumerate(det.columns) if c in ("accession_number", "study_date", "registry_code"))
    rows = [tuple(_fmt(r.get(c)) for c in det.columns) for r in det.rows]
    out = _table(headers, rows, numeric=numeric, nowrap=nowrap)
    if det.count > len(det.rows):
        out += f"<p class='more'>Showing the first {len(det.rows)} of {det.count}; all are in the CSV.</p>"
    return out


def _charts(b: ReportBuilder) -> str:
    if not (b.ctdi_by_protocol or b.dlp_by_protocol):
        return "<p class='empty'>No dose values to chart.</p>"
    blocks = []
    for title, source in (("CTDIvol (mGy) by protocol", b.ctdi_by_protocol),
                          ("DLP (mGy·cm) by protocol", b.dlp_by_protocol),
                          ("CTDIvol (mGy) by body region", b.ctdi_by_region),
                          ("DLP (mGy·cm) by body region", b.dlp_by_region)):
        if source:
            blocks.append(f"<figure><figcaption>{html.escape(title)}</figcaption>{_boxplot_svg(source, title)}</figure>")
    return "<div class='charts'>" + "".join(blocks) + "</div>"


def _mpl_version(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _boxplot_svg(source: dict[str, array[float]], title: str) -> str:
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
        ax.boxplot([list(v) for _, v in groups], **horizontal, widths=0.6, patch_artist=True,
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
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE


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
figure svg {{ width: 100%; height: auto; }}
.more, .empty {{ color: #7b8794; font-style: italic; }}
</style></head><body><main>"""


def write_report(cfg: Config, studies: Callable[[], Iterator[StudyRecord]], out_dir: Path | None = None) -> list[Path]:
    """The completeness report alone: ``reports/completeness-<UTC time>.html`` and ``.csv``."""
    from .rules import evaluated_dict, rules_from_config

    rules = rules_from_config(cfg)
    builder = ReportBuilder(cfg)
    for record in studies():
        builder.add(record, evaluated_dict(record, rules, export=None))
    out = (Path(out_dir) if out_dir is not None else cfg.data_dir) / "reports"
    private_dir(out)
    stem = "completeness-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    staging = Path(tempfile.mkdtemp(prefix=".staging-report-", dir=out))
    try:
        written = builder.write(staging, stem)
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
