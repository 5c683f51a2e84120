"""``dosereg reconcile``: the CT studies of the PACS (or of a RIS export) against the catalog.

docs/reconcile.md. Prints one summary line; a progress bar on a terminal (as ``import``).
Exit status 0 when every day and study was dealt with, 1 when the PACS failed some (they
are listed on stderr and asked again by the next run), 2 when reconcile cannot run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config

_MAX_SHOWN = 20  # failures listed on stderr; the rest are counted (and in the log)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("reconcile", help="find the CT studies without a dose report (PACS or RIS export)",
                       description="Ask the PACS ([pacs]) for the CT studies of a period, fetch the dose "
                                   "objects the catalog lacks, and keep the studies that still have none as "
                                   "exams without a dose report (G9326). See docs/reconcile.md.")
    common(p)
    p.add_argument("--since", type=_date, metavar="DATE", help="first day (YYYY-MM-DD; default: 6 days ago)")
    p.add_argument("--until", type=_date, metavar="DATE", help="last day (YYYY-MM-DD; default: today)")
    p.add_argument("--again", action="store_true",
                   help="ask the PACS again for days an earlier run already settled")
    p.add_argument("--from-csv", metavar="FILE",
                   help="read the CT exams of a RIS export instead of asking the PACS (retrieves nothing)")


def cmd_reconcile(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.ingest import CsvError, ReconcileError, default_period, reconcile, reconcile_csv

    try:
        if args.from_csv:
            if args.since or args.until:
                print("dosereg reconcile: --from-csv reads the whole file; --since/--until do not apply",
                      file=sys.stderr)
                return 2
            summary = reconcile_csv(cfg, Path(args.from_csv))
        else:
            since, until = default_period(args.until)  # the 7 days up to --until, else up to today
            summary = reconcile(cfg, args.since or since, until, progress=sys.stderr.isatty(), again=args.again)
    except (CsvError, ReconcileError) as exc:
        print(f"dosereg reconcile: {exc}", file=sys.stderr)
        return 2
    for message in summary.warnings:
        print(f"dosereg reconcile: warning: {message}", file=sys.stderr)
    for message in summary.failures[:_MAX_SHOWN]:
        print(f"dosereg reconcile: {message}", file=sys.stderr)
    if len(summary.failures) > _MAX_SHOWN:
        print(f"dosereg reconcile: ... and {len(summary.failures) - _MAX_SHOWN} more failures (see the log)",
              file=sys.stderr)
    print(summary.line())
    return 0 if summary.ok else 1


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {"reconcile": cmd_reconcile}

__all__ = ["COMMANDS", "add_parsers"]
