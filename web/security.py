"""Who is asking, and what every answer carries: sessions, CSRF, roles, security headers.

* A session is a random id in a cookie signed with the data directory's secret
  (itsdangerous), HttpOnly, SameSite=Strict, Secure whenever the request came over HTTPS
  (TLS here, or a TLS proxy that says so); the id is looked up in ``web.sqlite``, so logout
  (or ``dosereg user remove``) ends it at once, and it ends after ``[web] session_hours``
  however active.
* Every state-changing form carries the session's CSRF token (the login form: a token
  signed for a nonce cookie), checked here before anything is done.
* Programs use ``Authorization: Bearer <token>`` (``dosereg token add``); a token never
  approves (its roles are viewer and billing).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .store import Principal, Store

SESSION_COOKIE = "dosereg_session"
LOGIN_COOKIE = "dosereg_login"

# no inline script anywhere (chart data travels in <script type="application/json"> blocks,
# which are never run); plotly sets element styles, hence style-src 'unsafe-inline'
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass
class Guard:
    store: Store
    secret: bytes
    session_hours: float

    def __post_init__(self) -> None:
        self._sessions = URLSafeTimedSerializer(self.secret, salt="dosereg.web.session")
        self._login = URLSafeTimedSerializer(self.secret, salt="dosereg.web.login")

    # -- sessions -----------------------------------------------------------------------------
    def session_cookie(self, sid: str) -> str:
        return self._sessions.dumps(sid)

    def session_of(self, request: Request) -> tuple[Principal, str, str] | None:
        """(user, CSRF token, session id) of the request's session cookie, while valid."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            sid = self._sessions.loads(raw, max_age=int(self.session_hours * 3600) + 1)
        except BadSignature:
            return None
        found = self.store.session(str(sid))
        return (found[0], found[1], str(sid)) if found else None

    def principal(self, request: Request) -> Principal | None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return self.store.check_token(auth[7:].strip())
        found = self.session_of(request)
        return found[0] if found else None

    # -- CSRF ---------------------------------------------------------------------------------
    def login_token(self, nonce: str) -> str:
        return self._login.dumps(nonce)

    def login_token_ok(self, request: Request, token: str) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        try:
            signed = self._login.loads(token, max_age=3600)
        except BadSignature:
            return False
        return bool(nonce) and hmac.compare_digest(str(signed), nonce)


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=secure(request))


def address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


Endpoint = Callable[[Request], Awaitable[Response]]


def requires(role: str, api: bool) -> Callable[[Endpoint], Endpoint]:
    """The endpoint answers only a principal of at least ``role``: else 401 (API, nobody
    logged in) or a redirect to /login (pages), and 403 for a lower role."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @wraps(endpoint)
        async def guarded(request: Request) -> Response:
            guard: Guard = request.app.state.guard
            who = guard.principal(request)
            if who is None:
                if api:
                    return JSONResponse({"error": "authentication required"}, status_code=401,
                                        headers={"WWW-Authenticate": 'Bearer realm="dosereg"'})
                return RedirectResponse("/login", status_code=303)
            if not who.may(role):
                if api:
                    return JSONResponse({"error": f"this needs the {role} role"}, status_code=403)
                return Response(f"Forbidden: this page needs the {role} role.", status_code=403,
                                media_type="text/plain")
            request.state.who = who
            return await endpoint(request)

        guarded.required_role = role  # type: ignore[attr-defined]  # read by the route table's test
        return guarded

    return wrap


class SecurityHeaders:
    """Adds the security headers to every answer; ``no-store`` on all but the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                extra = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                         (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"cross-origin-opener-policy", b"same-origin")]
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                if https:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)
