"""README's commands, options and names match the program (issue 14): every command it shows runs
with --help, every option it gives that command is in that help; the slips it had stay fixed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from dosereg.cli import build_parser

from .conftest import ROOT, SAMPLES, run_cli

README = (ROOT / "README.md").read_text()
_SPAN = re.compile(r"`([^`]+)`")  # a code span may run over a line break
_FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
_CALL = re.compile(r"(?:^|[\s/])dosereg\s+(-{1,2}[a-z][\w-]*|[a-z][\w-]*)(.*)")


def _snippets() -> list[str]:
    fenced = [line for block in _FENCE.findall(README) for line in block.splitlines()]
    inline = [span.replace("\n", " ") for span in _SPAN.findall(_FENCE.sub("", README))]
    return fenced + inline


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def readme_calls() -> dict[tuple[str, ...], set[str]]:
    """(command path) -> options README gives it, for every `dosereg ...` it shows."""
    parser = build_parser()
    calls: dict[tuple[str, ...], set[str]] = {}
    for text in _snippets():
        for m in _CALL.finditer(text):
            words = (m.group(1) + m.group(2)).split("#")[0]
            words = re.split(r"\s(?:\||>|&&|;)\s?", words)[0]
            tokens = words.split()
            path: list[str] = []
            level = parser
            for tok in tokens:
                choices = _subcommands(level)
                if not choices or tok.startswith("-") or tok not in choices:
                    break
                path.append(tok)
                level = choices[tok]
            assert path or tokens[0].startswith("--"), f"README shows an unknown command: dosereg {words}"
            opts = {re.sub(r"[\[\]=].*$", "", t.strip("[]")) for t in tokens if t.lstrip("[").startswith("--")}
            calls.setdefault(tuple(path), set()).update(o for o in opts if o)
    return calls


def test_every_command_readme_shows_runs_with_help_and_has_its_options() -> None:
    calls = readme_calls()
    assert {("listen",), ("import",), ("extract",), ("studies",), ("export",), ("report",), ("status",),
            ("quarantine", "list"), ("quarantine", "reprocess"), ("quarantine", "purge"),
            ("secret", "change")} <= set(calls)
    assert "--version" in calls[()]
    for path, options in sorted(calls.items()):
        r = run_cli(*path, "--help")
        assert r.returncode == 0, (path, r.stderr)
        for option in options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", r.stdout), (path, option)


def test_readme_slips_stay_fixed(tmp_path: Path) -> None:
    assert "<name>.dcm.reason.txt" in README and "`<name>.reason.txt`" not in README
    assert "-v` adds one line per object" in README
    data = tmp_path / "data"
    assert run_cli("import", str(SAMPLES / "ct_siemens_single_source.dcm"), "--data-dir", str(data)).returncode == 0
    r = run_cli("export", "--out", str(tmp_path / "out"), "--data-dir", str(data), env={"DOSEREG_SECRET": "k" * 40})
    assert r.returncode == 0, r.stderr
    assert "1 study evaluated" in r.stdout and "1 studies" not in r.stdout
    r = run_cli("report", "--data-dir", str(data))
    assert r.returncode == 0
