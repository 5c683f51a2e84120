"""Delivering a dose alert (docs/alerts.md) to real receivers: SMTP with STARTTLS and AUTH (aiosmtpd,
a trustme certificate), a webhook over verified HTTPS; the configuration's refusals; the durable
state's once-only bookkeeping."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dosereg.conf.alerts import SmtpSettings, WebhookSettings
from dosereg.conf.config import ConfigError, load_config
from dosereg.registry_export.alert_delivery import DeliveryError, alert_id, post_webhook, send_email
from dosereg.registry_export.alert_state import AlertStore, Watermark
from dosereg.registry_export.alerts import Alert
from tests.alert_peers import SMTP_PASSWORD, SMTP_USER, WEBHOOK_TOKEN, Pki, SmtpReceiver, WebhookReceiver

ALERT = Alert(key="1.2.3|1.2.3.4|notification", kind="notification", study_instance_uid="1.2.3",
              accession_number="ACC77", study_date="2026-12-02", study_time="10:00:00",
              study_description="CT CHEST", scanner="Siemens Force (CT1)", station_name="CT1",
              protocol="Thorax routine", event_uid="1.2.3.4", quantity="ctdivol_mGy", value=72.5,
              threshold=50.0, threshold_name="Dose Check notification value, adult body",
              source="[notification] adult_body", category="adult_body", region="body")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _smtp(port: int, pki: Pki, **kw: Any) -> SmtpSettings:
    base = dict(host="127.0.0.1", port=port, username=SMTP_USER, password_env="TEST_SMTP_PW",
                from_address="dosereg@hospital.example", timeout_s=10, ca_certificates=str(pki.ca_file))
    return SmtpSettings(**{**base, **kw})


def test_email_over_starttls_with_login(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", SMTP_PASSWORD)
    with SmtpReceiver(pki) as server:
        send_email(ALERT, _smtp(server.port, pki), ["physics@hospital.example", "ct1@hospital.example"])
    [(sender, rcpt, msg)] = server.messages
    assert server.logins == [SMTP_USER]
    assert (sender, rcpt) == ("dosereg@hospital.example", ["physics@hospital.example", "ct1@hospital.example"])
    assert msg["Message-ID"] == f"<{alert_id(ALERT)}.dosereg@hospital.example>"
    assert "ACC77" not in msg["Subject"] and "CT1" in msg["Subject"]  # relays log subjects
    body = msg.get_payload(decode=True).decode()
    for text in ("CTDIvol: 72.5 mGy (threshold 50 mGy: Dose Check notification value, adult body)",
                 "Accession number: ACC77", "Protocol: Thorax routine", "Scanner: Siemens Force (CT1)",
                 "Irradiation event UID: 1.2.3.4"):
        assert text in body
    assert SMTP_PASSWORD not in msg.as_string()


def test_email_refused_without_starttls_and_with_a_wrong_ca(pki: Pki, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", SMTP_PASSWORD)
    with SmtpReceiver(pki, tls=False) as plain:
        with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
            send_email(ALERT, _smtp(plain.port, pki), ["physics@hospital.example"])
    assert plain.messages == [] and plain.logins == []  # the password never went out in clear
    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other")  # a CA that did not sign the server's certificate
    with SmtpReceiver(pki) as server:
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            send_email(ALERT, _smtp(server.port, other), ["physics@hospital.example"])
    assert server.messages == [] and server.logins == []
    monkeypatch.delenv("TEST_SMTP_PW")
    with pytest.raises(DeliveryError, match="alerts.smtp.password_env: the environment variable TEST_SMTP_PW"):
        send_email(ALERT, _smtp(1, pki), ["physics@hospital.example"])


def test_webhook_json_over_verified_https(pki: Pki, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(WEBHOOK_TOKEN + "\n")
    with WebhookReceiver(pki) as hook:
        settings = WebhookSettings(url=hook.url, token_file=str(token_file), timeout_s=10,
                                   ca_certificates=str(pki.ca_file))
        assert post_webhook(ALERT, settings) == 200
        [(path, headers, body)] = hook.requests
    assert path == "/hooks/dose"
    assert headers["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert headers["Idempotency-Key"] == alert_id(ALERT) == body["id"]
    assert headers["Content-Type"] == "application/json"
    assert body["schema"] == "dosereg.alert/1"
    assert {k: body[k] for k in ("kind", "accession_number", "protocol", "value", "threshold", "unit", "scanner",
                                 "event_uid", "study_instance_uid")} == {
        "kind": "notification", "accession_number": "ACC77", "protocol": "Thorax routine", "value": 72.5,
        "threshold": 50.0, "unit": "mGy", "scanner": "Siemens Force (CT1)", "event_uid": "1.2.3.4",
        "study_instance_uid": "1.2.3"}
    assert "key" not in body


def test_webhook_refuses_an_unverified_certificate(pki: Pki) -> None:
    with WebhookReceiver(pki) as hook:
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed") as err:
            post_webhook(ALERT, WebhookSettings(url=hook.url + "?sig=SECRETSIG", timeout_s=5))  # system CAs only
        assert hook.requests == []
    assert "SECRETSIG" not in str(err.value) and "/hooks" not in str(err.value)  # the path may hold a secret
    with WebhookReceiver(pki) as hook:
        hook.down = True
        with pytest.raises(DeliveryError, match="HTTP 503"):
            post_webhook(ALERT, WebhookSettings(url=hook.url, timeout_s=5, ca_certificates=str(pki.ca_file)))


def _config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "dosereg.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize(("text", "message"), [
    ("[alerts]\nmax_age = 2\n", "unknown key alerts.max_age"),
    ("[alerts]\nmax_age_days = -1\n", "alerts.max_age_days must be between 0 and 3650"),
    ("[alerts.smtp]\nhost = 'mx'\nfrom_address = 'a@b'\npassword = 'x'\n", "unknown key alerts.smtp.password"),
    ("[alerts.smtp]\nhost = 'mx'\nfrom_address = 'a@b'\nusername = 'u'\npassword_env = 'P'\nstarttls = false\n",
     "alerts.smtp.username needs alerts.smtp.starttls = true"),
    ("[alerts.smtp]\nhost = 'mx'\nfrom_address = 'a@b'\n", "no \\[\\[alerts.recipients\\]\\]"),
    ("[alerts.webhook]\nurl = 'http://alerts.hospital.example/x'\n", "alerts.webhook.url must be https://"),
    ("[alerts.webhook]\nurl = 'https://u:p@alerts.example/x'\n", "must not hold credentials"),
    ("[[alerts.recipients]]\naddresses = ['not an address']\n", "alerts.recipients\\[1\\].addresses"),
    ("[[alerts.recipients]]\naddresses = ['a@b']\nkinds = ['loud']\n", "alerts.recipients\\[1\\].kinds: 'loud'"),
    ("[alerts]\nreference_level_kinds = ['notification']\n", "alerts.reference_level_kinds: 'notification'"),
])
def test_configuration_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, text)


def test_configuration_recipients_per_scanner(tmp_path: Path) -> None:
    cfg = _config(tmp_path, """
[alerts]
enabled = true
[alerts.smtp]
host = "mx.hospital.example"
from_address = "dosereg@hospital.example"
[alerts.webhook]
url = "http://127.0.0.1:9/hook"
[[alerts.recipients]]
scanners = ["*"]
addresses = ["physics@hospital.example"]
[[alerts.recipients]]
scanners = ["CT1", "*Revolution*"]
addresses = ["ct1-lead@hospital.example", "physics@hospital.example"]
kinds = ["alert_value"]
""")
    a = cfg.alerts
    assert a.enabled and a.max_age_days == 2.0 and a.smtp.starttls and a.smtp.port == 587
    assert a.addresses_for(("CT1", "Siemens Force (CT1)"), "notification") == ("physics@hospital.example",)
    assert a.addresses_for(("ct1", ""), "alert_value") == ("physics@hospital.example", "ct1-lead@hospital.example")
    assert a.addresses_for(("CT9", "GE Revolution CT (CT9)"), "alert_value") == (
        "physics@hospital.example", "ct1-lead@hospital.example")


def test_store_records_once_retries_and_gives_up(tmp_path: Path) -> None:
    store = AlertStore(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "alerts.sqlite").st_mode) == 0o600
    mark = Watermark(5, "1.2.9", "2026-12-02T10:00:00.000000Z")
    assert store.record([(ALERT, [("email", "a@b"), ("webhook", "webhook")])], mark) == 1
    assert store.record([(ALERT, [("email", "a@b")])], Watermark(6, None, None)) == 0  # once per key
    assert store.watermark() == Watermark(6, None, None)
    due = store.due()
    assert [(d.channel, d.target, d.attempts) for d in due] == [("email", "a@b", 0), ("webhook", "webhook", 0)]
    email, hook = due
    store.begin(email)
    store.sent(email)
    store.begin(hook)  # a crash now leaves it "sending": offered again (at least once)
    assert [(d.channel, d.attempts) for d in store.due()] == [("webhook", 1)]
    store.failed(hook, "webhook https://x: HTTP 503", 60.0)
    assert store.due() == [] and store.next_due() is not None
    store.failed(hook, "HTTP 503", None)
    [row] = store.listing()
    assert row["alert"]["accession_number"] == "ACC77"
    assert {c: (d["state"], d["attempts"]) for c, d in row["deliveries"].items()} == {
        "email": ("sent", 1), "webhook": ("failed", 1)}
    assert store.listing("2999-01-01") == []
    store.close()
