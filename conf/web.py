"""``[web]``: the workbench server of ``dosereg serve`` (docs/web.md).

Default bind 127.0.0.1: the workbench shows patient data, so reaching it from the network is
a decision (a hospital puts it behind its TLS reverse proxy, or gives it a certificate here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RANGES: dict[str, tuple[float, float]] = {"port": (1, 65535), "session_hours": (0.05, 24 * 7)}


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    tls_certificate: str = ""  # PEM; with tls_private_key, the server speaks HTTPS itself
    tls_private_key: str = ""
    session_hours: float = 8.0  # a session ends then (or at logout), however active


def parse_web(data: Any, base: WebSettings, where: Path) -> WebSettings:
    """``[web]`` of the file ``where`` over ``base``; errors name the key."""
    from .config import ConfigError, _section

    web: WebSettings = _section(WebSettings, data, base, "web", where)
    for key, (low, high) in _RANGES.items():
        value = getattr(web, key)
        if not low <= value <= high:
            raise ConfigError(f"{where}: web.{key} must be between {low:g} and {high:g}, not {value!r}")
    if bool(web.tls_certificate) != bool(web.tls_private_key):
        raise ConfigError(f"{where}: web.tls_certificate and web.tls_private_key go together (set both or neither)")
    return web
