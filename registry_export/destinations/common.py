"""What every kind shares: the bounded retry loop, TLS contexts, hashing while reading, redaction."""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from dosereg.conf.config import DestinationSettings

log = logging.getLogger("dosereg.send")

# the clock and the wait, replaceable by tests (never the retry bounds themselves)
monotonic: Callable[[], float] = time.monotonic
sleep: Callable[[float], None] = time.sleep

BLOCK = 1 << 16  # bytes read at a time while copying or uploading: bounded memory, whatever the file


def attempts(dest: DestinationSettings) -> Iterator[int]:
    """Attempt numbers 1, 2, ... within ``max_attempts``; before each later one, a wait of
    ``retry_backoff_s`` doubling each time. No attempt starts once ``retry_total_s`` would be
    passed by its wait, so one call is bounded in count and in time (the last attempt's own
    network time is bounded by ``timeout_s`` per operation)."""
    start = monotonic()
    wait = dest.retry_backoff_s
    for n in range(1, dest.max_attempts + 1):
        if n > 1:
            if monotonic() - start + wait > dest.retry_total_s:
                return
            log.info("destination %s: attempt %d in %.1f s", dest.name, n, wait)
            sleep(wait)
            wait *= 2
        yield n


class TlsError(ValueError):
    """A configured certificate, key or CA bundle cannot be loaded (the message names the key and path)."""


def client_tls_context(dest: DestinationSettings) -> ssl.SSLContext:
    """TLS 1.2+ client context: the peer's certificate checked against ``tls_ca_certificates``
    (else the system's CAs) and its host name; ``tls_certificate``/``tls_private_key`` presented."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=dest.tls_ca_certificates or None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"destination {dest.name}: tls_ca_certificates ({dest.tls_ca_certificates}): "
                       f"cannot load: {_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if dest.tls_certificate:
        try:
            ctx.load_cert_chain(dest.tls_certificate, dest.tls_private_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"destination {dest.name}: tls_certificate / tls_private_key ({dest.tls_certificate}, "
                           f"{dest.tls_private_key}): cannot load: {_reason(exc)}") from None
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__ + (f" ({exc.reason})" if isinstance(exc, ssl.SSLError) and exc.reason else "")


def error_text(exc: BaseException) -> str:
    """A short, secret-free description of a network or file error (the exception's type and
    reason; never its arguments, which may hold a request)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or type(exc).__name__}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


class HashingReader:
    """A read-only file wrapper that hashes what is read through it (one pass: upload and check)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(BLOCK if n is None or n < 0 else n)
        self._hash.update(data)
        self.count += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced (a registry may echo the Authorization header back)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


__all__ = ["BLOCK", "HashingReader", "TlsError", "attempts", "client_tls_context", "error_text", "log", "redact"]
