"""Real peers for the destination tests, each on a free loopback port and stopped by its handle.

* :class:`RegistryServer`: an HTTPS registry (``http.server`` + ``ssl``, certificates from
  ``trustme``) that stores what is PUT and answers commits with a receipt computed from what
  it received; its ``mode`` makes it answer wrong hashes, 500, slowly, or cut an upload.
* :class:`CommitGateway`: a pynetdicom Storage SCP with Storage Commitment (N-ACTION, then an
  N-EVENT-REPORT on the same association), which may fail some instances or report late.
* :class:`StoreSCP`: dcmtk's ``storescp`` as a registry gateway (skips when not installed).
* :func:`make_batch` / :func:`sample_parcel`: registry folders and parcels built by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

from dosereg.conf.config import DestinationSettings
from dosereg.registry_export.deid import Pseudonymizer
from dosereg.registry_export.destinations import Parcel, ParcelObject

from .test_listener import free_port, need

# deterministic: the byte-level searches below never meet a chance match with this secret
SECRET = b"destination-tests-secret-0123456789abcdef"
FACILITY, BATCH = "FAC-0001", "20240305T101530Z-0001"


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing accepts connections on 127.0.0.1:{port}")


# -- batch folders and parcels ----------------------------------------------------------------

def make_batch(root: Path, sizes: dict[str, int] | None = None, facility: str = FACILITY,
               batch: str = BATCH) -> Path:
    """``root/registry/<facility>/<batch>/`` with files of the given sizes and their manifest."""
    folder = root / "registry" / facility / batch
    folder.mkdir(parents=True)
    files = []
    for i, (name, size) in enumerate((sizes or {"studies.parquet": 4096, "events.parquet": 9000,
                                               "submission.json": 2500}).items()):
        block = hashlib.sha256(f"{name}:{i}".encode()).digest()
        data = (block * (size // len(block) + 1))[:size]
        (folder / name).write_bytes(data)
        files.append({"name": name, "rows": 3, "bytes": size, "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"schema": "dosereg.manifest/1", "facility_id": facility, "batch_id": batch,
                "created_at": "2024-03-05T10:15:30.000000Z", "files": files, "pseudonyms_changed_at": None}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return folder


def sample_parcel(folder: Path, paths: list[Path], precision: str = "day") -> Parcel:
    objects = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        objects.append(ParcelObject(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID), p))
    return Parcel(FACILITY, BATCH, folder, tuple(objects), Pseudonymizer(SECRET), precision)


def dest(kind: str, **kw: Any) -> DestinationSettings:
    """A destination with fast retries (the tests' bounds, not the defaults)."""
    base: dict[str, Any] = {"name": f"test-{kind}", "kind": kind, "timeout_s": 5.0, "max_attempts": 2,
                            "retry_backoff_s": 0.05, "retry_total_s": 30.0}
    base.update(kw)
    return DestinationSettings(**base)


# -- HTTPS registry ---------------------------------------------------------------------------

@dataclass
class _State:
    token: str
    store: Path
    mode: str = "ok"  # ok | wrong | wrong-once | 500 | 500-once | slow-once | cut-once | echo-401
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first(self) -> bool:
        with self.lock:
            self.hits += 1
            return self.hits == 1


class _Handler(BaseHTTPRequestHandler):
    server_version = "TestRegistry/1"
    timeout = 15
    state: _State

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass
        with self.state.lock:
            self.state.requests.append((self.command, self.path, status))

    def _drain(self) -> None:
        """Read the body a refusal does not need, as a well-behaved server does, so the client
        reads the answer instead of a reset connection."""
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            block = self.rfile.read(min(left, 1 << 16))
            if not block:
                return
            left -= len(block)

    def _refuse(self) -> bool:
        st = self.state
        with st.lock:
            st.headers.append({k: v for k, v in self.headers.items()})
        refusing = (self.headers.get("Authorization") != f"Bearer {st.token}" or st.mode in ("echo-401", "500")
                    or (st.mode == "500-once" and st.hits == 0))
        if refusing:
            self._drain()
        if self.headers.get("Authorization") != f"Bearer {st.token}":
            self._answer(401, f"unauthorised: {self.headers.get('Authorization')}".encode())
            return True
        if st.mode == "echo-401":
            self._answer(401, f"token {self.headers.get('Authorization')} revoked".encode())
            return True
        if st.mode == "500" or (st.mode == "500-once" and st.first()):
            self._answer(500, b"E" * 300 + b"F" * 300 + b"G" * 200)
            return True
        if st.mode == "slow-once" and st.first():
            time.sleep(3)
            self._answer(503, b"too late")
            return True
        return False

    def _name(self) -> tuple[str, str, str] | None:
        parts = self.path.split("/")
        if len(parts) != 6 or parts[1:3] != ["api", "batches"]:
            return None
        return parts[3], parts[4], parts[5]

    def do_PUT(self) -> None:  # noqa: N802 -- http.server's naming
        where = self._name()
        if where is None:
            self._answer(404, b"no such resource")
            return
        if self._refuse():
            return
        length = int(self.headers.get("Content-Length", "0"))
        if self.headers.get("Content-Type") != "application/octet-stream":
            self._answer(415, b"octet-stream only")
            return
        if self.state.mode == "cut-once" and self.state.first():
            self.rfile.read(length // 2)
            self.connection.shutdown(socket.SHUT_RDWR)  # the upload is cut halfway through
            self.close_connection = True
            return
        folder = self.state.store / where[0] / where[1]
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / where[2], "wb") as fh:
            left = length
            while left:
                block = self.rfile.read(min(left, 1 << 16))
                if not block:
                    return
                fh.write(block)
                left -= len(block)
        self._answer(201, b"")

    def do_POST(self) -> None:  # noqa: N802
        where = self._name()
        if where is None or where[2] != "commit":
            self._answer(404, b"no such resource")
            return
        if self._refuse():
            return
        manifest = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        folder = self.state.store / where[0] / where[1]
        files = {}
        for f in manifest["files"]:
            p = folder / f["name"]
            if p.exists():
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 16), b""):  # noqa: B023 -- consumed at once
                        h.update(block)
                files[f["name"]] = h.hexdigest()
            else:
                files[f["name"]] = ""
        if self.state.mode == "wrong" or (self.state.mode == "wrong-once" and self.state.first()):
            files[manifest["files"][0]["name"]] = "0" * 64
        receipt = "R-" + hashlib.sha256(f"{where[0]}/{where[1]}".encode()).hexdigest()[:16]
        self._answer(200, json.dumps({"receipt_id": receipt, "batch_id": where[1], "files": files}).encode())


class RegistryServer:
    """A real HTTPS registry in this process, on a free loopback port; :meth:`stop` ends it."""

    def __init__(self, store: Path, ca: Any, token: str, mode: str = "ok", client_ca: Any = None) -> None:
        self.state = _State(token=token, store=store, mode=mode)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        if client_ca is not None:
            client_ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def requests(self, method: str | None = None) -> list[tuple[str, str, int]]:
        with self.state.lock:
            return [r for r in self.state.requests if method is None or r[0] == method]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- DICOM gateways ---------------------------------------------------------------------------

SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33")


class CommitGateway:
    """pynetdicom Storage SCP + Storage Commitment SCP on a free loopback port.

    ``fail``: SOP Instance UIDs it reports as failed (0x0110); instances it never stored are
    reported failed with 0x0112. ``delay``: seconds between the N-ACTION answer and the
    N-EVENT-REPORT (sent on the same association, when it is still open)."""

    def __init__(self, ae_title: str = "GATEWAY", fail: frozenset[str] = frozenset(), delay: float = 0.05,
                 ssl_context: ssl.SSLContext | None = None, require_called: bool = True) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

        self.fail, self.delay = set(fail), delay
        self.stored: dict[str, bytes] = {}
        self.store_count: dict[str, int] = {}
        self.actions: list[tuple[str, list[str]]] = []
        self.reports: list[tuple[str, int, str]] = []  # (transaction, event type, outcome)
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called
        for uid in SR_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(StorageCommitmentPushModel)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=ssl_context, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action)])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        with self.lock:
            uid = str(ds.SOPInstanceUID)
            self.stored[uid] = buf.getvalue()
            self.store_count[uid] = self.store_count.get(uid, 0) + 1
        return 0x0000

    def _on_action(self, event: Any) -> tuple[int, None]:
        info = event.action_information
        transaction = str(info.TransactionUID)
        refs = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in info.ReferencedSOPSequence]
        with self.lock:
            self.actions.append((transaction, [u for _, u in refs]))
        threading.Thread(target=self._report, args=(event.assoc, transaction, refs), daemon=True).start()
        return 0x0000, None

    def _report(self, assoc: Any, transaction: str, refs: list[tuple[str, str]]) -> None:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StorageCommitmentPushModel,
            StorageCommitmentPushModelInstance,
        )

        time.sleep(self.delay)
        ok, failed = [], []
        for cls, uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
            if uid in self.fail or uid not in self.stored:
                item.FailureReason = 0x0110 if uid in self.fail else 0x0112
                failed.append(item)
            else:
                ok.append(item)
        info = Dataset()
        info.TransactionUID = transaction
        info.ReferencedSOPSequence = Sequence(ok)
        if failed:
            info.FailedSOPSequence = Sequence(failed)
        event_type = 2 if failed else 1
        try:
            if not assoc.is_established:
                raise RuntimeError("association released before the report")
            status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                               StorageCommitmentPushModelInstance)
            outcome = f"0x{int(status.Status):04X}" if "Status" in status else "no answer"
        except Exception as exc:
            outcome = f"not delivered: {exc}"
        with self.lock:
            self.reports.append((transaction, event_type, outcome))

    def stop(self) -> None:
        self.server.shutdown()

    def __enter__(self) -> CommitGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StoreSCP:
    """dcmtk's ``storescp`` as the registry gateway, a subprocess on a free loopback port."""

    def __init__(self, out: Path, ae_title: str = "DIRLINK", extra: tuple[str, ...] = ()) -> None:
        exe = need("storescp")
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = open(out.parent / f"storescp-{self.port}.log", "wb")
        self.proc = subprocess.Popen([exe, "-aet", ae_title, "-od", str(out), *extra, str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
        try:
            wait_port(self.port)
        except AssertionError:
            self.stop()
            raise

    def received(self) -> dict[str, bytes]:
        """SOP Instance UID -> the bytes storescp wrote."""
        out = {}
        for p in sorted(self.out.iterdir()):
            if p.is_file():
                data = p.read_bytes()
                out[str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def __enter__(self) -> StoreSCP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
