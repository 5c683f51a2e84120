"""Large batches: the report and the registry files written by a second process.

De-identifying, writing Parquet and JSON and building the report (:class:`.batch_writer.BatchWriter`)
cost more than reading and evaluating the catalog. For a batch of more than
:data:`PARALLEL_AFTER` studies they are done by a forked process, fed the evaluated studies
through a pipe while this one goes on reading and evaluating: with a core free for each, the
export takes about as long as the larger of the two halves instead of their sum, for about a
tenth more CPU time (pickling across the pipe). Measured by ``bench/export.py --writer both``.

:func:`open_writer` is the one interface: what it returns has the three methods of
:class:`.batch_writer.BatchWriter` (``add``, ``finish``, ``abort``). It holds the first
studies; at :data:`PARALLEL_AFTER` it hands them to a second process, or, at ``finish`` with
fewer (or where ``fork`` is not available), to a writer in this process.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from dosereg.extract import StudyRecord

from .batch_writer import BatchWriter, ReportTarget, Written
from .rules import Evaluation

#: Studies of one batch above which a second process writes the report and the registry files.
PARALLEL_AFTER = 500
_MESSAGE_STUDIES = 250  # studies per message to the second process


_Study = tuple[StudyRecord, Evaluation, bool]  # what crosses the pipe: the record, its evaluation, to registry


class _Forked:
    """A :class:`BatchWriter` in a forked process, fed through a pipe."""

    def __init__(self, make: Callable[[], BatchWriter]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_work, args=(child, make), name="dosereg-export-writer", daemon=True)
        self._proc.start()
        child.close()
        self._studies: list[_Study] = []

    def add(self, record: StudyRecord, evaluation: Evaluation, to_registry: bool,
            d: dict[str, Any] | None = None) -> None:
        self._studies.append((record, evaluation, to_registry))  # d is made again over there
        if len(self._studies) >= _MESSAGE_STUDIES:
            self._send(self._studies)
            self._studies = []

    def finish(self, report_to: ReportTarget | None) -> Written:
        if self._studies:
            self._send(self._studies)
            self._studies = []
        self._send(("finish", report_to))
        written = self._receive()
        self._proc.join()
        return written  # type: ignore[no-any-return]

    def abort(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except OSError:  # the second process is gone: say why
            self._fail()

    def _receive(self) -> Any:
        try:
            kind, value = self._conn.recv()
        except (OSError, EOFError):
            self._fail()
        if kind != "ok":
            self._fail(value)
        return value

    def _fail(self, message: str = "exited without a word") -> NoReturn:
        try:
            if self._conn.poll(5):
                _, message = self._conn.recv()
        except (OSError, EOFError):
            pass
        self.abort()
        raise RuntimeError(f"export: the second export process failed: {message}")


def _work(conn: Any, make: Callable[[], BatchWriter]) -> None:
    """The second process: lists of (record, evaluation, to registry) in, then ("finish", report_to)."""
    try:
        writer = make()
        while True:
            message = conn.recv()
            if isinstance(message, tuple):  # ("finish", report_to)
                conn.send(("ok", writer.finish(message[1])))
                break
            for record, evaluation, to_registry in message:
                writer.add(record, evaluation, to_registry)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", "".join(traceback.format_exception_only(type(exc), exc)).strip()))
    finally:
        conn.close()


class _HandOff:
    """Holds the first studies until it is known whether the batch is large (module docstring)."""

    def __init__(self, make: Callable[[], BatchWriter]) -> None:
        self._make = make
        self._held: list[tuple[StudyRecord, Evaluation, bool, dict[str, Any] | None]] = []
        self._to: BatchWriter | _Forked | None = None  # None: still holding
        self.forked = False

    def add(self, record: StudyRecord, evaluation: Evaluation, to_registry: bool,
            d: dict[str, Any] | None = None) -> None:
        if self._to is not None:
            self._to.add(record, evaluation, to_registry, d)
            return
        self._held.append((record, evaluation, to_registry, d))
        if len(self._held) >= PARALLEL_AFTER:
            self._hand_over(fork="fork" in multiprocessing.get_all_start_methods())

    def finish(self, report_to: ReportTarget | None) -> Written:
        if self._to is None:
            self._hand_over(fork=False)
        return self._to.finish(report_to)  # type: ignore[union-attr]

    def abort(self) -> None:
        if self._to is not None:
            self._to.abort()

    def _hand_over(self, fork: bool) -> None:
        self._to = _Forked(self._make) if fork else self._make()
        self.forked = fork
        held, self._held = self._held, []
        for record, evaluation, to_registry, d in held:
            self._to.add(record, evaluation, to_registry, d)


def open_writer(make: Callable[[], BatchWriter]) -> _HandOff:
    """The batch's writer: ``make()``'s, in this process or, for a large batch, in a second one."""
    return _HandOff(make)
