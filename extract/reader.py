"""Placeholder: replaced by the real reader."""
from __future__ import annotations

from .model import StudyRecord, error_record


def extract_bytes(data: bytes, *, source: str = "<bytes>", received_at: str | None = None) -> StudyRecord:
    return error_record("not_implemented", f"{source}: extraction not implemented yet")


def extract_file(path: str, *, received_at: str | None = None) -> StudyRecord:
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        return error_record("unreadable", f"{path}: cannot read file: {exc.strerror}", source_file=str(path))
    return extract_bytes(data, source=str(path), received_at=received_at)
