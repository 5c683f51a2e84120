"""An association to the PACS for ``dosereg reconcile`` (pynetdicom SCU), opened when needed.

One association carries the C-FINDs, the C-GETs (with the SCP role for the storage classes
dosereg takes in: the PACS sends the objects back on it) and the C-MOVEs; it is opened again
when the PACS released or aborted it. ``pacs.timeout_s`` bounds the connection, the
association negotiation and each DIMSE message; TLS as ``[pacs]`` configures it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dosereg.conf.pacs import PacsSettings

from .classes import ACCEPTED_SOP_CLASSES
from .listener import TRANSFER_SYNTAXES

log = logging.getLogger("dosereg.ingest.reconcile")


class QueryError(Exception):
    """The PACS failed a query or a retrieval, or did not answer it in time (the message says which)."""


class PacsUnreachable(QueryError):
    """No association with the PACS: it cannot be reached, or it rejected us."""


def ssl_context(pacs: PacsSettings) -> ssl.SSLContext | None:
    """The client TLS context of ``[pacs]``, or None without TLS (no TLS key set)."""
    if not (pacs.tls_certificate or pacs.tls_ca_certificates):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pacs.tls_ca_certificates or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = bool(pacs.tls_ca_certificates)
    if not pacs.tls_ca_certificates:
        ctx.verify_mode = ssl.CERT_NONE
    if pacs.tls_certificate:
        ctx.load_cert_chain(pacs.tls_certificate, pacs.tls_private_key)
    return ctx


StoreHandler = Callable[[Any], Any]


class Session:
    """The association to ``[pacs]``; ``on_store`` answers the C-STORE sub-operations of a C-GET."""

    def __init__(self, pacs: PacsSettings, on_store: StoreHandler | None = None) -> None:
        self.pacs = pacs
        self.on_store = on_store
        ae = AE(ae_title=pacs.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = pacs.timeout_s
        ae.connection_timeout = pacs.timeout_s
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        self.roles: list[Any] = []
        if on_store is not None:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for sop_class in ACCEPTED_SOP_CLASSES:
                ae.add_requested_context(sop_class, list(TRANSFER_SYNTAXES))
                self.roles.append(build_role(sop_class, scp_role=True))
        self.ae = ae
        self.tls = ssl_context(pacs)
        self._assoc: Any = None

    def _association(self) -> Any:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        p = self.pacs
        handlers: list[Any] = [(evt.EVT_C_STORE, self.on_store)] if self.on_store is not None else []
        tls = (self.tls, p.host) if self.tls is not None else None
        try:
            assoc = self.ae.associate(p.host, p.port, ae_title=p.ae_title, ext_neg=self.roles or None,
                                      evt_handlers=handlers, tls_args=tls)
        except (OSError, ssl.SSLError) as exc:  # pragma: no cover -- pynetdicom logs and returns
            raise PacsUnreachable(f"cannot connect to the PACS {p.ae_title} at {p.host}:{p.port}: {exc}") from None
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "did not answer"
            raise PacsUnreachable(f"the PACS {p.ae_title} at {p.host}:{p.port} {why} (pacs.ae_title, pacs.host, "
                             f"pacs.port, pacs.calling_ae_title {p.calling_ae_title}; timeout {p.timeout_s:g} s)")
        self._assoc = assoc
        return assoc

    def _responses(self, send: Callable[[Any], Any], what: str) -> Iterator[tuple[Dataset, Dataset | None]]:
        assoc = self._association()
        got_final = False
        for status, identifier in send(assoc):
            if not status:  # an empty Dataset: no answer within timeout_s, or the association went
                break
            if int(status.Status) not in (0xFF00, 0xFF01):
                got_final = True
            yield status, identifier
            if got_final:
                return
        assoc.abort()
        self._assoc = None
        raise QueryError(f"{what}: the PACS {self.pacs.ae_title} did not answer within {self.pacs.timeout_s:g} s "
                         "or closed the association")

    def find(self, query: Dataset) -> Iterator[tuple[Dataset, Dataset | None]]:
        """(status, identifier) of each response of a Study Root C-FIND."""
        return self._responses(lambda a: a.send_c_find(query, StudyRootQueryRetrieveInformationModelFind),
                               f"C-FIND ({query.QueryRetrieveLevel})")

    def get(self, query: Dataset) -> Iterator[tuple[Dataset, Dataset | None]]:
        """(status, identifier) of each response of a Study Root C-GET (objects go to ``on_store``)."""
        return self._responses(lambda a: a.send_c_get(query, StudyRootQueryRetrieveInformationModelGet),
                               f"C-GET ({query.QueryRetrieveLevel})")

    def move(self, query: Dataset, destination: str) -> Iterator[tuple[Dataset, Dataset | None]]:
        """(status, identifier) of each response of a Study Root C-MOVE to ``destination``."""
        return self._responses(
            lambda a: a.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove),
            f"C-MOVE ({query.QueryRetrieveLevel}) to {destination}")

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None


def echo(ae_title: str, host: str, port: int, calling_ae_title: str, timeout_s: float) -> bool:
    """Whether ``ae_title`` at ``host:port`` answers a C-ECHO with Success."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


__all__ = ["PacsUnreachable", "QueryError", "Session", "echo", "ssl_context"]
