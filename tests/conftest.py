"""Shared fixtures: the sample dose objects, the corpus folder, the project's schema, the real CLI.

The project's own ``sample_dicom/`` files are what the tests run on, so a clone alone runs
every ingest, listener and import test. The real vendor files of ``../shared/corpus`` (not
part of the project) are a conformance layer on top, read only when they are there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (ROOT.parent / "shared" / "corpus").resolve()
SAMPLES = ROOT / "sample_dicom"
SCHEMA_PATH = ROOT / "conf" / "study.schema.json"
CORPUS_MISSING = f"vendor corpus not found at {CORPUS} (it lives beside the project in ../shared/corpus)"
# a complete single-source RDSR: the source of the distinct copies bulk tests send
SAMPLE_RDSR = SAMPLES / "ct_siemens_single_source.dcm"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """../shared/corpus, or skip: the real vendor files are not part of the project."""
    if not (CORPUS / "README.md").exists():
        pytest.skip(CORPUS_MISSING)
    return CORPUS


def corpus_present() -> bool:
    return (CORPUS / "README.md").exists()


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


def sample_expected(stem: str) -> dict[str, Any]:
    """``sample_dicom/expected/<stem>.json``: what the generator wrote into ``<stem>.dcm``."""
    doc: dict[str, Any] = json.loads((SAMPLES / "expected" / f"{stem}.json").read_text(encoding="utf-8"))
    return doc


@dataclass(frozen=True)
class DoseSet:
    """Dose objects to ingest, with the figures a correct listener or import gives for them.

    The same ingest tests run on the samples (always) and on the vendor corpus (when present).
    """

    name: str
    ct_files: tuple[Path, ...]  # CT dose objects: each one stored and catalogued
    refused: tuple[Path, ...]  # accepted SOP classes that are not CT dose reports: quarantined
    n_studies: int  # studies the CT files make
    multi_study: str  # a study made of several of them, merged on arrival
    multi_events: int
    multi_objects: int
    multi_dlp_mGycm: float
    enhanced_sr: Path  # a CT dose tree in an Enhanced SR object


def sample_set() -> DoseSet:
    """Every readable sample: the CT ones stored, the refused ones (DX, RF, MG, non-dose SR) quarantined."""
    ct: list[Path] = []
    refused: list[Path] = []
    studies: set[str] = set()
    for path in sorted(SAMPLES.glob("*.dcm")):
        record = sample_expected(path.stem)["record"]
        error = record.get("error")
        if error is None:
            ct.append(path)
            studies.add(record["study_instance_uid"])
        elif error["code"] in ("not_ct_dose", "not_dose_report"):
            refused.append(path)
    cumulative = json.loads((SAMPLES / "expected" / "merges.json").read_text())[0]
    return DoseSet(
        name="samples", ct_files=tuple(ct), refused=tuple(refused), n_studies=len(studies),
        multi_study=cumulative["study_instance_uid"], multi_events=cumulative["total_events"],
        multi_objects=len(cumulative["files"]), multi_dlp_mGycm=cumulative["total_dlp_mGycm"],
        enhanced_sr=SAMPLES / "ct_ge_enhanced_sr.dcm",
    )


def corpus_set(corpus: Path) -> DoseSet:
    """The vendor corpus: nine CT files (three of them one Siemens study) and three not-CT ones."""
    return DoseSet(
        name="corpus", ct_files=tuple(sorted(corpus.glob("*.dcm"))),
        refused=tuple(sorted((corpus / "not-ct").glob("*.dcm"))), n_studies=7,
        multi_study="1.3.6.1.4.1.5962.99.1.792239193.1702185591.1516915727449.3.0",
        multi_events=3, multi_objects=3, multi_dlp_mGycm=236.09,
        enhanced_sr=corpus / "CT-ESR-GE_VCT.dcm",
    )


def distinct_copies(out: Path, n: int, source: Path = SAMPLE_RDSR) -> list[tuple[Path, str, str]]:
    """``n`` copies of ``source``, each its own study: [(path, study uid, sop uid)], written under ``out``.

    New Study and SOP Instance UIDs make each copy a distinct object (bulk tests need many).
    """
    import pydicom
    from pydicom.uid import generate_uid

    raw = source.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        ds = pydicom.dcmread(BytesIO(raw))
        study, sop = generate_uid(), generate_uid()
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        path = out / f"syn{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made.append((path, study, sop))
    return made


def stop_by_pid(proc: subprocess.Popen[Any], grace_s: float = 20) -> None:
    """Stop a server the test started: SIGTERM to its process id, SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
