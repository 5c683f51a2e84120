"""``dosereg quarantine list|reprocess|purge``: the tools for what ingest quarantined."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from dosereg.conf.config import Config


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("quarantine", help="list, reprocess or purge quarantined objects",
                       epilog="example:\n  dosereg quarantine list\n  dosereg quarantine reprocess --all\n"
                              "  dosereg quarantine purge --older-than 90")
    verbs = p.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    q = verbs.add_parser("list", help="every quarantined object: name, received, sender, reason",
                         epilog="example:\n  dosereg quarantine list --json")
    common(q)
    q.add_argument("--json", action="store_true", help="JSON Lines, one object per line")
    q = verbs.add_parser("reprocess", help="run quarantined objects through the ingest path again "
                                           "(after a fix or a configuration change); the kept bytes are used",
                         epilog="example:\n  dosereg quarantine reprocess 20261202T190931614067-7621-000001-567c17b895a9.dcm")
    common(q)
    q.add_argument("names", nargs="*", metavar="NAME", help="file names as `quarantine list` shows them")
    q.add_argument("--all", action="store_true", help="every quarantined object")
    q = verbs.add_parser("purge", help="remove objects quarantined more than DAYS ago (files and catalog rows)",
                         epilog="example:\n  dosereg quarantine purge --older-than 90")
    common(q)
    q.add_argument("--older-than", type=_days, required=True, metavar="DAYS", help="age in days (at least 0)")


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of days (at least 0)")
    return days


def _list(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.ingest import list_quarantine

    entries = list_quarantine(cfg)
    if args.json:
        for e in entries:
            sys.stdout.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")
        return 0
    if not entries:
        print(f"nothing in quarantine ({cfg.data_dir / 'quarantine'})")
        return 0
    for e in entries:
        sender = e.calling_ae_title or "(import)"
        message = e.message if len(e.message) <= 80 else e.message[:77] + "..."
        print(f"{e.name}  {e.received_at or '?'}  {sender}  {e.error_code}: {message}")
    print(f"{len(entries)} object{'s' if len(entries) != 1 else ''} in quarantine")
    return 0


def _reprocess(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.cli import CommandError
    from dosereg.ingest import reprocess

    if bool(args.names) == bool(args.all):
        raise CommandError("name the objects to reprocess, or give --all (not both)")
    try:
        results = reprocess(cfg, None if args.all else args.names)
    except KeyError as exc:
        raise CommandError(f"{exc.args[0]}: not in quarantine (see `dosereg quarantine list`)") from None
    for name, outcome in results:
        print(f"{name}: {outcome}")
    usable = sum(1 for _, o in results if o in ("new", "replaced", "duplicate"))
    again = sum(1 for _, o in results if o.startswith("quarantined:"))
    print(f"reprocessed {len(results)}: usable now {usable}, quarantined again {again}, "
          f"other {len(results) - usable - again}")
    return 0 if all(o not in ("missing", "retry later") for _, o in results) else 1


def _purge(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.ingest import purge

    removed = purge(cfg, args.older_than)
    print(f"removed {len(removed)} object{'s' if len(removed) != 1 else ''} quarantined more than "
          f"{args.older_than:g} days ago")
    return 0


def cmd_quarantine(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.cli import _require_catalog

    _require_catalog(cfg, args)
    verbs = {"list": _list, "reprocess": _reprocess, "purge": _purge}
    return verbs[args.quarantine_command](cfg, args)


COMMANDS = {"quarantine": cmd_quarantine}
