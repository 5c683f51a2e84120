"""``dosereg batches``, ``review``, ``approve``, ``hold``, ``release``, ``reject``, ``send``: the batch
lifecycle (docs/lifecycle.md). Thin wiring over :mod:`dosereg.registry_export`'s functions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from dosereg.conf.config import Config


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("batches", help="list every batch and where it stands")
    common(p)
    p.add_argument("--json", action="store_true", help="JSON Lines, one per batch")

    p = sub.add_parser("review", help="the studies of a batch, for the physicist's review")
    common(p)
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("--json", action="store_true", help="JSON Lines, one per study")

    p = sub.add_parser("approve", help="approve a batch awaiting review (pending_review -> approved)")
    common(p)
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("--by", metavar="NAME", required=True, help="who approves (for the audit log)")
    p.add_argument("--comment", metavar="T")

    p = sub.add_parser("hold", help="leave studies out of a batch awaiting review")
    common(p)
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("studies", nargs="+", metavar="STUDY_UID")
    p.add_argument("--by", metavar="NAME", required=True)
    p.add_argument("--reason", metavar="T", required=True)

    p = sub.add_parser("release", help="offer held studies again to the next export")
    common(p)
    p.add_argument("studies", nargs="+", metavar="STUDY_UID")
    p.add_argument("--by", metavar="NAME", required=True)
    p.add_argument("--comment", metavar="T")

    p = sub.add_parser("reject", help="withdraw a batch awaiting review (its studies go into the next export)")
    common(p)
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("--by", metavar="NAME", required=True)
    p.add_argument("--reason", metavar="T", required=True)

    p = sub.add_parser("send", help="send approved or failed batches to every configured destination")
    common(p)
    p.add_argument("batch", nargs="?", metavar="BATCH")
    p.add_argument("--by", metavar="NAME", help="who sends (for the audit log)")


def _jsonl(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        sys.stdout.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")


def cmd_batches(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import list_batches

    rows = list_batches(cfg)
    if args.json:
        _jsonl(rows)
        return 0
    if not rows:
        print("no batches")
        return 0
    for b in rows:
        c = b["counts"]
        dests = ", ".join(f"{d['name']} {d['state']}" for d in b["destinations"])
        print(f"{b['batch_id']}  {b['state']:<14}  G9327 {c['G9327']}  G9326 {c['G9326']}  excluded {c['excluded']}"
              f"  held {c['held']}" + (f"  approved by {b['approved_by']}" if b["approved_by"] else "")
              + (f"  [{dests}]" if dests else "") + (f"  ({b['last_error']})" if b["last_error"] else ""))
    return 0


def cmd_review(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import review_batch

    rows = review_batch(cfg, args.batch)
    if args.json:
        _jsonl(rows)
        return 0
    for r in rows:
        change = r["changes"]
        extra = ""
        if change:
            extra = (f"  re-submitted: +{len(change['events_added'])} events, total DLP "
                     f"{change['total_dlp_mGycm']['before']} -> {change['total_dlp_mGycm']['after']}")
        print(f"{r['study_instance_uid']}  {r['accession_number'] or '':<16}  {r['registry_code']:<8}  "
              f"{r['nomenclature_code'] or '':<6}" + ("  HELD" if r["held"] else "") + extra
              + (f"  ({'; '.join(r['reasons'])})" if r["reasons"] else ""))
    print(f"{len(rows)} studies in batch {args.batch}")
    return 0


def cmd_approve(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import approve

    out = approve(cfg, args.batch, by=args.by, comment=args.comment)
    print(out.message)
    for p in out.paths:
        print(f"  {p}")
    return 0


def cmd_hold(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import hold

    print(hold(cfg, args.batch, args.studies, by=args.by, reason=args.reason).message)
    return 0


def cmd_release(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import release

    released = release(cfg, args.studies, by=args.by, comment=args.comment)
    for batch_id, uid in released:
        print(f"released {uid} (held in batch {batch_id}): the next export offers it again")
    if not released:
        print("no held study among those given: nothing released")
        return 1
    return 0


def cmd_reject(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import reject

    print(reject(cfg, args.batch, by=args.by, reason=args.reason).message)
    return 0


def cmd_send(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.ingest import object_rows
    from dosereg.registry_export import send

    result = send(cfg, lambda: object_rows(cfg), batch_id=args.batch, by=args.by)
    print(result.summary())
    return 0 if result.ok else 1


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "batches": cmd_batches, "review": cmd_review, "approve": cmd_approve, "hold": cmd_hold,
    "release": cmd_release, "reject": cmd_reject, "send": cmd_send,
}
