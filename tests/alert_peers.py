"""Real receivers for the dose alerts' tests: an SMTP server (aiosmtpd, STARTTLS with a trustme
certificate, AUTH only over TLS) and an HTTPS webhook receiver (http.server in a thread), both on
free loopback ports; and dose reports with a high CTDIvol, built from a sample (test data only)."""

from __future__ import annotations

import json
import ssl
import threading
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

from tests.conftest import SAMPLE_RDSR

SMTP_USER = "dosereg"
SMTP_PASSWORD = "s3cret-smtp-pw"
WEBHOOK_TOKEN = "t0ken-webhook"


class Pki:
    """A trustme CA and a certificate for 127.0.0.1/localhost; ``ca_file`` for the clients."""

    def __init__(self, folder: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = folder / "alerts-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx


class SmtpReceiver:
    """aiosmtpd on a free port: STARTTLS required, AUTH LOGIN/PLAIN with SMTP_USER/SMTP_PASSWORD only
    after it. ``down``: every message answered 451 (try again later). ``messages``: (envelope
    sender, recipients, parsed message)."""

    def __init__(self, pki: Pki, tls: bool = True) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[tuple[str, list[str], Message]] = []
        self.logins: list[str] = []
        self.down = False
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if receiver.down:
                    return "451 4.3.0 try again later"
                receiver.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                          message_from_bytes(envelope.original_content)))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
            ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER \
                and auth_data.password.decode() == SMTP_PASSWORD
            if ok:
                receiver.logins.append(SMTP_USER)
            return AuthResult(success=ok)

        kwargs: dict[str, Any] = {"authenticator": authenticator, "auth_require_tls": True}
        if tls:
            kwargs.update(tls_context=pki.server_context(), require_starttls=True)
        else:
            kwargs.update(auth_require_tls=False)
        from tests.test_listener import free_port

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WebhookReceiver:
    """An HTTPS (or, without ``pki``, HTTP) server taking POSTs; ``status`` is what it answers
    (503 while ``down``). ``requests``: (path, headers, JSON body) of the accepted ones."""

    def __init__(self, pki: Pki | None) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.down = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.down:
                    self.send_response(503)
                else:
                    receiver.requests.append((self.path, dict(self.headers.items()), json.loads(body)))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if pki is not None:
            self.server.socket = pki.server_context().wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.url = f"{'https' if pki else 'http'}://127.0.0.1:{self.port}/hooks/dose"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


HIGH_CTDIVOL = 72.5  # the sample's ThoraxRoutine (6.41 mGy on body32) raised above adult body 50


def high_dose_report(out: Path, name: str, *, study_date: datetime | None = None, ctdivol: float = HIGH_CTDIVOL,
                     accession: str = "ACC-ALERT-1") -> tuple[Path, str]:
    """A copy of the sample RDSR as a new study of ``study_date`` (default: now), its spiral event's
    CTDIvol set to ``ctdivol``: (path, Study Instance UID)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(BytesIO(SAMPLE_RDSR.read_bytes()))
    when = study_date or datetime.now()
    study, sop = generate_uid(), generate_uid()
    ds.StudyInstanceUID, ds.SOPInstanceUID = study, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession
    changed = _set_ctdivol(ds.ContentSequence, "6.41", ctdivol)
    assert changed == 1, "the sample's spiral event was not found"
    _shift_datetimes(ds.ContentSequence, when)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, study


def _set_ctdivol(items: Any, old: str, new: float) -> int:
    n = 0
    for item in items:
        concept = item.get("ConceptNameCodeSequence")
        if concept and concept[0].CodeValue == "113830" and "MeasuredValueSequence" in item:
            mv = item.MeasuredValueSequence[0]
            if str(mv.NumericValue) == old:
                mv.NumericValue = f"{new:g}"
                n += 1
        if "ContentSequence" in item:
            n += _set_ctdivol(item.ContentSequence, old, new)
    return n


def _shift_datetimes(items: Any, when: datetime) -> None:
    """Irradiation start/end times on the new study's day (plausibility: not before the study by years)."""
    for item in items:
        if "DateTime" in item:
            item.DateTime = (when + timedelta(minutes=1)).strftime("%Y%m%d%H%M%S")
        if "ContentSequence" in item:
            _shift_datetimes(item.ContentSequence, when)
