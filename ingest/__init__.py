"""DICOM in: C-STORE SCP, folder import, durable spool, study catalog.

Public API: :func:`serve`, :func:`import_paths` (-> :class:`ImportSummary`),
:func:`reconcile` / :func:`reconcile_csv` (-> :class:`ReconcileSummary`, docs/reconcile.md),
:func:`open_catalog` (-> :class:`Catalog`), :func:`extract_limits` (the configured bounds
on reading one object), the quarantine's tools :func:`list_quarantine`, :func:`reprocess`, :func:`purge`, and
:func:`health` (listener heartbeat, spool, disk: ``dosereg status``). Nothing received stays in the spool: a failure of the environment
(:class:`TransientError`) is retried, anything else is quarantined.
Every file of the data directory written here is owner-only (:mod:`dosereg.conf.fsutil`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dosereg.conf.config import Config

from .catalog import SCHEMA_VERSION, Catalog, CatalogError, catalog_path
from .health import STUCK_AFTER_S, health
from .importer import ImportSummary, import_paths
from .pipeline import Pipeline, Received, TransientError, extract_limits
from .qr_session import PacsUnreachable, QueryError
from .quarantine import QuarantineEntry, list_quarantine, purge, reprocess
from .reconcile import ReconcileError, ReconcileSummary, default_period, reconcile
from .reconcile_csv import CsvError, reconcile_csv


def ae_title_problem(value: str) -> str | None:
    """Why ``value`` cannot be our AE title (PS3.5 6.2: 1-16 characters of the default repertoire), or None."""
    from .listener import ae_title_problem as _problem

    return _problem(value)


def open_catalog(cfg: Config, readonly: bool = False) -> Catalog:
    """The catalog of ``cfg``'s data directory (created and migrated unless ``readonly``)."""
    return Catalog(catalog_path(cfg.data_dir), readonly=readonly)


def object_rows(cfg: Config) -> list[dict[str, Any]]:
    """:meth:`Catalog.object_rows` of ``cfg``'s catalog, read-only (what ``send`` needs: the
    stored dose objects of each study)."""
    catalog = open_catalog(cfg, readonly=True)
    try:
        return catalog.object_rows()
    finally:
        catalog.close()


def serve(cfg: Config, background: Sequence[Any] = ()) -> int:
    """Run ``dosereg listen`` until SIGINT/SIGTERM (see :mod:`dosereg.ingest.listener`);
    ``background``: objects with ``start()`` and ``stop()`` (:class:`~.listener.Background`, the
    dose alerts' worker) run beside it: started once the catalog is open, stopped after it stopped."""
    from .listener import serve as _serve

    return _serve(cfg, background)


__all__ = [
    "SCHEMA_VERSION", "Catalog", "CatalogError", "CsvError", "ImportSummary", "PacsUnreachable", "Pipeline",
    "QueryError", "Received", "ReconcileError", "ReconcileSummary", "TransientError", "default_period",
    "extract_limits", "import_paths", "object_rows", "open_catalog", "reconcile", "reconcile_csv", "serve",
    "STUCK_AFTER_S", "QuarantineEntry", "ae_title_problem", "health", "catalog_path", "list_quarantine", "purge",
    "reprocess",
]
