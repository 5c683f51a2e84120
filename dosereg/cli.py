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

from dosereg import cli_alerts, cli_batches, cli_quarantine, cli_reconcile, cli_status, cli_web
from dosereg.cli_types import date_text as _date
from dosereg.cli_types import port as _port
from dosereg.conf.config import Config, ConfigError, load_config

log = logging.getLogger("dosereg")


class CommandError(Exception):
    """A failure to report as one line on stderr (exit status 2 unless given)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"{jobs} is not a number of workers (at least 1)")
    return jobs


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option (as dcmtk's and pynetdicom's apps do), examples kept as written.

    An option without a default of its own (None, False: its value comes from the configuration
    or is a switch) says nothing, rather than "(default: None)".
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every parser and sub-parser (also those other modules add) formats its help the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


#: one example per command, shown at the end of its --help (modules adding verbs give their own epilog)
EXAMPLES: dict[str, str] = {
    "listen": "dosereg listen --port 11112 --ae-title DOSEREG --config /etc/dosereg/dosereg.toml",
    "import": "dosereg import /archive/dose-reports --jobs 2",
    "extract": "dosereg extract report.dcm | python3 -m json.tool",
    "studies": "dosereg studies --since 2026-11-01 --incomplete   (or --json > studies.jsonl)",
    "export": "dosereg export --out /tmp/preview   # with the pseudonym secret in $DOSEREG_SECRET",
    "report": "dosereg report --out /tmp/report",
    "secret": "dosereg secret change --by 'J. Physicist'",
    "secret change": "dosereg secret change --by 'J. Physicist'",
    "alerts": "dosereg alerts --since 2026-12-01 --json",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dosereg")
    except PackageNotFoundError:  # pragma: no cover -- run from a source tree without installing
        return "unknown"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F",
                   help="configuration file (default: $DOSEREG_CONFIG, else the packaged conf/dosereg.toml)")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (default: storage.data_dir of the configuration)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging: -v one line per object, -vv DEBUG (may show PHI)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dosereg",
        description="CT radiation-dose registry pipeline: receive, extract, evaluate, export.",
        epilog="Run `dosereg COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"dosereg {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("listen", help="run the DICOM C-STORE SCP until SIGINT/SIGTERM")
    _common(p)
    p.add_argument("--port", type=_port, help="TCP port (default: listener.port, 11112 as packaged)")
    p.add_argument("--host", help="address to bind (default: listener.host, 0.0.0.0 as packaged)")
    p.add_argument("--ae-title", help="our AE title (default: listener.ae_title, DOSEREG as packaged)")

    p = sub.add_parser("import", help="ingest files and folders (recursive) as if received")
    _common(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--jobs", type=_jobs, default=None, help="parallel workers, at least 1 (default: all cores)")

    p = sub.add_parser("extract", help="parse dose objects, store nothing, print JSON Lines")
    _common(p)
    p.add_argument("files", nargs="+", metavar="FILE")

    p = sub.add_parser("studies", help="list the catalog's studies")
    _common(p)
    p.add_argument("--json", action="store_true", help="JSON Lines of study records")
    p.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="studies of this date or later")
    p.add_argument("--until", type=_date, metavar="YYYY-MM-DD", help="studies of this date or earlier")
    p.add_argument("--scanner", metavar="TEXT", help="scanners whose name (station, model) contains TEXT")
    p.add_argument("--code", choices=("G9327", "G9326", "excluded", "G9318", "G9319", "G9320"),
                   help="studies with this registry or nomenclature code")
    p.add_argument("--incomplete", action="store_true", help="only studies that are not complete")
    p.add_argument("--wide", action="store_true",
                   help="every column, whole (default: the table fits the terminal)")

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
    cli_web.add_parsers(sub, _common)
    cli_batches.add_parsers(sub, _common)
    cli_reconcile.add_parsers(sub, _common)
    cli_quarantine.add_parsers(sub, _common)
    cli_status.add_parsers(sub, _common)
    cli_alerts.add_parsers(sub, _common)
    _add_examples(sub)
    return parser


def _add_examples(sub: Any, prefix: str = "") -> None:
    """The example of :data:`EXAMPLES` as the epilog of every command that has none yet."""
    for name, p in sub.choices.items():
        key = f"{prefix}{name}"
        if p.epilog is None and key in EXAMPLES:
            p.epilog = f"example:\n  {EXAMPLES[key]}"
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_examples(action, f"{key} ")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # pynetdicom's INFO lines ("Accepting Association", "Received Store Request", ...) are
    # per message; -v promises one line per object, so they show only with -vv
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def _log_file(cfg: Config) -> None:
    """``[logging] file``: a log file beside stderr, at its own level (conf/logging.py)."""
    from dosereg.conf.logging import add_file

    try:
        add_file(cfg.logging)  # stderr keeps the level -v/-vv chose
    except OSError as exc:
        raise CommandError(f"{cfg.logging.file}: cannot open the log file (logging.file in {cfg.path}): "
                           f"{exc.strerror or exc}") from None


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
        from dosereg.ingest import ae_title_problem

        problem = ae_title_problem(args.ae_title)
        if problem:
            raise CommandError(f"--ae-title {args.ae_title!r} (overrides listener.ae_title): {problem}")
        overrides["ae_title"] = args.ae_title
    if overrides:
        cfg = replace(cfg, listener=replace(cfg.listener, **overrides))
    return int(serve(cfg, cli_alerts.listener_background(cfg)))  # the dose alerts' worker, when enabled


def cmd_import(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.ingest import import_paths

    summary = import_paths(cfg, [Path(p) for p in args.paths], jobs=args.jobs, progress=sys.stderr.isatty())
    print(summary.line())
    return 0 if summary.ok else 1


def _evaluated_studies(cfg: Config) -> Any:
    from dosereg.ingest import open_catalog
    from dosereg.registry_export import evaluated_dict, export_marks, rules_from_config, submission_lookup

    rules = rules_from_config(cfg)
    marks = export_marks(cfg)
    with_submission = submission_lookup(cfg)
    catalog = open_catalog(cfg, readonly=True)
    try:
        for record in catalog.iter_studies():
            mark = marks.get(record.study_instance_uid or "")
            yield with_submission(evaluated_dict(record, rules, export=mark))
    finally:
        catalog.close()


def _origin(args: argparse.Namespace, cfg: Config, option: str, key: str) -> str:
    """Where a setting's value came from, for an error message: the option, or the file."""
    if getattr(args, option.lstrip("-").replace("-", "_"), None) is not None:
        return f"{option}, which overrides {key}"
    return f"{key} in {cfg.path}"


def _check_data_dir(cfg: Config, args: argparse.Namespace) -> None:
    """A data directory that is a file is one clear line, whichever command meets it first."""
    path = cfg.data_dir
    if path.exists() and not path.is_dir():
        raise CommandError(f"{path}: the data directory ({_origin(args, cfg, '--data-dir', 'storage.data_dir')}) "
                           "is a file, not a folder")


def _require_catalog(cfg: Config, args: argparse.Namespace) -> None:
    """Commands that read the catalog refuse a data directory holding none.

    A data directory without ``catalog.sqlite`` is taken for a mistyped one (``listen`` and
    ``import`` create the catalog before they keep anything): better to say so than to list
    "no studies" or write an empty report with exit status 0.
    """
    from dosereg.ingest import catalog_path

    path = catalog_path(cfg.data_dir)
    if not path.is_file():
        where = _origin(args, cfg, "--data-dir", "storage.data_dir")
        raise CommandError(
            f"{cfg.data_dir}: no catalog in this data directory ({where}): is the folder right? "
            f"(`dosereg listen` or `dosereg import` creates {path.name})"
        )


def cmd_studies(cfg: Config, args: argparse.Namespace) -> int:
    import shutil

    from dosereg.registry_export import StudyFilter, studies_table

    _require_catalog(cfg, args)
    chosen = StudyFilter(args.since, args.until, args.scanner, args.code, args.incomplete)
    studies = chosen.apply(_evaluated_studies(cfg))
    if args.json:
        from dosereg.cli_review import with_patient_history  # the patient's cumulative dose

        for d in chosen.apply(with_patient_history(cfg, _evaluated_studies(cfg))):
            sys.stdout.write(json.dumps(d, ensure_ascii=False, allow_nan=False) + "\n")
        return 0
    empty = "no studies in the catalog" if chosen == StudyFilter() else "no study matches these filters"
    sys.stdout.write(studies_table(studies, wide=args.wide, width=shutil.get_terminal_size((100, 24)).columns,
                                   empty=empty))
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
    from dosereg.ingest import open_catalog
    from dosereg.registry_export import CatalogSource, ExportBusyError, export_batch

    _require_catalog(cfg, args)
    catalog = open_catalog(cfg, readonly=True)
    try:
        # the catalog's study versions let an export with nothing new decide so reading no record
        result = export_batch(cfg, CatalogSource(catalog), out_dir=_out_dir(args))
    except ExportBusyError as exc:
        raise CommandError(str(exc)) from None
    finally:
        catalog.close()
    print(result.summary())
    return 0


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from dosereg.registry_export import write_report

    _require_catalog(cfg, args)
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
    from dosereg.registry_export import change_secret, recorded_secret

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
    **cli_web.COMMANDS,
    **cli_batches.COMMANDS,
    **cli_reconcile.COMMANDS,
    **cli_quarantine.COMMANDS,
    **cli_status.COMMANDS,
    **cli_alerts.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
        _check_data_dir(cfg, args)
        _log_file(cfg)
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
