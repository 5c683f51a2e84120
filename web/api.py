"""The HTTP API (docs/web.md): JSON, or CSV with ``Accept: text/csv`` where it is a table."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .index import COLUMNS, Query, listing_row
from .pages import audit_list, audit_view, load_study
from .seams import NotAvailable
from .security import address, requires

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def wants_csv(request: Request) -> bool:
    return "text/csv" in request.headers.get("accept", "")


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def csv_stream(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(columns)
    for n, row in enumerate(rows, 1):
        out.writerow([_cell(v) for v in row])
        if n % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _limit(value: Any, default: int) -> int:
    try:
        return max(0, min(MAX_LIMIT, int(value)))
    except (TypeError, ValueError):
        return default


def _not_available(exc: NotAvailable) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=501)


@requires("viewer", api=True)
async def studies(request: Request) -> Response:
    index = request.app.state.index
    await run_in_threadpool(index.refresh)
    q = Query.of(request.query_params)
    problem = q.problem()
    if problem:
        return JSONResponse({"error": problem}, status_code=400)
    try:
        offset = max(0, int(request.query_params.get("offset") or 0))
    except ValueError:
        return JSONResponse({"error": "offset must be a whole number"}, status_code=400)
    if wants_csv(request) and "limit" not in request.query_params:
        total, _ = index.search(q, 0, 0)
        audit_list(request, q, total)
        return StreamingResponse(csv_stream(COLUMNS, index.iter_search(q)), media_type="text/csv; charset=utf-8",
                                 headers={"X-Total-Count": str(total)})
    limit = _limit(request.query_params.get("limit"), DEFAULT_LIMIT)
    total, rows = index.search(q, limit, offset)
    audit_list(request, q, len(rows))
    if wants_csv(request):
        return StreamingResponse(csv_stream(COLUMNS, [[r[c] for c in COLUMNS] for r in rows]),
                                 media_type="text/csv; charset=utf-8", headers={"X-Total-Count": str(total)})
    return JSONResponse({"total": total, "limit": limit, "offset": offset, "studies": [listing_row(r) for r in rows]})


@requires("viewer", api=True)
async def study(request: Request) -> Response:
    key = request.path_params["key"]
    d = await run_in_threadpool(load_study, request, key)
    if d is None:
        return JSONResponse({"error": "no study has this key"}, status_code=404)
    audit_view(request, request.state.who, key)
    d["key"] = key
    return JSONResponse(d)


@requires("viewer", api=True)
async def batches(request: Request) -> Response:
    try:
        rows = request.app.state.batches.all()
    except NotAvailable as exc:
        return _not_available(exc)
    return JSONResponse({"batches": rows})


@requires("billing", api=True)
async def flags(request: Request) -> Response:
    since = request.query_params.get("since") or None
    who = request.state.who
    try:
        rows = await run_in_threadpool(request.app.state.flags.since, since)
    except NotAvailable as exc:
        return _not_available(exc)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    request.app.state.guard.store.audit("flags pick-up", who.name, address(request), target=since,
                                        detail=f"{len(rows)} rows")
    if wants_csv(request):
        columns = list(rows[0]) if rows else ["written_at"]
        return StreamingResponse(csv_stream(columns, [[r.get(c) for c in columns] for r in rows]),
                                 media_type="text/csv; charset=utf-8")
    return JSONResponse({"since": since, "flags": rows})
