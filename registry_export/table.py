"""The human table of ``dosereg studies``: one line per evaluated study, newest first, and the
filters its options give (``--since``, ``--until``, ``--scanner``, ``--code``, ``--incomplete``).

By default the table fits the terminal: date, accession, scanner, status, registry code, where
the study stands and why it is incomplete, the last column cut to the width left. ``wide`` gives
every column whole (also description, events, total DLP, nomenclature code, last export batch),
for a file or a pager.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .report import scanner_label

#: the width used when the terminal's is unknown (a pipe): the classic 80 columns and a little
DEFAULT_WIDTH = 100


def _cut(text: Any, width: int) -> str:
    s = "" if text is None else " ".join(str(text).split())
    return s if len(s) <= width else s[: max(width - 1, 0)] + "…"


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


def _status(d: dict[str, Any]) -> str:
    return "error" if d.get("error") else str((d.get("completeness") or {}).get("status") or "")


def why_incomplete(d: dict[str, Any]) -> str:
    """Why a study is not G9327, in a few words: its registry reasons (an error record: the
    error), or nothing for a complete or excluded study."""
    if d.get("error"):
        err = d["error"] or {}
        return f"{err.get('code')}: {err.get('message')}" if isinstance(err, dict) else str(err)
    flags = d.get("flags") or {}
    if flags.get("registry_code") != "G9326":
        return ""
    return "; ".join(str(r) for r in flags.get("registry_reasons") or ())


@dataclass(frozen=True)
class StudyFilter:
    """Which studies ``dosereg studies`` shows: dates (``YYYY-MM-DD``, inclusive), a scanner
    (words of its label, case-insensitive), a registry or nomenclature code, incomplete only."""

    since: str | None = None
    until: str | None = None
    scanner: str | None = None
    code: str | None = None
    incomplete: bool = False

    def __call__(self, d: dict[str, Any]) -> bool:
        date = str(d.get("study_date") or "")
        if self.since and (not date or date < self.since):
            return False
        if self.until and (not date or date > self.until):
            return False
        if self.scanner and self.scanner.casefold() not in scanner_label(d.get("equipment") or {}, "").casefold():
            return False
        flags = d.get("flags") or {}
        if self.code and self.code not in (flags.get("registry_code"), flags.get("nomenclature_code")):
            return False
        return not (self.incomplete and _status(d) == "complete")

    def apply(self, studies: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        return studies if self == StudyFilter() else filter(self, studies)


_WIDE = (("Date", 10), ("Accession", 16), ("Description", 30), ("Scanner", 30), ("Events", 6),
         ("DLP mGy·cm", 10), ("Status", 10), ("Registry", 8), ("Nomencl.", 8), ("Exported", 21),
         ("Submission", 14), ("Why incomplete", 200))
_NARROW = (("Date", 10), ("Accession", 16), ("Scanner", 14), ("Status", 10), ("Registry", 8),
           ("Submission", 14), ("Why incomplete", 200))
_RIGHT = {"Events", "DLP mGy·cm"}


def _cells(d: dict[str, Any]) -> dict[str, str]:
    flags = d.get("flags") or {}
    events = d.get("total_events") if d.get("total_events") is not None else len(d.get("events") or ())
    return {
        "Date": str(d.get("study_date") or ""), "Accession": str(d.get("accession_number") or ""),
        "Description": str(d.get("study_description") or d.get("requested_procedure_description") or ""),
        "Scanner": scanner_label(d.get("equipment") or {}, missing=""), "Events": str(events),
        "DLP mGy·cm": _num(d.get("total_dlp_mGycm")), "Status": _status(d),
        "Registry": str(flags.get("registry_code") or ""), "Nomencl.": str(flags.get("nomenclature_code") or ""),
        "Exported": str((d.get("export") or {}).get("batch_id") or ""), "Submission": _submission(d.get("submission")),
        "Why incomplete": why_incomplete(d),
    }


def studies_table(evaluated_dicts: Iterable[dict[str, Any]], wide: bool = False, width: int | None = None,
                  empty: str = "no studies in the catalog") -> str:
    """The human table of ``dosereg studies``: one line per study, newest first. ``width``: the
    terminal's (default :data:`DEFAULT_WIDTH`); ignored when ``wide``. ``empty``: the line when
    there is no study (the CLI says which filter left none)."""
    columns = _WIDE if wide else _NARROW
    rows = [{name: _cut(c[name], w) for name, w in columns} for c in map(_cells, evaluated_dicts)]
    if not rows:
        return f"{empty}\n"
    rows.sort(key=lambda r: r["Date"], reverse=True)
    widths = {name: max(len(name), *(len(r[name]) for r in rows)) for name, _ in columns}
    if not wide:  # the last column gets what the terminal has left
        used = sum(widths[name] + 2 for name, _ in columns[:-1])
        last = columns[-1][0]
        widths[last] = max(3, min(widths[last], (width or DEFAULT_WIDTH) - used))
        for r in rows:
            r[last] = _cut(r[last], widths[last])

    def header(name: str) -> str:
        return _cut(name, widths[name]) if not wide else name

    def line(cells: dict[str, str]) -> str:
        return "  ".join(cells[n].rjust(widths[n]) if n in _RIGHT else cells[n].ljust(widths[n])
                         for n, _ in columns).rstrip()

    out = [line({n: header(n) for n, _ in columns}), line({n: "-" * widths[n] for n, _ in columns})]
    out += [line(r) for r in rows]
    incomplete = sum(1 for r in rows if r["Status"] != "complete")
    out.append(f"{len(rows)} {'study' if len(rows) == 1 else 'studies'}, {incomplete} incomplete or in error")
    return "\n".join(out) + "\n"

