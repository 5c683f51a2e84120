"""The listener's spool consumer: a separate process, so parsing never slows the associations.

The listener (parent) makes each object durable and notes it in the catalog's ledger,
then pokes this process through a pipe. This process processes every ledger row still
``spooled``, in received order (extraction, catalog, file placement or quarantine:
:meth:`Pipeline.process_safely`). Nothing stays in the spool for good:

* an object whose processing raises is quarantined with the exception named
  (``processing_error``), whatever raised it;
* a failure of the environment (disk full, catalog busy, I/O error) is retried while this
  process runs, with a back-off from 0.1 s doubling to 5 s. While it lasts, one object is
  tried at a time, in turn (an object whose own retries keep failing never holds up the
  others); as soon as one succeeds again, the rest follow at once;
* objects of an ``import`` that was killed are taken over within seconds (its claims);
* an object on which the process itself dies (a crash in a library, the kernel's OOM
  killer) or hangs (the parent's watchdog restarts a process busy on one object for over
  STUCK_AFTER_S) is quarantined after DEATHS_BEFORE_QUARANTINE such ends
  (``processing.current`` in the data directory says which object was being processed).

Messages on the pipe: ``"work"`` (something new) and ``("stop", drain_seconds)``. When
the parent dies the pipe closes and this process finishes the current object and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from dosereg.conf.fsutil import private_file
from dosereg.conf.logging import LoggingSettings, add_file, logging_setup
from dosereg.extract import ExtractLimits

from .catalog import Catalog, CatalogError, catalog_path
from .pipeline import Pipeline, Received, TransientError, describe, is_transient

log = logging.getLogger("dosereg.ingest.processor")

PROCESSOR_NICENESS = 10
CHECKPOINT_EVERY = 1000  # objects, during a long burst
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
ADOPT_EVERY_S = 5.0  # how often claims of killed imports are looked at
LOG_RETRY_EVERY = 60  # attempts: a lasting failure is logged again every so often, not at each retry
#: An object on which this many processing processes died (a crash, or stopped by the
#: watchdog) is quarantined instead of tried again: it would stop the spool for good.
DEATHS_BEFORE_QUARANTINE = 2
STUCK_AFTER_S = 300.0  # one object this long (extraction takes seconds at most): the process is restarted
WATCH_EVERY_S = 2.0
MARKER_NAME = "processing.current"


class ProcessingDied(Exception):
    """The processing process died (or hung and was restarted) while processing an object."""


class _Marker:
    """``<data_dir>/processing.current``: the object being processed and how often a process died on it.

    Written before and cleared after each attempt (no fsync: it has to survive the
    process, not the machine). A new process reading an object id there knows the previous
    one ended while processing it.
    """

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / MARKER_NAME
        self.deaths: dict[int, int] = {}
        try:
            rid, n = (int(v) for v in path.read_text(encoding="ascii").split())
        except (OSError, ValueError):
            pass
        else:
            if rid:
                self.deaths[rid] = n + 1
        self._fd = private_file(path, os.O_WRONLY | os.O_CREAT)
        self.end()

    def begin(self, received_id: int) -> None:
        self._write(f"{received_id} {self.deaths.get(received_id, 0)}")

    def end(self) -> None:
        self._write("0 0")

    def _write(self, text: str) -> None:
        try:
            os.pwrite(self._fd, text.ljust(40).encode("ascii"), 0)
        except OSError as exc:  # a full disk: the file keeps its size, so this rarely fails
            log.debug("cannot write %s: %s", MARKER_NAME, exc)


class _ParentGone(Exception):
    """The listener closed the pipe (it stopped or died)."""


@dataclass
class _Retry:
    """Back-off of one object whose processing failed for a transient reason."""

    delay: float = 0.0
    due: float = 0.0
    attempts: int = 0

    def failed(self, now: float, lag: float = 0.0) -> float:
        """Note a failure at ``now``: the next attempt is due after the doubled delay (+ ``lag``)."""
        self.delay = min(RETRY_MAX_S, max(RETRY_FIRST_S, self.delay * 2))
        self.due = now + self.delay + lag
        self.attempts += 1
        return self.delay


class Drainer:
    """Processes the spool until it is empty, retrying transient failures with back-off.

    ``gate`` (one back-off for the whole spool) keeps a full disk from costing an
    extraction per object every few seconds; ``waiting`` (one per object) keeps one
    object whose failure is its own from being retried at every turn.
    """

    def __init__(self, pipeline: Pipeline, catalog: Catalog, marker: _Marker | None = None,
                 busy: Any = None) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.marker = marker
        self.busy = busy  # shared with the parent's watchdog: when the current object began (0: idle)
        self.waiting: dict[int, _Retry] = {}
        self.gate = _Retry()
        self.last_failed = 0  # received id: the next sweep starts after it (turns)
        self.since_checkpoint = 0
        self.next_adopt = 0.0

    def sweep(self, should_stop: Callable[[], bool]) -> None:
        """One pass over the spooled objects that are due; never raises for a spool problem."""
        try:
            self._adopt()
            items = self.pipeline.pending_items()
        except Exception as exc:  # the catalog cannot even be read: back off
            self._transient_failure(None, exc)
            return
        if not items:
            self.waiting.clear()
            return
        if self.last_failed:
            i = next((k for k, it in enumerate(items) if it.id > self.last_failed), 0)
            items = items[i:] + items[:i]
        complete = True
        for item in items:
            now = time.monotonic()
            if now < self.gate.due or should_stop():
                complete = False
                break
            r = self.waiting.get(item.id)
            if r is None or r.due <= now:
                self._attempt(item)
        if complete:  # forget objects that left the spool some other way
            ids = {it.id for it in items}
            self.waiting = {k: v for k, v in self.waiting.items() if k in ids}

    def _process(self, item: Received) -> str:
        deaths = self.marker.deaths.get(item.id, 0) if self.marker is not None else 0
        if deaths >= DEATHS_BEFORE_QUARANTINE:
            log.error("%s: the processing process ended %d times while processing it; quarantining it",
                      item.name, deaths)
            died = ProcessingDied(f"the processing process died or hung (over {STUCK_AFTER_S:.0f} s) "
                                  f"{deaths} times while processing it")
            return self.pipeline.quarantine_failure(item, died, "processing")
        return self.pipeline.process_safely(item)

    def _adopt(self) -> None:
        now = time.monotonic()
        if now >= self.next_adopt:
            self.next_adopt = now + ADOPT_EVERY_S
            self.pipeline.adopt_orphans()

    def _attempt(self, item: Received) -> None:
        if self.marker is not None:
            self.marker.begin(item.id)
        if self.busy is not None:
            self.busy.value = time.time()
        try:
            self._process(item)
        except TransientError as exc:
            self._transient_failure(item, exc.cause)
            return
        except Exception as exc:  # pragma: no cover - process_safely raises only TransientError
            self._transient_failure(item, exc)
            return
        finally:
            if self.busy is not None:
                self.busy.value = 0.0
            if self.marker is not None:
                self.marker.end()
        was = self.waiting.pop(item.id, None)
        if was is not None or self.gate.attempts:
            log.info("processing works again (%s after %d attempt(s))", item.name,
                     was.attempts if was else self.gate.attempts)
        if was is not None:  # an object that failed now works: the cause is gone, retry all now
            for r in self.waiting.values():
                r.due = 0.0
        self.gate = _Retry()
        self.since_checkpoint += 1
        if self.since_checkpoint >= CHECKPOINT_EVERY:
            self.checkpoint()

    def _transient_failure(self, item: Received | None, exc: BaseException) -> None:
        now = time.monotonic()
        delay = self.gate.failed(now)
        attempts = self.gate.attempts
        if item is not None:
            self.last_failed = item.id
            retry = self.waiting.setdefault(item.id, _Retry())
            # A hair later than the gate: when the gate opens, the next object is tried first.
            retry.failed(now, lag=0.001)
            attempts = retry.attempts
        if attempts != 1 and attempts % LOG_RETRY_EVERY:
            log.debug("processing %s failed again: %s", item.name if item else "the spool", describe(exc))
            return
        what = item.name if item is not None else "the spool"
        log.error("processing %s failed (attempt %d): %s; it stays in the spool and is retried in %.1f s",
                  what, attempts, describe(exc), delay, exc_info=None if is_transient(exc) else exc)

    def seconds_to_next(self) -> float | None:
        """Until the next retry is due (None: nothing waits)."""
        dues = [r.due for r in self.waiting.values()]
        if self.gate.attempts:
            dues.append(self.gate.due)
        if not dues:
            return None
        return max(0.0, min(dues) - time.monotonic())

    def checkpoint(self) -> None:
        try:
            self.catalog.checkpoint()
        except Exception as exc:  # a checkpoint is an optimisation: the next one will do
            log.debug("checkpoint failed: %s", exc)
        self.since_checkpoint = 0


def _open_catalog(data_dir: Path, conn: Connection) -> Catalog:
    """The catalog, retried with back-off while it cannot be opened (a full disk at start)."""
    retry = _Retry()
    while True:
        try:
            return Catalog(catalog_path(data_dir), autocheckpoint=False)
        except (CatalogError, OSError) as exc:
            delay = retry.failed(time.monotonic())
            if retry.attempts == 1 or retry.attempts % LOG_RETRY_EVERY == 0:
                log.error("cannot open the catalog (attempt %d): %s; retrying in %.1f s", retry.attempts, exc, delay)
            if _poll(conn, delay) and _stop_requested(conn):
                raise _ParentGone from None


def _poll(conn: Connection, timeout: float) -> bool:
    try:
        return conn.poll(timeout)
    except (EOFError, OSError):
        raise _ParentGone from None


def _stop_requested(conn: Connection) -> bool:
    return _read(conn, None) is not None


def processor_main(data_dir: str, conn: Connection, log_level: int, busy: Any = None,
                   limits: ExtractLimits | None = None, log_file: LoggingSettings | None = None) -> None:
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if log_file is not None:  # the listener's [logging] file; the listener alone rotates it
        try:
            add_file(log_file, rotate=False)
        except OSError:  # pragma: no cover - the listener opened it a moment ago
            pass
    # The parent decides when to stop (after its in-flight stores); a signal to the whole
    # process group must not cut an object in half here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answering the network comes first: parsing takes the CPU the associations leave idle.
    try:
        os.nice(PROCESSOR_NICENESS)
    except OSError:  # pragma: no cover
        pass
    try:
        # WAL checkpoints (which fsync) run here when the spool is drained, not inside a commit
        # while an association thread may be waiting for the write lock.
        catalog = _open_catalog(Path(data_dir), conn)
    except _ParentGone:
        return
    try:
        pipeline = Pipeline(Path(data_dir), catalog, limits=limits)
        _run(Drainer(pipeline, catalog, _Marker(Path(data_dir)), busy), conn)
    except _ParentGone:  # the listener is gone
        return
    finally:
        _report_left(catalog)
        catalog.close()


def _run(drainer: Drainer, conn: Connection) -> None:
    stop_at: float | None = None

    def should_stop() -> bool:
        nonlocal stop_at
        if stop_at is None and _poll(conn, 0):
            stop_at = _read(conn, stop_at)
        return stop_at is not None and time.monotonic() > stop_at

    while True:
        drainer.sweep(should_stop)
        if stop_at is not None and (time.monotonic() > stop_at or drainer.seconds_to_next() is None):
            return
        if drainer.since_checkpoint and not _poll(conn, 0.05):
            drainer.checkpoint()  # nothing new for a moment: the spool is drained
        wait = drainer.seconds_to_next()
        if _poll(conn, 1.0 if wait is None else min(1.0, wait)):
            stop_at = _read(conn, stop_at)


def _report_left(catalog: Catalog) -> None:
    try:
        left = len(catalog.pending())
    except Exception:  # pragma: no cover - the catalog is unreadable; the next start will see
        return
    if left:
        log.warning("%d received object(s) left in the spool; they are processed at the next start", left)


def _read(conn: Connection, stop_at: float | None) -> float | None:
    """Drain the pipe; returns the stop deadline once asked to stop."""
    try:
        while conn.poll():
            msg: Any = conn.recv()
            if isinstance(msg, tuple) and msg and msg[0] == "stop":
                stop_at = time.monotonic() + float(msg[1])
    except (EOFError, OSError):
        raise _ParentGone from None
    return stop_at


class Processor:
    """Parent side: start, poke, stop; a watchdog restarts the process if it died or hangs."""

    def __init__(self, data_dir: Path, limits: ExtractLimits | None = None) -> None:
        self.data_dir = data_dir
        self.limits = limits
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        # When the child began its current object (time.time(); 0.0 while idle).
        self._busy: Any = self._ctx.Value("d", 0.0, lock=False)
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        parent, child = self._ctx.Pipe()
        level, log_file = logging_setup()
        self._busy.value = 0.0
        self._proc = self._ctx.Process(
            target=processor_main, args=(str(self.data_dir), child, level, self._busy, self.limits, log_file),
            name="dosereg-processor", daemon=False,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        if self._watchdog is None or not self._watchdog.is_alive():
            self._stopping.clear()
            self._watchdog = threading.Thread(target=self._watch, name="dosereg-processor-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        """Restart a processing process that died (nothing else would until the next store) or hangs."""
        while not self._stopping.wait(WATCH_EVERY_S):
            with self._lock:
                if self._proc is None or self._stopping.is_set():
                    continue
                if not self._proc.is_alive():
                    log.error("the processing process exited (%s); restarting it", self._proc.exitcode)
                    self._restart()
                    continue
                began = self._busy.value
                if began and time.time() - began > STUCK_AFTER_S:
                    log.error("the processing process has been on one object for over %.0f s; restarting it "
                              "(an object this happens to %d times is quarantined)", STUCK_AFTER_S,
                              DEATHS_BEFORE_QUARANTINE)
                    self._proc.kill()
                    self._proc.join(10)
                    self._restart()

    def _restart(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def poke(self) -> None:
        """Tell the processing process there is something new (restart it if it died)."""
        with self._lock:
            if self._proc is None or self._conn is None:
                return
            if not self._proc.is_alive():
                log.error("the processing process exited (%s); restarting it", self._proc.exitcode)
                self._restart()
            try:
                self._conn.send("work")
            except (OSError, ValueError):
                log.error("cannot reach the processing process; restarting it")
                self._restart()

    def stop(self, drain_s: float) -> None:
        self._stopping.set()
        with self._lock:
            self._stop(drain_s)

    def _stop(self, drain_s: float) -> None:
        if self._proc is None or self._conn is None:
            return
        try:
            self._conn.send(("stop", drain_s))
        except (OSError, ValueError):
            pass
        self._proc.join(drain_s + 30)
        if self._proc.is_alive():
            log.warning("the processing process did not stop in time; terminating it")
            self._proc.kill()
            self._proc.join(10)
        self._conn.close()
        self._proc = None
