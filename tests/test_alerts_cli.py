"""``dosereg alerts [--deliver]`` (docs/alerts.md): one pass for cron, the first pass starting at the
catalog's newest object, imports of old studies never alerting, one pass at a time."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from dosereg.registry_export.alert_state import pass_lock
from tests.alert_peers import HIGH_CTDIVOL, WebhookReceiver, high_dose_report
from tests.conftest import run_cli


def test_deliver_pass_after_imports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before, _ = high_dose_report(tmp_path / "in", "before", accession="ACC-BEFORE")
    fresh, study = high_dose_report(tmp_path / "in", "fresh", accession="ACC-FRESH")
    old, _ = high_dose_report(tmp_path / "in", "old", accession="ACC-OLD",
                              study_date=datetime.now() - timedelta(days=30))
    with WebhookReceiver(None) as hook:  # plain http: allowed to a loopback address only
        cfg = tmp_path / "dosereg.toml"
        cfg.write_text(f'[alerts]\nenabled = true\n[alerts.webhook]\nurl = "{hook.url}"\ntimeout_s = 5\n')
        common = ("--data-dir", str(data), "--config", str(cfg))

        r = run_cli("alerts", "--deliver", *common)
        assert r.returncode == 2 and "no catalog in this data directory" in r.stderr and not data.exists()
        assert run_cli("import", str(before), *common).returncode == 0
        r = run_cli("alerts", "--deliver", *common)  # the first pass: alerts start after what is there
        assert (r.returncode, r.stdout.strip()) == (0, "no alerts recorded"), r.stderr
        assert (data / "alerts.sqlite").stat().st_mode & 0o777 == 0o600

        assert run_cli("import", str(old), str(fresh), *common).returncode == 0
        r = run_cli("alerts", "--deliver", "--json", *common)
        assert r.returncode == 0, r.stderr
        [row] = [json.loads(line) for line in r.stdout.splitlines()]
        assert row["alert"]["accession_number"] == "ACC-FRESH" and row["alert"]["study_instance_uid"] == study
        assert row["alert"]["value"] == HIGH_CTDIVOL and row["deliveries"]["webhook"]["state"] == "sent"
        assert [body["accession_number"] for _, _, body in hook.requests] == ["ACC-FRESH"]

        assert run_cli("alerts", "--deliver", *common).returncode == 0  # again: nothing new
        assert len(hook.requests) == 1

        with pass_lock(data) as mine:  # the listener's worker making a pass
            assert mine
            r = run_cli("alerts", "--deliver", *common)
        assert r.returncode == 2 and "another alert pass is under way" in r.stderr

        r = run_cli("alerts", "--since", "2999-01-01", *common)
        assert (r.returncode, r.stdout.strip()) == (0, "no alerts recorded since 2999-01-01T00:00:00")

        # a receiver that keeps refusing: given up after max_attempts, and `dosereg status` says so
        cfg.write_text(f'[alerts]\nenabled = true\nmax_attempts = 1\n[alerts.webhook]\nurl = "{hook.url}"\n')
        hook.down = True
        late, _ = high_dose_report(tmp_path / "in", "late", accession="ACC-LATE")
        assert run_cli("import", str(late), *common).returncode == 0
        r = run_cli("alerts", "--deliver", *common)
        assert r.returncode == 0, r.stderr
        line = r.stdout.splitlines()[-1]
        assert "accession ACC-LATE" in line and "webhook failed (1 attempts: webhook http://127.0.0.1:" in line
        assert "HTTP 503" in line and "/hooks" not in line
        r = run_cli("status", "--json", *common)
        assert "1 dose alert deliveries given up (dosereg alerts lists them)" in json.loads(r.stdout)["problems"]


def test_listen_refuses_to_start_without_the_smtp_password(tmp_path: Path) -> None:
    cfg = tmp_path / "dosereg.toml"
    cfg.write_text("""[alerts]
enabled = true
[alerts.smtp]
host = "127.0.0.1"
username = "dosereg"
password_env = "TEST_ALERTS_NO_SUCH_VARIABLE"
from_address = "dosereg@hospital.example"
[[alerts.recipients]]
addresses = ["physics@hospital.example"]
""")
    r = run_cli("listen", "--port", "1", "--data-dir", str(tmp_path / "data"), "--config", str(cfg), timeout=60)
    assert r.returncode == 2
    assert "alerts.smtp.password_env: the environment variable TEST_ALERTS_NO_SUCH_VARIABLE is not set" in r.stderr


def test_listen_stops_when_the_alert_worker_cannot_read_its_levels(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-levels.toml"
    cfg = tmp_path / "dosereg.toml"
    cfg.write_text(f'[reference_levels]\nfile = "{missing}"\n[alerts]\nenabled = true\n')
    r = run_cli("listen", "--port", "1", "--data-dir", str(tmp_path / "data"), "--config", str(cfg), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "configuration error" in r.stderr and f"{missing}: reference levels file not found" in r.stderr
