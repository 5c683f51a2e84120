"""Reference levels as data (docs/reference-levels.md): ``[reference_levels]`` and the levels file.

* :class:`ReferenceLevelsSettings` -- the configuration section: the levels file (relative to the
  configuration file's folder, else the packaged one), and the period and minimum number of
  studies of the site's own local reference levels (ICRP Publication 135: the 75th percentile
  of the site's exams).
* :func:`load_reference_levels` -- the file (``conf/reference_levels.toml`` format) as
  :class:`ReferenceLevel` values; every mistake is a ConfigError naming the file, the level
  and the key. A level without a source is refused: values whose source is not named are not
  compared against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "QUANTITIES", "REGIONS", "ReferenceLevel", "ReferenceLevelsSettings", "load_reference_levels",
           "reference_levels_path"]

SCHEMA = "dosereg.reference_levels/1"
#: quantity -> unit and what one value is (the review compares like with like)
QUANTITIES = {"ctdivol_mGy": "mGy, per event", "dlp_mGycm": "mGy·cm, per study and region",
              "ssde_mGy": "mGy, per event"}
KINDS = {"drl": "diagnostic reference level (75th percentile)", "achievable": "achievable dose (median)",
         "limit": "regulatory limit", "notification": "Dose Check notification value",
         "alert": "Dose Check alert value"}
REGIONS = {"head": "head16", "body": "body32"}
CATEGORIES = ("adult_head", "adult_body", "paediatric_head_under_2y", "paediatric_head_2_to_5y",
              "paediatric_body_under_10y", "brain_perfusion", "cardiac_prospective", "cardiac_retrospective")
_PHANTOM_FACTOR = 2.3  # as registry_export.dosimetry.PHANTOM_FACTOR (16 cm value = 2.3 x the 32 cm one)
_KEYS = ("name", "exam", "region", "phantom", "category", "quantity", "value", "kind", "source")
_REQUIRED = ("name", "exam", "region", "phantom", "quantity", "value", "kind", "source")


@dataclass(frozen=True)
class ReferenceLevelsSettings:
    """``[reference_levels]``: ``file`` (the levels), ``local_period_days`` (the site's local levels
    are the 75th percentile of the exams of this many days before the latest study),
    ``local_min_n`` (an exam with fewer studies in the period gets no local level)."""

    file: str = "reference_levels.toml"
    local_period_days: int = 365
    local_min_n: int = 20


@dataclass(frozen=True)
class ReferenceLevel:
    """One level. ``value`` is on the region's standard phantom (head 16 cm, body 32 cm), converted
    from the file's ``phantom`` when that differs; ``stated_value`` is the file's number."""

    name: str
    exam: str  # "*" or a RadLex Playbook ID or a study description (compared case-insensitively)
    region: str  # head | body
    quantity: str  # a key of QUANTITIES
    value: float
    kind: str  # a key of KINDS
    source: str
    phantom: str
    stated_value: float
    category: str | None = None

    def applies_to(self, exam: str, region: str) -> bool:
        return self.region == region and (self.exam == "*" or self.exam.casefold() == exam.casefold())


def reference_levels_path(cfg: Any) -> Path:
    """The levels file named by ``cfg.reference_levels.file``: absolute as given; relative to the
    configuration file's folder when it is there, else the packaged file of that name."""
    from .config import CONF_DIR

    p = Path(cfg.reference_levels.file)
    if p.is_absolute():
        return p
    candidate = cfg.config_dir / p
    return candidate if candidate.exists() else CONF_DIR / p


def load_reference_levels(path: Path) -> tuple[ReferenceLevel, ...]:
    """The levels of ``path``; a ConfigError names the file, the level (``level[i]``) and the key."""
    from .config import read_toml

    data = read_toml(path, "reference levels file")
    unknown = sorted(set(data) - {"schema", "level"})
    if unknown:
        raise _error(str(path), f"unknown key {unknown[0]!r} (known: schema, level)")
    if data.get("schema") != SCHEMA:
        raise _error(str(path), f"schema must be {SCHEMA!r}, not {data.get('schema')!r}")
    levels = data.get("level", [])
    if not isinstance(levels, list) or not all(isinstance(x, dict) for x in levels):
        raise _error(str(path), "level must be an array of tables ([[level]])")
    return tuple(_level(item, f"{path}: level[{i}]") for i, item in enumerate(levels))


def _choice(item: dict[str, Any], key: str, choices: Any, where: str) -> str:
    value = item[key]
    if value not in choices:
        raise _error(where, f"{key} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _error(where: str, message: str) -> Exception:
    """The configuration's ConfigError (imported here: conf.config imports this module)."""
    from .config import ConfigError

    return ConfigError(f"{where}: {message}")


def _level(item: dict[str, Any], where: str) -> ReferenceLevel:
    for key in item:
        if key not in _KEYS:
            raise _error(where, f"unknown key {key!r} (known: {', '.join(_KEYS)})")
    for key in _REQUIRED:
        if key not in item:
            raise _error(where, f"{key} is missing")
    for key in ("name", "exam", "source", *(("category",) if "category" in item else ())):
        if not isinstance(item[key], str) or not item[key].strip():
            raise _error(where, f"{key} must be a non-empty string, not {item[key]!r}")
    region = _choice(item, "region", REGIONS, where)
    phantom = _choice(item, "phantom", tuple(REGIONS.values()), where)
    quantity = _choice(item, "quantity", QUANTITIES, where)
    kind = _choice(item, "kind", KINDS, where)
    category = _choice(item, "category", CATEGORIES, where) if "category" in item else None
    value = item["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _error(where, f"value must be a positive number, not {value!r}")
    standard = REGIONS[region]
    converted = float(value)
    if phantom != standard and quantity != "ssde_mGy":  # SSDE is patient-sized: no phantom to convert from
        converted = converted * _PHANTOM_FACTOR if standard == "head16" else converted / _PHANTOM_FACTOR
    return ReferenceLevel(name=item["name"].strip(), exam=item["exam"].strip(), region=region, quantity=quantity,
                          value=converted, kind=kind, source=item["source"].strip(), phantom=phantom,
                          stated_value=float(value), category=category)
