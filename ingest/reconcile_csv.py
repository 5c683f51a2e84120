"""``dosereg reconcile --from-csv FILE``: the CT exams of a RIS export, without retrieving anything.

Columns (a header row; docs/reconcile.md): ``accession_number, study_instance_uid,
study_date, modality, study_description, station_name``, optionally ``patient_id``. A row is
matched to the catalog by its Study Instance UID when it has one, else by its accession
number; rows whose modality is not CT are ignored; a row the catalog has no dose object for
is kept as an exam without a dose report (``source: "ris"``). The whole file is checked
before anything is kept: an error names the file, the line and the column.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from dosereg.conf.config import Config
from dosereg.extract import Equipment, ExamRecord, Patient

from .catalog import Catalog, catalog_path
from .reconcile import ReconcileSummary, iso_date

COLUMNS = ("accession_number", "study_instance_uid", "study_date", "modality", "study_description", "station_name")
OPTIONAL = ("patient_id",)


class CsvError(Exception):
    """The RIS export cannot be read; the message names the file and the line."""


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or ()]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise CsvError(f"{path}:1: missing column(s) {', '.join(missing)} (the columns are "
                           f"{', '.join(COLUMNS)}, optionally {', '.join(OPTIONAL)})")
        unknown = [h for h in header if h not in COLUMNS + OPTIONAL]
        if unknown:
            raise CsvError(f"{path}:1: unknown column(s) {', '.join(unknown)}")
        reader.fieldnames = header
        try:
            for row in reader:
                if None in row:
                    raise CsvError(f"{path}:{reader.line_num}: more fields than columns")
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}
        except csv.Error as exc:
            raise CsvError(f"{path}:{reader.line_num}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise CsvError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _is_ct(modality: str) -> bool:
    return "CT" in (m.strip().upper() for m in modality.replace(",", "\\").split("\\"))


def read_exams(path: Path) -> tuple[list[ExamRecord], int]:
    """The CT exams of the file, and how many rows were of another modality."""
    exams: list[ExamRecord] = []
    ignored = 0
    for line, row in _rows(path):
        if not _is_ct(row["modality"]):
            ignored += 1
            continue
        uid, accession = row["study_instance_uid"] or None, row["accession_number"] or None
        if not uid and not accession:
            raise CsvError(f"{path}:{line}: neither study_instance_uid nor accession_number is given")
        if uid and (len(uid) > 64 or not all(p.isdigit() for p in uid.split("."))):
            raise CsvError(f"{path}:{line}: study_instance_uid {uid!r} is not a UID")
        day = iso_date(row["study_date"])
        if row["study_date"] and day is None:
            raise CsvError(f"{path}:{line}: study_date {row['study_date']!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
        exams.append(ExamRecord(
            study_instance_uid=uid, accession_number=accession, study_date=day,
            study_description=row["study_description"] or None, modality="CT",
            patient=Patient(id=row.get("patient_id") or None),
            equipment=Equipment(station_name=row["station_name"] or None), source="ris"))
    return exams, ignored


def _accessions(catalog: Catalog) -> dict[str, str]:
    """Accession number -> Study Instance UID of the catalog's studies with a dose object (one pass)."""
    out: dict[str, str] = {}
    for record in catalog.iter_studies():
        if record.dose_objects and record.accession_number and record.study_instance_uid:
            out[record.accession_number] = record.study_instance_uid
    return out


def reconcile_csv(cfg: Config, path: Path) -> ReconcileSummary:
    """Match the RIS export's CT exams to the catalog; keep those without a dose object."""
    exams, ignored = read_exams(Path(path))
    summary = ReconcileSummary(ignored_rows=ignored)
    catalog = Catalog(catalog_path(cfg.data_dir.resolve()))
    try:
        by_accession = _accessions(catalog) if any(not e.study_instance_uid for e in exams) else {}
        for exam in exams:
            summary.ct_studies += 1
            uid = exam.study_instance_uid
            if uid is None and exam.accession_number in by_accession:
                catalog.retire_exams_of_accession(exam.accession_number or "")
                summary.already_complete += 1
                continue
            if uid is not None and catalog.has_dose_object(uid):
                summary.already_complete += 1
                continue
            outcome = catalog.add_exam(exam)
            if outcome == "has_dose_object":
                summary.already_complete += 1
            else:
                summary.without_dose_report += 1
    finally:
        catalog.close()
    return summary


__all__ = ["COLUMNS", "CsvError", "read_exams", "reconcile_csv"]
