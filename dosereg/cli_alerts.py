"""Dose alerts on the command line (docs/alerts.md).

* ``dosereg alerts [--since ISO] [--json] [--deliver]`` -- the recorded alerts (time, kind, scanner,
  accession, protocol, value against threshold, each channel's status); ``--deliver`` first runs
  one pass of the worker (what the catalog gained, the due deliveries), for cron or a test.
* :func:`listener_background` -- what ``dosereg listen`` runs beside the listener: the alert
  worker when ``[alerts] enabled``; the secrets it needs are checked before the port opens.

The listing names studies by accession number and protocol (for use inside the hospital).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any

from dosereg.conf.alerts import read_secret
from dosereg.conf.config import Config, ConfigError

__all__ = ["COMMANDS", "add_parsers", "listener_background"]

log = logging.getLogger("dosereg")


def _since(text: str) -> str:
    """An ISO date or date and time (UTC), as the recorded times are written."""
    from datetime import datetime

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date and time: {text!r}") from None
    if value.tzinfo is not None:
        from datetime import timezone

        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("alerts", help="the dose alerts recorded, with each channel's delivery status",
                       epilog="example:\n  dosereg alerts --since 2026-12-01 --json")
    common(p)
    p.add_argument("--since", type=_since, metavar="ISO", help="alerts recorded at this UTC date/time or later")
    p.add_argument("--json", action="store_true", help="JSON Lines, one alert each")
    p.add_argument("--deliver", action="store_true",
                   help="first evaluate what the catalog gained and make the due deliveries (one pass)")


def _status(deliveries: dict[str, Any]) -> str:
    if not deliveries:
        return "recorded (no channel)"
    parts = []
    for channel, d in sorted(deliveries.items()):
        text = f"{channel} {d['state']}"
        if d["state"] != "sent" and d.get("last_error"):
            text += f" ({d['attempts']} attempts: {d['last_error'][:80]})"
        parts.append(text)
    return "; ".join(parts)


def cmd_alerts(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.ingest import catalog_path, open_catalog
    from dosereg.registry_export import alert_listing, deliver_once

    if not catalog_path(cfg.data_dir).is_file():  # a mistyped --data-dir: say so, create nothing
        raise ValueError(f"{cfg.data_dir}: no catalog in this data directory (--data-dir or storage.data_dir): "
                         "is the folder right? (`dosereg listen` or `dosereg import` creates catalog.sqlite)")
    if args.deliver:
        catalog = open_catalog(cfg, readonly=True)
        try:
            result = deliver_once(cfg, catalog)
        finally:
            catalog.close()
        log.info("alerts pass: %d objects, %d new alerts, %d sent, %d failed", result.objects, result.recorded,
                 result.sent, result.failed)
    rows = alert_listing(cfg, args.since)
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False, sort_keys=True))
        return 0
    if not rows:
        print("no alerts recorded" + (f" since {args.since}" if args.since else ""))
        return 0
    for row in rows:
        a = row["alert"]
        unit = "mGy·cm" if a["quantity"] == "dlp_mGycm" else "mGy"
        print(f"{row['created_at'][:19]}  {a['kind']:<15} {a['scanner']}  accession {a['accession_number'] or '-'}  "
              f"{a['protocol'] or '-'}  {a['quantity'].split('_')[0]} {a['value']:g} {unit} > "
              f"{a['threshold']:g} ({a['threshold_name']})  [{_status(row['deliveries'])}]")
    return 0


def listener_background(cfg: Config) -> list[Any]:
    """The alert worker for ``dosereg listen`` (empty when ``[alerts] enabled`` is false). A secret
    the channels need but cannot read is a ConfigError now, not a failed delivery later."""
    a = cfg.alerts
    if not a.enabled:
        return []
    from dosereg.ingest import open_catalog
    from dosereg.registry_export import AlertWorker

    try:
        if a.email and a.smtp.username:
            read_secret(a.smtp.password_env, a.smtp.password_file, "alerts.smtp.password")
        if a.webhook.url:
            read_secret(a.webhook.token_env, a.webhook.token_file, "alerts.webhook.token")
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: {exc}") from None
    if a.email and not a.smtp.starttls:
        log.warning("alerts.smtp.starttls = false: alert e-mails (with accession numbers) travel unencrypted")
    if not a.email and not a.webhook.url:
        log.warning("[alerts] enabled without [alerts.smtp] or [alerts.webhook]: alerts are recorded only "
                    "(dosereg alerts lists them)")
    return [AlertWorker(cfg, lambda: open_catalog(cfg, readonly=True))]


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {"alerts": cmd_alerts}
