"""The physicist's workbench in the browser and the HTTP API: ``dosereg serve`` (docs/web.md).

Public API: :func:`create_app` (cfg, batches, flags) -> the Starlette app; :func:`serve` (cfg,
host, port) runs it under uvicorn; :class:`Store` (accounts, tokens, audit log:
``web.sqlite``), :class:`StudyIndex` (the verdict index: ``web-index.sqlite``);
:class:`Batches` and :class:`Flags`, what the workbench needs from the batch lifecycle, and
:func:`lifecycle_seams`, the one place that chooses them.
"""

from __future__ import annotations

from dosereg.conf.config import Config

from .app import create_app, routes, serve
from .index import Query, StudyIndex
from .seams import ActionRefused, Batches, Flags, NotAvailable, Unavailable
from .store import MIN_PASSWORD, ROLES, TOKEN_ROLES, AccountError, Principal, Store


def lifecycle_seams(cfg: Config) -> tuple[Batches, Flags]:
    """The batch lifecycle's review queue and flags for the workbench.

    Not wired yet (issue 10): both are :class:`Unavailable`. Wire here: adapters over
    ``dosereg.registry_export``'s batch functions (list, review, approve + send, hold,
    release, reject) and over the flags files.
    """
    stub = Unavailable()
    return stub, stub


__all__ = [
    "MIN_PASSWORD", "ROLES", "TOKEN_ROLES", "AccountError", "ActionRefused", "Batches", "Flags", "NotAvailable",
    "Principal", "Query", "Store", "StudyIndex", "Unavailable", "create_app", "lifecycle_seams", "routes", "serve",
]
