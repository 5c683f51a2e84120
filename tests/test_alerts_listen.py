"""The issue's "Done when" for alerts: an alert reaches the SMTP server and the webhook exactly once
per triggering event, also when the listener is restarted in between. The real ``dosereg listen``
in a subprocess, dose reports over real DICOM, a real SMTP server (aiosmtpd, STARTTLS + AUTH) and
a real HTTPS receiver in the test."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.alert_peers import (
    HIGH_CTDIVOL,
    SMTP_PASSWORD,
    WEBHOOK_TOKEN,
    Pki,
    SmtpReceiver,
    WebhookReceiver,
    high_dose_report,
)
from tests.conftest import run_cli
from tests.test_listener import Listener, db_rows, send_pynetdicom, wait_processed

ENV = {"TEST_SMTP_PW": SMTP_PASSWORD, "TEST_HOOK_TOKEN": WEBHOOK_TOKEN}


@pytest.fixture
def peers(tmp_path: Path) -> Any:
    pki = Pki(tmp_path)
    with SmtpReceiver(pki) as smtp, WebhookReceiver(pki) as hook:
        yield pki, smtp, hook


def write_config(path: Path, pki: Pki, smtp: SmtpReceiver, hook: WebhookReceiver, poll_s: float = 0.2) -> Path:
    path.write_text(f"""
[alerts]
enabled = true
max_age_days = 2
poll_interval_s = {poll_s}
retry_backoff_s = 0.2
retry_max_s = 0.5
max_attempts = 100

[alerts.smtp]
host = "127.0.0.1"
port = {smtp.port}
username = "dosereg"
password_env = "TEST_SMTP_PW"
from_address = "dosereg@hospital.example"
ca_certificates = "{pki.ca_file}"
timeout_s = 5

[[alerts.recipients]]
scanners = ["CTAWP*"]
addresses = ["ct-physics@hospital.example"]

[alerts.webhook]
url = "{hook.url}"
token_env = "TEST_HOOK_TOKEN"
ca_certificates = "{pki.ca_file}"
timeout_s = 5
""")
    return path


def until(what: Callable[[], bool], timeout: float = 60, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {message}")


def send(port: int, path: Path) -> None:
    assert send_pynetdicom(port, [pydicom.dcmread(path)]) == [0]


def accessions(smtp: SmtpReceiver, hook: WebhookReceiver) -> tuple[list[str], list[str]]:
    mails = [next(line.split(": ", 1)[1] for line in m.get_payload(decode=True).decode().splitlines()
                  if line.startswith("Accession number: ")) for _, _, m in smtp.messages]
    return mails, [body["accession_number"] for _, _, body in hook.requests]


def _alerts_db(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3

    path = data_dir / "alerts.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def passes_after(data_dir: Path) -> None:
    """Until the worker has read every catalogued object and has no delivery left to make, then a
    few more passes (0.2 s each): a duplicate would have been sent by then."""
    def caught_up() -> bool:
        newest = db_rows(data_dir, "SELECT COALESCE(MAX(seq), 0) FROM objects")[0][0]
        mark = _alerts_db(data_dir, "SELECT seq FROM watermark")
        left = _alerts_db(data_dir, "SELECT COUNT(*) FROM deliveries WHERE state != 'sent'")
        return bool(mark) and mark[0][0] >= newest and left[0][0] == 0

    until(caught_up, message="the worker caught up with the catalog")
    time.sleep(1.0)


def test_one_email_and_one_post_per_event_never_for_old_studies_nor_again(tmp_path: Path, peers: Any) -> None:
    pki, smtp, hook = peers
    cfg = write_config(tmp_path / "dosereg.toml", pki, smtp, hook)
    data = tmp_path / "data"
    first, study = high_dose_report(tmp_path / "in", "first", accession="ACC-A")
    old, _ = high_dose_report(tmp_path / "in", "old", accession="ACC-OLD", study_date=datetime.now() - timedelta(days=3))
    second, _ = high_dose_report(tmp_path / "in", "second", accession="ACC-B")
    third, _ = high_dose_report(tmp_path / "in", "third", accession="ACC-C")
    with Listener(data, config=cfg, env=ENV) as lst:
        send(lst.port, first)
        until(lambda: len(smtp.messages) == 1 and len(hook.requests) == 1, message="the first alert")
        [(sender, rcpt, msg)] = smtp.messages
        assert (sender, rcpt) == ("dosereg@hospital.example", ["ct-physics@hospital.example"])
        body = msg.get_payload(decode=True).decode()
        assert f"CTDIvol: {HIGH_CTDIVOL:g} mGy (threshold 50 mGy: Dose Check notification value, adult body)" in body
        assert "Protocol: ThoraxRoutine" in body and "Accession number: ACC-A" in body
        [(path, headers, post)] = hook.requests
        assert headers["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
        assert {k: post[k] for k in ("kind", "accession_number", "protocol", "value", "threshold", "category",
                                     "study_instance_uid", "station_name")} == {
            "kind": "notification", "accession_number": "ACC-A", "protocol": "ThoraxRoutine", "value": HIGH_CTDIVOL,
            "threshold": 50.0, "category": "adult_body", "study_instance_uid": study, "station_name": "CTAWP10001"}
        assert headers["Idempotency-Key"] == post["id"] and msg["Message-ID"].startswith(f"<{post['id']}.")

        send(lst.port, first)  # the same object again: a duplicate, no new alert
        send(lst.port, old)  # a study of three days ago (a backfill): no alert
        wait_processed(data, 3)
        passes_after(data)
        assert accessions(smtp, hook) == (["ACC-A"], ["ACC-A"])
        send(lst.port, second)
        until(lambda: len(smtp.messages) == 2 and len(hook.requests) == 2, message="the second alert")
        passes_after(data)
        assert accessions(smtp, hook) == (["ACC-A", "ACC-B"], ["ACC-A", "ACC-B"])
        assert SMTP_PASSWORD not in lst.log() and WEBHOOK_TOKEN not in lst.log()
        assert "ACC-A" not in lst.log()  # accession numbers only at DEBUG (-vv)
    assert lst.proc.returncode == 0

    with Listener(data, config=cfg, env=ENV) as lst:  # (b) restarted after delivery: nothing again
        send(lst.port, third)
        until(lambda: len(smtp.messages) == 3 and len(hook.requests) == 3, message="the third alert")
        passes_after(data)
        assert accessions(smtp, hook) == (["ACC-A", "ACC-B", "ACC-C"], ["ACC-A", "ACC-B", "ACC-C"])

    r = run_cli("alerts", "--json", "--data-dir", str(data), "--config", str(cfg), env=ENV)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["alert"]["accession_number"] for row in rows] == ["ACC-A", "ACC-B", "ACC-C"]
    assert all({c: d["state"] for c, d in row["deliveries"].items()} == {"email": "sent", "webhook": "sent"}
               for row in rows)
    r = run_cli("alerts", "--data-dir", str(data), "--config", str(cfg), env=ENV)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    assert "notification" in r.stdout and "accession ACC-B" in r.stdout and "email sent; webhook sent" in r.stdout


def _attempts(data: Path) -> dict[str, int]:
    return dict(_alerts_db(data, "SELECT channel, attempts FROM deliveries WHERE state != 'sent'"))


def test_restart_between_receipt_and_delivery_loses_nothing_and_repeats_nothing(tmp_path: Path, peers: Any) -> None:
    pki, smtp, hook = peers
    data = tmp_path / "data"
    slow = write_config(tmp_path / "slow.toml", pki, smtp, hook, poll_s=300)
    cfg = write_config(tmp_path / "dosereg.toml", pki, smtp, hook)
    report, _ = high_dose_report(tmp_path / "in", "d", accession="ACC-D")

    # (a1) received and catalogued, the listener stopped before the worker's next pass
    with Listener(data, config=slow, env=ENV) as lst:
        send(lst.port, report)
        wait_processed(data, 1)
    assert lst.proc.returncode == 0
    assert smtp.messages == [] and hook.requests == [] and _attempts(data) == {}

    # (a2) evaluated and recorded, but both receivers refuse: stopped with the deliveries pending
    smtp.down = hook.down = True
    with Listener(data, config=cfg, env=ENV) as lst:
        until(lambda: all(_attempts(data).get(c, 0) >= 2 for c in ("email", "webhook")),
              message="two failed attempts per channel")
    assert smtp.messages == [] and hook.requests == []

    smtp.down = hook.down = False
    with Listener(data, config=cfg, env=ENV) as lst:
        until(lambda: len(smtp.messages) == 1 and len(hook.requests) == 1, message="the delivery after the restart")
        passes_after(data)
    assert accessions(smtp, hook) == (["ACC-D"], ["ACC-D"])
    assert _attempts(data) == {}


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        out |= {int(p) for p in text.split()}
    return out


def _alert_worker_pid(pid: int) -> int | None:
    """The listener's child that has alerts.sqlite open (the processing process has not)."""
    for child in _children(pid):
        try:
            if any(os.readlink(fd).endswith("alerts.sqlite") for fd in Path(f"/proc/{child}/fd").iterdir()):
                return child
        except OSError:
            continue
    return None


def test_alert_worker_is_a_process_restarted_when_it_dies_and_gone_with_the_listener(tmp_path: Path,
                                                                                      peers: Any) -> None:
    pki, smtp, hook = peers
    cfg = write_config(tmp_path / "dosereg.toml", pki, smtp, hook)
    data = tmp_path / "data"
    report, _ = high_dose_report(tmp_path / "in", "e", accession="ACC-E")
    lst = Listener(data, config=cfg, env=ENV)
    try:
        until(lambda: _alert_worker_pid(lst.proc.pid) is not None, message="the alert worker process")
        first = _alert_worker_pid(lst.proc.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)  # the listener's watchdog starts another
        until(lambda: _alert_worker_pid(lst.proc.pid) not in (None, first), timeout=60, message="a new worker")
        send(lst.port, report)
        until(lambda: len(smtp.messages) == 1 and len(hook.requests) == 1, message="the alert")
        passes_after(data)
        assert accessions(smtp, hook) == (["ACC-E"], ["ACC-E"])
        children = _children(lst.proc.pid)
        lst.kill()  # SIGKILL: no clean stop
        until(lambda: not any(Path(f"/proc/{c}").exists() for c in children), timeout=60,
              message="the listener's children exit when it is gone")
    finally:
        lst.kill()
