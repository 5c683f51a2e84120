"""Sending one alert (docs/alerts.md): an e-mail over SMTP with STARTTLS, a webhook as a JSON POST.

* :func:`alert_id` -- 24 hex digits of the alert's key: the e-mail's ``Message-ID`` and the
  webhook's ``Idempotency-Key`` (a receiver can drop the repeat of an attempt a crash cut short);
* :func:`email_message` / :func:`webhook_body` -- what is sent;
* :func:`send_email`, :func:`post_webhook` -- one attempt each, bounded by the configured
  timeout, the server's certificate verified (system CAs, or ``ca_certificates``); a failure is
  a :class:`DeliveryError` whose message holds no secret and no URL path.

The subject line names the kind and the scanner only: mail relays log subjects; the accession
number and protocol are in the body (for use inside the hospital).
"""

from __future__ import annotations

import hashlib
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from dosereg.conf.alerts import SmtpSettings, WebhookSettings, read_secret

from .alerts import Alert

__all__ = ["DeliveryError", "alert_id", "email_message", "post_webhook", "send_email", "webhook_body"]

_TITLES = {
    "notification": "CTDIvol above the Dose Check notification value",
    "alert_value": "CTDIvol above the Dose Check alert value",
    "reference_level": "dose above a reference level",
    "cumulative_dlp": "patient's cumulative DLP above the threshold",
}


class DeliveryError(Exception):
    """One attempt failed; the message says why (no secret in it)."""


def alert_id(alert: Alert) -> str:
    return hashlib.sha256(alert.key.encode("utf-8")).hexdigest()[:24]


def _context(ca_certificates: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_certificates or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _lines(alert: Alert) -> list[str]:
    q = {"ctdivol_mGy": "CTDIvol", "ssde_mGy": "SSDE", "dlp_mGycm": "DLP"}[alert.quantity]
    lines = [
        f"Dose alert: {_TITLES[alert.kind]}",
        "",
        f"{q}: {alert.value:g} {alert.unit} (threshold {alert.threshold:g} {alert.unit}: {alert.threshold_name})",
        f"Threshold source: {alert.source}",
        f"Scanner: {alert.scanner}",
        f"Accession number: {alert.accession_number or '(none)'}",
        f"Study date: {alert.study_date or '(none)'} {alert.study_time or ''}".rstrip(),
        f"Study description: {alert.study_description or '(none)'}",
        f"Protocol: {alert.protocol or '(none)'}",
    ]
    if alert.event_uid:
        lines.append(f"Irradiation event UID: {alert.event_uid}")
    if alert.category or alert.region:
        lines.append(f"Category: {(alert.category or '').replace('_', ' ')} ({alert.region or '?'} region)")
    if alert.studies is not None:
        lines.append(f"Patient's studies in the last {alert.window_days} days: {alert.studies}")
    lines += ["", f"Study Instance UID: {alert.study_instance_uid}", f"Alert id: {alert_id(alert)}", "",
              "For use inside the hospital: this message names the study by its accession number.", ""]
    return lines


def email_message(alert: Alert, sender: str, recipients: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"dosereg dose alert: {_TITLES[alert.kind]} ({alert.station_name or alert.scanner})"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    domain = sender.rpartition("@")[2] or "dosereg.invalid"
    msg["Message-ID"] = f"<{alert_id(alert)}.dosereg@{domain}>"
    msg["X-Dosereg-Alert"] = alert.kind
    msg.set_content("\n".join(_lines(alert)))
    return msg


def send_email(alert: Alert, smtp: SmtpSettings, recipients: list[str]) -> None:
    """One SMTP attempt: STARTTLS (required unless ``smtp.starttls`` is false, then no login),
    login when a username is configured, the message to ``recipients``."""
    try:
        password = read_secret(smtp.password_env, smtp.password_file, "alerts.smtp.password") \
            if smtp.username else ""
    except ValueError as exc:
        raise DeliveryError(str(exc)) from None
    msg = email_message(alert, smtp.from_address, recipients)
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as client:
            client.ehlo()
            if smtp.starttls:
                if not client.has_extn("starttls"):
                    raise DeliveryError(f"{smtp.host}:{smtp.port} does not offer STARTTLS "
                                        "(alerts.smtp.starttls = true: nothing is sent without TLS)")
                client.starttls(context=_context(smtp.ca_certificates))
                client.ehlo()
            if smtp.username:
                client.login(smtp.username, password)
            refused = client.send_message(msg, smtp.from_address, recipients)
    except DeliveryError:
        raise
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"SMTP {smtp.host}:{smtp.port}: {type(exc).__name__}: {exc}") from None
    if refused:
        raise DeliveryError(f"SMTP {smtp.host}:{smtp.port} refused {len(refused)} of {len(recipients)} recipients")


def webhook_body(alert: Alert) -> bytes:
    body: dict[str, Any] = {"id": alert_id(alert), **alert.to_dict(), "unit": alert.unit}
    del body["key"]
    return json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the token and the alert go to the configured URL only."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_webhook(alert: Alert, hook: WebhookSettings) -> int:
    """One POST of :func:`webhook_body` to ``hook.url`` (bearer token when configured, no proxy,
    no redirect followed); the HTTP status (2xx), else a DeliveryError."""
    parts = urlsplit(hook.url)
    where = f"{parts.scheme}://{parts.netloc}"  # never the path or query: they may hold a secret
    try:
        token = read_secret(hook.token_env, hook.token_file, "alerts.webhook.token")
    except ValueError as exc:
        raise DeliveryError(str(exc)) from None
    headers = {"Content-Type": "application/json", "User-Agent": "dosereg-alerts",
               "Idempotency-Key": alert_id(alert)}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(hook.url, data=webhook_body(alert), headers=headers, method="POST")
    handlers: list[Any] = [urllib.request.ProxyHandler({}), _NoRedirect()]
    if parts.scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=_context(hook.ca_certificates)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=hook.timeout_s) as response:
            status = int(response.status)
            response.read(65536)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"webhook {where}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"webhook {where}: {type(reason).__name__}: {reason}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook {where}: HTTP {status}")
    return status
