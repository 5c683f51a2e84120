"""The catalog's CT exams without a dose report, and the days a reconcile finished (schema 4).

An exam is learned from the PACS (``dosereg reconcile``) or the RIS (``--from-csv``) and kept
in ``exams`` while no dose object of its study is catalogued; the trigger ``exams_retire``
(:mod:`.catalog_schema`) retires it the moment one is, whichever path the object took. The
catalog yields each open exam (with a Study Instance UID) among its studies, in study UID order,
as a typed :class:`~dosereg.extract.ExamRecord` (docs/reconcile.md).

A mixin of :class:`.catalog.Catalog`: it uses the catalog's connection, lock and transactions.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from dosereg.conf.fsutil import utc_now
from dosereg.extract import Equipment, ExamRecord, Patient

from .catalog_codec import record_text, version_key

_EXAM_COLUMNS = ("study_instance_uid, accession_number, study_date, study_time, study_description, station_name, "
                 "modality, patient_id, source, learned_at, retired_at")


def exam_record(row: tuple[Any, ...]) -> ExamRecord:
    """The record of an ``exams`` row (columns in the order of ``_EXAM_COLUMNS``)."""
    uid, accession, date, time, description, station, modality, patient_id, source = row[:9]
    return ExamRecord(
        study_instance_uid=uid, accession_number=accession, study_date=date, study_time=time,
        study_description=description, modality=modality, patient=Patient(id=patient_id),
        equipment=Equipment(station_name=station), source=source,
    )


class ExamsMixin:
    """Exams without a dose report and reconcile progress (methods of :class:`.catalog.Catalog`)."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _rows: Callable[..., Iterator[tuple[Any, ...]]]

    # -- what is held ---------------------------------------------------------------------
    def has_dose_object(self, study_uid: str) -> bool:
        """Whether any dose object of the study is catalogued."""
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM objects WHERE study_instance_uid = ? LIMIT 1",
                                     (study_uid,)).fetchone()
        return row is not None

    def held_instances(self, sop_uids: Iterable[str], in_flight: bool = True) -> set[str]:
        """Those of ``sop_uids`` already kept: catalogued, quarantined, or (``in_flight``) taken
        into the spool and not processed yet (the listener or an import will)."""
        uids = list(sop_uids)
        held: set[str] = set()
        spooled = (" UNION SELECT sop_instance_uid FROM received WHERE state IN ('spooled', 'importing') "
                   "AND sop_instance_uid IN ({marks})") if in_flight else ""
        with self._lock:
            for i in range(0, len(uids), 300):
                part = uids[i:i + 300]
                marks = ",".join("?" * len(part))
                sql = (f"SELECT sop_instance_uid FROM objects WHERE sop_instance_uid IN ({marks}) UNION "
                       f"SELECT sop_instance_uid FROM quarantine WHERE sop_instance_uid IN ({marks})"
                       + spooled.format(marks=marks))
                held.update(r[0] for r in self._conn.execute(sql, part * (3 if in_flight else 2)))
        return held

    # -- exams --------------------------------------------------------------------------
    def add_exam(self, record: ExamRecord) -> str:
        """Keep ``record`` as an exam without a dose report: ``new``, ``updated``, ``same``,
        ``has_dose_object`` (its study has one: nothing kept) or ``retired`` (it had one once).

        Keyed by Study Instance UID when it has one, else by accession number (a RIS row).
        Checked and written in one transaction, so an object catalogued meanwhile is never
        followed by an open exam for its study.
        """
        uid, accession = record.study_instance_uid, record.accession_number
        if not uid and not accession:
            raise ValueError("an exam needs a Study Instance UID or an accession number")
        with self._transaction() as conn:
            if uid and conn.execute("SELECT 1 FROM objects WHERE study_instance_uid = ? LIMIT 1",
                                    (uid,)).fetchone():
                return "has_dose_object"
            key, arg = ("study_instance_uid = ?", uid) if uid else \
                ("study_instance_uid IS NULL AND accession_number = ?", accession)
            row = conn.execute(f"SELECT id, version, retired_at, source FROM exams WHERE {key}", (arg,)).fetchone()
            if row is not None and row[2] is not None:
                return "retired"
            if row is not None and row[3] != record.source:
                record = replace(record, source=row[3])  # known from the PACS and the RIS: the first one says
            values = (uid, accession, record.study_date, record.study_time, record.study_description,
                      record.equipment.station_name, record.modality, record.patient.id, record.source)
            version = version_key(record_text(record))
            if row is None:
                conn.execute(f"INSERT INTO exams ({_EXAM_COLUMNS}, version) VALUES (?,?,?,?,?,?,?,?,?,?,NULL,?)",
                             (*values, utc_now(), version))
                return "new"
            if row[1] == version:
                return "same"
            conn.execute("UPDATE exams SET study_instance_uid = ?, accession_number = ?, study_date = ?, "
                         "study_time = ?, study_description = ?, station_name = ?, modality = ?, patient_id = ?, "
                         "source = ?, version = ? WHERE id = ?", (*values, version, row[0]))
            return "updated"

    def retire_exams_of_accession(self, accession: str) -> int:
        """Retire the open accession-only exams (RIS rows without a UID) of ``accession``, whose
        study the catalog now holds; how many."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE exams SET retired_at = ? WHERE study_instance_uid IS NULL AND accession_number = ? "
                "AND retired_at IS NULL", (utc_now(), accession)).rowcount

    def iter_exams(self, include_retired: bool = False) -> Iterator[ExamRecord]:
        """The exams with a Study Instance UID, open ones only unless ``include_retired``, in UID order."""
        where = "" if include_retired else " AND retired_at IS NULL"
        for row in self._rows(f"SELECT {_EXAM_COLUMNS} FROM exams WHERE study_instance_uid IS NOT NULL{where} "
                              "ORDER BY study_instance_uid"):
            yield exam_record(row)

    def exam_versions(self) -> Iterator[tuple[str, str]]:
        """(Study Instance UID, version key) of the open exams, in UID order (no record built)."""
        for uid, version in self._rows("SELECT study_instance_uid, version FROM exams WHERE retired_at IS NULL "
                                       "AND study_instance_uid IS NOT NULL ORDER BY study_instance_uid"):
            yield str(uid), str(version)

    def exam_rows(self) -> list[dict[str, Any]]:
        """Every exam row (open and retired, with or without a UID), in the order learned."""
        cur = self._conn.execute(f"SELECT {_EXAM_COLUMNS} FROM exams ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def has_open_exams(self) -> bool:
        row = self._conn.execute("SELECT 1 FROM exams WHERE retired_at IS NULL AND study_instance_uid "
                                 "IS NOT NULL LIMIT 1").fetchone()
        return row is not None

    def get_exam(self, uid: str) -> ExamRecord | None:
        row = self._conn.execute(f"SELECT {_EXAM_COLUMNS} FROM exams WHERE study_instance_uid = ? "
                                 "AND retired_at IS NULL", (uid,)).fetchone()
        return exam_record(row) if row else None

    # -- reconcile progress ---------------------------------------------------------------
    def mark_day_reconciled(self, day: str, ct_studies: int) -> None:
        """Day ``YYYYMMDD`` is reconciled: its CT studies asked for, each one finished."""
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO reconcile_days (day, completed_at, ct_studies) VALUES (?, ?, ?)",
                         (day, utc_now(), ct_studies))

    def reconciled_days(self, first: str, last: str) -> dict[str, str]:
        """Day ``YYYYMMDD`` -> when it was reconciled, for the days from ``first`` to ``last``."""
        return {str(d): str(at) for d, at in self._rows(
            "SELECT day, completed_at FROM reconcile_days WHERE day BETWEEN ? AND ?", (first, last))}
