"""``kind = "https"``: the batch folder uploaded to a registry's HTTPS endpoint (docs/destinations.md).

For each file the manifest lists, ``PUT {url}/batches/{facility_id}/{batch_id}/{name}`` with
the file as the body (``application/octet-stream``, streamed in blocks, hashed while sent);
any 2xx accepts it and a PUT may be repeated. Then ``POST .../commit`` with the manifest as
the body (``application/json``); the registry answers 200 with ``{"receipt_id", "batch_id",
"files": {name: sha256}}`` (a repeated commit answers the same receipt). The batch is
acknowledged only when every hash in the answer equals the manifest's; a file whose hash
differs is uploaded again on the next attempt. Any other answer is a failure kept with its
status and the first 500 bytes of its body (the token redacted, should the registry echo
it), and retried within the destination's bounds.

The bearer token is read from the environment variable ``token_env`` names, at each call;
it goes into the ``Authorization`` header and nowhere else (not in logs, messages or the
returned :class:`Delivery`).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

from dosereg.conf.config import DestinationSettings

from .common import BLOCK, HashingReader, TlsError, attempts, client_tls_context, error_text, log, redact
from .model import MANIFEST_NAME, Delivery, Failure, Manifest, Parcel

BODY_KEPT = 500  # bytes of a refusing answer's body kept in the failure
MAX_ANSWER = 1 << 20  # a commit answer larger than this is not a receipt
_DRAIN = 1 << 16  # a PUT answer's body read to keep the connection; a larger one closes it


class _Connection:
    """One keep-alive HTTPS connection, opened again after any error."""

    def __init__(self, dest: DestinationSettings, ctx: ssl.SSLContext, token: str) -> None:
        parts = urlsplit(dest.url)
        self.host = parts.hostname or ""
        self.port = parts.port or 443
        self.base = parts.path.rstrip("/")
        self.dest, self.ctx, self.token = dest, ctx, token
        self._conn: http.client.HTTPSConnection | None = None

    def path(self, parcel: Parcel, last: str) -> str:
        return "/".join((self.base, "batches", quote(parcel.facility_id, safe=""), quote(parcel.batch_id, safe=""),
                         quote(last, safe="")))

    def request(self, method: str, path: str, body: bytes | HashingReader, length: int, content_type: str,
                limit: int) -> tuple[int, bytes]:
        """(status, at most ``limit`` bytes of the answer's body); raises OSError/HTTPException."""
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.dest.timeout_s,
                                                     context=self.ctx, blocksize=BLOCK)
        conn = self._conn
        try:
            conn.request(method, path, body=body, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": content_type,
                "Content-Length": str(length), "User-Agent": "dosereg", "Accept": "application/json",
            })
            resp = conn.getresponse()
            data = resp.read(limit + 1)
            if len(data) > limit or not resp.isclosed() or resp.will_close:
                self.close()  # the rest of a long body is never read: this connection is done
            return resp.status, data
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _preview(body: bytes, token: str) -> str:
    return redact(body[:BODY_KEPT].decode("utf-8", "replace"), (token,))


class _LocalFileChanged(Exception):
    pass


class _Upload:
    """The state of one delivery across its attempts."""

    def __init__(self, dest: DestinationSettings, parcel: Parcel, manifest: Manifest, conn: _Connection,
                 done: frozenset[str], stored: frozenset[str]) -> None:
        self.dest, self.parcel, self.manifest, self.conn = dest, parcel, manifest, conn
        names = {f.name for f in manifest.files}
        self.todo = {f.name for f in manifest.files if f.name not in done and f.name not in stored}
        self.stored = {n for n in stored if n in names and n not in done}
        self.failures: dict[str, Failure] = {}
        self.receipt: str | None = None
        self.last_error: str | None = None

    def put(self, name: str, sha256: str, size: int) -> None:
        path = self.parcel.registry_dir / name
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size != size:
                    raise _LocalFileChanged(f"{name}: the batch folder's file is not the size its manifest says")
                reader = HashingReader(fh)
                status, body = self.conn.request("PUT", self.conn.path(self.parcel, name), reader, size,
                                                 "application/octet-stream", _DRAIN)
            if reader.hexdigest() != sha256:
                raise _LocalFileChanged(f"{name}: the batch folder's file differs from its manifest")
        except _LocalFileChanged as exc:
            self.failures[name] = Failure(name, str(exc), retryable=False)
            return
        except (OSError, http.client.HTTPException) as exc:
            self._fail(name, f"PUT {name}: {error_text(exc)}", None)
            return
        if 200 <= status < 300:
            self.todo.discard(name)
            self.stored.add(name)
            self.failures.pop(name, None)
            log.debug("destination %s: PUT %s: %d", self.dest.name, name, status)
        else:
            self._fail(name, f"PUT {name}: HTTP {status}: {_preview(body, self.conn.token)}", status)

    def _fail(self, key: str, reason: str, status: int | None) -> None:
        self.failures[key] = Failure(key, reason, status)
        self.last_error = reason

    def commit(self) -> None:
        data = self.manifest.data
        try:
            status, body = self.conn.request("POST", self.conn.path(self.parcel, "commit"), data, len(data),
                                             "application/json", MAX_ANSWER)
        except (OSError, http.client.HTTPException) as exc:
            self._fail(MANIFEST_NAME, f"POST commit: {error_text(exc)}", None)
            return
        if status != 200:
            self._fail(MANIFEST_NAME, f"POST commit: HTTP {status}: {_preview(body, self.conn.token)}", status)
            return
        self._receipt(body)

    def _receipt(self, body: bytes) -> None:
        try:
            doc: Any = json.loads(body)
        except ValueError:
            doc = None
        if (not isinstance(doc, dict) or not isinstance(doc.get("receipt_id"), str) or not doc["receipt_id"]
                or not isinstance(doc.get("files"), dict)):
            self._fail(MANIFEST_NAME, f"POST commit: HTTP 200 without a receipt: {_preview(body, self.conn.token)}",
                       200)
            return
        if doc.get("batch_id") != self.parcel.batch_id:
            self._fail(MANIFEST_NAME, f"POST commit: the receipt is for batch {str(doc.get('batch_id'))[:80]!r}", 200)
            return
        files: dict[str, Any] = doc["files"]
        wrong = [f for f in self.manifest.files if str(files.get(f.name, "")).lower() != f.sha256]
        extra = [n for n in files if n not in self.manifest.keys]
        if str(files.get(MANIFEST_NAME, self.manifest.sha256)).lower() != self.manifest.sha256:
            extra.append(MANIFEST_NAME)
        for f in wrong:  # uploaded again on the next attempt
            self.stored.discard(f.name)
            self.todo.add(f.name)
            got = files.get(f.name)
            self._fail(f.name, f"the receipt's SHA-256 of {f.name} is "
                       f"{'missing' if got is None else str(got)[:64]!r}, not the manifest's", 200)
        if extra:
            self._fail(MANIFEST_NAME, f"the receipt names files the manifest does not: {', '.join(sorted(extra))[:200]}",
                       200)
        if not wrong and not extra:
            self.receipt = doc["receipt_id"]
            self.failures.clear()

    def attempt(self) -> None:
        for f in self.manifest.files:
            if f.name in self.todo:
                self.put(f.name, f.sha256, f.bytes)
        if not self.todo and not self.failures:
            self.commit()

    def hopeless(self) -> bool:
        return bool(self.failures) and not any(f.retryable for f in self.failures.values())


@contextmanager
def _connection(dest: DestinationSettings, ctx: ssl.SSLContext, token: str) -> Iterator[_Connection]:
    conn = _Connection(dest, ctx, token)
    try:
        yield conn
    finally:
        conn.close()


def _refused(dest: DestinationSettings, manifest: Manifest, done: frozenset[str], reason: str) -> Delivery:
    keys = sorted(manifest.keys - done)
    return Delivery(destination=dest.name, kind="https", state="failed", receipt=None, acknowledged=frozenset(),
                    failures=tuple(Failure(k, reason, retryable=False) for k in keys), last_error=reason)


def deliver_https(dest: DestinationSettings, parcel: Parcel, manifest: Manifest, done: frozenset[str],
                  stored: frozenset[str] = frozenset()) -> Delivery:
    """Upload the batch's files, then commit; acknowledged on a receipt whose hashes are the manifest's."""
    if manifest.keys <= done:  # committed by an earlier call: nothing is sent again
        return Delivery(destination=dest.name, kind="https", state="acknowledged", receipt=None,
                        acknowledged=frozenset())
    token = os.environ.get(dest.token_env, "")
    if not token:
        return _refused(dest, manifest, done, f"environment variable {dest.token_env} (token_env of destination "
                        f"{dest.name}) is not set")
    try:
        ctx = client_tls_context(dest)
    except TlsError as exc:
        return _refused(dest, manifest, done, str(exc))
    tried = 0
    with _connection(dest, ctx, token) as conn:
        upload = _Upload(dest, parcel, manifest, conn, done, stored)
        for tried in attempts(dest):  # noqa: B007 -- the count is reported
            upload.attempt()
            if upload.receipt is not None or upload.hopeless():
                break
    ok = upload.receipt is not None
    log.info("destination %s (https): batch %s %s after %d attempt(s)", dest.name, parcel.batch_id,
             f"acknowledged, receipt {upload.receipt}" if ok else "failed", tried)
    return Delivery(
        destination=dest.name, kind="https", state="acknowledged" if ok else "failed", receipt=upload.receipt,
        acknowledged=frozenset(manifest.keys - done) if ok else frozenset(),
        stored=frozenset() if ok else frozenset(upload.stored),
        failures=() if ok else tuple(upload.failures[k] for k in sorted(upload.failures)),
        last_error=None if ok else upload.last_error, attempts=tried,
    )


__all__ = ["deliver_https"]
