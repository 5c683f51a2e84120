"""The nomenclature table: local study descriptions -> RadLex Playbook IDs (docs/registry-profile.md).

A CSV file (``conf/nomenclature.csv`` documents it) with the columns ``local_description``
and ``radlex_playbook_id`` (optionally ``playbook_name``), and ``#`` comments; a comment
``# playbook_schemes: RADLEX, RPID`` names the coding schemes whose procedure codes count as
RadLex Playbook codes. It decides the nomenclature flag (G9318 / G9319, see
:mod:`.classification`). Mistakes are :class:`ConfigError` naming the file and the line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dosereg.conf.config import ConfigError

__all__ = ["NOMENCLATURE_COLUMNS", "Nomenclature", "NomenclatureEntry", "load_nomenclature"]

_RPID = re.compile(r"^RPID[1-9][0-9]*$")
_DIRECTIVE = re.compile(r"^#\s*playbook_schemes\s*:(.*)$", re.IGNORECASE)
NOMENCLATURE_COLUMNS = ("local_description", "radlex_playbook_id")
NO_EXAM = "(no study description)"


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class NomenclatureEntry:
    description: str
    playbook_id: str
    playbook_name: str | None
    line: int


@dataclass(frozen=True)
class Nomenclature:
    """Local description -> RadLex Playbook ID, and the coding schemes counted as Playbook."""

    path: Path
    entries: Mapping[str, NomenclatureEntry]  # keyed by the normalised description
    playbook_schemes: tuple[str, ...]

    def lookup(self, description: str | None) -> NomenclatureEntry | None:
        """The entry of a description (case and runs of white space do not matter)."""
        if not description:
            return None
        return self.entries.get(_norm(description))

    def exam_name(self, description: Any) -> str:
        """The exam a study is compared as (docs/dose-review.md): its RadLex Playbook ID from the
        table, else its study description, else ``(no study description)``."""
        entry = self.lookup(description) if isinstance(description, str) else None
        return entry.playbook_id if entry is not None else (description or NO_EXAM)


def load_nomenclature(path: Path) -> Nomenclature:
    """Read the nomenclature table (CSV with a ``#`` comment header; see conf/nomenclature.csv)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: nomenclature table not found (nomenclature.table)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: nomenclature table is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read nomenclature table: {exc.strerror}") from None
    schemes: list[str] = []
    header: list[str] | None = None
    entries: dict[str, NomenclatureEntry] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            m = _DIRECTIVE.match(stripped)
            if m:
                schemes.extend(s.strip().upper() for s in m.group(1).split(",") if s.strip())
            continue
        row = [c.strip() for c in next(csv.reader([line]))]
        if header is None:
            header = _header(row, path, lineno, line)
            continue
        entry = _entry(row, header, path, lineno)
        key = _norm(entry.description)
        first = entries.get(key)
        if first is not None and first.playbook_id != entry.playbook_id:
            raise ConfigError(f"{path}: line {lineno}: {entry.description!r} maps to {entry.playbook_id} here "
                              f"but to {first.playbook_id} on line {first.line}")
        entries.setdefault(key, entry)
    if header is None:
        raise ConfigError(f"{path}: nomenclature table has no header row ({', '.join(NOMENCLATURE_COLUMNS)})")
    return Nomenclature(path, entries, tuple(dict.fromkeys(schemes)))


def _header(row: list[str], path: Path, lineno: int, line: str) -> list[str]:
    header = [c.lower() for c in row]
    missing = [c for c in NOMENCLATURE_COLUMNS if c not in header]
    if missing:
        raise ConfigError(
            f"{path}: line {lineno}: the header row must name the columns "
            f"{', '.join(NOMENCLATURE_COLUMNS)} (missing {', '.join(missing)}); got {line.strip()!r}"
        )
    return header


def _entry(row: list[str], header: list[str], path: Path, lineno: int) -> NomenclatureEntry:
    if len(row) != len(header):
        raise ConfigError(f"{path}: line {lineno}: expected {len(header)} columns, found {len(row)}")
    values = dict(zip(header, row, strict=True))
    desc, rpid = values["local_description"], values["radlex_playbook_id"].upper()
    if not desc:
        raise ConfigError(f"{path}: line {lineno}: local_description is empty")
    if not _RPID.match(rpid):
        raise ConfigError(
            f"{path}: line {lineno}: radlex_playbook_id {values['radlex_playbook_id']!r} is not a "
            "RadLex Playbook ID (RPID followed by digits, e.g. RPID22)"
        )
    return NomenclatureEntry(desc, rpid, values.get("playbook_name") or None, lineno)
