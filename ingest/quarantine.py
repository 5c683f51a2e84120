"""The quarantine's tools (``dosereg quarantine list|reprocess|purge``, README "Quarantine").

An object in ``quarantine/`` was answered Success and kept as received, with
``<name>.reason.txt`` beside it (``<name>`` ends in ``.dcm``). After a fix of the extraction
or of the configuration, :func:`reprocess` takes the kept bytes, unchanged, through the same
path as a received object (:class:`~dosereg.ingest.pipeline.Pipeline`): usable now, they join
the catalog; still unusable, they are quarantined again with today's reason. :func:`purge`
removes what a site no longer wants to keep (files and catalog rows).

Order of the steps of a reprocess, for a crash at any instant: the bytes are first made
durable in the spool (a crash there: the next run processes the spooled copy; the quarantined
copy is still listed), then the quarantine row is dropped and the copy processed, and only
then are the old file and its reason removed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dosereg.conf.config import Config
from dosereg.conf.fsutil import parse_utc

from .catalog import Catalog, catalog_path
from .pipeline import Pipeline, TransientError, extract_limits

log = logging.getLogger("dosereg.ingest.quarantine")

REASON_SUFFIX = ".reason.txt"


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined object, as ``dosereg quarantine list --json`` prints it."""

    name: str
    error_code: str
    message: str
    received_at: str | None
    calling_ae_title: str | None  # None: taken in by ``dosereg import``
    source: str | None
    sop_instance_uid: str | None
    sha256: str
    path: str | None
    size_bytes: int | None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def reason_path(path: Path) -> Path:
    """``quarantine/<name>.dcm`` -> ``quarantine/<name>.dcm.reason.txt``."""
    return path.with_name(path.name + REASON_SUFFIX)


def _entries(cfg: Config, catalog: Catalog) -> list[QuarantineEntry]:
    out: list[QuarantineEntry] = []
    for row in catalog.quarantine_rows():
        ledger = catalog.received_by_name(row["name"]) or {}
        size: int | None = None
        if row["path"]:
            try:
                size = (cfg.data_dir / row["path"]).stat().st_size
            except OSError:
                size = None
        out.append(QuarantineEntry(
            name=row["name"], error_code=row["error_code"], message=row["message"],
            received_at=row["received_at"], calling_ae_title=ledger.get("calling_ae_title"),
            source=ledger.get("source"), sop_instance_uid=row["sop_instance_uid"], sha256=row["sha256"],
            path=row["path"], size_bytes=size,
        ))
    return out


def list_quarantine(cfg: Config) -> list[QuarantineEntry]:
    """Every quarantined object, oldest first."""
    catalog = Catalog(catalog_path(cfg.data_dir), readonly=True)
    try:
        return _entries(cfg, catalog)
    finally:
        catalog.close()


def _select(entries: list[QuarantineEntry], names: Iterable[str] | None) -> list[QuarantineEntry]:
    """The entries named (a name with or without ``quarantine/``), all of them with ``names=None``."""
    if names is None:
        return entries
    by_name = {e.name: e for e in entries}
    chosen: list[QuarantineEntry] = []
    for name in names:
        key = Path(name).name
        if key.endswith(REASON_SUFFIX):
            key = key[: -len(REASON_SUFFIX)]
        if key not in by_name:
            raise KeyError(name)
        chosen.append(by_name[key])
    return chosen


def _remove(cfg: Config, entry: QuarantineEntry) -> None:
    if not entry.path:
        return
    path = cfg.data_dir / entry.path
    for p in (path, reason_path(path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def reprocess(cfg: Config, names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """Run quarantined objects (``names``, or all) through the ingest path again: (name, outcome).

    Outcomes are the pipeline's (``new``, ``replaced``, ``duplicate``, ``quarantined:<code>``),
    or ``missing`` when the quarantined file is gone, ``retry later`` when the environment
    failed (the spooled copy is processed by the next run; the quarantined one stays).
    Raises KeyError for a name that is not quarantined.
    """
    data_dir = cfg.data_dir.resolve()
    catalog = Catalog(catalog_path(data_dir))
    pipeline = Pipeline(data_dir, catalog, limits=extract_limits(cfg))
    results: list[tuple[str, str]] = []
    try:
        for entry in _select(_entries(cfg, catalog), names):
            results.append((entry.name, _reprocess_one(cfg, catalog, pipeline, entry)))
    finally:
        pipeline.close()
        catalog.close()
    return results


def _reprocess_one(cfg: Config, catalog: Catalog, pipeline: Pipeline, entry: QuarantineEntry) -> str:
    path = cfg.data_dir / entry.path if entry.path else None
    try:
        data = path.read_bytes() if path is not None else None
    except FileNotFoundError:
        data = None
    if data is None:
        log.warning("quarantine reprocess: %s: its file is gone", entry.name)
        return "missing"
    item = pipeline.receive(data, source=entry.source or f"quarantine/{entry.name}", state="importing",
                            sop_instance_uid=entry.sop_instance_uid, calling_ae_title=entry.calling_ae_title)
    try:
        catalog.remove_quarantined(entry.sha256)
        try:
            outcome = pipeline.process_safely(item)
        except TransientError as exc:
            log.warning("quarantine reprocess: %s: %s; the copy in the spool is processed by the next run",
                        entry.name, exc)
            return "retry later"
    finally:
        pipeline.release(item)
    _remove(cfg, entry)  # its bytes now live in objects/, or in quarantine/ under a new name
    log.info("quarantine reprocess: %s: %s", entry.name, outcome)
    return outcome


def _received(entry: QuarantineEntry) -> datetime | None:
    return parse_utc(entry.received_at)


def purge(cfg: Config, older_than_days: float, now: datetime | None = None) -> list[QuarantineEntry]:
    """Remove the objects quarantined more than ``older_than_days`` ago (files, reasons, rows)."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=older_than_days)
    catalog = Catalog(catalog_path(cfg.data_dir))
    removed: list[QuarantineEntry] = []
    try:
        for entry in _entries(cfg, catalog):
            when = _received(entry)
            if when is None or when >= cutoff:
                continue
            catalog.remove_quarantined(entry.sha256)
            _remove(cfg, entry)
            removed.append(entry)
            log.info("quarantine purge: removed %s (received %s)", entry.name, entry.received_at)
    finally:
        catalog.close()
    return removed


__all__ = ["REASON_SUFFIX", "QuarantineEntry", "list_quarantine", "purge", "reason_path", "reprocess"]
