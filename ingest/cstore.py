"""One received C-STORE taken in: checked, encoded, made durable in the spool and noted.

The one handler body for every C-STORE dosereg answers: the listener's (a modality or a PACS
sends; C-MOVE sub-operations arrive there too) and the C-GET sub-operations of
``dosereg reconcile`` (:mod:`.qr_retrieve`). Status codes as :mod:`.listener` documents.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from .pipeline import Pipeline, Received
from .storecheck import store_problem

log = logging.getLogger("dosereg.ingest.listener")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


def failure(status: int, comment: str) -> Dataset:
    """A failure status with its Error Comment (0000,0902; LO, at most 64 characters)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def take_in(pipeline: Pipeline, event: Any, state: str = "spooled") -> tuple[int | Dataset, Received | None]:
    """The status to answer a C-STORE ``event`` with, and the object noted in the ledger (None
    when nothing was kept). ``state="importing"``: this process processes it itself (claimed)."""
    req = event.request
    calling = str(event.assoc.requestor.ae_title).strip()
    peer = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
    problem = store_problem(
        {"Affected SOP Instance UID": req.AffectedSOPInstanceUID,
         "Affected SOP Class": req.AffectedSOPClassUID},
        req.DataSet.getvalue() if req.DataSet is not None else b"",
        str(event.context.transfer_syntax),
    )
    if problem:
        log.warning("C-STORE from %s (%s) refused (0xC000, nothing kept): %s", calling, peer, problem)
        return failure(STATUS_CANNOT_UNDERSTAND, problem), None
    sop_uid = str(req.AffectedSOPInstanceUID)
    try:
        data = event.encoded_dataset()
    except Exception as exc:
        log.error("C-STORE of %s from %s: cannot encode the received dataset (%s); answered 0xC000",
                  sop_uid, calling, exc)
        return failure(STATUS_CANNOT_UNDERSTAND, "the received dataset cannot be encoded"), None
    try:
        item = pipeline.receive(
            data, sop_instance_uid=sop_uid, sop_class_uid=str(req.AffectedSOPClassUID),
            calling_ae_title=calling, state=state,
        )
    except OSError as exc:
        log.error("C-STORE of %s from %s: cannot store it in %s: %s; answered 0xA700 Out of Resources "
                  "(nothing kept, the sender may retry)",
                  sop_uid, calling, pipeline.spool_dir, exc.strerror or exc)
        return STATUS_OUT_OF_RESOURCES, None
    # -v shows one line per object: the processing's "stored ... outcome=" line (this one at -vv)
    log.debug("received %s from %s (%d bytes) as %s", sop_uid, calling, len(data), item.name)
    return STATUS_SUCCESS, item


__all__ = ["STATUS_CANNOT_UNDERSTAND", "STATUS_OUT_OF_RESOURCES", "STATUS_SUCCESS", "failure", "take_in"]
