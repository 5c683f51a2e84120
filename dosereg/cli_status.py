"""``dosereg status [--json]``: the health check a monitoring system calls (README "Monitoring").

Exit status 0 when all is well, 1 when something needs attention: the listener is down, the
spool is stuck (an object waiting longer than ``--stuck-after``), or the disk is nearly full.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from dosereg.conf.config import Config

log = logging.getLogger("dosereg")


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from dosereg.ingest import STUCK_AFTER_S

    p = sub.add_parser("status", help="listener up, spool depth and age, last export, disk space; "
                                      "exit 1 when something needs attention",
                       epilog="example:\n  dosereg status --json --config /etc/dosereg/dosereg.toml")
    common(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--stuck-after", type=float, default=STUCK_AFTER_S, metavar="S",
                   help="the spool is stuck when an object has waited longer than this many seconds")


def status(cfg: Config, stuck_after_s: float) -> dict[str, Any]:
    from dosereg.ingest import health
    from dosereg.registry_export import last_export

    report = health(cfg, stuck_after_s=stuck_after_s)
    try:
        report["last_export"] = last_export(cfg)
    except Exception as exc:  # an unreadable export state is itself worth attention
        report["last_export"] = None
        report["problems"].append(f"export state unreadable: {exc}")
    report["last_send"] = _last_send(cfg, report["problems"])
    from dosereg.registry_export import alert_problems  # dose alerts whose delivery was given up

    report["problems"] += alert_problems(cfg)
    report["ok"] = not report["problems"]
    return report


def _last_send(cfg: Config, problems: list[str]) -> dict[str, Any] | None:
    """The newest batch a send reached a destination for (``batch_id``, ``state``, its
    destinations), None before the first; a ``failed`` batch is a problem to attend to."""
    from dosereg.registry_export import list_batches

    try:
        batches = list_batches(cfg)
    except Exception as exc:  # reported above with last_export when the state is unreadable
        log.debug("batches unreadable", exc_info=True)
        problems.append(f"batches unreadable: {exc}")
        return None
    problems += [f"batch {b['batch_id']} failed to send: {b.get('last_error') or 'see dosereg batches'}"
                 for b in batches if b["state"] == "failed"]
    sent = [b for b in batches if any(d.get("attempts") for d in b.get("destinations") or ())]
    if not sent:
        return None
    b = sent[-1]
    return {"batch_id": b["batch_id"], "state": b["state"], "acknowledged_at": b.get("acknowledged_at"),
            "destinations": [{k: d.get(k) for k in ("name", "state", "last_error", "attempts")}
                             for d in b["destinations"]]}


def _text(report: dict[str, Any]) -> str:
    lst, spool, disk = report["listener"], report["spool"], report["disk"]
    listener = (f"up (pid {lst['pid']}, {lst['ae_title']} on {lst['address']}, heartbeat "
                f"{lst['heartbeat_age_s']:.0f} s ago)" if lst["up"] else "DOWN")
    oldest = f", oldest {spool['oldest_age_s']:.0f} s" if spool["oldest_age_s"] is not None else ""
    export = report["last_export"]
    free = disk["free_bytes"]
    lines = [
        f"data directory: {report['data_dir']}",
        f"listener: {listener}",
        f"spool: {spool['depth']} waiting{oldest}" + (" (STUCK)" if spool["stuck"] else ""),
        f"last export: {export['batch_id']} at {export['created_at']}" if export else "last export: none",
        (f"last send: batch {report['last_send']['batch_id']} {report['last_send']['state']}"
         if report["last_send"] else "last send: none"),
        f"disk: {free / 2**30:.1f} GiB free" if free is not None else "disk: unknown",
    ]
    lines += [f"NEEDS ATTENTION: {p}" for p in report["problems"]] or ["ok"]
    return "\n".join(lines) + "\n"


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    report = status(cfg, args.stuck_after)
    sys.stdout.write(json.dumps(report) + "\n" if args.json else _text(report))
    return 0 if report["ok"] else 1


COMMANDS = {"status": cmd_status}
