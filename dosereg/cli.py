"""The ``dosereg`` command line (docs/README.md, commands).

Thin wiring only: each verb reads the configuration, calls one stage's public API and
prints. Every failure is one line on stderr naming the file or setting at fault.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config, ConfigError, load_config

log = logging.getLogger("dosereg")


class CommandError(Exception):
    """A failure to report as one line on stderr (exit status 2 unless given)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="configuration file (default: $DOSEREG_CONFIG, else packaged)")
    p.add_argument("--data-dir", metavar="DIR", help="overrides storage.data_dir")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: DEBUG, may show PHI)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dosereg",
        description="CT radiation-dose registry pipeline: receive, extract, evaluate, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("listen", help="run the DICOM C-STORE SCP until SIGINT/SIGTERM")
    _common(p)
    p.add_argument("--port", type=_port, help="TCP port (overrides listener.port)")
    p.add_argument("--host", help="address to bind (overrides listener.host)")
    p.add_argument("--ae-title", help="our AE title (overrides listener.ae_title)")

    p = sub.add_parser("import", help="ingest files and folders (recursive) as if received")
    _common(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--jobs", type=int, default=None, help="parallel workers (default: all cores)")

    p = sub.add_parser("extract", help="parse dose objects, store nothing, print JSON Lines")
    _common(p)
    p.add_argument("files", nargs="+", metavar="FILE")

    p = sub.add_parser("studies", help="list the catalog's studies")
    _common(p)
    p.add_argument("--json", action="store_true", help="JSON Lines of study records")

    p = sub.add_parser("export", help="write a registry submission batch, billing flags and report")
    _common(p)
    p.add_argument("--out", metavar="DIR",
                   help="preview: write the batch's registry files and report under DIR; records nothing")

    p = sub.add_parser("report", help="write the completeness report alone")
    _common(p)
    p.add_argument("--out", metavar="DIR", help="write under DIR instead of the data directory")

    p = sub.add_parser("secret", help="the pseudonym secret")
    secret = p.add_subparsers(dest="secret_command", required=True, metavar="ACTION")
    p = secret.add_parser("change", help="start using the secret now in the environment (new pseudonyms)")
    _common(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--by", metavar="NAME", help="who changes it (for the audit log)")
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_extract(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.extract import extract_file
    from dosereg.ingest import extract_limits
    from dosereg.registry_export import evaluated_dict, rules_from_config

    rules = rules_from_config(cfg)
    limits = extract_limits(cfg)  # the same bounds as the listener and import
    failed = 0
    out = sys.stdout
    for name in args.files:
        record = extract_file(name, limits=limits)
        if record.error is not None:
            failed += 1
        out.write(json.dumps(evaluated_dict(record, rules, export=None), ensure_ascii=False, allow_nan=False)
                  + "\n")
        out.flush()
    return 1 if failed else 0


def cmd_listen(cfg: Config, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dosereg.ingest import serve

    overrides: dict[str, Any] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    if args.ae_title is not None:
        overrides["ae_title"] = args.ae_title
    if overrides:
        cfg = replace(cfg, listener=replace(cfg.listener, **overrides))
    return int(serve(cfg))


def cmd_import(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.ingest import import_paths

    summary = import_paths(cfg, [Path(p) for p in args.paths], jobs=args.jobs, progress=sys.stderr.isatty())
    print(summary.line())
    return 0 if summary.ok else 1


def _evaluated_studies(cfg: Config) -> Any:
    from dosereg.ingest import open_catalog
    from dosereg.registry_export import evaluated_dict, export_marks, rules_from_config

    rules = rules_from_config(cfg)
    marks = export_marks(cfg)
    catalog = open_catalog(cfg, readonly=True)
    try:
        for record in catalog.iter_studies():
            mark = marks.get(record.study_instance_uid or "")
            yield evaluated_dict(record, rules, export=mark)
    finally:
        catalog.close()


def cmd_studies(cfg: Config, args: argparse.Namespace) -> int:
    if args.json:
        from dosereg.cli_review import with_patient_history  # the patient's cumulative dose

        for d in with_patient_history(cfg, _evaluated_studies(cfg)):
            sys.stdout.write(json.dumps(d, ensure_ascii=False, allow_nan=False) + "\n")
        return 0
    from dosereg.registry_export import studies_table

    sys.stdout.write(studies_table(_evaluated_studies(cfg)))
    return 0


def _with_catalog(cfg: Config, work: Any) -> Any:
    """Run ``work(iter_studies)`` over a read-only catalog, closing it afterwards."""
    from dosereg.ingest import open_catalog

    catalog = open_catalog(cfg, readonly=True)
    try:
        return work(catalog.iter_studies)
    finally:
        catalog.close()


def _out_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.out) if args.out else None


def cmd_export(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import export_batch
    from dosereg.registry_export.state import ExportBusyError

    try:
        result = _with_catalog(cfg, lambda studies: export_batch(cfg, studies, out_dir=_out_dir(args)))
    except ExportBusyError as exc:
        raise CommandError(str(exc)) from None
    print(result.summary())
    return 0


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import write_report

    paths = _with_catalog(cfg, lambda studies: write_report(cfg, studies, out_dir=_out_dir(args)))
    for p in paths:
        print(p)
    return 0


SECRET_CHANGE_WARNING = (
    "Changing the pseudonym secret gives every study exported from now on new pseudonyms (study, "
    "object, event and device identifiers): a study the registry already has and that is submitted "
    "again will look like a new study there, so the registry would count it twice unless it is told. "
    "Every later batch's manifest says when the pseudonyms changed (pseudonyms_changed_at)."
)


def cmd_secret(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export.export import change_secret, recorded_secret

    name = cfg.site.pseudonym_secret_env
    _, same = recorded_secret(cfg)  # refuses a missing or short secret first
    if same:
        print(f"the secret in {name} is already the recorded one: nothing changed")
        return 0
    if same is False and not args.yes:
        print(SECRET_CHANGE_WARNING, file=sys.stderr)
        print(f"Type 'change' to start using the secret now in {name}: ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer != "change":
            raise CommandError("not confirmed: nothing changed (or run with --yes)", status=1)
    changed_at = change_secret(cfg, actor=args.by)
    if changed_at is None:
        print(f"recorded the secret in {name} (no pseudonyms to change)")
    else:
        print(f"recorded the new secret in {name}: batches from now on carry new pseudonyms "
              f"(pseudonyms_changed_at {changed_at})")
    return 0


COMMANDS = {
    "extract": cmd_extract,
    "listen": cmd_listen,
    "import": cmd_import,
    "studies": cmd_studies,
    "export": cmd_export,
    "report": cmd_report,
    "secret": cmd_secret,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
        return COMMANDS[args.command](cfg, args)
    except ConfigError as exc:
        print(f"dosereg: configuration error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"dosereg {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (ValueError, OSError) as exc:  # our own clear errors (e.g. a missing pseudonym secret)
        log.debug("failure", exc_info=True)
        print(f"dosereg {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the contract: never a bare traceback
        log.debug("unexpected failure", exc_info=True)
        print(f"dosereg {args.command}: unexpected {type(exc).__name__}: {exc} (run with -vv for details)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
