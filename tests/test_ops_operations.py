"""Operations (issue 14): [logging] file with rotation, dosereg status, the systemd unit, the licence."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from dosereg.conf.config import ConfigError, load_config, read_toml

from .conftest import ROOT, SAMPLES, run_cli
from .test_listener import Listener, send_pynetdicom, synthetic, wait_processed


def _status(data: Path, *extra: str) -> tuple[int, dict[str, object]]:
    r = run_cli("status", "--json", "--data-dir", str(data), *extra)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_log_file_at_its_own_level_while_stderr_keeps_warnings(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "dosereg.log"
    log.parent.mkdir()
    config = tmp_path / "c.toml"
    config.write_text(f'[logging]\nfile = "{log}"\nlevel = "INFO"\nrotate_bytes = 400\nkeep = 2\n')
    files = [SAMPLES / "ct_siemens_single_source.dcm", SAMPLES / "sr_not_dose.dcm", SAMPLES / "ct_incomplete.dcm",
             SAMPLES / "ct_head_sequenced.dcm", SAMPLES / "rf_fluoro_rdsr.dcm"]
    r = run_cli("import", *map(str, files), "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert " INFO " not in r.stderr and " WARNING dosereg.ingest: quarantined " in r.stderr
    text = "".join(p.read_text() for p in sorted(log.parent.iterdir()))
    assert " INFO dosereg.ingest: stored " in text and " WARNING dosereg.ingest: quarantined " in text
    assert sorted(p.name for p in log.parent.iterdir()) == ["dosereg.log", "dosereg.log.1", "dosereg.log.2"]
    assert (log.stat().st_mode & 0o777) == 0o600


def test_logging_settings_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[logging]\nlevel = "LOUD"\n')
    with pytest.raises(ConfigError, match="logging.level must be one of"):
        load_config(config)
    config.write_text('[logging]\nrotation = "daily"\n')
    with pytest.raises(ConfigError, match=r"unknown key logging.rotation"):
        load_config(config)
    assert load_config().logging.file == ""


def test_status_listener_up_stuck_spool_and_down(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "listener.log"
    config = tmp_path / "c.toml"
    config.write_text(f'[logging]\nfile = "{log}"\nlevel = "INFO"\nrotate_bytes = 0\n')
    made = synthetic(tmp_path / "syn", 2)
    with Listener(data, config=config) as lst:
        assert send_pynetdicom(lst.port, [pydicom.dcmread(p) for p, _, _ in made]) == [0, 0]
        wait_processed(data, 2)
        rc, report = _status(data)
        assert rc == 0 and report["ok"] is True and report["problems"] == []
        listener = report["listener"]
        assert isinstance(listener, dict) and listener["up"] is True and listener["pid"] == lst.proc.pid
        assert listener["address"] == f"127.0.0.1:{lst.port}"
        assert report["spool"] == {"depth": 0, "oldest_at": None, "oldest_age_s": None, "stuck": False,
                                   "stuck_after_s": 300.0}
        assert report["last_export"] is None and report["last_send"] is None
        disk = report["disk"]
        assert isinstance(disk, dict) and disk["free_bytes"] > 0
        # an object nobody processes (unknown to the ledger): stuck after --stuck-after seconds
        stale = data / "spool" / "20200101T000000000000-1-000001-000000000000.dcm"
        stale.write_bytes(b"x")
        os.utime(stale, (time.time() - 1000, time.time() - 1000))
        rc, report = _status(data, "--stuck-after", "600")
        spool = report["spool"]
        assert rc == 1 and isinstance(spool, dict) and spool["stuck"] is True and spool["depth"] == 1
        assert 990 < spool["oldest_age_s"] < 1100
        assert any("spool stuck" in p for p in report["problems"])  # type: ignore[attr-defined]
        text = run_cli("status", "--data-dir", str(data), "--stuck-after", "600").stdout
        assert "listener: up" in text and "NEEDS ATTENTION: spool stuck" in text
        stale.unlink()
        assert lst.terminate() == 0
    rc, report = _status(data)
    assert rc == 1 and report["problems"] == ["listener down (it stopped)"]
    # the processing process's one line per object reached the log file too
    assert log.read_text().count(" INFO dosereg.ingest: stored ") == 2


def test_status_after_kill_9_is_down(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lst = Listener(data)
    try:
        rc, _ = _status(data)
        assert rc == 0
        lst.proc.send_signal(signal.SIGKILL)
        lst.proc.wait(timeout=30)
    finally:
        lst.kill()
    time.sleep(0.5)
    rc, report = _status(data)
    listener = report["listener"]
    assert rc == 1 and isinstance(listener, dict) and listener["up"] is False and listener["state"] == "running"


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "systemd" / "dosereg-listen.service").read_text()
    for directive in ("User=dosereg", "ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                      "ReadWritePaths=/var/lib/dosereg", "ProtectHome=yes", "CapabilityBoundingSet=",
                      "--data-dir /var/lib/dosereg", "UMask=0077"):
        assert directive in unit, directive
    assert (ROOT / "deploy" / "logrotate.d" / "dosereg").is_file()
    example = load_config(ROOT / "deploy" / "dosereg.toml.example")
    assert example.logging.rotate_bytes == 0 and example.storage.data_dir == "/var/lib/dosereg"
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    dosereg = Path(sys.executable).parent / "dosereg"
    copy = tmp_path / "dosereg-listen.service"
    copy.write_text(unit.replace("/opt/dosereg/.venv/bin/dosereg", str(dosereg)))
    r = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_licence_file_matches_the_package_metadata() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "WITHOUT WARRANTY OF ANY KIND" in text
    project = read_toml(ROOT / "pyproject.toml")["project"]
    assert project["license"] == {"text": "MIT"}
