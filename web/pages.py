"""The workbench's pages (server-rendered Jinja2; the charts are drawn by the browser)."""

from __future__ import annotations

import hmac
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from dosereg.ingest import open_catalog
from dosereg.registry_export import evaluate, export_state_stamp, study_dict, write_report

from .index import Query
from .seams import ActionRefused, NotAvailable
from .security import LOGIN_COOKIE, SESSION_COOKIE, Guard, address, requires, set_cookie
from .store import Principal

PAGE_SIZE = 50


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    found = request.app.state.guard.session_of(request)
    context.setdefault("who", getattr(request.state, "who", None))
    context.setdefault("csrf", found[1] if found else "")
    response: Response = request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)
    return response


# -- login ------------------------------------------------------------------------------------

async def login_page(request: Request, message: str = "", status_code: int = 200) -> Response:
    guard: Guard = request.app.state.guard
    nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", status_code=status_code, message=message,
                      login_csrf=guard.login_token(nonce), who=None)
    set_cookie(response, request, LOGIN_COOKIE, nonce, max_age=3600)
    return response


async def login(request: Request) -> Response:
    if request.method == "GET":
        return await login_page(request)
    guard: Guard = request.app.state.guard
    store = guard.store
    form = await request.form()
    name, password = str(form.get("name") or "")[:64], str(form.get("password") or "")[:1024]
    where = address(request)
    if not guard.login_token_ok(request, str(form.get("csrf") or "")):
        return await login_page(request, "The form had expired: please log in again.", 403)
    wait = store.login_wait(name, where)
    if wait > 0:
        store.audit("login refused (too many failures)", name, where)
        response = await login_page(request, f"Too many failed logins: try again in {int(wait) + 1} s.", 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    who = await run_in_threadpool(store.check_password, name, password)
    if who is None:
        store.note_failure(name, where)
        store.audit("login failed", name, where)
        return await login_page(request, "Unknown name or wrong password.", 401)
    store.clear_failures(name)
    store.audit("login", who.name, where)
    sid, _ = store.new_session(who, guard.session_hours)
    response = RedirectResponse("/studies", status_code=303)
    set_cookie(response, request, SESSION_COOKIE, guard.session_cookie(sid), max_age=int(guard.session_hours * 3600))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


def csrf_ok(request: Request, form: Any) -> bool:
    found = request.app.state.guard.session_of(request)
    token = str(form.get("csrf") or "")
    return bool(found and token and hmac.compare_digest(found[1], token))


@requires("viewer", api=False)
async def logout(request: Request) -> Response:
    form = await request.form()
    if not csrf_ok(request, form):
        return Response("Forbidden: the form's CSRF token is missing or wrong.", status_code=403, media_type="text/plain")
    guard: Guard = request.app.state.guard
    found = guard.session_of(request)
    if found:
        guard.store.end_session(found[2])
        guard.store.audit("logout", found[0].name, address(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@requires("viewer", api=False)
async def home(request: Request) -> Response:
    return RedirectResponse("/studies", status_code=303)


# -- studies ----------------------------------------------------------------------------------

def _int(value: Any, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(value)))
    except (TypeError, ValueError):
        return default


@requires("viewer", api=False)
async def studies(request: Request) -> Response:
    index = request.app.state.index
    await run_in_threadpool(index.refresh)
    q = Query.of(request.query_params)
    problem = q.problem()
    if problem:  # the form again, saying what is wrong; nothing listed
        return render(request, "studies.html", status_code=400, q=q, rows=[], total=0, page=1, pages=1,
                      choices=index.choices(), params={}, problem=problem)
    page = _int(request.query_params.get("page"), 1, 1, 10**7)
    total, rows = index.search(q, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    audit_list(request, q, len(rows))
    return render(request, "studies.html", q=q, rows=rows, total=total, page=page, pages=pages,
                  choices=index.choices(), params=q.params(), problem="")


def load_study(request: Request, key: str) -> dict[str, Any] | None:
    """The study record of ``key`` with its verdicts and ``submission`` (None: no such study)."""
    index = request.app.state.index
    index.refresh()  # cheap when nothing changed; the submission shown is export state's now
    uid = index.uid_of(key)
    if uid is None:
        return None
    cfg = request.app.state.cfg
    catalog = open_catalog(cfg, readonly=True)
    try:
        record = catalog.get_study(uid)
    finally:
        catalog.close()
    if record is None:
        return None
    d = study_dict(record, evaluate(record, index.rules()))
    d["submission"] = index.submission_of(key)
    return d


def audit_list(request: Request, q: Query, shown: int) -> None:
    """A listing shows accession numbers and descriptions: its filters and size are audited."""
    request.app.state.guard.store.audit("list studies", request.state.who.name, address(request),
                                        target=urlencode(q.params()) or None, detail=f"{shown} shown")


def audit_view(request: Request, who: Principal, key: str) -> None:
    request.app.state.guard.store.audit("view study", who.name, address(request), target=key)


@requires("viewer", api=False)
async def study(request: Request) -> Response:
    key = request.path_params["key"]
    d = await run_in_threadpool(load_study, request, key)
    if d is None:
        return render(request, "message.html", status_code=404, title="No such study",
                      message="No study has this key (the catalog may have changed).")
    audit_view(request, request.state.who, key)
    chart = {"protocols": [e.get("acquisition_protocol") or f"event {i + 1}" for i, e in enumerate(d["events"])],
             "ctdivol": [e.get("ctdivol_mGy") for e in d["events"]],
             "dlp": [e.get("dlp_mGycm") for e in d["events"]]}
    batches_message = ""
    try:
        history = request.app.state.batches.of_study(d.get("study_instance_uid") or "")
    except NotAvailable as exc:
        history, batches_message = [], str(exc)
    return render(request, "study.html", d=d, key=key, chart=chart, history=history,
                  batches_message=batches_message)


# -- batches ----------------------------------------------------------------------------------

@requires("viewer", api=False)
async def batches(request: Request) -> Response:
    seam, index = request.app.state.batches, request.app.state.index

    def queue() -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        rows = seam.all()
        pending = {}
        for b in rows:
            if b.get("state") == "pending_review":
                studies = seam.review(str(b["batch_id"]))
                for st in studies:  # the page addresses studies by key, never by UID
                    st["key"] = index.key_of(str(st.get("study_instance_uid") or ""))
                pending[str(b["batch_id"])] = studies
        return rows, pending

    try:
        rows, pending = await run_in_threadpool(queue)
        message = ""
    except NotAvailable as exc:
        rows, pending, message = [], {}, str(exc)
    return render(request, "batches.html", rows=rows, pending=pending, message=message,
                  status_code=501 if message else 200)


_ACTIONS = ("approve", "hold", "release", "reject")


def _do_action(request: Request, form: Any, who: Principal) -> str:
    seam = request.app.state.batches
    action, batch_id = str(form.get("action") or ""), str(form.get("batch_id") or "")[:200]
    text = str(form.get("comment") or "").strip()[:2000]
    keys = [str(k) for k in form.getlist("study")]
    index = request.app.state.index
    index.refresh()
    uids = [u for u in (index.uid_of(k) for k in keys) if u]
    if len(uids) != len(keys):
        raise ActionRefused("a study of the form is no longer in the catalog: reload the page")
    if action == "approve":
        seam.approve(batch_id, who.name, text or None)
    elif action == "reject":
        if not text:
            raise ActionRefused("a rejection needs a reason")
        seam.reject(batch_id, who.name, text)
    elif action == "hold":
        if not text or not uids:
            raise ActionRefused("a hold needs studies and a reason")
        seam.hold(batch_id, uids, who.name, text)
    elif action == "release":
        seam.release(uids, who.name)
    request.app.state.guard.store.audit(action, who.name, address(request), target=batch_id,
                                        detail=f"{len(uids)} studies; {text}" if uids else text)
    return f"{action}: done"


@requires("physicist", api=False)
async def batch_action(request: Request) -> Response:
    form = await request.form()
    if not csrf_ok(request, form):
        return Response("Forbidden: the form's CSRF token is missing or wrong.", status_code=403, media_type="text/plain")
    if str(form.get("action") or "") not in _ACTIONS:
        return render(request, "message.html", status_code=400, title="Unknown action", message="Unknown action.")
    try:
        message = await run_in_threadpool(_do_action, request, form, request.state.who)
    except NotAvailable as exc:
        return render(request, "message.html", status_code=501, title="Not available", message=str(exc))
    except ActionRefused as exc:
        return render(request, "message.html", status_code=409, title="Refused", message=str(exc))
    return render(request, "message.html", title="Done", message=message)


# -- reports and quarantine -------------------------------------------------------------------

_REPORT_NAME = re.compile(r"completeness-[A-Za-z0-9_.-]+\.html")


def written_reports(data_dir: Path) -> list[dict[str, Any]]:
    """The reports ``dosereg export`` (one per batch) and ``dosereg report`` wrote, newest first."""
    folder = data_dir / "reports"
    found = []
    for p in folder.glob("completeness-*.html") if folder.is_dir() else ():
        if _REPORT_NAME.fullmatch(p.name) and p.is_file():
            st = p.stat()
            found.append({"name": p.name, "mtime": st.st_mtime, "size": st.st_size,
                          "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(st.st_mtime))})
    return sorted(found, key=lambda r: (-r["mtime"], r["name"]))


@requires("viewer", api=False)
async def reports(request: Request) -> Response:
    index = request.app.state.index
    await run_in_threadpool(index.refresh)
    return render(request, "reports.html", summary=index.summary(),
                  written=written_reports(request.app.state.cfg.data_dir))


@requires("viewer", api=False)
async def report_file(request: Request) -> Response:
    name = request.path_params["name"]
    if not _REPORT_NAME.fullmatch(name) or name not in {r["name"] for r in written_reports(request.app.state.cfg.data_dir)}:
        return render(request, "message.html", status_code=404, title="No such report", message="No such report.")
    return FileResponse(request.app.state.cfg.data_dir / "reports" / name, media_type="text/html; charset=utf-8")


def current_report(request: Request) -> Path:
    """The completeness report of the catalog as it stands (section 6), written by
    ``write_report`` into the data directory's ``web-report/`` when the catalog, the rules or
    export state (its batches and "changed after submission" sections) changed since the last one."""
    state = request.app.state
    cfg = state.cfg
    stamp = (state.index.stamp(), export_state_stamp(cfg))
    with state.report_lock:
        if state.report_file is not None and state.report_stamp == stamp and state.report_file.exists():
            return Path(state.report_file)
        base = cfg.data_dir / "web-report"
        base.mkdir(mode=0o700, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="r-", dir=base))

        def studies() -> Any:
            catalog = open_catalog(cfg, readonly=True)
            try:
                yield from catalog.iter_studies()
            finally:
                catalog.close()

        written = write_report(cfg, studies, out_dir=out)
        html = next(p for p in written if p.suffix == ".html")
        old = state.report_file
        state.report_file, state.report_stamp = html, stamp
        if old is not None:
            shutil.rmtree(Path(old).parent.parent, ignore_errors=True)
        return html


@requires("viewer", api=False)
async def report_current(request: Request) -> Response:
    path = await run_in_threadpool(current_report, request)
    return FileResponse(path, media_type="text/html; charset=utf-8")


@requires("viewer", api=False)
async def quarantine(request: Request) -> Response:
    def rows() -> list[dict[str, Any]]:
        catalog = open_catalog(request.app.state.cfg, readonly=True)
        try:
            quarantined = catalog.quarantine_rows()
            senders = {r["sha256"]: r for r in catalog.received_rows()} if quarantined else {}
        finally:
            catalog.close()
        for q in quarantined:
            got = senders.get(q["sha256"]) or {}
            ae, source = got.get("calling_ae_title"), got.get("source")
            q["sender"] = f"AE {ae}" if ae else f"import of {source}" if source else ""
        return quarantined

    return render(request, "quarantine.html", rows=await run_in_threadpool(rows))
