"""Shared fixtures: the corpus folder, the project's schema, and the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (ROOT.parent / "shared" / "corpus").resolve()
SAMPLES = ROOT / "sample_dicom"
SCHEMA_PATH = ROOT / "conf" / "study.schema.json"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """../shared/corpus, or skip: the real vendor files are not part of the project."""
    if not (CORPUS / "README.md").exists():
        pytest.skip(f"vendor corpus not found at {CORPUS} (it lives beside the project in ../shared/corpus)")
    return CORPUS


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


_VALIDATOR: Any = None


def validate_record(record: dict[str, Any]) -> None:
    """Validate one study record against the project's own copy of the schema."""
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema

        schema = json.loads(SCHEMA_PATH.read_text())
        _VALIDATOR = jsonschema.Draft202012Validator(schema)
    errors = sorted(_VALIDATOR.iter_errors(record), key=lambda e: list(e.path))
    assert not errors, "schema violations:\n" + "\n".join(
        f"  {'/'.join(map(str, e.path))}: {e.message}" for e in errors[:20]
    )


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``dosereg`` CLI in a subprocess (the installed console script's module)."""
    full_env = dict(os.environ)
    full_env.pop("DOSEREG_CONFIG", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "dosereg.cli", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
        input=input.decode() if input else None,
    )


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
