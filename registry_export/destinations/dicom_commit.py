"""Storage Commitment Push Model (PS3.4 Annex J) as the SCU: the N-ACTION request and the
N-EVENT-REPORTs that answer it.

The gateway answers an N-ACTION (action type 1, Request Storage Commitment) naming the
stored instances under one Transaction UID with an N-EVENT-REPORT naming the same
Transaction UID: event type 1 when every instance is committed (Referenced SOP Sequence),
2 when some failed (Failed SOP Sequence, each with its Failure Reason). The report may come
on the same association (received here, while the association is held open for
``commitment_timeout_s``) or later; :func:`commitment_result` reads a report whatever
association brought it, so a listener that receives one later can complete the delivery.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance (PS3.4 J.3.5)
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_COMMITTED, EVENT_FAILURES = 1, 2  # N-EVENT-REPORT Event Type IDs

#: PS3.4 Table J.3-2 Failure Reason values, for the failure's message
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0112: "no such object instance", 0x0213: "resource limitation",
    0x0122: "referenced SOP Class not supported", 0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


@dataclass(frozen=True)
class CommitmentResult:
    """What one N-EVENT-REPORT says: the Transaction UID, the committed SOP Instance UIDs and the
    failed ones with their Failure Reason."""

    transaction_uid: str
    committed: frozenset[str]
    failed: tuple[tuple[str, int | None], ...]


def commitment_request(instances: Iterable[tuple[str, str]]) -> tuple[str, Dataset]:
    """(Transaction UID, the N-ACTION's Action Information) for (SOP Class UID, SOP Instance UID) pairs."""
    transaction = generate_uid(prefix=None)  # 2.25.<UUID>: unique without a registered root
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for class_uid, instance_uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = class_uid
        item.ReferencedSOPInstanceUID = instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return transaction, ds


def commitment_result(event_information: Dataset) -> CommitmentResult | None:
    """Read a Storage Commitment N-EVENT-REPORT's Event Information (``None`` without a Transaction UID)."""
    transaction = str(event_information.get("TransactionUID", "") or "")
    if not transaction:
        return None
    committed = frozenset(str(i.get("ReferencedSOPInstanceUID", "")) for i in
                          event_information.get("ReferencedSOPSequence") or () if i.get("ReferencedSOPInstanceUID"))
    failed: list[tuple[str, int | None]] = []
    for item in event_information.get("FailedSOPSequence") or ():
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if uid:
            reason = item.get("FailureReason")
            failed.append((uid, int(reason) if reason is not None else None))
    return CommitmentResult(transaction, committed, tuple(failed))


class ReportInbox:
    """N-EVENT-REPORTs received on an association (pynetdicom calls :meth:`handle` on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._results: list[CommitmentResult] = []
        self._commands_sent = 0  # complete DIMSE commands we sent on the socket
        self._answered_by = 0  # the count at which every report received has been answered

    def handle(self, event: object) -> tuple[int, Dataset | None]:
        """The ``evt.EVT_N_EVENT_REPORT`` handler: keep the report, answer Success (0x0110 when unreadable)."""
        try:
            info = event.event_information  # type: ignore[attr-defined]
            result = commitment_result(info)
        except Exception:  # a report we cannot decode: refused, the delivery stays pending
            return 0x0110, None
        if result is None:
            return 0x0110, None
        with self._arrived:
            self._results.append(result)
            # nothing else is sent while the delivery waits: the next command is our answer
            self._answered_by = self._commands_sent + 1
            self._arrived.notify_all()
        return 0x0000, None

    def pdu_sent(self, event: object) -> None:
        """The ``evt.EVT_PDU_SENT`` handler: count the P-DATA PDUs that end a command, so the
        association is released only once the gateway has our answer to its report."""
        pdu = event.pdu  # type: ignore[attr-defined]
        items = getattr(pdu, "presentation_data_value_items", None) or ()
        ends = sum(1 for item in items if item.presentation_data_value and item.presentation_data_value[0] & 0x03 == 0x03)
        if ends:
            with self._arrived:
                self._commands_sent += ends
                self._arrived.notify_all()

    def wait_for(self, transaction_uid: str, timeout: float, answer_timeout: float) -> list[CommitmentResult]:
        """Every report received, once the one naming ``transaction_uid`` arrived (and was answered)
        or ``timeout`` passed."""
        with self._arrived:
            self._arrived.wait_for(lambda: any(r.transaction_uid == transaction_uid for r in self._results), timeout)
            self._arrived.wait_for(lambda: self._commands_sent >= self._answered_by, answer_timeout)
            return list(self._results)

    def received(self) -> list[CommitmentResult]:
        with self._lock:
            return list(self._results)


def failure_text(reason: int | None) -> str:
    if reason is None:
        return "storage commitment failed (no Failure Reason)"
    return f"storage commitment failed: 0x{reason:04X} {FAILURE_REASONS.get(reason, 'failure')}"


__all__ = [
    "EVENT_COMMITTED", "EVENT_FAILURES", "REQUEST_COMMITMENT", "STORAGE_COMMITMENT_INSTANCE",
    "STORAGE_COMMITMENT_PUSH_MODEL", "CommitmentResult", "ReportInbox", "commitment_request", "commitment_result",
    "failure_text",
]
