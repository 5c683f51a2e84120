"""The report's "CT exams without a dose report" table: per scanner and day (docs/reconcile.md).

An exam without a dose report (:class:`dosereg.extract.ExamRecord`, learned from the PACS or
the RIS by ``dosereg reconcile``) is a CT study performed whose dose report never reached
dosereg: a scanner whose forwarding rule is missing, or that only sends images, shows up here
day after day. Counted in bounded memory (one counter per scanner and day).
"""

from __future__ import annotations

import html
from collections import Counter

from dosereg.extract import ExamRecord, StudyRecord

_SOURCES = ("pacs", "ris")


class ExamTally:
    """Exams without a dose report counted per (scanner, day)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, record: StudyRecord | None, scanner: str, day: str | None) -> None:
        if record is not None and record.__class__ is ExamRecord and not record.dose_objects:
            self.counts[(scanner, day or "(no date)")] += 1

    def rows(self) -> tuple[tuple[str, str, int], ...]:
        """(scanner, day, exams), by scanner then most recent day first."""
        ordered = sorted(self.counts.items(), key=lambda kv: kv[0][1], reverse=True)
        ordered.sort(key=lambda kv: kv[0][0])
        return tuple((scanner, day, n) for (scanner, day), n in ordered)


def exams_html(rows: tuple[tuple[str, str, int], ...]) -> str:
    """The page's section: a table, or a line saying there are none."""
    total = sum(n for _, _, n in rows)
    out = [f"<h2>CT exams without a dose report ({total})</h2>"]
    if not rows:
        out.append("<p class='note'>None: every CT exam the PACS or the RIS reported has a dose object "
                   "(or <code>dosereg reconcile</code> has not run).</p>")
        return "".join(out)
    out.append("<p class='note'>CT studies the PACS or the RIS knows and no dose report reached dosereg for "
               "(coded G9326, <i>no dose report received</i>); a scanner listed day after day probably does "
               "not forward its dose reports.</p>")
    out.append("<table><thead><tr><th>Scanner</th><th>Day</th><th>Exams</th></tr></thead><tbody>")
    out += [f"<tr><td>{html.escape(s)}</td><td>{html.escape(d)}</td><td>{n}</td></tr>" for s, d, n in rows]
    out.append("</tbody></table>")
    return "".join(out)


__all__ = ["ExamTally", "exams_html"]
