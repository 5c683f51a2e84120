"""``dosereg listen``: the DICOM C-STORE SCP (pynetdicom), configured per docs/configuration.md.

The C-STORE handler only makes the received bytes durable (:meth:`Pipeline.receive`)
and answers; extraction and cataloguing run in a separate process consuming the spool
(:mod:`dosereg.ingest.processor`).
Status codes answered (PS3.4 Annex B):

* 0x0000 Success -- the object is fsync'ed in the spool and noted in the catalog
  (also for objects that will be quarantined: a PACS would otherwise retry forever);
* 0xA700 Refused: Out of Resources -- the object could not be stored (disk full, I/O
  error, shutting down); nothing of it is kept, the sender may retry.
* 0xC000 Error: Cannot Understand -- an identifying UID of the request or of the dataset is
  not a valid UID (:mod:`dosereg.ingest.storecheck`), or the dataset cannot be encoded; the
  Error Comment (0000,0902) names the UID and the reason; nothing of it is kept. (0xA900
  "Data Set does not match SOP Class" is about the content against the SOP class, which
  this check does not judge; an unreadable identifier is "cannot understand".)

Connections, PDUs, deadlines, slots and memory are policed by :mod:`dosereg.ingest.guard`.
"""

from __future__ import annotations

import logging
import signal
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dosereg.conf.config import Config, ConfigError

from . import guard
from .catalog import Catalog, catalog_path
from .classes import ACCEPTED_SOP_CLASSES
from .cstore import STATUS_OUT_OF_RESOURCES, take_in
from .health import Heartbeat
from .locking import DataDirLock
from .pipeline import Pipeline, extract_limits
from .processor import Processor

log = logging.getLogger("dosereg.ingest.listener")

#: The storage SOP classes of the table in docs/study-record.md; nothing else is accepted.
STORAGE_CLASSES = tuple(ACCEPTED_SOP_CLASSES)
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    lst = cfg.listener
    if not (lst.tls_certificate or lst.tls_private_key or lst.tls_ca_certificates):
        return None
    if not (lst.tls_certificate and lst.tls_private_key):
        raise ConfigError(
            f"{cfg.path}: listener.tls_certificate and listener.tls_private_key must both be set for DICOM TLS"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(lst.tls_certificate, lst.tls_private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{cfg.path}: listener.tls_certificate / tls_private_key ({lst.tls_certificate}, "
            f"{lst.tls_private_key}): cannot load: {exc}"
        ) from None
    if lst.tls_ca_certificates:
        try:
            ctx.load_verify_locations(cafile=lst.tls_ca_certificates)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{cfg.path}: listener.tls_ca_certificates ({lst.tls_ca_certificates}): cannot load: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# A-ASSOCIATE-RJ (result, source, reason) pynetdicom's acceptor sends (PS3.8 9.3.4, Table 9-21)
REJECT_CALLING = (1, 1, 3)
REJECT_CALLED = (1, 1, 7)
REJECT_LIMIT = (2, 3, 2)
_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE = {1: "service-user", 2: "service-provider (ACSE)", 3: "service-provider (presentation)"}
_RJ_REASON = {
    (1, 1): "no-reason-given", (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-AE-title-not-recognized", (1, 7): "called-AE-title-not-recognized",
    (2, 1): "no-reason-given", (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion", (3, 2): "local-limit-exceeded",
}
# presentation context results (PS3.8 9.3.3.2, Table 9-18)
_CX_RESULT = {1: "user-rejection", 2: "no-reason (provider rejection)", 3: "abstract-syntax-not-supported",
              4: "transfer-syntaxes-not-supported"}


def reject_code_text(result: int, source: int, reason: int) -> str:
    """``A-ASSOCIATE-RJ result 1 rejected-permanent, source 1 service-user, reason 3 calling-AE-title-not-recognized``."""
    return (f"A-ASSOCIATE-RJ result {result} {_RJ_RESULT.get(result, '?')}, source {source} "
            f"{_RJ_SOURCE.get(source, '?')}, reason {reason} {_RJ_REASON.get((source, reason), '?')}")


def context_refusal(abstract_syntax: str, result: int | None) -> str:
    """One refused presentation context for a log line: the SOP class by name and UID, the PS3.8 result."""
    from pydicom.uid import UID

    name = UID(abstract_syntax).name
    shown = abstract_syntax if name == abstract_syntax else f"{name} ({abstract_syntax})"
    code = int(result) if result is not None else 2
    return f"{shown}: presentation context result {code} {_CX_RESULT.get(code, '?')}"


def ae_title_problem(value: str) -> str | None:
    """Why ``value`` cannot be an AE title (PS3.5 6.2, AE: at most 16 characters of the default
    repertoire, no backslash, not only spaces), or None. Checked before pynetdicom sees it, which
    would log a line of its own besides ours."""
    if len(value) > 16:
        return f"{len(value)} characters, at most 16 are allowed"
    return guard.ae_title_problem(value.encode("utf-8"))


class Listener:
    """The SCP with its spool worker; :func:`serve` runs one until a signal."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        lst = cfg.listener
        self.ssl_context = _ssl_context(cfg)
        problem = ae_title_problem(lst.ae_title)
        if problem:
            raise ConfigError(f"{cfg.path}: listener.ae_title {lst.ae_title!r}: {problem}")
        ae = AE(ae_title=lst.ae_title)
        ae.require_called_aet = lst.require_called_ae_title
        try:
            ae.require_calling_aet = list(lst.allowed_calling_ae_titles)
        except ValueError as exc:
            raise ConfigError(f"{cfg.path}: listener.allowed_calling_ae_titles: {exc}") from None
        self.gate = guard.Gate(guard.Limits.from_settings(lst))
        # The gate counts slots (and closes what is over); pynetdicom's own count also sees
        # the connections waiting to show their AE title, so it must never refuse first.
        ae.maximum_associations = self.gate.limits.max_connections + 1
        ae.acse_timeout = lst.acse_timeout_s
        ae.dimse_timeout = lst.dimse_timeout_s
        ae.network_timeout = lst.network_timeout_s
        ae.maximum_pdu_size = lst.max_pdu_size  # advertised; the guard enforces it on receive
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self.ae = ae
        self.data_dir = cfg.data_dir.resolve()
        self.lock = DataDirLock(self.data_dir)
        if not self.lock.acquire(timeout_s=5):
            raise ConfigError(
                f"{self.data_dir}: data directory in use by another dosereg listen ({self.lock.path}); "
                "give each listener its own storage.data_dir"
            )
        # No WAL checkpoints on the association threads: the processing process (which
        # commits after every object) runs them, off the C-STORE round-trip.
        self.catalog = Catalog(catalog_path(self.data_dir), autocheckpoint=False)
        limits = extract_limits(cfg)
        self.pipeline = Pipeline(self.data_dir, self.catalog, limits=limits)
        self.processor = Processor(self.data_dir, limits)
        self._inflight = 0
        self._closing = False
        self._cond = threading.Condition()
        self.server: Any = None
        self.heartbeat: Heartbeat | None = None

    # -- event handlers -------------------------------------------------------------------
    def _on_store(self, event: Any) -> int | Dataset:
        with self._cond:
            if self._closing:
                log.warning("C-STORE refused (0xA700): the listener is shutting down")
                return STATUS_OUT_OF_RESOURCES
            self._inflight += 1
        try:
            return self._store(event)
        finally:
            self.gate.release(event.assoc)
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def _store(self, event: Any) -> int | Dataset:
        status, item = take_in(self.pipeline, event)
        if item is not None:
            self.processor.poke()
        return status

    def _on_rejected(self, event: Any) -> None:
        rq = event.assoc.requestor
        calling = str(rq.ae_title).strip()
        called = str(getattr(rq.primitive, "called_ae_title", "") or "").strip()
        allowed = self.cfg.listener.allowed_calling_ae_titles
        # the same tests as pynetdicom's acceptor, in its order; the codes are those it sent (PS3.8 9.3.4)
        if allowed and calling not in [a.strip() for a in allowed]:
            why = f"calling AE title {calling!r} is not in listener.allowed_calling_ae_titles"
            code = REJECT_CALLING
        elif self.cfg.listener.require_called_ae_title and called != self.cfg.listener.ae_title.strip():
            why = f"called AE title {called!r} is not ours ({self.cfg.listener.ae_title!r})"
            code = REJECT_CALLED
        else:
            why = f"too many associations (listener.max_associations = {self.cfg.listener.max_associations})"
            code = REJECT_LIMIT
        self.gate.warn(rq.address, f"rj-{code}", "refused association from %s (%s:%s): %s (%s)",
                       calling, rq.address, rq.port, why, reject_code_text(*code))

    def _on_accepted(self, event: Any) -> None:
        """Presentation contexts refused at negotiation (e.g. CT images forwarded by mistake)."""
        rejected = list(event.assoc.rejected_contexts)
        if not rejected:
            return
        rq = event.assoc.requestor
        calling = str(rq.ae_title).strip()
        parts = sorted({context_refusal(str(cx.abstract_syntax), cx.result) for cx in rejected})
        accepted = len(event.assoc.accepted_contexts)
        key = "cx-" + ",".join(parts)
        self.gate.warn(rq.address, key, "refused presentation context(s) from %s (%s:%s): %s; %d accepted%s",
                       calling, rq.address, rq.port, "; ".join(parts), accepted,
                       "" if accepted else " (nothing can be stored on this association)")

    def _on_established(self, event: Any) -> None:
        rq = event.assoc.requestor
        log.debug("association from %s (%s:%s) established", str(rq.ae_title).strip(), rq.address, rq.port)

    def _on_aborted(self, event: Any) -> None:
        rq = event.assoc.requestor
        log.info("association from %s (%s:%s) aborted", str(rq.ae_title).strip(), rq.address, rq.port)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        # Before any association: leftovers of a crash are noted, then processed by the
        # processing process together with whatever arrives next.
        pending = self.pipeline.recover()
        if pending:
            log.warning("%d object(s) spooled but not processed: processing them now", len(pending))
        self.processor.start()
        lst = self.cfg.listener
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        self.server = guard.start_server(
            self.ae, (lst.host, lst.port), self.gate, evt_handlers=handlers, ssl_context=self.ssl_context,
        )
        host, port = self.server.server_address[:2]
        self.heartbeat = Heartbeat(self.data_dir, {"ae_title": lst.ae_title, "address": f"{host}:{port}"})
        self.heartbeat.start()  # what `dosereg status` reads

    def startup_line(self) -> str:
        lst = self.cfg.listener
        host, port = self.server.server_address[:2] if self.server else (lst.host, lst.port)
        allowed = ", ".join(lst.allowed_calling_ae_titles) if lst.allowed_calling_ae_titles else "any"
        tls = " over TLS" + (" (client certificates required)" if lst.tls_ca_certificates else "") \
            if self.ssl_context else ""
        return (
            f"dosereg listen: AE title {lst.ae_title} on {host}:{port}{tls}, data directory {self.data_dir}, "
            f"allowed calling AE titles: {allowed}"
            + (", called AE title must match" if lst.require_called_ae_title else "")
        )

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let associations finish (up to ``grace_s``), then close."""
        if grace_s is None:
            grace_s = min(10.0, self.cfg.listener.network_timeout_s)
        if self.server is not None:
            self.server.shutdown()
        deadline = time.monotonic() + grace_s
        # Established associations may finish (their sender is mid-stream); a connection that
        # never negotiated (a port probe) is not waited for.
        while time.monotonic() < deadline and any(
            a.is_alive() and a.is_established for a in self.ae.active_associations
        ):
            time.sleep(0.05)
        with self._cond:
            self._closing = True
            self._cond.wait_for(lambda: self._inflight == 0, timeout=max(30.0, grace_s))
        for assoc in self.ae.active_associations:
            log.warning("aborting association from %s at shutdown", str(assoc.requestor.ae_title).strip())
            assoc.abort()
        self.processor.stop(drain_s=5.0)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.catalog.close()
        self.lock.release()


class Background(Protocol):
    """Work the composition root runs beside the listener (the dose alerts' worker process):
    started once the catalog is open, before the port opens; stopped after the listener stopped.
    The listener's threads never call it."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _abandon(listener: Listener, started: list[Background]) -> None:
    for task in reversed(started):
        task.stop()
    listener.processor.stop(0)
    listener.catalog.close()
    listener.lock.release()


def _start(cfg: Config, listener: Listener, background: Sequence[Background], started: list[Background]) -> bool:
    """The background tasks (before the port opens: nothing received escapes them), then the
    listener; False (with one line on stderr) when the port cannot be had."""
    try:
        for task in background:
            task.start()
            started.append(task)
        listener.start()
    except OSError as exc:
        _abandon(listener, started)
        print(
            f"dosereg listen: cannot listen on {cfg.listener.host}:{cfg.listener.port} "
            f"(listener.host / listener.port): {exc.strerror or exc}",
            file=sys.stderr,
        )
        return False
    except BaseException:  # a background task that cannot start (a ConfigError): nothing left running
        _abandon(listener, started)
        raise
    return True


def serve(cfg: Config, background: Sequence[Background] = ()) -> int:
    """Run the listener until SIGINT/SIGTERM; graceful stop; exit status 0. ``background``: started
    once the catalog is open (before the port opens), stopped (in reverse order) after it stopped."""
    listener = Listener(cfg)
    stop = threading.Event()
    started: list[Background] = []
    if not _start(cfg, listener, background, started):
        return 2

    line = listener.startup_line()
    log.info("%s", line)
    if not log.isEnabledFor(logging.INFO):
        print(line, file=sys.stderr, flush=True)
    if not cfg.listener.allowed_calling_ae_titles:
        log.warning("any calling AE title is accepted: set listener.allowed_calling_ae_titles to restrict")
    if listener.ssl_context is not None and not cfg.listener.tls_ca_certificates:
        log.warning("DICOM TLS without listener.tls_ca_certificates: any client certificate or none is "
                    "accepted (no client authentication); set it to require certificates it signed")

    previous: dict[signal.Signals, Any] = {}

    def _handle(signum: int, frame: Any) -> None:
        log.info("received %s: stopping after in-flight stores", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _handle)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        listener.stop()
        for task in reversed(started):
            task.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("dosereg listen: stopped")
    if not log.isEnabledFor(logging.INFO):
        print("dosereg listen: stopped", file=sys.stderr, flush=True)
    return 0


__all__ = ["Background", "Listener", "STORAGE_CLASSES", "TRANSFER_SYNTAXES", "serve"]
