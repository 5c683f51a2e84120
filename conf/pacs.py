"""``[pacs]`` (docs/configuration.md, docs/reconcile.md): the archive ``dosereg reconcile`` asks.

Optional: without the section, ``Config.pacs`` is None and ``reconcile`` refuses to query
(``--from-csv`` still works). Checked like every other section: an unknown key, a wrong type
or an unusable value is a :class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .config import ConfigError, _ae_title_problem, _section

RETRIEVE_METHODS = ("c-get", "c-move")


@dataclass(frozen=True)
class PacsSettings:
    """Where the CT studies are asked for and the dose objects fetched from."""

    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_ae_title: str = ""  # empty in the file: the listener's AE title
    retrieve: str = "c-get"  # c-move sends to the listener's AE title (the PACS must know it)
    timeout_s: float = 60.0  # connect, each DIMSE message
    #: the most results the PACS answers to one C-FIND (0: unknown); a day range that returns
    #: this many is split, so a limit never truncates silently
    max_results: int = 0
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_ca_certificates: str = ""


_REQUIRED = ("ae_title", "host", "port")
_RANGES: dict[str, tuple[float, float]] = {"port": (1, 65535), "timeout_s": (0.1, 86400),
                                           "max_results": (0, 10**9)}


def parse_pacs(value: Any, where: Path, listener_ae_title: str) -> PacsSettings:
    """The ``[pacs]`` table: required keys present, values usable, calling AE title defaulted."""
    base = PacsSettings()
    section: PacsSettings = _section(PacsSettings, value, base, "pacs", where)
    given = value if isinstance(value, dict) else {}
    for key in _REQUIRED:
        if key not in given:
            raise ConfigError(f"{where}: pacs.{key} is required in [pacs]")
    if section.retrieve not in RETRIEVE_METHODS:
        raise ConfigError(f"{where}: pacs.retrieve must be one of {', '.join(RETRIEVE_METHODS)}, "
                          f"not {section.retrieve!r}")
    for f in fields(PacsSettings):
        bounds = _RANGES.get(f.name)
        got = getattr(section, f.name)
        if bounds and not bounds[0] <= got <= bounds[1]:
            raise ConfigError(f"{where}: pacs.{f.name} must be between {bounds[0]:g} and {bounds[1]:g}, "
                              f"not {got!r}")
    for key in ("ae_title", "calling_ae_title"):
        text = getattr(section, key)
        if key in given:
            problem = _ae_title_problem(text)
            if problem:
                raise ConfigError(f"{where}: pacs.{key} {problem}, not {text!r}")
    if not section.host.strip():
        raise ConfigError(f"{where}: pacs.host must not be empty")
    if bool(section.tls_certificate) != bool(section.tls_private_key):
        key = "tls_private_key" if section.tls_certificate else "tls_certificate"
        raise ConfigError(f"{where}: pacs.{key}: tls_certificate and tls_private_key must be set together")
    if not section.calling_ae_title:
        section = replace(section, calling_ae_title=listener_ae_title)
    return section


__all__ = ["RETRIEVE_METHODS", "PacsSettings", "parse_pacs"]
