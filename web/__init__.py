"""The physicist's workbench in the browser and the HTTP API: ``dosereg serve`` (docs/web.md).

Public API: :func:`create_app` (cfg, batches, flags) -> the Starlette app; :func:`serve` (cfg,
host, port) runs it under uvicorn; :class:`Store` (accounts, tokens, audit log:
``web.sqlite``), :class:`StudyIndex` (the verdict index: ``web-index.sqlite``);
:class:`Batches` and :class:`Flags`, what the workbench needs from the batch lifecycle, and
:func:`lifecycle_seams`, the one place that chooses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dosereg.conf.config import Config

from .index import Query, StudyIndex
from .seams import ActionRefused, Batches, Flags, NotAvailable, Unavailable
from .store import MIN_PASSWORD, ROLES, TOKEN_ROLES, AccountError, Principal, Store

if TYPE_CHECKING:
    from starlette.applications import Starlette


def create_app(cfg: Config, batches: Batches | None = None, flags: Flags | None = None) -> Starlette:
    """The workbench's Starlette app (:func:`dosereg.web.app.create_app`; the web stack is
    imported on first use, so a stage importing this package for its store stays light)."""
    from .app import create_app as _create_app

    return _create_app(cfg, batches, flags)


def routes() -> list[Any]:
    from .app import routes as _routes

    return _routes()


def serve(cfg: Config, host: str | None = None, port: int | None = None) -> int:
    """``dosereg serve`` until SIGINT/SIGTERM."""
    from .app import serve as _serve

    return _serve(cfg, host, port)


def lifecycle_seams(cfg: Config) -> tuple[Batches, Flags]:
    """The batch lifecycle's review queue and flags for the workbench: adapters over
    ``dosereg.registry_export``'s batch functions and flags files (:mod:`.lifecycle`)."""
    from .lifecycle import RegistryBatches, RegistryFlags

    return RegistryBatches(cfg), RegistryFlags(cfg)


__all__ = [
    "MIN_PASSWORD", "ROLES", "TOKEN_ROLES", "AccountError", "ActionRefused", "Batches", "Flags", "NotAvailable",
    "Principal", "Query", "Store", "StudyIndex", "Unavailable", "create_app", "lifecycle_seams", "routes", "serve",
]
