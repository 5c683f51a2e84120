"""Placeholder: replaced by the real exporter."""
from __future__ import annotations

from typing import Any


def export_batch(cfg: Any, studies: Any, out_dir: Any = None) -> Any:
    raise NotImplementedError("export is not implemented yet")


def export_marks(cfg: Any) -> dict[str, dict[str, Any]]:
    return {}


def studies_table(studies: Any) -> str:
    raise NotImplementedError
