"""``dosereg import PATH...``: files and folders (recursive) through the listener's own path.

Each file is read, hashed (bytes already kept -> "already known", nothing written) and
taken into the spool exactly like a received object (:meth:`Pipeline.receive`) by a few
threads at once (each waits for its fsync: the file system commits them together), parsed
in a process pool (all cores; the workers also serialise and compress the record) and
stored by this process alone (:meth:`Pipeline.process`, the single SQLite writer). Results
are applied in file order, so a re-run or a second import of the same folder is
deterministic and changes nothing.

The objects it takes in are claimed (ledger state ``importing``, :mod:`dosereg.ingest.locking`)
until processed: when an import is killed, the next run (or a running listener, within
seconds) takes them over at once. Transient failures (disk full, catalog busy) are retried
for a few seconds; an object whose processing raises otherwise is quarantined.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dosereg.conf.config import Config
from dosereg.extract import ExtractLimits, StudyRecord, extract_bytes

from .catalog import Catalog, catalog_path
from .catalog_codec import StoredRecord, stored_record
from .classes import ACCEPTED_SOP_CLASSES, meta_sop_class
from .locking import DataDirLock
from .pipeline import (
    Pipeline,
    Received,
    RemoteTraceback,
    Spooled,
    TransientError,
    content_sha256,
    describe,
    extract_limits,
)

log = logging.getLogger("dosereg.ingest.import")

_POOL_MIN_FILES = 16  # below this, parsing in-process is quicker than starting workers
# Objects per task of the pool: each task costs two messages between processes (about half a
# millisecond of CPU on both sides), more than reading a small object does.
CHUNK = 4
# Files taken into the spool at once: each thread spends most of its time waiting for its
# fsync, which the file system commits together with the others' (one at a time, a disk
# that takes 4 ms per fsync would cap an import at 250 objects/s, two per object at 125).
TAKE_IN_THREADS = 8
IMPORT_RETRY_S = (0.1, 0.2, 0.4, 0.8, 1.6)  # back-off of an object's transient failures (3.1 s in all)


@dataclass
class ImportSummary:
    imported: int = 0
    known: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    #: DICOM files of a SOP class the listener would refuse at negotiation (e.g. CT images
    #: in an archive export): not taken in, like at the listener.
    skipped: int = 0
    #: files found while walking a folder that are not DICOM at all (README, JSON, DICOMDIR
    #: companions...): left where they are, counted, not copied into the quarantine.
    skipped_not_dicom: int = 0

    @property
    def ok(self) -> bool:
        """False only when a file could not be read or stored."""
        return self.failed == 0

    @property
    def total_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def line(self) -> str:
        q = f"quarantined {self.total_quarantined}"
        if self.quarantined:
            q += " (" + ", ".join(f"{code}: {n}" for code, n in sorted(self.quarantined.items())) + ")"
        line = f"imported {self.imported}, already known {self.known}, {q}, failed {self.failed}"
        if self.skipped:
            line += f", skipped {self.skipped} (SOP class not accepted by the listener)"
        if self.skipped_not_dicom:
            line += f", skipped {self.skipped_not_dicom} (not DICOM, found in a folder)"
        return line

    def count(self, outcome: str) -> None:
        if outcome in ("new", "replaced"):
            self.imported += 1
        elif outcome == "duplicate":
            self.known += 1
        elif outcome.startswith("quarantined:"):
            self.quarantined[outcome.split(":", 1)[1]] += 1
        else:  # pragma: no cover
            raise ValueError(outcome)

    def fail(self, message: str) -> None:
        self.failed += 1
        self.failures.append(message)
        log.error("%s", message)


def _walk(paths: list[Path], summary: ImportSummary) -> Iterator[tuple[Path, bool]]:
    """(file, named on the command line) for every file, folders walked recursively."""
    for p in paths:
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name, False
        elif p.is_file():
            yield p, True
        else:
            summary.fail(f"{p}: no such file or directory")


def _looks_like_dicom(head: bytes) -> bool:
    """A Part 10 file ('DICM' after the preamble), or a bare dataset starting with group 0002/0008."""
    if head[128:132] == b"DICM" or head[:4] == b"DICM":
        return True
    return head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _read_unless_refused(path: Path) -> bytes | None:
    """The file's bytes, or None when its file meta names a SOP class the listener refuses."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
        sop_class = meta_sop_class(head)
        if sop_class is not None and sop_class not in ACCEPTED_SOP_CLASSES:
            return None
        return head + fh.read()


def _header_sop_uid(data: bytes) -> str | None:
    """The SOP Instance UID of an object extraction refused, if its header can be read."""
    try:
        from io import BytesIO

        import pydicom

        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["SOPInstanceUID"])
        uid = ds.get("SOPInstanceUID")
        return str(uid) if uid else None
    except Exception:
        return None


#: What a worker makes of one spooled file: its record, the SOP Instance UID of a refused
#: object (from its header), and the stored form of a usable record.
Extracted = tuple[StudyRecord, str | None, StoredRecord | None]


def extract_spooled(path: str, source: str, received_at: str, limits: ExtractLimits) -> Extracted:
    """Parse one spooled file (runs in a worker process), and serialise what the catalog keeps."""
    data = Path(path).read_bytes()
    record = extract_bytes(data, source=source, received_at=received_at, limits=limits)
    if record.error is not None:
        return record, _header_sop_uid(data), None
    return record, None, stored_record(record)


@dataclass(frozen=True)
class _Raised:
    """An exception extraction raised in a worker, with that worker's traceback (as text)."""

    exc: BaseException
    traceback: str

    def here(self) -> BaseException:
        self.exc.__cause__ = RemoteTraceback(self.traceback)
        return self.exc


def extract_chunk(tasks: list[tuple[str, str, str, ExtractLimits]]) -> list[Extracted | _Raised]:
    """:func:`extract_spooled` of each task (runs in a worker process); an exception is the
    object's own result, so that one object never costs the others theirs."""
    out: list[Extracted | _Raised] = []
    for task in tasks:
        try:
            out.append(extract_spooled(*task))
        except Exception as exc:
            out.append(_Raised(exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
    return out


def _ready() -> None:
    """A task that does nothing: makes the pool start its workers."""


@dataclass(frozen=True)
class _NotTaken:
    """A file accounted for without being processed: ``known``, ``skipped``, ``not_dicom``, or ``failed``."""

    what: str
    message: str = ""


def import_paths(cfg: Config, paths: list[Path], jobs: int | None = None,
                 progress: bool = False) -> ImportSummary:
    """Take in every file of ``paths`` (folders walked recursively) and store what it holds,
    parsing in ``jobs`` worker processes (default: all cores) and applying results in file order."""
    summary = ImportSummary()
    files = list(_walk([Path(p) for p in paths], summary))
    jobs = max(1, jobs or os.cpu_count() or 1)
    data_dir = cfg.data_dir.resolve()
    pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 and len(files) >= _POOL_MIN_FILES else None
    catalog = Catalog(catalog_path(data_dir))
    pipeline = Pipeline(data_dir, catalog, limits=extract_limits(cfg))
    bar = None
    redirect = contextlib.ExitStack()
    if progress:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # log lines go through tqdm.write while the bar shows: each is a whole line above the
        # bar (written to the console directly they broke it, and its redraw ate their start)
        redirect.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        bar = tqdm(total=len(files), unit="file", desc="import", leave=False)
    tick: Callable[[], object] = bar.update if bar is not None else _no_progress
    takers: ThreadPoolExecutor | None = None
    taking: deque[tuple[Path, Future[Spooled | _NotTaken]]] = deque()
    try:
        _recover_left_over(pipeline, data_dir, summary)
        if pool is not None:
            # The workers are forked now, before any thread of this process holds a claim
            # (a file descriptor a fork would copy into a worker: see locking.py).
            pool.submit(_ready).result()
        takers = ThreadPoolExecutor(TAKE_IN_THREADS, thread_name_prefix="dosereg-take-in")
        inflight: deque[tuple[list[Received], Future[list[Extracted | _Raised]] | None]] = deque()
        chunk: list[Received] = []
        limit = jobs * 3  # chunks in flight: every worker has the next one waiting
        todo = iter(files)
        while True:
            for path, named in todo:  # keep a few files being taken in ahead of the one applied next
                taking.append((path, takers.submit(_take_in, path, named, pipeline, catalog)))
                if len(taking) >= 2 * TAKE_IN_THREADS:
                    break
            if not taking:
                break
            path, taken = taking.popleft()
            item = _note(path, taken.result(), pipeline)
            if isinstance(item, _NotTaken):
                _not_taken(item, summary)
                tick()
                continue
            chunk.append(item)
            if len(chunk) >= CHUNK or pool is None:
                inflight.append((chunk, _submit(pool, chunk, pipeline.limits)))
                chunk = []
                _drain(inflight, limit, pipeline, summary, tick)
        if chunk:
            inflight.append((chunk, _submit(pool, chunk, pipeline.limits)))
        _drain(inflight, 0, pipeline, summary, tick)
    finally:
        if takers is not None:
            takers.shutdown(cancel_futures=True)  # waits for the files being written
            _discard_unnoted(taking, pipeline)
        if bar is not None:
            bar.close()
        redirect.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        pipeline.close()
        catalog.close()
    return summary


def _discard_unnoted(taking: deque[tuple[Path, Future[Spooled | _NotTaken]]], pipeline: Pipeline) -> None:
    """Files spooled ahead but never noted (the run stopped early): removed again. Nobody was
    told they were taken in, and their source files are still there for the next run."""
    for _path, fut in taking:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            taken = fut.result()
            if isinstance(taken, Spooled):
                pipeline.discard(taken)


def _no_progress() -> None:
    """Stands in for the progress bar's update when there is no bar."""


def _recover_left_over(pipeline: Pipeline, data_dir: Path, summary: ImportSummary) -> None:
    """Process the objects a crashed run left in the spool, but only when no listener holds
    the data directory (a running listener takes care of them itself)."""
    lock = DataDirLock(data_dir)
    if lock.try_acquire():
        try:
            for item in pipeline.recover():
                _finish(pipeline, item, None, summary)
        finally:
            lock.release()


def _take_in(path: Path, named: bool, pipeline: Pipeline, catalog: Catalog) -> Spooled | _NotTaken:
    """Read one file and make it durable in the spool like a received object, claimed for this
    import (runs in a take-in thread; the main thread notes it in the ledger, in file order).
    :class:`_NotTaken` when the file is accounted for without being processed: unreadable,
    not DICOM (found in a folder), a SOP class the listener refuses, bytes already known, or
    the spool cannot hold it."""
    try:
        data = _read_unless_refused(path)
    except OSError as exc:
        return _NotTaken("failed", f"{path}: cannot read: {exc.strerror or exc}")
    if data is not None and not named and not _looks_like_dicom(data[:132]):
        log.info("%s: skipped, not a DICOM file", path)
        return _NotTaken("not_dicom")
    if data is None:
        log.info("%s: skipped, its SOP class is not one the listener accepts", path)
        return _NotTaken("skipped")
    sha = content_sha256(data)
    if catalog.known_sha256(sha):
        return _NotTaken("known")
    try:
        return pipeline.spool(data, sha256=sha, claim=True)
    except OSError as exc:
        return _cannot_store(path, pipeline, exc)


def _cannot_store(path: Path, pipeline: Pipeline, exc: OSError) -> _NotTaken:
    return _NotTaken("failed", f"{path}: cannot store it in {pipeline.spool_dir}: {exc.strerror or exc}")


def _note(path: Path, taken: Spooled | _NotTaken, pipeline: Pipeline) -> Received | _NotTaken:
    """The ledger row of a file taken in (in file order: the ledger follows the walk)."""
    if isinstance(taken, _NotTaken):
        return taken
    try:
        return pipeline.note(taken, source=str(path), state="importing")
    except OSError as exc:
        return _cannot_store(path, pipeline, exc)


def _not_taken(item: _NotTaken, summary: ImportSummary) -> None:
    if item.what == "known":
        summary.known += 1
    elif item.what == "skipped":
        summary.skipped += 1
    elif item.what == "not_dicom":
        summary.skipped_not_dicom += 1
    else:
        summary.fail(item.message)


def _submit(pool: ProcessPoolExecutor | None, items: list[Received],
            limits: ExtractLimits) -> Future[list[Extracted | _Raised]] | None:
    if pool is None:
        return None
    return pool.submit(extract_chunk, [(str(i.path), i.source, i.received_at, limits) for i in items])


def _drain(inflight: deque[tuple[list[Received], Future[list[Extracted | _Raised]] | None]], n: int,
           pipeline: Pipeline, summary: ImportSummary, tick: Callable[[], object]) -> None:
    """Finish the oldest chunks in flight until at most ``n`` remain: results are applied in
    file order (deterministic re-runs) while the pool parses the next chunks."""
    while len(inflight) > n:
        items, fut = inflight.popleft()
        for item, result in zip(items, _worker_results(items, fut), strict=True):
            _finish(pipeline, item, result, summary)
            tick()


def _worker_results(items: list[Received], fut: Future[list[Extracted | _Raised]] | None,
                    ) -> list[Extracted | BaseException | None]:
    """What the worker made of each of ``items``: its extraction, or the exception extraction
    raised there (the object's doing); None when there is no worker result (no pool, or a
    worker died), so that :func:`_finish` parses it here."""
    if fut is None:
        return [None] * len(items)
    try:
        results = fut.result()
    except Exception as exc:  # a worker died (BrokenProcessPool), or a result could not be sent: parse here
        log.debug("worker failed on %s: %s", ", ".join(i.source for i in items), describe(exc))
        return [None] * len(items)
    return [r.here() if isinstance(r, _Raised) else r for r in results]


def _finish(pipeline: Pipeline, item: Received, result: Extracted | BaseException | None,
            summary: ImportSummary) -> None:
    """Process one object taken in (``result``: its worker's extraction or exception, if any)."""
    if result is None:
        result = _extract_here(item, pipeline.limits)
    try:
        if isinstance(result, BaseException):
            outcome = _retrying(lambda: pipeline.quarantine_failure(item, result, "extraction"), item)
        else:
            record, header_uid, stored = result if result is not None else (None, None, None)
            outcome = _process_retrying(pipeline, item, record, header_uid, stored)
    except TransientError as exc:
        summary.fail(f"{item.source}: cannot store it: {exc} (kept in {pipeline.spool_dir / item.name}; "
                     "the next `dosereg listen` or `dosereg import` processes it)")
        return
    finally:
        pipeline.release(item)  # processed, or left for the next run (which may take it at once)
    if outcome == "done elsewhere":
        summary.known += 1
    elif outcome == "lost":
        summary.fail(f"{item.source}: its spool file {pipeline.spool_dir / item.name} disappeared")
    else:
        summary.count(outcome)


def _extract_here(item: Received, limits: ExtractLimits) -> Extracted | BaseException | None:
    """Extraction in this process: the exception it raised (quarantined), None if the file is unreadable."""
    try:
        data = item.path.read_bytes()
    except OSError:
        return None  # the pipeline reads it again, and retries or reports
    try:
        record = extract_bytes(data, source=item.source, received_at=item.received_at, limits=limits)
    except Exception as exc:
        return exc
    return record, (_header_sop_uid(data) if record.error is not None else None), None


def _process_retrying(pipeline: Pipeline, item: Received, record: StudyRecord | None,
                      header_uid: str | None, stored: StoredRecord | None = None) -> str:
    """:meth:`Pipeline.process_safely`, retried briefly on transient failures (disk full, catalog busy).

    A retry extracts again from the spooled file (it is the truth).
    """
    first = [(record, stored)]

    def attempt() -> str:
        given, form = first.pop() if first else (None, None)
        return pipeline.process_safely(item, given, header_sop_uid=header_uid, stored=form)

    return _retrying(attempt, item)


def _retrying(attempt: Callable[[], str], item: Received) -> str:
    """``attempt()`` until it does not raise :class:`TransientError`, a few seconds at most.

    An import is a command that ends: after these few retries the object stays in the spool
    and the run reports it failed.
    """
    for delay in (*IMPORT_RETRY_S, None):
        try:
            return attempt()
        except TransientError as exc:
            if delay is None:
                raise
            log.warning("%s: %s; retrying in %.1f s", item.source, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
