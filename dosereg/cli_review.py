"""The dose review's part of the command line (docs/dose-review.md).

``dosereg studies --json`` gains, per study, ``patient_history``: the patient's cumulative DLP
and effective-dose estimate over ``[dose] patient_history_days`` up to the study's date (for use
inside the hospital: it is keyed by patient ID). No verb of its own yet (``COMMANDS`` is empty).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dosereg.conf.config import Config

__all__ = ["COMMANDS", "add_parsers", "with_patient_history"]

COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {}


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """No verbs yet (the alerts listing is not built)."""


def with_patient_history(cfg: Config, studies: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``studies`` (JSON study records) each with ``patient_history`` set: a first pass over the
    catalog gathers every patient study's date and dose, then each record is given its window."""
    from dosereg.ingest import open_catalog
    from dosereg.registry_export import PatientHistory, rules_from_config

    rules = rules_from_config(cfg)
    catalog = open_catalog(cfg, readonly=True)
    try:
        history = PatientHistory.of(catalog.iter_studies(), rules, cfg.dose.patient_history_days)
    finally:
        catalog.close()
    for d in studies:
        patient = d.get("patient") or {}
        d["patient_history"] = None if d.get("flags") is None or d["flags"].get("registry_code") == "excluded" \
            else history.cumulative(patient.get("id"), d.get("study_date"))
        yield d
