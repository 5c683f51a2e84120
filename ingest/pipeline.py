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

Test hook: when the environment variable ``DOSEREG_FAULT_WRITE_FILE`` names a path that
exists, spool writes fail half-way with ENOSPC (a full disk, without needing one).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dosereg.extract import StudyRecord, extract_bytes

from .catalog import Catalog, utc_now

log = logging.getLogger("dosereg.ingest")

FAULT_ENV = "DOSEREG_FAULT_WRITE_FILE"
#: A spool file younger than this may belong to a live writer (another ``import``).
LIVE_WRITER_S = 600.0


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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Pipeline:
    """Spool, process, quarantine: shared by the listener and the folder import."""

    def __init__(self, data_dir: Path, catalog: Catalog, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.catalog = catalog
        self.fsync = fsync
        self.spool_dir = self.data_dir / "spool"
        self.objects_dir = self.data_dir / "objects"
        self.quarantine_dir = self.data_dir / "quarantine"
        for d in (self.spool_dir, self.objects_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._fault_file = os.environ.get(FAULT_ENV) or None
        self._counter = 0
        self._counter_lock = threading.Lock()

    # -- 1. receive ---------------------------------------------------------------------
    def _name(self, sha256: str) -> str:
        with self._counter_lock:
            self._counter += 1
            n = self._counter
        stamp = utc_now().replace("-", "").replace(":", "").replace(".", "")[:-1]  # 20261125T195000123456
        return f"{stamp}-{os.getpid()}-{n:06d}-{sha256[:12]}.dcm"

    def _write_durable(self, directory: Path, name: str, data: bytes) -> Path:
        """tmp file, write, fsync, rename, fsync dir; nothing left behind on failure."""
        final = directory / name
        tmp = directory / f".tmp-{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            if self._fault_file and os.path.exists(self._fault_file):
                os.write(fd, view[: len(view) // 2])
                raise OSError(errno.ENOSPC, "No space left on device (injected by " + FAULT_ENV + ")")
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        try:
            os.replace(tmp, final)
            if self.fsync:
                _fsync_dir(directory)
        except BaseException:
            for p in (tmp, final):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise
        return final

    def receive(self, data: bytes, *, source: str | None = None, sop_instance_uid: str | None = None,
                sop_class_uid: str | None = None, calling_ae_title: str | None = None,
                state: str = "spooled") -> Received:
        """Make ``data`` durable in the spool and note it; raises OSError (nothing kept) on failure."""
        sha = content_sha256(data)
        received_at = utc_now()
        name = self._name(sha)
        path = self._write_durable(self.spool_dir, name, data)
        try:
            rid = self.catalog.record_received(
                name=name, sha256=sha, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid,
                calling_ae_title=calling_ae_title, source=source or name, received_at=received_at, state=state,
            )
        except (sqlite3.Error, OSError) as exc:
            try:
                os.unlink(path)
                if self.fsync:
                    _fsync_dir(self.spool_dir)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise
            raise OSError(errno.EIO, f"catalog write failed: {exc}") from exc
        return Received(rid, name, path, sha, received_at, source or name, sop_instance_uid)

    # -- 2. process ---------------------------------------------------------------------
    def extract(self, item: Received) -> StudyRecord:
        data = item.path.read_bytes()
        return extract_bytes(data, source=item.source, received_at=item.received_at)

    def object_path(self, sha256: str) -> Path:
        return self.objects_dir / sha256[:2] / f"{sha256}.dcm"

    def _place(self, src: Path, dst: Path) -> None:
        """Move the spooled file to its final place, idempotently (same bytes: keep one)."""
        if dst.exists():
            src.unlink(missing_ok=True)
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            if not dst.exists():
                raise
            return  # another process placed it meanwhile
        # No fsync here: the bytes are already durable, and a rename lost in a power cut
        # leaves the file in the spool, where the next start processes it again (idempotent).

    def process(self, item: Received, record: StudyRecord | None = None,
                header_sop_uid: str | None = None) -> str:
        """Extract (unless ``record`` is given) and store: returns the outcome.

        ``new`` | ``replaced`` | ``duplicate`` for usable objects, ``quarantined:<code>`` for
        an unusable one (``duplicate`` when the same bytes are already quarantined).
        """
        if record is None:
            try:
                record = self.extract(item)
            except FileNotFoundError:
                if self.catalog.received_state(item.id) == "done":
                    return "done elsewhere"  # another process (an import) finished it meanwhile
                raise
        if record.error is not None:
            return self._quarantine(item, record, header_sop_uid)
        final = self.object_path(item.sha256)
        outcome = self.catalog.add_object(
            record, raw_path=str(final.relative_to(self.data_dir)), content_sha256=item.sha256,
            received_id=item.id,
        )
        self._place(item.path, final)
        uid = record.dose_objects[0].sop_instance_uid if record.dose_objects else None
        log.info("processed %s: sop=%s study=%s outcome=%s", item.name, uid, record.study_instance_uid, outcome)
        return outcome

    def _quarantine(self, item: Received, record: StudyRecord, header_sop_uid: str | None) -> str:
        assert record.error is not None
        code, message = record.error.code, record.error.message
        sop_uid = item.sop_instance_uid or header_sop_uid
        if sop_uid is None and record.dose_objects:
            sop_uid = record.dose_objects[0].sop_instance_uid
        qpath = self.quarantine_dir / item.name
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
            text = (
                f"error_code: {code}\nmessage: {message}\nsource: {item.source}\n"
                f"received_at: {item.received_at}\nsop_instance_uid: {sop_uid or ''}\nsha256: {item.sha256}\n"
            )
            self._write_durable(self.quarantine_dir, reason.name, text.encode("utf-8"))
        self._place(item.path, qpath)
        if outcome == "duplicate":
            log.info("%s: already quarantined (same bytes as %s)", item.name, qpath.name)
            return "duplicate"
        log.warning("quarantined %s: %s: %s", qpath.name, code, message)
        return f"quarantined:{code}"

    # -- 3. recovery at start ------------------------------------------------------------
    def recover(self) -> list[Received]:
        """Everything spooled but not processed (e.g. after a crash), in received order.

        Run by the one process holding the data directory's lock (a starting listener, or an
        import when no listener runs). Leftover temporary files were never acknowledged and
        are removed; a spooled file the catalog does not know (its row lost in a power cut),
        or whose row says done (a move lost in a power cut), is noted again. Files another
        live ``import`` is working on (recent ``importing`` rows, recent temporary files) are
        left to it.
        """
        now = time.time()
        for tmp in self.spool_dir.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > LIVE_WRITER_S:
                    log.info("removing unfinished spool file %s (never acknowledged)", tmp.name)
                    tmp.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        on_disk = sorted(p for p in self.spool_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        for p in on_disk:
            state = self.catalog.received_state_by_name(p.name)
            if state == "spooled":
                continue
            try:
                st = p.stat()
                if state == "importing" and now - st.st_mtime <= LIVE_WRITER_S:
                    continue
                sha = content_sha256(p.read_bytes())
            except FileNotFoundError:
                continue
            received_at = datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.catalog.record_received(
                name=p.name, sha256=sha, sop_instance_uid=None, sop_class_uid=None, calling_ae_title=None,
                source=p.name, received_at=received_at,
            )
        return self.pending_items()

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
                                  r["source"] or r["name"], r["sop_instance_uid"]))
        return items
