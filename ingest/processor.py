"""The listener's spool consumer: a separate process, so parsing never slows the associations.

The listener (parent) makes each object durable and notes it in the catalog's ledger,
then pokes this process through a pipe. This process processes every ledger row still
``spooled``, in received order (extraction, catalog, file placement or quarantine:
:meth:`Pipeline.process`). A row that fails is retried at the next start, not in a loop.
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
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .catalog import Catalog, catalog_path
from .pipeline import Pipeline

log = logging.getLogger("dosereg.ingest.processor")

PROCESSOR_NICENESS = 10
CHECKPOINT_EVERY = 1000  # objects, during a long burst
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def processor_main(data_dir: str, conn: Connection, log_level: int) -> None:
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # The parent decides when to stop (after its in-flight stores); a signal to the whole
    # process group must not cut an object in half here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answering the network comes first: parsing takes the CPU the associations leave idle.
    try:
        os.nice(PROCESSOR_NICENESS)
    except OSError:  # pragma: no cover
        pass
    # WAL checkpoints (which fsync) run here when the spool is drained, not inside a commit
    # while an association thread may be waiting for the write lock.
    catalog = Catalog(catalog_path(Path(data_dir)), autocheckpoint=False)
    pipeline = Pipeline(Path(data_dir), catalog)
    failed: set[int] = set()
    stop_at: float | None = None
    since_checkpoint = 0
    try:
        while True:
            for item in pipeline.pending_items():
                if item.id in failed:
                    continue
                try:
                    pipeline.process(item)
                    since_checkpoint += 1
                except Exception:
                    failed.add(item.id)
                    log.exception("processing %s failed; it stays in the spool and is retried at the next start",
                                  item.name)
                if since_checkpoint >= CHECKPOINT_EVERY:
                    catalog.checkpoint()
                    since_checkpoint = 0
                if stop_at is not None and time.monotonic() > stop_at:
                    return
                if stop_at is None and conn.poll():
                    stop_at = _read(conn, stop_at)
            if since_checkpoint and not conn.poll(0.05):
                catalog.checkpoint()  # nothing new for a moment: the spool is drained
                since_checkpoint = 0
            if stop_at is not None:
                return
            if conn.poll(1.0):
                stop_at = _read(conn, stop_at)
    except (EOFError, OSError):  # the listener is gone
        return
    finally:
        left = len(catalog.pending())
        if left:
            log.warning("%d received object(s) left in the spool; they are processed at the next start", left)
        catalog.close()


def _read(conn: Connection, stop_at: float | None) -> float | None:
    """Drain the pipe; returns the stop deadline once asked to stop."""
    while conn.poll():
        msg: Any = conn.recv()
        if isinstance(msg, tuple) and msg and msg[0] == "stop":
            stop_at = time.monotonic() + float(msg[1])
    return stop_at


class Processor:
    """Parent side: start, poke, restart if it died, stop."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        parent, child = self._ctx.Pipe()
        level = logging.getLogger("dosereg").getEffectiveLevel()
        self._proc = self._ctx.Process(
            target=processor_main, args=(str(self.data_dir), child, level), name="dosereg-processor",
            daemon=False,
        )
        self._proc.start()
        child.close()
        self._conn = parent

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
                self.start()
            try:
                self._conn.send("work")
            except (OSError, ValueError):
                log.error("cannot reach the processing process; restarting it")
                self.start()

    def stop(self, drain_s: float) -> None:
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
