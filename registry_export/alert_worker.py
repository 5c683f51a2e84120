"""The alert worker (docs/alerts.md): follows the catalog, records alerts, delivers them.

:func:`worker_main` is the process ``dosereg listen`` runs beside the listener (spawned by the
composition root, niced, its own SQLite connections, the catalog read-only): every
``poll_interval_s`` it reads the catalog objects received since its watermark, evaluates each
study they belong to (merged, as the catalog holds it), records the alerts with the new
watermark in one transaction (:class:`.alert_state.AlertStore`), then makes the deliveries that
are due. It is a process of its own, so neither evaluating nor a slow mail server takes
anything from the listener's process. :func:`run_pass` is one such pass (``dosereg alerts
--deliver``: :func:`deliver_once`).

The first pass over a data directory without ``alerts.sqlite`` starts at the catalog's newest
object: alerts begin with what arrives after they were enabled, never with the archive. An
object received more than ``max_age_days`` before the worker reads it (alerts were disabled
meanwhile, the listener was down for days) alerts no more: it would come too late to act on.

A failed delivery is retried with back-off (``retry_backoff_s`` doubling up to ``retry_max_s``)
until ``max_attempts``; then it is ``failed`` (``dosereg alerts`` lists it, ``dosereg status``
reports it).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from dosereg.conf.config import Config
from dosereg.conf.fsutil import parse_utc
from dosereg.conf.logging import FORMAT as LOG_FORMAT
from dosereg.conf.logging import LoggingSettings, add_file
from dosereg.conf.reference_levels import ReferenceLevel, load_reference_levels, reference_levels_path
from dosereg.extract import StudyRecord

from .alert_delivery import DeliveryError, post_webhook, send_email
from .alert_state import ALERTS_DB, AlertStore, Delivery, Watermark, pass_lock
from .alerts import Alert, alerts_for
from .patient_history import PatientHistory
from .rules import Rules, evaluate, rules_from_config

__all__ = ["FollowedCatalog", "follow", "worker_main", "PassResult", "alert_listing", "alert_problems", "deliver_once",
           "run_pass"]

log = logging.getLogger("dosereg.registry_export.alerts")

BATCH = 500  # catalog objects read per step
WORKER_NICENESS = 10  # the worker process yields the CPU to the listener


class FollowedCatalog(Protocol):
    """What the worker reads of the catalog (:class:`dosereg.ingest.Catalog`, read-only)."""

    def objects_from(self, seq: int, limit: int = ...) -> list[dict[str, Any]]: ...

    def last_object_seq(self) -> int: ...

    def get_study(self, uid: str) -> StudyRecord | None: ...

    def iter_studies(self) -> Any: ...


@dataclass
class PassResult:
    objects: int = 0
    studies: int = 0
    recorded: int = 0
    sent: int = 0
    failed: int = 0


@dataclass
class _Context:
    cfg: Config
    rules: Rules
    levels: tuple[ReferenceLevel, ...]
    history: PatientHistory | None = None
    errors: dict[str, float] = field(default_factory=dict)  # last time a channel's error was logged

    @classmethod
    def of(cls, cfg: Config) -> _Context:
        return cls(cfg, rules_from_config(cfg), load_reference_levels(reference_levels_path(cfg)))


def _channels(cfg: Config, alert: Alert) -> list[tuple[str, str]]:
    """(channel, target) of the deliveries an alert gets now (none configured: recorded only)."""
    a = cfg.alerts
    out = []
    if a.email:
        addresses = a.addresses_for((alert.station_name or "", alert.scanner), alert.kind)
        if addresses:
            out.append(("email", ", ".join(addresses)))
    if a.webhook.url:
        out.append(("webhook", "webhook"))
    return out


def _history(ctx: _Context, catalog: FollowedCatalog) -> PatientHistory | None:
    if ctx.cfg.alerts.cumulative_dlp_mgycm <= 0:
        return None
    if ctx.history is None:  # once per worker: every study of the catalog
        ctx.history = PatientHistory.of(catalog.iter_studies(), ctx.rules, ctx.cfg.alerts.cumulative_window_days)
    return ctx.history


def _new_objects(store: AlertStore, catalog: FollowedCatalog) -> tuple[list[dict[str, Any]], Watermark | None]:
    """The catalog's objects after the watermark (none and a first watermark on a first run)."""
    mark = store.watermark()
    if mark is None:
        rows = catalog.objects_from(catalog.last_object_seq(), 1)
        first = Watermark.of(rows[0]) if rows else Watermark(0, None, None)
        store.record([], first)
        return [], None
    rows = catalog.objects_from(mark.seq, BATCH + 1)
    if rows and mark.names(rows[0]):
        rows = rows[1:]  # the object the watermark names (a different one there took a reused seq)
    return rows[:BATCH], mark


def _stale(received_at: str | None, max_age_days: float) -> bool:
    """Whether the object was received more than ``max_age_days`` ago: a backlog (alerts were
    disabled, the listener was down for days) that would alert too late to act on."""
    when = parse_utc(received_at)
    return when is not None and datetime.now(timezone.utc) - when > timedelta(days=max_age_days)


def _evaluate(ctx: _Context, catalog: FollowedCatalog, rows: list[dict[str, Any]]) -> list[Alert]:
    newest: dict[str, str | None] = {}
    for row in rows:
        prev = newest.get(row["study_instance_uid"])
        newest[row["study_instance_uid"]] = max(filter(None, (prev, row["received_at"])), default=None)
    out: list[Alert] = []
    for uid, received_at in newest.items():
        if _stale(received_at, ctx.cfg.alerts.max_age_days):
            continue
        record = catalog.get_study(uid)
        if record is None:
            continue
        history = _history(ctx, catalog)
        try:
            if history is not None:
                history.add(record, ctx.rules)
            out += alerts_for(record, evaluate(record, ctx.rules), ctx.rules, ctx.cfg.alerts, ctx.levels,
                              history, received_at)
        except Exception as exc:  # one study the rules cannot judge must not stop the alerts of the others
            log.error("alerts: a study could not be evaluated (%s); no alert for it", type(exc).__name__)
            log.debug("study %s could not be evaluated", uid, exc_info=True)
    return out


def _deliver_one(ctx: _Context, d: Delivery) -> None:
    a = ctx.cfg.alerts
    if d.channel == "email":
        send_email(d.alert, a.smtp, [t.strip() for t in d.target.split(",") if t.strip()])
    elif d.channel == "webhook":
        post_webhook(d.alert, a.webhook)
    else:  # pragma: no cover -- the store holds only the two
        raise DeliveryError(f"unknown channel {d.channel!r}")


def _retry_in(cfg: Config, attempts: int) -> float | None:
    a = cfg.alerts
    if attempts >= a.max_attempts:
        return None
    return float(min(a.retry_max_s, a.retry_backoff_s * 2 ** max(0, attempts - 1)))


def _deliver(ctx: _Context, store: AlertStore, result: PassResult, should_stop: Callable[[], bool]) -> None:
    cfg = ctx.cfg
    for d in store.due():
        if should_stop():
            return
        if (d.channel == "email" and not cfg.alerts.email) or (d.channel == "webhook" and not cfg.alerts.webhook.url):
            store.failed(d, f"{d.channel} is no longer configured", None)
            result.failed += 1
            continue
        store.begin(d)
        try:
            _deliver_one(ctx, d)
        except Exception as exc:  # any failure is one failed attempt, retried with back-off
            error = str(exc) if isinstance(exc, DeliveryError) else f"{d.channel}: unexpected {type(exc).__name__}"
            if not isinstance(exc, DeliveryError):
                log.debug("alert delivery failed", exc_info=True)
            retry = _retry_in(cfg, d.attempts + 1)
            store.failed(d, error, retry)
            result.failed += 1
            _log_failure(ctx, d, error, retry)
            continue
        store.sent(d)
        result.sent += 1
        log.info("alert %s sent by %s", d.alert.kind, d.channel)
        log.debug("alert %s (accession %s, protocol %s) sent by %s", d.alert.key, d.alert.accession_number,
                  d.alert.protocol, d.channel)


def _log_failure(ctx: _Context, d: Delivery, error: str, retry: float | None) -> None:
    """A failed attempt, at WARNING once a minute per channel (a mail server down for an hour is
    one problem, not hundreds), at ERROR when the alert is given up."""
    if retry is None:
        log.error("alert %s: %s delivery given up after %d attempts: %s", d.alert.kind, d.channel,
                  d.attempts + 1, error)
        return
    now = time.monotonic()
    if now - ctx.errors.get(d.channel, -1e9) >= 60:
        ctx.errors[d.channel] = now
        log.warning("alert %s: %s delivery failed (attempt %d, next in %.0f s): %s", d.alert.kind, d.channel,
                    d.attempts + 1, retry, error)


def run_pass(cfg: Config, store: AlertStore, catalog: FollowedCatalog, ctx: _Context | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> PassResult:
    """One pass: everything the catalog gained since the watermark, evaluated and recorded; then
    the due deliveries. ``ctx``: the rules and levels of an earlier pass (loaded when None)."""
    ctx = ctx if ctx is not None else _Context.of(cfg)
    result = PassResult()
    while not should_stop():
        rows, mark = _new_objects(store, catalog)
        if not rows:
            break
        alerts = _evaluate(ctx, catalog, rows)
        last = rows[-1]
        result.objects += len(rows)
        result.studies += len({r["study_instance_uid"] for r in rows})
        result.recorded += store.record([(a, _channels(cfg, a)) for a in alerts],
                                        Watermark.of(last))
        if mark is None:
            break
    if result.recorded:
        log.info("%d new dose alert(s) recorded", result.recorded)
    _deliver(ctx, store, result, should_stop)
    return result


def _first_watermark(cfg: Config, open_catalog: Callable[[], FollowedCatalog]) -> None:
    """On a first run (no watermark yet), the catalog's newest object."""
    store = AlertStore(cfg.data_dir)
    try:
        with pass_lock(cfg.data_dir) as mine:
            if mine and store.watermark() is None:
                catalog = open_catalog()
                try:
                    _new_objects(store, catalog)
                finally:
                    getattr(catalog, "close", lambda: None)()
    finally:
        store.close()


def follow(cfg: Config, open_catalog: Callable[[], FollowedCatalog], wait: Callable[[float], bool],
           ctx: _Context | None = None) -> None:
    """Passes until ``wait(seconds)`` (the pause between two passes) returns True: what the alert
    worker process does. A failing pass is logged and tried again at the next one."""
    ctx = ctx if ctx is not None else _Context.of(cfg)
    store = AlertStore(cfg.data_dir)
    catalog = open_catalog()
    stop = False
    try:
        while not stop:
            try:
                with pass_lock(cfg.data_dir) as mine:
                    if mine:  # else `dosereg alerts --deliver` is making a pass
                        run_pass(cfg, store, catalog, ctx)
            except Exception:  # the worker must outlive a locked database or a full disk
                log.exception("alert pass failed; trying again in %.0f s", cfg.alerts.poll_interval_s)
            pause = cfg.alerts.poll_interval_s
            due = store.next_due()
            if due is not None:
                pause = min(pause, max(0.05, due - time.time()))
            stop = wait(pause)
    finally:
        store.close()
        getattr(catalog, "close", lambda: None)()


def worker_main(cfg: Config, open_catalog: Callable[[], FollowedCatalog], conn: Connection, log_level: int,
                log_file: LoggingSettings | None = None) -> None:
    """The alert worker process (``dosereg listen`` spawns it; docs/alerts.md): a process of its own,
    so evaluating and sending never take CPU time or memory from the listener's process. Says
    ``("ready", None)`` on the pipe once the rules, levels and first watermark are in place (or
    ``("error", message)``), then makes passes until the parent says ``"stop"`` or is gone."""
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    if log_file is not None:  # the listener's [logging] file; the listener alone rotates it
        try:
            add_file(log_file, rotate=False)
        except OSError:  # pragma: no cover
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # pragma: no cover
        pass
    try:
        ctx = _Context.of(cfg)
        _first_watermark(cfg, open_catalog)
    except Exception as exc:  # a configuration mistake: the parent refuses to start
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", None))

    def wait(seconds: float) -> bool:
        try:
            return bool(conn.poll(seconds)) and conn.recv() == "stop"
        except (EOFError, OSError):  # the listener is gone
            return True

    follow(cfg, open_catalog, wait, ctx)


def deliver_once(cfg: Config, catalog: FollowedCatalog) -> PassResult:
    """``dosereg alerts --deliver``: one pass (for cron or a test), with its own store; a
    RuntimeError when another pass (the listener's worker) is under way."""
    with pass_lock(cfg.data_dir) as mine:
        if not mine:
            raise RuntimeError("another alert pass is under way (dosereg listen's alert worker); try again")
        store = AlertStore(cfg.data_dir)
        try:
            return run_pass(cfg, store, catalog)
        finally:
            store.close()


def alert_listing(cfg: Config, since: str | None = None) -> list[dict[str, Any]]:
    """The recorded alerts (``dosereg alerts``), read-only: :meth:`.alert_state.AlertStore.listing`."""
    store = AlertStore(cfg.data_dir, readonly=True)
    try:
        return store.listing(since)
    finally:
        store.close()


def alert_problems(cfg: Config) -> list[str]:
    """What ``dosereg status`` reports as needing attention: alert deliveries given up."""
    if not (Path(cfg.data_dir) / ALERTS_DB).exists():
        return []
    store = AlertStore(cfg.data_dir, readonly=True)
    try:
        failed = store.counts().get("failed", 0)
    finally:
        store.close()
    return [f"{failed} dose alert deliveries given up (dosereg alerts lists them)"] if failed else []
