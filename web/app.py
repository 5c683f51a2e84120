"""The Starlette application of ``dosereg serve`` and the server that runs it (uvicorn)."""

from __future__ import annotations

import importlib.resources
import logging
import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dosereg.conf.config import Config

from . import api, pages
from .index import StudyIndex, study_secret
from .seams import Batches, Flags, Unavailable
from .security import Guard, SecurityHeaders
from .store import Store

log = logging.getLogger("dosereg.web")
HERE = Path(__file__).resolve().parent


def plotly_js() -> Path:
    """plotly.min.js as the installed plotly package ships it: the charts work offline."""
    return Path(str(importlib.resources.files("plotly") / "package_data" / "plotly.min.js"))


async def plotly(request: Request) -> Response:
    return FileResponse(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


def routes() -> list[Any]:
    """Every route; each endpoint but /login and the static files requires a login."""
    return [
        Route("/", pages.home),
        Route("/login", pages.login, methods=["GET", "POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/studies", pages.studies),
        Route("/studies/{key:str}", pages.study),
        Route("/batches", pages.batches),
        Route("/batches/action", pages.batch_action, methods=["POST"]),
        Route("/reports", pages.reports),
        Route("/reports/current", pages.report_current),
        Route("/reports/file/{name:str}", pages.report_file),
        Route("/quarantine", pages.quarantine),
        Route("/api/studies", api.studies),
        Route("/api/studies/{key:str}", api.study),
        Route("/api/batches", api.batches),
        Route("/api/flags", api.flags),
        Route("/static/plotly.min.js", plotly),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def create_app(cfg: Config, batches: Batches | None = None, flags: Flags | None = None) -> Starlette:
    """The workbench over ``cfg``'s data directory; ``batches`` / ``flags``: the lifecycle's
    (docs/web.md; without them, the pages say it is not available and the API answers 501)."""
    store = Store(cfg.data_dir)
    app = Starlette(routes=routes(), middleware=[Middleware(SecurityHeaders)])
    app.state.cfg = cfg
    app.state.guard = Guard(store, study_secret(cfg.data_dir), cfg.web.session_hours)
    app.state.index = StudyIndex(cfg)
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    stub = Unavailable()
    app.state.batches = batches if batches is not None else stub
    app.state.flags = flags if flags is not None else stub
    app.state.report_lock = threading.Lock()
    app.state.report_file = None
    app.state.report_stamp = None
    return app


def serve(cfg: Config, host: str | None = None, port: int | None = None) -> int:
    """Run the workbench until SIGINT/SIGTERM (uvicorn's graceful shutdown)."""
    import uvicorn

    from . import lifecycle_seams

    web = cfg.web
    batches, flags = lifecycle_seams(cfg)
    app = create_app(cfg, batches, flags)
    n = app.state.index.refresh()  # before the first page, not during it
    log.info("study index: %d studies evaluated", n)
    tls: dict[str, Any] = {}
    if web.tls_certificate:
        tls = {"ssl_certfile": web.tls_certificate, "ssl_keyfile": web.tls_private_key}
    uvicorn.run(app, host=host or web.host, port=port or web.port, log_level="warning",
                proxy_headers=True, server_header=False, **tls)
    return 0
