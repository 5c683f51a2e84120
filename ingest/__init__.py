"""DICOM in: C-STORE SCP, folder import, durable spool, study catalog.

Public API: :func:`serve`, :func:`import_paths`, :func:`open_catalog` (-> :class:`Catalog`).
"""
from __future__ import annotations

from typing import Any


def serve(cfg: Any) -> int:
    raise NotImplementedError("listen is not implemented yet")


def import_paths(cfg: Any, paths: Any, jobs: int | None = None, progress: bool = False) -> Any:
    raise NotImplementedError("import is not implemented yet")


def open_catalog(cfg: Any, readonly: bool = False) -> Any:
    raise NotImplementedError("the catalog is not implemented yet")
