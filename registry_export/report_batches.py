"""The report's "Batches" section: each batch's place in the lifecycle and who approved it
(docs/lifecycle.md). Rendered from the dicts :func:`.review.list_batches` gives, the same as
``dosereg batches --json``; identifiers of patients never appear in them."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

#: newest first, at most this many rows (the rest: ``dosereg batches``)
ROWS = 50


def batches_html(batches: Sequence[Mapping[str, Any]]) -> str:
    """A table of the batches, newest first: state, created, counts, approval, destinations."""
    if not batches:
        return "<h2>Batches</h2><p class='note'>No batch has been exported yet.</p>"
    rows = []
    for b in list(reversed(batches))[:ROWS]:
        counts = b.get("counts") or {}
        approved = " ".join(str(x) for x in (b.get("approved_by"), b.get("approved_at")) if x) or "—"
        dests = "; ".join(f"{d.get('name')}: {d.get('state')}" + (f" ({d.get('last_error')})" if d.get("last_error")
                                                                  else "")
                          for d in b.get("destinations") or ()) or "—"
        cells = (b.get("batch_id"), b.get("state"), b.get("created_at"),
                 " / ".join(f"{k} {counts.get(k, 0)}" for k in ("G9327", "G9326", "excluded", "held")),
                 approved, dests)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c if c is not None else '—'))}</td>" for c in cells)
                    + "</tr>")
    more = len(batches) - ROWS
    note = f"<p class='note'>{more} older batches: <code>dosereg batches</code>.</p>" if more > 0 else ""
    head = "".join(f"<th>{h}</th>" for h in ("Batch", "State", "Created", "Studies", "Approved", "Destinations"))
    return (f"<h2>Batches ({len(batches)})</h2><p class='note'>Billing receives a batch's flags only once it is "
            "acknowledged by every registry destination.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}")
