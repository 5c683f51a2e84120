"""Configuration loading (spec section 7) and the installed package's layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dosereg.conf.config import ConfigError, default_config, load_config
from tests.conftest import run_cli


def test_packaged_defaults_match_the_spec() -> None:
    cfg = default_config()
    assert cfg.listener.ae_title == "DOSEREG" and cfg.listener.port == 11112
    assert cfg.listener.allowed_calling_ae_titles == ()
    assert cfg.storage.data_dir == "dosereg-data"
    assert cfg.site.pseudonym_secret_env == "DOSEREG_SECRET"
    assert cfg.registry.profile == "acr-dir" and cfg.registry.date_precision == "day"
    assert "qa*" in cfg.classification.non_patient.patient_id
    assert cfg.classification.rt_planning.procedure_codes == ("77014",)
    assert cfg.notification.adult_head == 80.0 and cfg.notification.brain_perfusion == 600.0
    assert cfg.profile_path.name == "acr-dir.toml" and cfg.profile_path.exists()
    assert cfg.nomenclature_table.exists()


def test_a_partial_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    f = tmp_path / "site.toml"
    f.write_text('[listener]\nport = 104\n[site]\nfacility_id = "X-1"\n')
    cfg = load_config(f, data_dir=str(tmp_path / "d"))
    assert cfg.listener.port == 104 and cfg.listener.ae_title == "DOSEREG"
    assert cfg.site.facility_id == "X-1" and cfg.data_dir == tmp_path / "d"


@pytest.mark.parametrize("text, words", [
    ("[listener]\nprot = 1\n", "unknown key listener.prot"),
    ("[listener]\nport = 'x'\n", "listener.port must be a whole number"),
    ("[registry]\ndate_precision = 'week'\n", "registry.date_precision must be one of day, month, year"),
    ("[nonsense]\na = 1\n", "unknown section or key 'nonsense'"),
    ("[classification.non_patient]\npatient_id = 'qa*'\n", "classification.non_patient.patient_id must be a list"),
    ("[listener\n", "not valid TOML"),
])
def test_config_errors_name_the_key_and_the_file(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert words in str(exc.value) and str(f) in str(exc.value)


def test_cli_config_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[storage]\ndata_dri = 'x'\n")
    proc = run_cli("extract", "--config", str(f), "whatever.dcm")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "storage.data_dri" in lines[0] and str(f) in lines[0]


def test_config_from_environment(tmp_path: Path) -> None:
    f = tmp_path / "env.toml"
    f.write_text("[listener]\nprot = 1\n")
    proc = run_cli("extract", "x.dcm", env={"DOSEREG_CONFIG": str(f)})
    assert proc.returncode == 2 and "listener.prot" in proc.stderr


def test_stages_install_under_the_dosereg_namespace(tmp_path: Path) -> None:
    """No generic top-level module names (extract, ingest, conf) are claimed."""
    code = (
        "import importlib.util as u; import dosereg.extract, dosereg.ingest, dosereg.registry_export, dosereg.conf;"
        "print([n for n in ('extract', 'ingest', 'registry_export', 'conf') if u.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("text, words", [
    ("[listener]\nport = 70000\n", "listener.port must be between 1 and 65535"),
    ("[listener]\nmax_associations = 0\n", "listener.max_associations must be between 1 and 1000"),
    ("[listener]\ndimse_timeout_s = -1\n", "listener.dimse_timeout_s must be between"),
])
def test_out_of_range_settings_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "range.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config(f)


def test_cli_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("listen", "--port", "99999", "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2 and "port 99999 is outside 1-65535" in proc.stderr
    assert "Traceback" not in proc.stderr
