"""Placeholder: replaced by the real rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dosereg.config import Config
from dosereg.extract import StudyRecord


@dataclass(frozen=True)
class Rules:
    config: Config


@dataclass(frozen=True)
class Evaluation:
    completeness: dict[str, Any]
    classification: dict[str, Any]
    flags: dict[str, Any]


def rules_from_config(cfg: Config) -> Rules:
    return Rules(cfg)


def evaluate(record: StudyRecord, rules: Rules) -> Evaluation:
    raise NotImplementedError


def evaluated_dict(record: StudyRecord, rules: Rules, export: dict[str, Any] | None = None) -> dict[str, Any]:
    d = record.to_dict()
    d["completeness"] = d["classification"] = d["flags"] = None
    d["export"] = export
    return d
