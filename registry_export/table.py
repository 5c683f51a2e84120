"""The human table of ``dosereg studies``: one line per evaluated study, newest first."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .report import scanner_label


def _cut(text: Any, width: int) -> str:
    s = "" if text is None else " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _num(value: Any) -> str:
    if value is None:
        return ""
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return str(value)


_SHORT = {"pending_review": "in review", "not_eligible": "not eligible", "acknowledged": "reported",
          "no_dose_report": "no dose rep."}


def _submission(sub: Any) -> str:
    """Where the study stands in the lifecycle, short (``submission.state``; the billed code once billed)."""
    if not isinstance(sub, dict) or not sub.get("state"):
        return ""
    state = str(sub["state"])
    text = _SHORT.get(state, state)
    return f"{text} {sub['billed_code']}" if state == "acknowledged" and sub.get("billed_code") else text


def studies_table(evaluated_dicts: Iterable[dict[str, Any]]) -> str:
    """The human table of ``dosereg studies``: one line per study, newest first."""
    headers = ("Date", "Accession", "Description", "Scanner", "Events", "DLP mGy·cm", "Status",
               "Registry", "Nomencl.", "Exported", "Submission")
    widths_max = (10, 16, 30, 30, 6, 10, 10, 8, 8, 21, 14)
    rows = []
    for d in evaluated_dicts:
        if d.get("error"):
            status = "error"
        else:
            status = (d.get("completeness") or {}).get("status") or ""
        flags = d.get("flags") or {}
        export = d.get("export") or {}
        rows.append((
            d.get("study_date") or "",
            _cut(d.get("accession_number"), widths_max[1]),
            _cut(d.get("study_description") or d.get("requested_procedure_description"), widths_max[2]),
            _cut(scanner_label(d.get("equipment") or {}, missing=""), widths_max[3]),
            str(d.get("total_events") if d.get("total_events") is not None else len(d.get("events") or ())),
            _num(d.get("total_dlp_mGycm")),
            status,
            flags.get("registry_code") or "",
            flags.get("nomenclature_code") or "",
            export.get("batch_id") or "",
            _submission(d.get("submission")),
        ))
    if not rows:
        return "no studies in the catalog\n"
    rows.sort(key=lambda r: r[0], reverse=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = {4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(headers), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    incomplete = sum(1 for r in rows if r[6] != "complete")
    out.append(f"{len(rows)} studies, {incomplete} incomplete or in error")
    return "\n".join(out) + "\n"
