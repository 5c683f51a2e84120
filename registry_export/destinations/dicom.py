"""``kind = "dicom"``: C-STORE of the batch's dose objects to a registry gateway AE (docs/destinations.md).

Objects whose SOP class is not in ``sop_classes`` are not sent (``Delivery.skipped``): the
ACR DIR's gateway, DIR Link, takes dose SRs and refuses secondary captures. With
``objects = "deidentified"`` each object is rebuilt by :func:`.dicom_deid.deidentify_bytes`
with the batch's pseudonyms, and checked before it goes: the original must read as a whole
(a truncated or malformed object is refused), the copy must extract and must not hold the
original's Study or SOP Instance UID; an object that fails a check is a failure that is not
retried. With ``objects = "original"`` the file is
sent as stored, in its own transfer syntax when the gateway accepts it.

The receipt: every object answered Success (a warning status is not a receipt) and, with
``storage_commitment = true``, named as committed by an N-EVENT-REPORT received on the same
association within ``commitment_timeout_s`` of the N-ACTION. Without commitment the
receipt is ``sha256:<hex>`` of the sent SOP Instance UIDs (sorted, one per line); with it,
the Transaction UIDs of the reports that committed them. When no report came in time the
delivery is ``pending_commitment`` with the Transaction UID and the stored keys: a later
call given those keys as ``stored`` requests commitment again (a new N-ACTION, the objects
not sent again) and also takes a report for the earlier transaction that arrives on that
association.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt

from dosereg.conf.config import DestinationSettings
from dosereg.extract import extract_bytes

from .common import TlsError, attempts, client_tls_context, error_text, log
from .dicom_commit import (
    REQUEST_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    ReportInbox,
    commitment_request,
    failure_text,
)
from .dicom_deid import DeidentificationError, deidentify_bytes
from .model import Delivery, Failure, Parcel, ParcelObject

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class _Item:
    """One object ready to send: its key (the original SOP Instance UID), the UID it is sent
    under, the file to send and that file's transfer syntax."""

    key: str
    obj: ParcelObject
    sent_uid: str
    path: Path
    transfer_syntax: str


class _Refused(Exception):
    """This object cannot be sent to this destination: sending again cannot help."""


def _leaks(obj: ParcelObject, data: bytes) -> str | None:
    """Name an identifier of the original found in the de-identified bytes (a second line of defence)."""
    for what, value in (("SOP Instance UID", obj.sop_instance_uid), ("Study Instance UID", obj.study_uid)):
        if value and value.encode("ascii", "replace") in data:
            return what
    return None


class _Preparer:
    """Turns parcel objects into files to send, once per call (attempts reuse them)."""

    def __init__(self, dest: DestinationSettings, parcel: Parcel, tmp: Path) -> None:
        self.dest, self.parcel, self.tmp = dest, parcel, tmp
        self._n = 0

    def sent_uid(self, obj: ParcelObject) -> str:
        if self.dest.objects == "original":
            return obj.sop_instance_uid
        return self.parcel.pseudonymizer.uid(obj.sop_instance_uid) or obj.sop_instance_uid

    def prepare(self, obj: ParcelObject) -> _Item:
        if self.dest.objects == "original":
            return self._original(obj)
        return self._deidentified(obj)

    def _original(self, obj: ParcelObject) -> _Item:
        try:
            meta = read_file_meta_info(obj.path)
        except (OSError, InvalidDicomError) as exc:
            raise _Refused(f"cannot read the stored object: {error_text(exc)}") from None
        if str(meta.get("MediaStorageSOPInstanceUID", "")) != obj.sop_instance_uid:
            raise _Refused("the stored file is not this object (its SOP Instance UID differs)")
        return _Item(obj.sop_instance_uid, obj, obj.sop_instance_uid, obj.path, str(meta.TransferSyntaxUID))

    def _deidentified(self, obj: ParcelObject) -> _Item:
        try:
            raw = obj.path.read_bytes()
        except OSError as exc:
            raise _Refused(f"cannot read the stored object: {error_text(exc)}") from None
        try:  # the reader is strict: a truncated or malformed object is refused here
            data = deidentify_bytes(raw, self.parcel.pseudonymizer, self.parcel.date_precision)
        except DeidentificationError as exc:
            raise _Refused(f"not de-identified: {exc}") from None
        leak = _leaks(obj, data)
        if leak is not None:
            raise _Refused(f"not sent: the de-identified copy still holds the original {leak}")
        # what the registry reads: the copy must extract (its dose content is the original's by
        # construction -- numeric items are copied as encoded -- and the tests check it value by value)
        after = extract_bytes(data, source=obj.path.name)
        if after.error is not None:
            raise _Refused(f"not sent: the de-identified copy does not extract ({after.error.code})")
        self._n += 1
        path = self.tmp / f"{self._n:06d}.dcm"
        path.write_bytes(data)
        return _Item(obj.sop_instance_uid, obj, self.sent_uid(obj), path, str(ExplicitVRLittleEndian))


@contextmanager
def _chunked() -> Iterator[None]:
    """pynetdicom streams a file it is given by path (bounded memory, no re-encoding) only with
    this switch on; it is put back afterwards."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def _no_delay(event: Any) -> None:
    """Send each PDU at once: a C-STORE is several small writes, and Nagle's algorithm holding the
    next one until the peer's delayed ACK costs tens of milliseconds per object."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a test's socket pair): nothing to tune
            pass


def _status_failure(key: str, status: int) -> Failure:
    if 0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107, 0x0116):
        return Failure(key, f"C-STORE answered warning 0x{status:04X}, not Success", status, retryable=False)
    transient = 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0211, 0x0213)
    return Failure(key, f"C-STORE answered failure 0x{status:04X}", status, retryable=transient)


class _Sender:
    """One delivery: the attempts, what each object came to, the receipt."""

    def __init__(self, dest: DestinationSettings, parcel: Parcel, preparer: _Preparer) -> None:
        self.dest, self.parcel, self.preparer = dest, parcel, preparer
        self.items: dict[str, _Item] = {}
        self.acknowledged: set[str] = set()
        self.stored: set[str] = set()
        self.failures: dict[str, Failure] = {}
        self.sent_uids: dict[str, str] = {}  # sent SOP Instance UID -> key
        self.transactions: list[str] = []  # Transaction UIDs whose reports committed something
        self.pending_transaction: str | None = None
        self.last_error: str | None = None

    # -- the association ---------------------------------------------------------------------

    def _ae(self, objects: list[ParcelObject]) -> AE:
        ae = AE(ae_title=self.dest.calling_ae_title or "DOSEREG")
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, attr, self.dest.timeout_s)
        syntaxes: dict[str, set[str]] = {}
        for obj in objects:
            item = self.items.get(obj.sop_instance_uid)
            found = syntaxes.setdefault(obj.sop_class_uid, set(_UNCOMPRESSED))
            if item is not None:
                found.add(item.transfer_syntax)
        for sop_class, found in sorted(syntaxes.items()):
            for ts in sorted(found):  # one context per syntax: the gateway accepts or refuses each
                ae.add_requested_context(sop_class, ts)
        if self.dest.storage_commitment:
            ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        return ae

    def _associate(self, ae: AE, inbox: ReportInbox) -> Any:
        tls = None
        if self.dest.tls_certificate or self.dest.tls_ca_certificates:
            tls = (client_tls_context(self.dest), self.dest.host)
        return ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title, tls_args=tls,
                            evt_handlers=[(evt.EVT_N_EVENT_REPORT, inbox.handle), (evt.EVT_PDU_SENT, inbox.pdu_sent),
                                          (evt.EVT_CONN_OPEN, _no_delay)])

    def _where(self) -> str:
        return f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"

    # -- one attempt -------------------------------------------------------------------------

    def attempt(self, to_store: list[_Item], to_commit: list[ParcelObject]) -> bool:
        """Store ``to_store``, then (with commitment) ask for every stored object's commitment.
        Returns False when the report did not come in time (the delivery is left pending)."""
        inbox = ReportInbox()
        ae = self._ae([i.obj for i in to_store] + to_commit)
        try:
            assoc = self._associate(ae, inbox)
        except (TlsError, OSError) as exc:
            self._fail_all([i.key for i in to_store] + [o.sop_instance_uid for o in to_commit], str(exc))
            return True
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            self._fail_all([i.key for i in to_store] + [o.sop_instance_uid for o in to_commit],
                           f"association with {self._where()} {why}")
            return True
        try:
            with _chunked():
                self._store_all(assoc, to_store)
            if self.dest.storage_commitment:
                return self._commit(assoc, inbox)
            return True
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def _store_all(self, assoc: Any, items: list[_Item]) -> None:
        for n, item in enumerate(items, 1):
            if not assoc.is_established:
                self._fail_all([i.key for i in items[n - 1:]], f"association with {self._where()} ended")
                return
            try:
                status = assoc.send_c_store(self._payload(assoc, item), msg_id=n % 65536 or 1)
            except _Refused as exc:
                self.failures[item.key] = Failure(item.key, str(exc), retryable=False)
                continue
            except (ValueError, AttributeError, OSError) as exc:
                self.failures[item.key] = Failure(item.key, f"not sent: {error_text(exc)}", retryable=False)
                continue
            code = int(status.Status) if "Status" in status else None
            if code is None:
                self.failures[item.key] = Failure(item.key, f"no C-STORE answer from {self._where()}")
                self.last_error = self.failures[item.key].reason
            elif code == 0x0000:
                self.failures.pop(item.key, None)
                self.sent_uids[item.sent_uid] = item.key
                (self.stored if self.dest.storage_commitment else self.acknowledged).add(item.key)
            else:
                self.failures[item.key] = _status_failure(item.key, code)
                self.last_error = self.failures[item.key].reason

    def _payload(self, assoc: Any, item: _Item) -> Path | Dataset:
        """The file itself when the gateway took its transfer syntax (streamed as stored); else the
        object transcoded by pydicom to an uncompressed syntax the gateway took."""
        accepted = [cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == item.obj.sop_class_uid]
        if item.transfer_syntax in accepted:
            return item.path
        target = next((ts for ts in _UNCOMPRESSED if ts in accepted), None)
        if target is None:
            raise _Refused(f"not sent: {self._where()} accepted no transfer syntax for SOP class "
                           f"{item.obj.sop_class_uid} that this object can be sent in")
        ds = pydicom.dcmread(item.path)
        buf = io.BytesIO()
        ds.file_meta.TransferSyntaxUID = target
        pydicom.dcmwrite(buf, ds, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True,
                         force_encoding=True)
        return pydicom.dcmread(io.BytesIO(buf.getvalue()))

    def _commit(self, assoc: Any, inbox: ReportInbox) -> bool:
        keys = sorted(self.stored)
        if not keys or not assoc.is_established:
            return True
        by_key = {o.sop_instance_uid: o for o in self.parcel.objects}
        pairs = [(by_key[k].sop_class_uid, self.preparer.sent_uid(by_key[k])) for k in keys]
        for (_, uid), key in zip(pairs, keys, strict=True):
            self.sent_uids[uid] = key
        transaction, info = commitment_request(pairs)
        status, _ = assoc.send_n_action(info, REQUEST_COMMITMENT, STORAGE_COMMITMENT_PUSH_MODEL,
                                        STORAGE_COMMITMENT_INSTANCE)
        code = int(status.Status) if "Status" in status else None
        if code != 0x0000:
            reason = f"storage commitment request answered {'nothing' if code is None else f'0x{code:04X}'}"
            self._fail_all(keys, reason)  # still stored: asked again on the next attempt
            return True
        results = inbox.wait_for(transaction, self.dest.commitment_timeout_s, self.dest.timeout_s)
        self._apply(results)
        if not any(r.transaction_uid == transaction for r in results):
            self.pending_transaction = transaction
            log.info("destination %s: no commitment report within %.0f s (transaction %s)", self.dest.name,
                     self.dest.commitment_timeout_s, transaction)
            return False
        return True

    def _apply(self, results: list[Any]) -> None:
        for result in results:
            hit = False
            for uid in result.committed:
                key = self.sent_uids.get(uid)
                if key is not None and key in self.stored:
                    self.stored.discard(key)
                    self.acknowledged.add(key)
                    self.failures.pop(key, None)
                    hit = True
            for uid, reason in result.failed:
                key = self.sent_uids.get(uid)
                if key is not None and key in self.stored:
                    self.stored.discard(key)  # stored again on the next attempt
                    self.failures[key] = Failure(key, failure_text(reason), reason)
                    self.last_error = self.failures[key].reason
            if hit:
                self.transactions.append(result.transaction_uid)

    def _fail_all(self, keys: list[str], reason: str) -> None:
        for key in keys:
            self.failures[key] = Failure(key, reason)
        if keys:
            self.last_error = reason

    def receipt(self) -> str | None:
        if self.dest.storage_commitment:
            return " ".join(dict.fromkeys(self.transactions)) or None
        sent = sorted(uid for uid, key in self.sent_uids.items() if key in self.acknowledged)
        return "sha256:" + hashlib.sha256("\n".join(sent).encode("ascii")).hexdigest() if sent else None


def _partition(dest: DestinationSettings, parcel: Parcel,
               done: frozenset[str]) -> tuple[list[ParcelObject], list[tuple[str, str]]]:
    wanted, skipped, seen = [], [], set()
    for obj in parcel.objects:
        if obj.sop_instance_uid in seen or obj.sop_instance_uid in done:
            continue
        seen.add(obj.sop_instance_uid)
        if obj.sop_class_uid not in dest.sop_classes:
            skipped.append((obj.sop_instance_uid, f"SOP class {obj.sop_class_uid} is not in this destination's "
                                                  "sop_classes"))
        else:
            wanted.append(obj)
    return wanted, skipped


def deliver_dicom(dest: DestinationSettings, parcel: Parcel, done: frozenset[str],
                  stored: frozenset[str] = frozenset()) -> Delivery:
    """C-STORE the parcel's objects (and request their commitment); see the module docstring."""
    wanted, skipped = _partition(dest, parcel, done)
    with tempfile.TemporaryDirectory(prefix="dosereg-send-") as tmp:
        preparer = _Preparer(dest, parcel, Path(tmp))
        sender = _Sender(dest, parcel, preparer)
        if dest.storage_commitment:
            sender.stored = {o.sop_instance_uid for o in wanted if o.sop_instance_uid in stored}
        tried = 0
        for n in attempts(dest):
            to_store = _to_store(sender, preparer, wanted)
            to_commit = [o for o in wanted if o.sop_instance_uid in sender.stored]
            if not to_store and not to_commit:
                break
            tried = n
            if not sender.attempt(to_store, to_commit):
                break  # the report is late: pending, not retried now
            if all(o.sop_instance_uid in sender.acknowledged or not _retryable(sender, o) for o in wanted):
                break
    return _delivery(dest, parcel, sender, wanted, skipped, tried)


def _retryable(sender: _Sender, obj: ParcelObject) -> bool:
    failure = sender.failures.get(obj.sop_instance_uid)
    return failure is None or failure.retryable


def _to_store(sender: _Sender, preparer: _Preparer, wanted: list[ParcelObject]) -> list[_Item]:
    out = []
    for obj in wanted:
        key = obj.sop_instance_uid
        if key in sender.acknowledged or key in sender.stored or not _retryable(sender, obj):
            continue
        if key not in sender.items:
            try:
                sender.items[key] = preparer.prepare(obj)
            except _Refused as exc:
                sender.failures[key] = Failure(key, str(exc), retryable=False)
                sender.last_error = str(exc)
                continue
        out.append(sender.items[key])
    return out


def _delivery(dest: DestinationSettings, parcel: Parcel, sender: _Sender, wanted: list[ParcelObject],
              skipped: list[tuple[str, str]], tried: int) -> Delivery:
    outstanding = {o.sop_instance_uid for o in wanted} - sender.acknowledged
    failures = {k: f for k, f in sender.failures.items() if k in outstanding}
    if not outstanding:
        state = "acknowledged"
    elif sender.pending_transaction is not None and outstanding <= sender.stored and not failures:
        state = "pending_commitment"
    else:
        state = "failed"
    log.info("destination %s (dicom): batch %s %s: %d acknowledged, %d stored, %d failed, %d not for this "
             "destination", dest.name, parcel.batch_id, state, len(sender.acknowledged), len(sender.stored),
             len(failures), len(skipped))
    return Delivery(
        destination=dest.name, kind="dicom", state=state,  # type: ignore[arg-type]
        receipt=sender.receipt() if state == "acknowledged" else None,
        acknowledged=frozenset(sender.acknowledged), stored=frozenset(sender.stored & outstanding),
        skipped=tuple(skipped), failures=tuple(failures[k] for k in sorted(failures)),
        last_error=None if state == "acknowledged" else sender.last_error,
        transaction_uid=sender.pending_transaction if state == "pending_commitment" else None, attempts=tried,
    )


__all__ = ["deliver_dicom"]
