"""Dose alerts on the command line (docs/alerts.md).

* ``dosereg alerts [--since ISO] [--json] [--deliver]`` -- the recorded alerts (time, kind, scanner,
  accession, protocol, value against threshold, each channel's status); ``--deliver`` first runs
  one pass of the worker (what the catalog gained, the due deliveries), for cron or a test.
* :func:`listener_background` -- what ``dosereg listen`` runs beside the listener: the alert
  worker process (:class:`AlertProcess`) when ``[alerts] enabled``; the secrets it needs, its
  rules and its first watermark are in place before the port opens.

The listing names studies by accession number and protocol (for use inside the hospital).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from dosereg.conf.alerts import read_secret
from dosereg.conf.config import Config, ConfigError

__all__ = ["COMMANDS", "AlertProcess", "add_parsers", "listener_background"]

log = logging.getLogger("dosereg")


def _since(text: str) -> str:
    """An ISO date or date and time (UTC), as the recorded times are written."""
    from datetime import timezone

    from dosereg.conf.fsutil import parse_utc

    value = parse_utc(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"not an ISO date or date and time: {text!r}")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


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


class AlertProcess:
    """The alert worker as a process beside ``dosereg listen`` (ingest's ``Background``): spawned
    by :meth:`start`, which waits until it has its rules and first watermark (a ConfigError if it
    cannot), restarted by a watchdog thread if it dies, stopped by :meth:`stop` after the attempt
    under way. The listener's process never imports ``registry_export`` for it."""

    def __init__(self, cfg: Config) -> None:
        import multiprocessing

        self.cfg = cfg
        self._mp = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def _spawn(self) -> None:
        from dosereg.conf.logging import logging_setup

        parent, child = self._mp.Pipe()
        level, log_file = logging_setup()
        self._proc = self._mp.Process(target=_alert_main, args=(self.cfg, child, level, log_file),
                                      name="dosereg-alerts", daemon=False)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(START_TIMEOUT_S):
            raise ConfigError(f"{self.cfg.path}: the alert worker did not start within {START_TIMEOUT_S:.0f} s")
        try:
            kind, message = parent.recv()
        except EOFError:
            kind, message = "error", f"the alert worker exited ({self._proc.exitcode}) before it was ready"
        if kind != "ready":
            self._proc.join(10)
            raise ConfigError(f"{self.cfg.path}: [alerts]: {message}")

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="dosereg-alerts-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_EVERY_S):
            with self._lock:
                if self._stopping.is_set() or self._proc is None or self._proc.is_alive():
                    continue
                log.error("the alert worker exited (%s); restarting it", self._proc.exitcode)
                try:
                    self._conn.close()
                    self._spawn()
                except Exception as exc:  # tried again at the next look
                    log.error("the alert worker cannot start: %s", exc)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send("stop")
            except (OSError, ValueError):
                pass
            a = self.cfg.alerts
            self._proc.join(a.smtp.timeout_s + a.webhook.timeout_s + 10)
            if self._proc.is_alive():
                log.warning("the alert worker did not stop in time; terminating it")
                self._proc.kill()
                self._proc.join(10)
            self._conn.close()
            self._proc = None


START_TIMEOUT_S = 120.0  # rules, levels, the first watermark (a large catalog's patient histories come later)
WATCH_EVERY_S = 5.0


def _alert_main(cfg: Config, conn: Any, level: int, log_file: Any) -> None:
    """The spawned process's entry (imports the rules only there)."""
    from functools import partial

    from dosereg.ingest import open_catalog
    from dosereg.registry_export import alert_worker_main

    alert_worker_main(cfg, partial(open_catalog, cfg, readonly=True), conn, level, log_file)


def listener_background(cfg: Config) -> list[Any]:
    """The alert worker for ``dosereg listen`` (empty when ``[alerts] enabled`` is false). A secret
    the channels need but cannot read is a ConfigError now, not a failed delivery later."""
    a = cfg.alerts
    if not a.enabled:
        return []
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
    return [AlertProcess(cfg)]


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {"alerts": cmd_alerts}
