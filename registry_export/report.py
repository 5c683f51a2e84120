"""Placeholder: replaced by the real report writer."""
from __future__ import annotations

from typing import Any


def write_report(cfg: Any, studies: Any, out_dir: Any = None) -> list[Any]:
    raise NotImplementedError("report is not implemented yet")
