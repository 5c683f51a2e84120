"""The command line's core (issue 14): --version, --help with defaults and examples, one-line errors
that name the setting and where its value came from, refused nonsense options."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from dosereg.cli import EXAMPLES, build_parser

from .conftest import run_cli


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"dosereg {version('dosereg')}"


def test_help_shows_defaults_and_an_example_per_command() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("listen", "import", "extract", "studies", "export", "report"):
        text = sub.choices[name].format_help()  # type: ignore[attr-defined]
        assert "example:\n  dosereg " + name in text, (name, text)
        assert "(default:" in text, (name, text)
    assert set(EXAMPLES) >= {"listen", "import", "extract", "studies", "export", "report", "secret change"}
    listen = run_cli("listen", "--help").stdout
    assert "listener.port, 11112" in listen and "example:" in listen


def test_negative_jobs_refused(tmp_path: Path) -> None:
    r = run_cli("import", "--jobs", "-3", "--data-dir", str(tmp_path / "d"), str(tmp_path))
    assert r.returncode == 2
    assert "--jobs: -3 is not a number of workers" in r.stderr
    assert not (tmp_path / "d").exists()


def test_bad_ae_title_from_the_option_is_one_line_naming_the_option(tmp_path: Path) -> None:
    r = run_cli("listen", "--ae-title", "WAY_TOO_LONG_AE_TITLE", "--port", "1", "--data-dir", str(tmp_path / "d"),
                timeout=60)
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert "--ae-title 'WAY_TOO_LONG_AE_TITLE'" in line and "at most 16" in line
    assert "pynetdicom" not in r.stderr and "dosereg.toml" not in line


def test_bad_ae_title_from_the_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[listener]\nae_title = "   "\n')
    r = run_cli("listen", "--config", str(config), "--port", "1", "--data-dir", str(tmp_path / "d"), timeout=60)
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert str(config) in line and "listener.ae_title" in line and "empty" in line
    assert "pynetdicom" not in r.stderr


@pytest.mark.parametrize("command", [["studies"], ["report"], ["export", "--out", "x"], ["import", "."],
                                     ["studies", "--json"]])
def test_data_directory_that_is_a_file(tmp_path: Path, command: list[str]) -> None:
    f = tmp_path / "data"
    f.write_text("not a folder")
    r = run_cli(*command, "--data-dir", str(f), cwd=tmp_path)
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert "Errno" not in line
    assert f"{f}: the data directory (--data-dir, which overrides storage.data_dir) is a file" in line
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\ndata_dir = "{f}"\n')
    r = run_cli(*command, "--config", str(config), cwd=tmp_path)
    assert r.returncode == 2 and f"storage.data_dir in {config}" in _one_line(r.stderr)


@pytest.mark.parametrize("command", ["studies", "report"])
def test_mistyped_data_directory_fails_naming_the_folder(tmp_path: Path, command: str) -> None:
    typo = tmp_path / "dosreg-data"
    r = run_cli(command, "--data-dir", str(typo), cwd=tmp_path)
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert f"{typo}: no catalog in this data directory" in line
    assert r.stdout == ""
    assert not typo.exists()  # report wrote no empty report there
