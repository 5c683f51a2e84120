"""``[alerts]``: dose alerts by e-mail and webhook (docs/alerts.md, docs/configuration.md "Alerts").

* :class:`AlertsSettings` -- what triggers an alert, how old a study may be (``max_age_days``:
  never for a backfill, import or reconcile of old studies), the retry bounds, and the two
  channels: :class:`SmtpSettings` (``[alerts.smtp]``, STARTTLS), :class:`RecipientSettings`
  (``[[alerts.recipients]]``: addresses per scanner) and :class:`WebhookSettings`
  (``[alerts.webhook]``, a JSON POST).
* :func:`parse_alerts` -- the ``[alerts]`` table; unknown keys and unusable values are
  ConfigErrors naming the key and the file.
* :func:`read_secret` -- a password or token from the environment variable or file the
  configuration names (the secret itself never lives in the configuration).

Credentials are never sent without TLS: ``smtp.username`` with ``smtp.starttls = false`` is
refused, and a webhook URL is ``https://`` (``http://`` only to a loopback address).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ALERT_KINDS", "AlertsSettings", "RecipientSettings", "SmtpSettings", "WebhookSettings",
           "parse_alerts", "read_secret"]

#: what an alert is about (docs/alerts.md)
ALERT_KINDS = ("notification", "alert_value", "reference_level", "cumulative_dlp")
#: the kinds of reference level (conf/reference_levels.py KINDS) a single study may be alerted on
_LEVEL_KINDS = ("drl", "achievable", "limit")


@dataclass(frozen=True)
class SmtpSettings:
    host: str = ""  # empty: no e-mail
    port: int = 587
    starttls: bool = True  # false only for a relay without credentials
    username: str = ""
    password_env: str = ""  # the NAME of the environment variable holding the password
    password_file: str = ""  # or a file (owner-only) holding it
    from_address: str = ""
    timeout_s: float = 30.0
    ca_certificates: str = ""  # CA bundle the server's certificate must chain to (empty: the system's)


@dataclass(frozen=True)
class WebhookSettings:
    url: str = ""  # empty: no webhook
    token_env: str = ""  # bearer token: the NAME of an environment variable ...
    token_file: str = ""  # ... or a file holding it
    timeout_s: float = 10.0
    ca_certificates: str = ""


@dataclass(frozen=True)
class RecipientSettings:
    """One ``[[alerts.recipients]]``: the addresses alerts of the matching scanners go to."""

    scanners: tuple[str, ...] = ("*",)  # case-insensitive globs on the station name or "Manufacturer Model (station)"
    addresses: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # empty: every kind


@dataclass(frozen=True)
class AlertsSettings:
    enabled: bool = False
    max_age_days: float = 2.0
    poll_interval_s: float = 5.0
    notification: bool = True  # an event above its Dose Check notification value ([notification])
    alert_value: bool = True  # an event above a Dose Check alert value (levels of kind "alert")
    reference_level_kinds: tuple[str, ...] = ("limit",)  # a study above a level of these kinds
    cumulative_dlp_mgycm: float = 0.0  # a patient's DLP over cumulative_window_days above this; 0: off
    cumulative_window_days: int = 365
    max_attempts: int = 8  # per alert and channel
    retry_backoff_s: float = 30.0  # before the second attempt, doubled after each one
    retry_max_s: float = 3600.0  # the longest wait between two attempts
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    recipients: tuple[RecipientSettings, ...] = ()

    @property
    def email(self) -> bool:
        return bool(self.smtp.host)

    def addresses_for(self, scanner_names: tuple[str, ...], kind: str) -> tuple[str, ...]:
        """The addresses of every ``[[alerts.recipients]]`` whose scanner globs match one of
        ``scanner_names`` and whose kinds include ``kind``, in order, each once."""
        from fnmatch import fnmatchcase

        out: dict[str, None] = {}
        names = [n.casefold() for n in scanner_names if n]
        for r in self.recipients:
            if r.kinds and kind not in r.kinds:
                continue
            if any(fnmatchcase(n, g.casefold()) for g in r.scanners for n in names or [""]):
                out.update(dict.fromkeys(r.addresses))
        return tuple(out)


_RANGES: dict[str, tuple[float, float]] = {
    "max_age_days": (0, 3650), "poll_interval_s": (0.05, 3600), "cumulative_dlp_mgycm": (0, 1e7),
    "cumulative_window_days": (1, 36500), "max_attempts": (1, 100), "retry_backoff_s": (0, 86400),
    "retry_max_s": (0, 7 * 86400), "smtp.port": (1, 65535), "smtp.timeout_s": (0.1, 600),
    "webhook.timeout_s": (0.1, 600),
}


def _check_ranges(obj: Any, prefix: str, where: Path) -> None:
    from .config import ConfigError

    for f in fields(obj):
        bounds = _RANGES.get(f"{prefix}{f.name}")
        value = getattr(obj, f.name)
        if bounds and not bounds[0] <= value <= bounds[1]:
            raise ConfigError(f"{where}: alerts.{prefix}{f.name} must be between {bounds[0]:g} and "
                              f"{bounds[1]:g}, not {value!r}")


def _is_loopback(host: str) -> bool:
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _webhook_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if not parts.hostname or parts.scheme not in ("https", "http"):
        return "must be an https:// URL with a host"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return "must be https:// (http:// only to a loopback address)"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (the token is read from token_env or token_file)"
    return None


def _smtp(data: Any, base: SmtpSettings, where: Path) -> SmtpSettings:
    from .config import ConfigError, _section

    smtp: SmtpSettings = _section(SmtpSettings, data, base, "alerts.smtp", where)
    _check_ranges(smtp, "smtp.", where)
    if smtp.host and not smtp.from_address:
        raise ConfigError(f"{where}: alerts.smtp.from_address is required when alerts.smtp.host is set")
    if smtp.username and not smtp.starttls:
        raise ConfigError(f"{where}: alerts.smtp.username needs alerts.smtp.starttls = true "
                          "(credentials are never sent without TLS)")
    if smtp.username and not (smtp.password_env or smtp.password_file):
        raise ConfigError(f"{where}: alerts.smtp.username needs alerts.smtp.password_env or password_file")
    if smtp.password_env and smtp.password_file:
        raise ConfigError(f"{where}: alerts.smtp.password_env and password_file: set one, not both")
    return smtp


def _webhook(data: Any, base: WebhookSettings, where: Path) -> WebhookSettings:
    from .config import ConfigError, _section

    hook: WebhookSettings = _section(WebhookSettings, data, base, "alerts.webhook", where)
    _check_ranges(hook, "webhook.", where)
    if hook.url:
        problem = _webhook_problem(hook.url)
        if problem:
            raise ConfigError(f"{where}: alerts.webhook.url {problem}")
    if hook.token_env and hook.token_file:
        raise ConfigError(f"{where}: alerts.webhook.token_env and token_file: set one, not both")
    return hook


def _recipients(value: Any, where: Path) -> tuple[RecipientSettings, ...]:
    from .config import ConfigError, _section

    if not isinstance(value, list):
        raise ConfigError(f"{where}: alerts.recipients must be an array of tables ([[alerts.recipients]])")
    out = []
    for i, table in enumerate(value, 1):
        name = f"alerts.recipients[{i}]"
        r: RecipientSettings = _section(RecipientSettings, table, RecipientSettings(), name, where)
        if not r.addresses or any("@" not in a or any(c in a for c in " \r\n,;<>") for a in r.addresses):
            raise ConfigError(f"{where}: {name}.addresses must list e-mail addresses (user@host), not "
                              f"{list(r.addresses)!r}")
        if not r.scanners:
            raise ConfigError(f"{where}: {name}.scanners must not be empty (\"*\": every scanner)")
        bad = [k for k in r.kinds if k not in ALERT_KINDS]
        if bad:
            raise ConfigError(f"{where}: {name}.kinds: {bad[0]!r} is not one of {', '.join(ALERT_KINDS)}")
        out.append(r)
    return tuple(out)


def parse_alerts(data: Any, base: AlertsSettings, where: Path) -> AlertsSettings:
    """``[alerts]`` of the file ``where`` over ``base``; errors name the key."""
    from .config import ConfigError, _section

    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [alerts] must be a table, not {data!r}")
    nested = {"smtp", "webhook", "recipients"}
    flat = {k: v for k, v in data.items() if k not in nested}
    section: AlertsSettings = _section(AlertsSettings, flat, base, "alerts", where)
    _check_ranges(section, "", where)
    bad = [k for k in section.reference_level_kinds if k not in _LEVEL_KINDS]
    if bad:
        raise ConfigError(f"{where}: alerts.reference_level_kinds: {bad[0]!r} is not one of "
                          f"{', '.join(_LEVEL_KINDS)} (notification and alert values have their own keys)")
    if section.retry_max_s < section.retry_backoff_s:
        raise ConfigError(f"{where}: alerts.retry_max_s must be at least alerts.retry_backoff_s")
    changes: dict[str, Any] = {}
    if "smtp" in data:
        changes["smtp"] = _smtp(data["smtp"], base.smtp, where)
    if "webhook" in data:
        changes["webhook"] = _webhook(data["webhook"], base.webhook, where)
    if "recipients" in data:
        changes["recipients"] = _recipients(data["recipients"], where)
    section = replace(section, **changes)
    if section.smtp.host and not section.recipients:
        raise ConfigError(f"{where}: alerts.smtp.host is set but no [[alerts.recipients]] says who gets the e-mail")
    return section


def read_secret(env: str, file: str, what: str) -> str:
    """The secret in the environment variable named ``env``, else in ``file`` (its first line);
    "" when neither is configured. A ValueError names the setting (never the secret) when the
    variable is unset or the file unreadable."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"{what}_env: the environment variable {env} is not set")
        return value
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"{what}_file: cannot read {file}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"{what}_file: {file} is empty")
        return lines[0].strip()
    return ""
