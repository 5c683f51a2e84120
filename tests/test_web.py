"""``dosereg serve``: a real uvicorn server in a subprocess, spoken to over HTTP (httpx).

Accounts through the real CLI; the catalog from the project's own sample dose objects
(``dosereg import sample_dicom``), so pages show vendor-like studies and a quarantine.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli, stop_by_pid

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"
ACCOUNTS = {"phys": "physicist", "bill": "billing", "view": "viewer"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``dosereg serve`` on a free loopback port; stopped by its pid."""

    def __init__(self, data_dir: Path, config: Path | None = None, scheme: str = "http") -> None:
        self.data_dir, self.port, self.scheme = data_dir, free_port(), scheme
        self.log = data_dir.parent / f"serve-{self.port}.log"
        args = [sys.executable, "-m", "dosereg.cli", "serve", "--data-dir", str(data_dir), "--port", str(self.port)]
        if config:
            args += ["--config", str(config)]
        env = dict(os.environ)
        env.pop("DOSEREG_CONFIG", None)
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dosereg serve exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("dosereg serve did not start in 60 s")

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_by_pid(self.proc)
        self._out.close()


def make_data_dir(data_dir: Path) -> None:
    r = run_cli("import", str(ROOT / "sample_dicom"), "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    for name, role in ACCOUNTS.items():
        r = run_cli("user", "add", name, "--role", role, "--password-stdin", "--data-dir", str(data_dir),
                    input=(PASSWORD + "\n").encode())
        assert r.returncode == 0, r.stderr


def login(client: httpx.Client, name: str, password: str = PASSWORD) -> httpx.Response:
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    return client.post("/login", data={"csrf": token.group(1), "name": name, "password": password})


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]*)"', html)
    assert m
    return m.group(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("web") / "data"
    make_data_dir(data_dir)
    server = Server(data_dir)
    try:
        yield server
    finally:
        server.stop()


def client(server: Server, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, follow_redirects=False, timeout=60, **kw)


@contextmanager
def session(server: Server, name: str) -> Iterator[httpx.Client]:
    with client(server) as c:
        r = login(c, name)
        assert r.status_code == 303 and r.headers["location"] == "/studies", r.text
        yield c


def catalog_facts(data_dir: Path) -> dict[str, Any]:
    """What the catalog says, read straight from its SQLite file (no web code)."""
    db = sqlite3.connect(f"file:{data_dir / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        uids = [r[0] for r in db.execute("SELECT study_instance_uid FROM studies")]
    finally:
        db.close()
    return {"uids": uids}


# -- authentication -------------------------------------------------------------------------

def test_every_route_refuses_the_unauthenticated(served: Server) -> None:
    from starlette.routing import Route

    from dosereg.web import routes

    open_paths = {"/login", "/static/plotly.min.js"}
    checked = 0
    with client(served) as c:
        for route in routes():
            if not isinstance(route, Route) or route.path in open_paths:
                continue
            path = re.sub(r"\{[^}]+\}", "0123456789abcdef", route.path)
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                r = c.request(method, path)
                if path.startswith("/api/"):
                    assert r.status_code == 401, (method, path)
                    assert r.headers["www-authenticate"].startswith("Bearer")
                else:
                    assert r.status_code == 303 and r.headers["location"] == "/login", (method, path)
                checked += 1
        # a forged or stale cookie is nobody
        c.cookies.set("dosereg_session", "forged.value.here")
        assert c.get("/api/studies").status_code == 401
        assert c.get("/api/studies", headers={"Authorization": "Bearer drt_not-a-token"}).status_code == 401
    assert checked >= 13  # every page, form and API route


def test_login_cookie_flags_and_logout_ends_the_session(served: Server) -> None:
    with client(served) as c:
        r = login(c, "view")
        assert r.status_code == 303
        cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("dosereg_session="))
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
        assert "Max-Age=28800" in cookie  # session_hours = 8
        assert "Secure" not in cookie  # plain HTTP on loopback: Secure comes with TLS
        page = c.get("/studies")
        assert page.status_code == 200 and "view (viewer)" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "<script>" not in page.text  # no inline script
        stolen = c.cookies.get("dosereg_session")
        assert c.post("/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    with client(served) as other:
        other.cookies.set("dosereg_session", stolen)
        assert other.get("/api/studies").status_code == 401
        assert other.get("/studies").status_code == 303


def test_wrong_password_and_unknown_name_are_refused_and_audited(served: Server) -> None:
    with client(served) as c:
        assert login(c, "view", "wrong password here").status_code == 401
        assert login(c, "nobody-at-all", PASSWORD).status_code == 401
        assert c.get("/api/studies").status_code == 401
    r = run_cli("audit", "--json", "--data-dir", str(served.data_dir))
    rows = [__import__("json").loads(line) for line in r.stdout.splitlines()]
    failed = [(x["actor"], x["address"]) for x in rows if x["action"] == "login failed"]
    assert ("view", "127.0.0.1") in failed and ("nobody-at-all", "127.0.0.1") in failed
    assert any(x["action"] == "login" and x["actor"] == "view" for x in rows)


def test_failed_logins_are_slowed_per_account(served: Server) -> None:
    r = run_cli("user", "add", "victim", "--role", "viewer", "--password-stdin", "--data-dir",
                str(served.data_dir), input=(PASSWORD + "\n").encode())
    assert r.returncode == 0, r.stderr
    with client(served) as c:
        codes = [login(c, "victim", f"guess number {i:04d}").status_code for i in range(5)]
        assert codes == [401] * 5  # the first few cost nothing
        r = login(c, "victim", PASSWORD)  # even the right password waits now
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "Too many failed logins" in r.text
        assert c.get("/api/studies").status_code == 401
        time.sleep(float(r.headers["retry-after"]) + 0.2)
        assert login(c, "victim", PASSWORD).status_code == 303  # after the wait, it is heard


def test_forms_without_their_csrf_token_are_refused(served: Server) -> None:
    with session(served, "phys") as c:
        page = c.get("/batches")
        assert c.post("/batches/action", data={"action": "approve", "batch_id": "b1"}).status_code == 403
        assert c.post("/batches/action", data={"action": "approve", "batch_id": "b1",
                                               "csrf": "x" * 43}).status_code == 403
        assert c.post("/logout", data={}).status_code == 403
        assert c.get("/studies").status_code == 200  # still logged in: the forged logout did nothing
        # with its token the action reaches the lifecycle, which refuses an unknown batch
        r = c.post("/batches/action", data={"action": "approve", "batch_id": "b1", "csrf": csrf_of(page.text)})
        assert r.status_code == 409 and "b1" in r.text
    with client(served) as c:
        c.get("/login")
        r = c.post("/login", data={"name": "phys", "password": PASSWORD})  # no token
        assert r.status_code == 403 and "dosereg_session" not in c.cookies


def test_roles(served: Server) -> None:
    with session(served, "view") as c:
        page = c.get("/batches")
        assert c.post("/batches/action", data={"action": "approve", "batch_id": "b1",
                                               "csrf": csrf_of(page.text)}).status_code == 403
        assert c.get("/api/flags").status_code == 403
        assert c.get("/api/studies").status_code == 200
    with session(served, "bill") as c:
        r = c.get("/api/flags")  # allowed: no batch acknowledged yet, so no rows
        assert r.status_code == 200 and r.json()["flags"] == []
        page = c.get("/batches")
        assert c.post("/batches/action", data={"action": "approve", "batch_id": "b1",
                                               "csrf": csrf_of(page.text)}).status_code == 403


def test_tokens(served: Server) -> None:
    d = str(served.data_dir)
    r = run_cli("token", "add", "billing-system", "--role", "billing", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("drt_") and len(token) > 40
    listed = run_cli("token", "list", "--data-dir", d).stdout
    assert "billing-system\tbilling" in listed and token not in listed
    assert token not in (served.data_dir / "web.sqlite").read_bytes().decode("latin-1")
    assert run_cli("token", "add", "x", "--role", "physicist", "--data-dir", d).returncode != 0
    with client(served) as c:
        auth = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/studies", headers=auth).status_code == 200
        assert c.get("/api/flags", headers=auth).status_code == 200
        assert c.get("/studies", headers=auth).status_code == 200
        assert run_cli("token", "revoke", "billing-system", "--data-dir", d).returncode == 0
        assert c.get("/api/studies", headers=auth).status_code == 401


# -- what the pages and the API show ------------------------------------------------------------

def test_api_studies_filters_pagination_and_csv(served: Server) -> None:
    facts = catalog_facts(served.data_dir)
    with session(served, "view") as c:
        everything = c.get("/api/studies", params={"limit": 1000}).json()
        assert everything["total"] == len(facts["uids"]) == len(everything["studies"])
        assert {s["study_instance_uid"] for s in everything["studies"]} == set(facts["uids"])
        dates = [s["study_date"] for s in everything["studies"]]
        assert dates == sorted(dates, reverse=True)
        by_code: dict[str, int] = {}
        for s in everything["studies"]:
            by_code[s["registry_code"]] = by_code.get(s["registry_code"], 0) + 1
        for code, n in by_code.items():
            got = c.get("/api/studies", params={"registry_code": code}).json()
            assert got["total"] == n and {s["registry_code"] for s in got["studies"]} == {code}
        incomplete = c.get("/api/studies", params={"completeness": "incomplete"}).json()
        assert incomplete["total"] == sum(s["completeness"] == "incomplete" for s in everything["studies"])
        first, second = (c.get("/api/studies", params={"limit": 3, "offset": o}).json()["studies"] for o in (0, 3))
        assert [s["key"] for s in first + second] == [s["key"] for s in everything["studies"][:6]]
        day = dates[0]
        on_day = c.get("/api/studies", params={"date_from": day, "date_to": day}).json()
        assert on_day["total"] == dates.count(day)
        scanner = everything["studies"][0]["scanner"]
        assert c.get("/api/studies", params={"scanner": scanner}).json()["total"] == sum(
            s["scanner"] == scanner for s in everything["studies"])
        csv_text = c.get("/api/studies", headers={"Accept": "text/csv"}).text
        lines = csv_text.strip().splitlines()
        assert lines[0].startswith("key,study_instance_uid,study_date") and len(lines) == 1 + everything["total"]
        assert c.get("/api/studies", params={"offset": "x"}).status_code == 400


def test_one_study_page_and_api(served: Server) -> None:
    with session(served, "view") as c:
        listing = c.get("/api/studies", params={"limit": 1000}).json()["studies"]
        top = max(listing, key=lambda s: s["events"])
        d = c.get(f"/api/studies/{top['key']}").json()
        assert d["study_instance_uid"] == top["study_instance_uid"] and len(d["events"]) == top["events"]
        assert d["flags"]["registry_code"] == top["registry_code"]
        page = c.get(f"/studies/{top['key']}")
        assert page.status_code == 200
        assert top["study_instance_uid"] in page.text and "Dose objects" in page.text
        for e in d["events"]:
            if e.get("ctdivol_mGy") is not None:
                assert str(e["ctdivol_mGy"]) in page.text
        assert 'type="application/json" id="event-chart-data"' in page.text
        assert c.get("/api/studies/ffffffffffffffffffffffffffffffff").status_code == 404
    audit = run_cli("audit", "--data-dir", str(served.data_dir)).stdout
    views = [line for line in audit.splitlines() if "\tview study\t" in line and top["key"] in line]
    assert len(views) == 2  # the API's and the page's


def test_no_identifier_in_any_url_or_the_log(served: Server) -> None:
    with session(served, "phys") as c:
        listing = c.get("/api/studies", params={"limit": 1000}).json()["studies"]
        secrets_ = set()
        for s in listing:
            secrets_.update(v for v in (s["study_instance_uid"], s["accession_number"]) if v)
            d = c.get(f"/api/studies/{s['key']}").json()
            secrets_.update(v for v in ((d.get("patient") or {}).get("id"), (d.get("patient") or {}).get("name")) if v)
        hrefs: list[str] = []
        for path in ["/studies", "/studies?page=1&registry_code=G9326", "/reports", "/batches", "/quarantine",
                     *[f"/studies/{s['key']}" for s in listing]]:
            html = c.get(path).text
            hrefs += re.findall(r'(?:href|src|action)="([^"]*)"', html)
        assert len(hrefs) > len(listing)
        for h in hrefs:
            for s in secrets_:
                assert s not in h, (s, h)
    log = served.log.read_text()
    for s in secrets_:
        assert s not in log


def test_quarantine_reports_and_static(served: Server) -> None:
    with session(served, "view") as c:
        q = c.get("/quarantine")
        assert q.status_code == 200
        db = sqlite3.connect(f"file:{served.data_dir / 'catalog.sqlite'}?mode=ro", uri=True)
        codes = [r[0] for r in db.execute("SELECT error_code FROM quarantine")]
        db.close()
        assert codes and all(code in q.text for code in codes)
        assert f"Quarantine <span class=\"count\">{len(codes)}</span>" in q.text
        written = run_cli("report", "--data-dir", str(served.data_dir))
        assert written.returncode == 0, written.stderr
        name = Path(next(line for line in written.stdout.splitlines() if line.endswith(".html"))).name
        rep = c.get("/reports")
        assert rep.status_code == 200 and 'id="summary-data"' in rep.text
        assert f'href="/reports/file/{name}"' in rep.text
        one = c.get(f"/reports/file/{name}")
        assert one.status_code == 200 and one.text == (served.data_dir / "reports" / name).read_text()
        assert c.get("/reports/file/completeness-nothing.html").status_code == 404
        assert c.get("/reports/file/..%2Fcatalog.sqlite").status_code == 404
        current = c.get("/reports/current")
        assert current.status_code == 200 and current.headers["content-type"].startswith("text/html")
        assert "<html" in current.text.lower()
        assert c.get("/reports/current").text == current.text  # cached while nothing changed
        js = c.get("/static/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
        assert c.get("/static/charts.js").status_code == 200
        b = c.get("/batches")
        assert b.status_code == 200 and "No batch." in b.text
        assert c.get("/api/batches").json() == {"batches": []}


def test_index_follows_the_catalog(served: Server, tmp_path: Path) -> None:
    """A study imported while the server runs appears at the next request."""
    from dosereg.conf.config import load_config
    from dosereg.ingest import open_catalog
    from tests.synthetic import synthetic_study

    with session(served, "view") as c:
        before = c.get("/api/studies").json()["total"]
        cfg = load_config(None, data_dir=str(served.data_dir))
        cat = open_catalog(cfg)
        try:
            cat.add_objects([synthetic_study(424242)])
        finally:
            cat.close()
        after = c.get("/api/studies").json()
        assert after["total"] == before + 1
        assert "1.2.826.0.1.3680043.9.7777.1.424242" in {s["study_instance_uid"] for s in after["studies"]}


def test_cli_accounts(tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    r = run_cli("user", "add", "a", "--role", "viewer", "--password-stdin", "--data-dir", d, input=b"short\n")
    assert r.returncode == 2 and "at least 12 characters" in r.stderr
    r = run_cli("user", "add", "a", "--role", "viewer", "--password-stdin", "--data-dir", d,
                input=(PASSWORD + "\n").encode())
    assert r.returncode == 0
    assert run_cli("user", "add", "a", "--role", "viewer", "--password-stdin", "--data-dir", d,
                   input=(PASSWORD + "\n").encode()).returncode == 2
    assert run_cli("user", "list", "--data-dir", d).stdout.startswith("a\tviewer\t")
    store_file = tmp_path / "data" / "web.sqlite"
    assert store_file.stat().st_mode & 0o077 == 0
    assert PASSWORD not in store_file.read_bytes().decode("latin-1")
    assert "$argon2id$" in store_file.read_bytes().decode("latin-1")
    assert run_cli("user", "remove", "a", "--data-dir", d).returncode == 0
    assert run_cli("user", "list", "--data-dir", d).stdout == ""
    assert run_cli("user", "remove", "a", "--data-dir", d).returncode == 2
    audit = run_cli("audit", "--data-dir", d).stdout.splitlines()
    assert [line.split("\t")[4] for line in audit] == ["user added", "user removed"]
    assert run_cli("audit", "--since", "2999-01-01", "--data-dir", d).stdout == ""
    db = sqlite3.connect(store_file)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'x'")
    db.close()


def test_web_config(tmp_path: Path) -> None:
    from dosereg.conf.config import ConfigError, load_config

    cfg = load_config(None)
    assert (cfg.web.host, cfg.web.port, cfg.web.session_hours, cfg.web.tls_certificate) == ("127.0.0.1", 8080, 8.0, "")
    f = tmp_path / "c.toml"
    f.write_text('[web]\nport = 9443\nsession_hours = 2\n')
    assert (load_config(str(f)).web.port, load_config(str(f)).web.session_hours) == (9443, 2.0)
    for bad, words in (('port = 0', "web.port"), ('tls_certificate = "a.pem"', "go together"),
                       ('colour = "red"', "unknown key web.colour")):
        f.write_text(f"[web]\n{bad}\n")
        with pytest.raises(ConfigError, match=words):
            load_config(str(f))


# -- TLS ---------------------------------------------------------------------------------------

def test_tls_with_a_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    config = tmp_path / "dosereg.toml"
    config.write_text(f'[web]\ntls_certificate = "{cert_file}"\ntls_private_key = "{key_file}"\n')
    data_dir = tmp_path / "data"
    r = run_cli("user", "add", "phys", "--role", "physicist", "--password-stdin", "--data-dir", str(data_dir),
                input=(PASSWORD + "\n").encode())
    assert r.returncode == 0
    server = Server(data_dir, config=config, scheme="https")
    try:
        with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(ca_file)),
                          timeout=60) as c:
            r = login(c, "phys")
            assert r.status_code == 303
            cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("dosereg_session="))
            assert "Secure" in cookie and "HttpOnly" in cookie
            page = c.get("/studies")
            assert page.status_code == 200 and page.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken there
            httpx.get(f"http://127.0.0.1:{server.port}/login", timeout=10)
    finally:
        server.stop()


# -- the batch lifecycle in the browser ----------------------------------------------------------

def check_submission_states(c: httpx.Client, batch_id: str, held_key: str, studies: int) -> None:
    """After one study of ``batch_id`` was held and the rest acknowledged: the studies page and
    ``/api/studies`` filter by submission state and show each study's."""
    everything = c.get("/api/studies", params={"limit": 1000}).json()["studies"]
    assert len(everything) == studies
    states = {s["key"]: s["submission"] for s in everything}
    assert states[held_key]["state"] == "held" and states[held_key]["batch_id"] == batch_id
    assert c.get(f"/api/studies/{held_key}").json()["submission"] == states[held_key]  # the record's own
    assert {v["state"] for k, v in states.items() if k != held_key} == {"acknowledged"}
    assert all(v["batch_id"] == batch_id and v["billed_code"] in ("G9327", "G9326", "excluded")
               for k, v in states.items() if k != held_key)
    reported = [v for v in states.values() if v["billed_code"] == "G9327"]
    assert reported and all(v["receipt"].startswith("drop=") and v["reported_at"] for v in reported)
    held = c.get("/api/studies", params={"submission_state": "held"}).json()
    assert held["total"] == 1 and [s["key"] for s in held["studies"]] == [held_key]
    acked = c.get("/api/studies", params={"submission_state": "acknowledged", "limit": 1000}).json()
    assert acked["total"] == studies - 1 and held_key not in {s["key"] for s in acked["studies"]}
    for state in ("eligible", "pending_review", "failed", "no_dose_report"):
        assert c.get("/api/studies", params={"submission_state": state}).json()["total"] == 0, state
    bad = c.get("/api/studies", params={"submission_state": "reported"})
    assert bad.status_code == 400 and "submission_state must be one of" in bad.json()["error"]
    lines = c.get("/api/studies", params={"submission_state": "held"}, headers={"Accept": "text/csv"}).text.splitlines()
    header = lines[0].split(",")
    assert header[-5:] == ["submission_state", "submission_batch_id", "submission_billed_code",
                           "submission_receipt", "submission_reported_at"] and len(lines) == 2
    assert lines[1].split(",")[header.index("submission_state")] == "held"
    page = c.get("/studies", params={"submission_state": "held"})
    assert page.status_code == 200 and f'href="/studies/{held_key}"' in page.text
    assert page.text.count('<td class="submission held">held</td>') == 1
    assert 'option value="held" selected' in page.text
    form_error = c.get("/studies", params={"submission_state": "<b>x</b>"})
    assert form_error.status_code == 400 and "submission_state must be one of" in form_error.text
    assert "<b>x</b>" not in form_error.text  # escaped, never echoed as markup


def test_a_weeks_review_in_the_browser_and_billing_through_the_api(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Export, then in the web: hold one study, approve (which starts the send to a real drop
    folder); the batch is acknowledged and billing picks its flags up through the API."""
    secret = "web-lifecycle-secret-0123456789abcdef01"
    monkeypatch.setenv("DOSEREG_SECRET", secret)
    data_dir, drop = tmp_path / "data", tmp_path / "drop"
    config = tmp_path / "dosereg.toml"
    config.write_text(f'[storage]\ndata_dir = "{data_dir}"\n[[registry.destinations]]\nname = "drop"\n'
                      f'kind = "folder"\npath = "{drop}"\n')
    make_data_dir(data_dir)
    r = run_cli("export", "--config", str(config), env={"DOSEREG_SECRET": secret})
    assert r.returncode == 0, r.stderr
    server = Server(data_dir, config=config)
    try:
        with session(server, "phys") as c:
            (batch,) = c.get("/api/batches").json()["batches"]
            assert batch["state"] == "pending_review"
            page = c.get("/batches")
            keys = re.findall(r'name="study" value="([^"]+)"', page.text)
            assert len(keys) == sum(batch["counts"][k] for k in ("G9327", "G9326", "excluded"))
            r = c.post("/batches/action", data={"action": "hold", "batch_id": batch["batch_id"], "study": keys[0],
                                                "comment": "protocol name to check", "csrf": csrf_of(page.text)})
            assert r.status_code == 200, r.text
            r = c.post("/batches/action", data={"action": "approve", "batch_id": batch["batch_id"],
                                                "comment": "weekly review", "csrf": csrf_of(page.text)})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 60
            while (now := c.get("/api/batches").json()["batches"][0])["state"] != "acknowledged":
                assert now["state"] in ("approved", "sending"), now
                assert time.monotonic() < deadline, now
                time.sleep(0.5)
            assert now["approved_by"] == "phys" and now["counts"]["held"] == 1
            check_submission_states(c, batch["batch_id"], keys[0], len(keys))
        with session(server, "bill") as c:
            rows = c.get("/api/flags").json()["flags"]
            assert len(rows) == len(keys) - 1  # the held study has no row
            assert {r["batch_id"] for r in rows} == {batch["batch_id"]} and all(r["written_at"] for r in rows)
            reported = [r for r in rows if r["registry_code"] == "G9327"]
            assert reported and all(r["receipt"].startswith("drop=") and r["reported_at"] for r in reported)
            assert c.get("/api/flags", params={"since": "2999-01-01T00:00:00Z"}).json()["flags"] == []
            assert c.get("/api/flags", params={"since": "yesterday"}).status_code == 400
        assert (drop / "manifest.json").exists() or any(drop.rglob("manifest.json"))
    finally:
        server.stop()
