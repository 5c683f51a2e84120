"""The one path every object takes, received over the network or imported from a folder.

1. :meth:`Pipeline.receive` -- the bytes (DICOM file format, with file meta) are written to
   a temporary file in ``<data_dir>/spool/``, fsync'ed, renamed into place, the directory
   fsync'ed, and the object noted in the catalog's ``received`` ledger. Only then may the
   listener answer Success. Any ``OSError`` leaves nothing half-written and propagates
   (the listener answers 0xA700 Out of Resources).
2. :meth:`Pipeline.process` -- extraction (``dosereg.extract.extract_bytes``), then either
   the catalog (``objects``/``studies``, file moved to ``objects/<sha[:2]>/<sha>.dcm``) or
   the quarantine (``quarantine/<name>`` plus ``<name>.reason.txt``). Catalog first, file
   placement second, both idempotent: a crash anywhere re-processes the spooled file at
   the next start (:meth:`Pipeline.recover`) and ends in the same state.
   :meth:`Pipeline.process_safely` ends every object: a failure of the environment (disk
   full, catalog busy, I/O error: :func:`is_transient`) raises :class:`TransientError` for
   the caller to retry as it is; any other exception, extraction's included, is the
   object's own: it is quarantined with code ``processing_error`` and the exception named.

Every file and folder written here is owner-only (0600/0700, :mod:`dosereg.conf.fsutil`):
they hold patient data.

Test hook: when the environment variable ``DOSEREG_FAULT_WRITE_FILE`` names a path that
exists, spool writes fail half-way with ENOSPC (a full disk, without needing one).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dosereg.conf.config import Config
from dosereg.conf.fsutil import fsync_dir, private_dir, private_file, utc_now
from dosereg.extract import ExtractLimits, StudyRecord, extract_bytes

from .catalog import Catalog, CatalogBusyError
from .catalog_codec import StoredRecord
from .locking import drop_claim, hold_claim, is_claimed

log = logging.getLogger("dosereg.ingest")

FAULT_ENV = "DOSEREG_FAULT_WRITE_FILE"
#: A claimed spool file younger than this is left to its claimant (another ``import``);
#: an unclaimed one (its claimant died) is taken over at once.
LIVE_WRITER_S = 600.0
#: The error code of an object whose processing raised (not an extraction verdict).
PROCESSING_ERROR = "processing_error"
_MAX_EXC_TEXT = 300  # characters of an exception's text kept in a quarantine reason


@dataclass(frozen=True)
class Received:
    """An object safely in the spool and noted in the catalog."""

    id: int
    name: str
    path: Path
    sha256: str
    received_at: str
    source: str
    sop_instance_uid: str | None = None
    #: the sender's AE title (None for an import): named in log lines and quarantine reasons
    calling_ae_title: str | None = None


@dataclass(frozen=True)
class Spooled:
    """An object's bytes durable in the spool, not noted in the catalog yet (:meth:`Pipeline.note`)."""

    name: str
    path: Path
    sha256: str
    received_at: str


def content_sha256(data: bytes) -> str:
    """SHA-256 of the encoded dataset, without the preamble and file meta information.

    The file meta differs between senders (Implementation Class UID, Source AE title) for
    the same object; what identifies identical content is the dataset itself.
    """
    if len(data) >= 144 and data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00":
        # (0002,0000) File Meta Information Group Length, explicit VR little endian, UL
        if data[136:138] == b"UL":
            group_length = int.from_bytes(data[140:144], "little")
            start = 144 + group_length
            if start <= len(data):
                return hashlib.sha256(memoryview(data)[start:]).hexdigest()
    return hashlib.sha256(data).hexdigest()


def dataset_sha256(data: bytes) -> str | None:
    """SHA-256 of the dataset re-encoded in explicit VR little endian: the same for one object
    whatever transfer syntax it came in (None when it cannot be read). Costs a full parse: used
    only to tell whether a quarantined object is already kept."""
    from io import BytesIO

    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        buf = BytesIO()
        ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=False)
    except Exception:  # an unreadable object has no canonical form; its bytes' hash still dedupes it
        return None
    return hashlib.sha256(buf.getvalue()).hexdigest()


# -- failures: the environment's (retry) or the object's (quarantine) -------------------------
_TRANSIENT_SQLITE = ("locked", "busy", "disk i/o error", "database or disk is full", "unable to open database file")


class TransientError(Exception):
    """Processing failed for a reason outside the object (disk full, catalog busy): retry it later.

    ``cause`` is the original exception; the object is still in the spool, untouched.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


def is_transient(exc: BaseException) -> bool:
    """A failure of the environment rather than of the object: worth retrying unchanged.

    Disk full (ENOSPC, EDQUOT), I/O errors and every other ``OSError`` (once the bytes are
    read, the object itself no longer touches the file system), and SQLite's "database is
    locked"/"busy", "disk I/O error", "database or disk is full". Everything else (a
    ``ValueError`` from a record, a bug met by a strange object) would fail again the same
    way, so retrying it would keep the object in the spool for ever.
    """
    if isinstance(exc, (TransientError, CatalogBusyError, OSError)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(s in text for s in _TRANSIENT_SQLITE)
    return False


def describe(exc: BaseException) -> str:
    """``Type: text`` of an exception, its text bounded and with ``errno`` names spelled out."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        text = f"[{errno.errorcode[exc.errno]}] {exc.strerror or text}"
    if len(text) > _MAX_EXC_TEXT:
        text = text[:_MAX_EXC_TEXT] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_REMOTE_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in another process (an import's worker),
    attached to that exception as its ``__cause__`` where it is handled."""


def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback (``extract/sr.py:120 in read_item``): no data, just code.

    For an exception raised in a worker process, the frame is read from the worker's
    traceback (which ``concurrent.futures``, or the import, attaches as the cause).
    """
    cause = exc.__cause__
    remote = _REMOTE_FRAME.findall(str(cause)) if cause is not None else []
    if remote and (isinstance(cause, RemoteTraceback) or type(cause).__name__ == "_RemoteTraceback"):
        filename, lineno, name = remote[-1]
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames:
            return ""
        filename, lineno, name = frames[-1].filename, str(frames[-1].lineno), frames[-1].name
    path = Path(filename)
    return f" (at {path.parent.name}/{path.name}:{lineno} in {name})"


# -- reason files --------------------------------------------------------------------------
_PLAIN = re.compile(r"[\x21\x23-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def quote_value(value: str) -> str:
    """A value for a ``key: value`` line that no value can forge another line with.

    Printable ASCII without surrounding spaces is written as it is; anything else (a line
    break, a control character, non-ASCII, a leading quote) as a JSON string literal
    (``"1.2\\nerror_code: ok"``), which ``json.loads`` reads back exactly.
    """
    if value == "" or _PLAIN.fullmatch(value):
        return value
    return json.dumps(value, ensure_ascii=True)


def reason_text(fields: list[tuple[str, str | None]]) -> str:
    """The ``<name>.reason.txt`` of a quarantined object: one ``key: value`` line per field."""
    return "".join(f"{key}: {quote_value(value or '')}\n" for key, value in fields)


_NAME = re.compile(r"(?:\.tmp-)?\d{8}T\d+-(\d+)-\d+-[0-9a-f]+\.dcm")


def _writer_alive(name: str) -> bool:
    """Whether the process whose pid is in a spool file's name still runs (True when unknown)."""
    m = _NAME.fullmatch(name)
    if m is None:
        return True
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def _sender(item: Received) -> str:
    """Who sent ``item``, for a log line or a reason file: the calling AE title, else "import"."""
    return quote_value(item.calling_ae_title) if item.calling_ae_title else "import"


def extract_limits(cfg: Config) -> ExtractLimits:
    """The configured bounds on reading one object (``[extract]``)."""
    return ExtractLimits(max_inflated_bytes=cfg.extract.max_inflated_bytes, max_nesting=cfg.extract.max_nesting)


class Pipeline:
    """Spool, process, quarantine: shared by the listener and the folder import."""

    def __init__(self, data_dir: Path, catalog: Catalog, fsync: bool = True,
                 limits: ExtractLimits | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.limits = limits or ExtractLimits()
        self.catalog = catalog
        self.fsync = fsync
        self.spool_dir = self.data_dir / "spool"
        self.objects_dir = self.data_dir / "objects"
        self.quarantine_dir = self.data_dir / "quarantine"
        for d in (self.spool_dir, self.objects_dir, self.quarantine_dir):
            private_dir(d)
        self._fault_file = os.environ.get(FAULT_ENV) or None
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._claims: dict[str, int] = {}  # spool file name -> fd holding this process's claim

    # -- 1. receive ---------------------------------------------------------------------
    def _name(self, sha256: str, received_at: str) -> str:
        with self._counter_lock:
            self._counter += 1
            n = self._counter
        stamp = received_at.replace("-", "").replace(":", "").replace(".", "")[:-1]  # 20261125T195000123456
        return f"{stamp}-{os.getpid()}-{n:06d}-{sha256[:12]}.dcm"

    def _write_durable(self, directory: Path, name: str, data: bytes, claim: bool = False) -> Path:
        """tmp file (0600), write, fsync, rename, fsync dir; nothing left behind on failure.

        With ``claim`` the file stays open and locked by this process (see
        :mod:`dosereg.ingest.locking`) from before it has its final name: the caller owns the
        claim (:meth:`release`).
        """
        final = directory / name
        tmp = directory / f".tmp-{name}"
        fd = private_file(tmp)
        try:
            if claim:
                hold_claim(fd)
            self._write_all(fd, data)
            os.replace(tmp, final)
            if self.fsync:
                fsync_dir(directory)
        except BaseException:
            for p in (tmp, final):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            drop_claim(fd) if claim else os.close(fd)
            raise
        if claim:
            self._claims[name] = fd
        else:
            os.close(fd)
        return final

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        if self._fault_file and os.path.exists(self._fault_file):
            os.write(fd, view[: len(view) // 2])
            raise OSError(errno.ENOSPC, "No space left on device (injected by " + FAULT_ENV + ")")
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(fd)

    def receive(self, data: bytes, *, source: str | None = None, sop_instance_uid: str | None = None,
                sop_class_uid: str | None = None, calling_ae_title: str | None = None,
                state: str = "spooled", sha256: str | None = None) -> Received:
        """Make ``data`` durable in the spool and note it; raises OSError (nothing kept) on failure.

        ``state="importing"``: this process processes the object itself and claims it until
        :meth:`release` (or its death: then the next run takes it over at once). ``sha256``:
        :func:`content_sha256` of ``data``, when the caller has it already. The two steps
        are :meth:`spool` and :meth:`note`.
        """
        spooled = self.spool(data, sha256=sha256, claim=state == "importing")
        return self.note(spooled, source=source, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid,
                         calling_ae_title=calling_ae_title, state=state)

    def spool(self, data: bytes, *, sha256: str | None = None, claim: bool = False) -> Spooled:
        """Step 1 of :meth:`receive`: ``data`` durable in the spool (claimed by this process with
        ``claim``), not yet noted. Safe to call from several threads at once (an import writes
        several objects at a time); OSError when nothing could be kept."""
        sha = sha256 or content_sha256(data)
        received_at = utc_now()
        name = self._name(sha, received_at)
        path = self._write_durable(self.spool_dir, name, data, claim=claim)
        return Spooled(name, path, sha, received_at)

    def note(self, spooled: Spooled, *, source: str | None = None, sop_instance_uid: str | None = None,
             sop_class_uid: str | None = None, calling_ae_title: str | None = None,
             state: str = "spooled") -> Received:
        """Step 2 of :meth:`receive`: the ledger row of a spooled object. When it cannot be written
        the file is removed again (nothing kept) and OSError raised."""
        name, path, sha = spooled.name, spooled.path, spooled.sha256
        try:
            rid = self.catalog.record_received(
                name=name, sha256=sha, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid,
                calling_ae_title=calling_ae_title, source=source or name, received_at=spooled.received_at,
                state=state,
            )
        except (sqlite3.Error, OSError) as exc:
            self.discard(spooled)
            if isinstance(exc, OSError):
                raise
            raise OSError(errno.EIO, f"catalog write failed: {exc}") from exc
        return Received(rid, name, path, sha, spooled.received_at, source or name, sop_instance_uid,
                        calling_ae_title)

    def discard(self, spooled: Spooled) -> None:
        """Remove a spooled object that was never noted (and give up its claim)."""
        try:
            os.unlink(spooled.path)
            if self.fsync:
                fsync_dir(self.spool_dir)
        except OSError:
            pass
        self._release_name(spooled.name)

    def release(self, item: Received) -> None:
        """Give up this process's claim on ``item`` (processed, or left for the next run)."""
        self._release_name(item.name)

    def _release_name(self, name: str) -> None:
        fd = self._claims.pop(name, None)
        if fd is not None:
            drop_claim(fd)

    def close(self) -> None:
        """Give up every claim still held (what is left in the spool is taken over by the next run)."""
        for name in list(self._claims):
            self._release_name(name)

    # -- 2. process ---------------------------------------------------------------------
    def extract(self, item: Received) -> StudyRecord:
        data = item.path.read_bytes()
        return extract_bytes(data, source=item.source, received_at=item.received_at, limits=self.limits)

    @staticmethod
    def object_relpath(sha256: str) -> str:
        """Where a usable object's bytes are kept, relative to the data directory (``objects.raw_path``)."""
        return f"objects/{sha256[:2]}/{sha256}.dcm"

    def object_path(self, sha256: str) -> Path:
        return self.data_dir / self.object_relpath(sha256)

    def _place(self, src: Path, dst: Path) -> None:
        """Move the spooled file to its final place, idempotently (same bytes: keep one)."""
        if os.path.exists(dst):
            src.unlink(missing_ok=True)
            return
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            if os.path.exists(dst):
                return  # another process placed it meanwhile
            if os.path.isdir(dst.parent) or not os.path.exists(src):
                raise
            private_dir(dst.parent)  # the first object of this folder
            os.replace(src, dst)
        # No fsync here: the bytes are already durable, and a rename lost in a power cut
        # leaves the file in the spool, where the next start processes it again (idempotent).

    def process_safely(self, item: Received, record: StudyRecord | None = None,
                       header_sop_uid: str | None = None, stored: StoredRecord | None = None) -> str:
        """:meth:`process` that always ends the object, or raises :class:`TransientError`.

        An exception that is not :func:`is_transient` is the object's: it is quarantined
        (``quarantined:processing_error``). A failure of the quarantine itself is transient
        (the object stays in the spool and the caller retries).
        """
        try:
            return self.process(item, record, header_sop_uid, stored)
        except Exception as exc:
            if is_transient(exc):
                raise TransientError(exc) from exc
            failure = exc
        try:
            return self._quarantine_failure(item, failure, "processing", header_sop_uid)
        except Exception as exc:
            raise TransientError(exc) from exc

    def process(self, item: Received, record: StudyRecord | None = None,
                header_sop_uid: str | None = None, stored: StoredRecord | None = None) -> str:
        """Extract (unless ``record`` is given, with its ``stored`` form if known) and store: the outcome.

        ``new`` | ``replaced`` | ``duplicate`` for usable objects, ``quarantined:<code>`` for
        an unusable one (``duplicate`` when the same bytes are already quarantined), ``done
        elsewhere`` | ``lost`` when the spooled file is gone. An exception raised by
        extraction is the object's: quarantined as ``processing_error``.
        """
        if record is None:
            try:
                data = item.path.read_bytes()
            except FileNotFoundError:
                return self._gone(item)
            try:
                record = extract_bytes(data, source=item.source, received_at=item.received_at, limits=self.limits)
            except Exception as exc:  # extraction must not raise; when it does, this object made it
                return self._quarantine_failure(item, exc, "extraction", header_sop_uid)
        if record.error is not None:
            sop_uid = self._sop_uid(item, record, header_sop_uid)
            return self._quarantine(item, record.error.code, record.error.message, sop_uid)
        final = self.object_path(item.sha256)
        outcome = self.catalog.add_object(
            record, raw_path=self.object_relpath(item.sha256), content_sha256=item.sha256,
            received_id=item.id, stored=stored,
        )
        self._place(item.path, final)
        uid = record.dose_objects[0].sop_instance_uid if record.dose_objects else None
        # the one line per object of -v (the listener's own "received" line is DEBUG)
        log.info("stored %s from %s: sop=%s study=%s outcome=%s", item.name, _sender(item),
                 quote_value(uid or ""), quote_value(record.study_instance_uid or ""), outcome)
        return outcome

    def _gone(self, item: Received) -> str:
        """The spooled file is not there: finished by another process, or lost."""
        if self.catalog.received_state(item.id) == "done":
            return "done elsewhere"  # another process (an import) finished it meanwhile
        if self.catalog.mark_lost(item.id):
            log.warning("spooled object %s is no longer in %s; marked lost", item.name, self.spool_dir)
            return "lost"
        return "done elsewhere"

    @staticmethod
    def _sop_uid(item: Received, record: StudyRecord | None, header_sop_uid: str | None) -> str | None:
        sop_uid = item.sop_instance_uid or header_sop_uid
        if sop_uid is None and record is not None and record.dose_objects:
            sop_uid = record.dose_objects[0].sop_instance_uid
        return sop_uid

    def quarantine_failure(self, item: Received, exc: BaseException, stage: str) -> str:
        """Quarantine ``item`` because ``stage`` raised ``exc`` (e.g. in a worker process).

        Raises :class:`TransientError` when the quarantine itself cannot be written.
        """
        try:
            return self._quarantine_failure(item, exc, stage, None)
        except Exception as failure:
            raise TransientError(failure) from failure

    def _quarantine_failure(self, item: Received, exc: BaseException, stage: str,
                            header_sop_uid: str | None) -> str:
        """Quarantine an object whose ``stage`` raised: the reason names the exception, not the data."""
        message = f"{stage} raised {describe(exc)}{_where(exc)}"
        shown = f"{stage} raised {type(exc).__name__}{_where(exc)}"  # its text may quote data: not logged
        log.debug("processing %s: %s raised", item.name, stage, exc_info=exc)
        return self._quarantine(item, PROCESSING_ERROR, message, self._sop_uid(item, None, header_sop_uid), shown)

    def _same_quarantined(self, item: Received, sop_uid: str | None) -> str | None:
        """The quarantined file holding the same object as ``item`` in another encoding, if any.

        The bytes' hash already finds the same bytes; a PACS sending an object in implicit VR
        and an archive export of it in explicit VR differ byte for byte, so objects of the same
        SOP Instance UID are compared by :func:`dataset_sha256` (rare: only quarantined ones).
        """
        if not sop_uid:
            return None
        rows = self.catalog.quarantined_by_sop(sop_uid)
        if not rows:
            return None
        try:
            mine = dataset_sha256(item.path.read_bytes())
        except OSError:
            return None
        for row in rows:
            if row["sha256"] == item.sha256 or not row["path"]:
                continue
            try:
                theirs = dataset_sha256((self.data_dir / row["path"]).read_bytes())
            except OSError:
                continue
            if mine is not None and mine == theirs:
                return str(row["path"])
        return None

    def _quarantine(self, item: Received, code: str, message: str, sop_uid: str | None,
                    shown: str | None = None) -> str:
        """Catalog row, reason file, then the file itself; ``shown`` is what the log says instead of ``message``."""
        qpath = self.quarantine_dir / item.name
        same = self._same_quarantined(item, sop_uid)
        if same is not None:
            self.catalog.mark_processed(item.id, "duplicate")
            item.path.unlink(missing_ok=True)
            log.info("%s from %s: already quarantined as %s (the same object in another encoding)",
                     item.name, _sender(item), Path(same).name)
            return "duplicate"
        outcome = self.catalog.add_quarantined(
            sha256=item.sha256, name=item.name, sop_instance_uid=sop_uid, error_code=code, message=message,
            received_at=item.received_at, path=str(qpath.relative_to(self.data_dir)), received_id=item.id,
        )
        if outcome == "duplicate":
            kept = self.catalog.quarantine_path(item.sha256)
            if kept:
                qpath = self.data_dir / kept
        reason = qpath.with_name(qpath.name + ".reason.txt")
        if not reason.exists():
            text = reason_text([
                ("error_code", code), ("message", message), ("source", item.source),
                ("received_at", item.received_at), ("sop_instance_uid", sop_uid), ("sha256", item.sha256),
                ("calling_ae_title", item.calling_ae_title or "(import)"),  # the sender
            ])
            self._write_durable(self.quarantine_dir, reason.name, text.encode("ascii"))
        self._place(item.path, qpath)
        if outcome == "duplicate":
            log.info("%s: already quarantined (same bytes as %s)", item.name, qpath.name)
            return "duplicate"
        log.warning("quarantined %s: %s: %s (sender %s)", qpath.name, code, shown or quote_value(message),
                    _sender(item))
        return f"quarantined:{code}"

    # -- 3. recovery at start ------------------------------------------------------------
    def recover(self) -> list[Received]:
        """Everything spooled but not processed (e.g. after a crash), in received order.

        Run by the one process holding the data directory's lock (a starting listener, or an
        import when no listener runs). Leftover temporary files were never acknowledged and
        are removed; a spooled file the catalog does not know (its row lost in a power cut),
        or whose row says done (a move lost in a power cut), is noted again. Files a live
        ``import`` has claimed are left to it; those of an import that died are taken over.
        """
        now = time.time()
        self._remove_dead_temporaries(now)
        on_disk = sorted(p for p in self.spool_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        for p in on_disk:
            state = self.catalog.received_state_by_name(p.name)
            if state == "spooled":
                continue
            try:
                st = p.stat()
                if state in ("importing", None) and self._claim_live(p, st.st_mtime, now):
                    continue  # a live import's (or one between its rename and its ledger row)
                sha = content_sha256(p.read_bytes())
            except FileNotFoundError:
                continue
            if state == "importing":
                log.info("taking over %s from an import that is gone", p.name)
            received_at = datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.catalog.record_received(
                name=p.name, sha256=sha, sop_instance_uid=None, sop_class_uid=None, calling_ae_title=None,
                source=p.name, received_at=received_at,
            )
        return self.pending_items()

    def _claim_live(self, path: Path, mtime: float, now: float) -> bool:
        """A claimant still works on ``path`` (claims older than LIVE_WRITER_S are taken over anyway)."""
        return now - mtime <= LIVE_WRITER_S and (path.name in self._claims or is_claimed(path))

    def _remove_dead_temporaries(self, now: float) -> None:
        """Temporary files of a writer that died (or older than LIVE_WRITER_S): never acknowledged."""
        for tmp in self.spool_dir.glob(".tmp-*"):
            try:
                old = now - tmp.stat().st_mtime > LIVE_WRITER_S
                if old or not (tmp.name[5:] in self._claims or is_claimed(tmp) or _writer_alive(tmp.name)):
                    log.info("removing unfinished spool file %s (never acknowledged)", tmp.name)
                    tmp.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    def adopt_orphans(self) -> int:
        """``importing`` objects whose import died become ``spooled`` (the caller then processes them).

        Safe while objects arrive (only claims are looked at, never unknown spool files): the
        listener's processing process runs it every few seconds, so a killed ``import`` does
        not leave objects behind until the next restart.
        """
        now = time.time()
        adopted = 0
        for r in self.catalog.importing():
            path = self.spool_dir / r["name"]
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if self._claim_live(path, mtime, now):
                continue
            if self.catalog.adopt(r["id"]):
                adopted += 1
                log.info("taking over %s from an import that is gone", r["name"])
        return adopted

    def pending_items(self) -> list[Received]:
        """Received but not yet processed, in received order."""
        items: list[Received] = []
        for r in self.catalog.pending():
            path = self.spool_dir / r["name"]
            if not path.exists():
                if self.catalog.mark_lost(r["id"]):
                    log.warning("spooled object %s is no longer in %s; marked lost", r["name"], self.spool_dir)
                continue
            items.append(Received(r["id"], r["name"], path, r["sha256"], r["received_at"],
                                  r["source"] or r["name"], r["sop_instance_uid"], r.get("calling_ae_title")))
        return items
