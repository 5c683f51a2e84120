"""``dosereg serve``, ``user``, ``token``, ``audit``: the web workbench and its accounts (docs/web.md)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dosereg.cli_types import port
from dosereg.conf.config import Config


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("serve", help="run the web workbench and HTTP API until SIGINT/SIGTERM")
    common(p)
    p.add_argument("--host", help="address to bind (overrides web.host)")
    p.add_argument("--port", type=port, help="TCP port (overrides web.port)")

    p = sub.add_parser("user", help="the workbench's accounts")
    users = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    q = users.add_parser("add", help="add an account (password from a prompt or --password-stdin)")
    common(q)
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=("physicist", "billing", "viewer"))
    q.add_argument("--password-stdin", action="store_true", help="read the password as one line of standard input")
    q = users.add_parser("list", help="the accounts")
    common(q)
    q = users.add_parser("remove", help="remove an account (its sessions end)")
    common(q)
    q.add_argument("name")

    p = sub.add_parser("token", help="API tokens for programs (billing's flag pick-up)")
    tokens = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    q = tokens.add_parser("add", help="make a token (printed once)")
    common(q)
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=("billing", "viewer"))
    q = tokens.add_parser("list", help="the tokens (never their values)")
    common(q)
    q = tokens.add_parser("revoke", help="revoke a token")
    common(q)
    q.add_argument("name")

    p = sub.add_parser("audit", help="the workbench's audit log")
    common(p)
    p.add_argument("--since", metavar="ISO", help="entries at or after this UTC time (e.g. 2026-01-31 or 2026-01-31T08:00)")
    p.add_argument("--json", action="store_true", help="JSON Lines")


def _store(cfg: Config) -> Any:
    from dosereg.web import Store

    return Store(cfg.data_dir)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ: nothing changed")
    return first


def cmd_serve(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.web import serve

    if args.host or args.port:
        cfg = replace(cfg, web=replace(cfg.web, host=args.host or cfg.web.host, port=args.port or cfg.web.port))
    return serve(cfg)


def cmd_user(cfg: Config, args: argparse.Namespace) -> int:
    store = _store(cfg)
    try:
        if args.user_command == "add":
            store.add_user(args.name, args.role, _read_password(args))
            store.audit("user added", None, target=args.name, detail=args.role)
            print(f"added {args.role} {args.name}")
        elif args.user_command == "remove":
            store.remove_user(args.name)
            store.audit("user removed", None, target=args.name)
            print(f"removed {args.name}")
        else:
            for u in store.users():
                print(f"{u['name']}\t{u['role']}\t{u['created_at']}")
    finally:
        store.close()
    return 0


def cmd_token(cfg: Config, args: argparse.Namespace) -> int:
    store = _store(cfg)
    try:
        if args.token_command == "add":
            token = store.add_token(args.name, args.role)
            store.audit("token added", None, target=args.name, detail=args.role)
            print(token)
            print("(shown once: give it to the program; it is kept only as a hash)", file=sys.stderr)
        elif args.token_command == "revoke":
            store.revoke_token(args.name)
            store.audit("token revoked", None, target=args.name)
            print(f"revoked {args.name}")
        else:
            for t in store.tokens():
                print(f"{t['name']}\t{t['role']}\t{t['created_at']}\tlast used {t['last_used_at'] or 'never'}")
    finally:
        store.close()
    return 0


def cmd_audit(cfg: Config, args: argparse.Namespace) -> int:
    store = _store(cfg)
    try:
        rows = store.audit_rows(args.since)
    finally:
        store.close()
    for r in rows:
        if args.json:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write("\t".join(str(r[k] or "") for k in ("at", "actor", "os_user", "address", "action",
                                                                  "target", "detail")) + "\n")
    return 0


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "serve": cmd_serve, "user": cmd_user, "token": cmd_token, "audit": cmd_audit,
}
