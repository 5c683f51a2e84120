"""Explicit Arrow schemas of the files ``export`` writes, and streaming writers for them.

Parquet columns are the de-identified record's fields flattened with ``_``
(``patient.age_years`` -> ``patient_age_years``, a code ``target_region`` ->
``target_region_value`` / ``_scheme`` / ``_meaning``); lists of objects stay lists of
structs (``sources``, ``procedure_codes``, ``dose_objects``). Units are in the names.
Rows are buffered column-wise and written as record batches of ``CHUNK_ROWS`` rows, so
memory does not grow with the number of studies. ``submission.json`` is written one study at
a time (:class:`JsonStudies`), the billing flags one row at a time (:class:`FlagsWriter`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK_ROWS = 8192  # rows per row group, at most
CHUNK_BYTES = 4 << 20  # Arrow bytes per row group, at most (large rows: fewer rows)
CONVERT_ROWS = 512  # unflattened rows held as Python dicts before Arrow takes them (ChunkedParquet)
log = logging.getLogger("dosereg.export")

_STR = pa.string()
_F64 = pa.float64()
_DATE = pa.date32()
_TIME = pa.time64("us")
_LOCAL_TS = pa.timestamp("us")  # wall-clock time as the scanner stated it (its UTC offset beside it)
_UTC_TS = pa.timestamp("us", tz="UTC")
_OFFSET = pa.int16()  # minutes east of UTC, as stated (null: not stated)
_CODE_STRUCT = pa.struct([("value", _STR), ("scheme", _STR), ("meaning", _STR)])


def _code_fields(prefix: str) -> list[pa.Field]:
    return [pa.field(f"{prefix}_value", _STR), pa.field(f"{prefix}_scheme", _STR),
            pa.field(f"{prefix}_meaning", _STR)]


STUDY_SCHEMA = pa.schema(
    [
        pa.field("study_instance_uid", _STR, nullable=False),
        pa.field("facility_id", _STR, nullable=False),
        pa.field("batch_id", _STR, nullable=False),
        pa.field("registry_profile_name", _STR),
        pa.field("registry_profile_version", _STR),
        pa.field("date_precision", _STR),
        pa.field("study_date", _DATE),  # with date_precision month or year: the first day of the period
        pa.field("study_time", _TIME),
        pa.field("study_description", _STR),
        pa.field("requested_procedure_description", _STR),
        pa.field("procedure_codes", pa.list_(_CODE_STRUCT)),
        pa.field("modality", _STR),
        pa.field("patient_sex", _STR),
        pa.field("patient_age_years", pa.int32()),
        pa.field("patient_weight_kg", _F64),
        pa.field("patient_height_m", _F64),
        pa.field("equipment_manufacturer", _STR),
        pa.field("equipment_model", _STR),
        pa.field("equipment_station_name", _STR),
        pa.field("equipment_serial_number", _STR),
        pa.field("equipment_software_versions", _STR),
        pa.field("equipment_device_observer_uid", _STR),
        pa.field("dose_objects", pa.list_(pa.struct([
            ("sop_instance_uid", _STR), ("sop_class_uid", _STR), ("kind", _STR), ("received_at", _UTC_TS),
        ]))),
        *_code_fields("report_procedure_reported"),
        *_code_fields("report_has_intent"),
        pa.field("report_start_datetime", _LOCAL_TS),
        pa.field("report_end_datetime", _LOCAL_TS),
        *_code_fields("report_source_of_dose_information"),
        pa.field("total_events", pa.int32()),
        pa.field("total_dlp_mGycm", _F64),
        pa.field("reported_total_dlp_mGycm", _F64),
        pa.field("normalised_total_dlp_mGycm", _F64),  # phantom-normalised, timing runs left out
        pa.field("completeness_status", _STR),
        pa.field("completeness_missing", pa.list_(_STR)),
        pa.field("completeness_invalid", pa.list_(pa.struct([("path", _STR), ("reason", _STR)]))),
        pa.field("completeness_warnings", pa.list_(_STR)),
        pa.field("classification_patient_study", pa.bool_()),
        pa.field("classification_rt_planning", pa.bool_()),
        pa.field("classification_reasons", pa.list_(_STR)),
        pa.field("flags_registry_code", _STR),
        pa.field("flags_registry_reasons", pa.list_(_STR)),
        pa.field("flags_nomenclature_code", _STR),
        pa.field("flags_nomenclature_reasons", pa.list_(_STR)),
        pa.field("report_start_datetime_utc_offset_min", _OFFSET),
        pa.field("report_end_datetime_utc_offset_min", _OFFSET),
    ],
    metadata={"dosereg.schema": "dosereg.registry.studies/1"},
)

EVENT_SCHEMA = pa.schema(
    [
        pa.field("study_instance_uid", _STR, nullable=False),  # the study's pseudonymous UID
        pa.field("event_index", pa.int32(), nullable=False),  # position within the study
        pa.field("irradiation_event_uid", _STR),
        pa.field("acquisition_protocol", _STR),
        *_code_fields("target_region"),
        pa.field("acquisition_type", _STR),
        *_code_fields("acquisition_type_code"),
        *_code_fields("procedure_context"),
        pa.field("start_datetime", _LOCAL_TS),
        pa.field("exposure_time_s", _F64),
        pa.field("scanning_length_mm", _F64),
        pa.field("nominal_single_collimation_mm", _F64),
        pa.field("nominal_total_collimation_mm", _F64),
        pa.field("pitch_factor", _F64),
        pa.field("number_of_xray_sources", pa.int32()),
        pa.field("sources", pa.list_(pa.struct([
            ("id", _STR), ("kvp_kV", _F64), ("max_tube_current_mA", _F64), ("tube_current_mA", _F64),
            ("exposure_time_per_rotation_s", _F64),
        ]))),
        pa.field("ctdivol_mGy", _F64),
        pa.field("phantom", _STR),
        *_code_fields("phantom_code"),
        pa.field("dlp_mGycm", _F64),
        pa.field("ssde_mGy", _F64),  # as stated by the scanner
        pa.field("water_equivalent_diameter_mm", _F64),
        pa.field("effective_dose_mSv", _F64),
        pa.field("dose_check_ctdivol_alert_mGy", _F64),
        pa.field("dose_check_dlp_alert_mGycm", _F64),
        pa.field("dose_check_ctdivol_notification_mGy", _F64),
        pa.field("dose_check_dlp_notification_mGycm", _F64),
        pa.field("dose_check_ctdivol_forward_estimate_mGy", _F64),
        pa.field("dose_check_dlp_forward_estimate_mGycm", _F64),
        pa.field("is_timing_run", pa.bool_(), nullable=False),
        pa.field("body_region", _STR),  # "head" | "body": which phantom the registry compares on
        pa.field("normalised_phantom", _STR),  # "head16" | "body32"
        pa.field("normalised_ctdivol_mGy", _F64),
        pa.field("normalised_dlp_mGycm", _F64),
        pa.field("ssde_estimate_mGy", _F64),  # stated SSDE, else AAPM 204/220 where the size is known
        pa.field("start_datetime_utc_offset_min", _OFFSET),
    ],
    metadata={"dosereg.schema": "dosereg.registry.events/1"},
)

# The nested dicts of the de-identified study and event rows (see nested_schema).
STUDY_GROUPS: dict[str, Any] = {
    "registry_profile": {}, "patient": {}, "equipment": {},
    "report": {"procedure_reported": {}, "has_intent": {}, "source_of_dose_information": {}},
    "completeness": {}, "classification": {}, "flags": {},
}
EVENT_GROUPS: dict[str, Any] = {
    "target_region": {}, "acquisition_type_code": {}, "procedure_context": {}, "phantom_code": {},
    "dose_check": {},
}

FLAG_COLUMNS = ("accession_number", "study_instance_uid", "patient_id", "study_date",
                "registry_code", "nomenclature_code", "reasons", "reported_at", "receipt")
FLAG_SCHEMA = pa.schema([pa.field(name, _STR) for name in FLAG_COLUMNS],
                        metadata={"dosereg.schema": "dosereg.flags/1"})


# -- typed values: the record's ISO text as Arrow dates, times and timestamps -----------------
_ISO = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?")


def _parts(value: Any) -> tuple[datetime, int | None] | None:
    """``YYYY[-MM[-DD[THH:MM[:SS[.f]]]]][Z|+hh:mm]`` -> (wall-clock datetime, UTC offset in minutes).

    A date truncated by ``date_precision`` (``2024-03``, ``2024``) is the first day of its period.
    """
    if not isinstance(value, str):
        return None
    m = _ISO.fullmatch(value.strip())
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        wall = datetime(int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0),
                        int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None
    offset: int | None = None
    if tz == "Z":
        offset = 0
    elif tz:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 60 + int(digits[2:]))
    return wall, offset


def as_date(value: Any) -> date | None:
    parts = _parts(value)
    return parts[0].date() if parts else None


def as_time(value: Any) -> time | None:
    """``HH:MM[:SS[.ffffff]]`` -> a time of day (None for anything else)."""
    parts = _parts(f"2000-01-01T{value}") if isinstance(value, str) else None
    return parts[0].time() if parts else None


def as_local(value: Any) -> tuple[datetime | None, int | None]:
    """A date-time as stated (wall clock) and its stated UTC offset in minutes."""
    parts = _parts(value)
    return parts if parts else (None, None)


def as_utc(value: Any) -> datetime | None:
    """A date-time as an instant in UTC (a stated offset applied; none stated: taken as UTC)."""
    parts = _parts(value)
    if parts is None:
        return None
    wall, offset = parts
    return (wall - timedelta(minutes=offset or 0)).replace(tzinfo=timezone.utc)


def as_count(value: Any, column: str) -> int | None:
    """A count stated as a number: an integer when it is a whole one, else null (logged)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        whole = int(value)
    except (TypeError, ValueError, OverflowError):
        whole = None
    if whole is None or whole != value:
        log.warning("column %s: %r is not a whole number; written as null", column, value)
        return None
    return whole


def study_row(d: dict[str, Any]) -> dict[str, Any]:
    """A de-identified study as :data:`STUDY_SCHEMA` types it (a copy: the JSON files keep the text)."""
    row = dict(d)
    row["study_date"] = as_date(d.get("study_date"))
    row["study_time"] = as_time(d.get("study_time"))
    report = d.get("report")
    if isinstance(report, dict):
        report = dict(report)
        for key in ("start_datetime", "end_datetime"):
            report[key], report[f"{key}_utc_offset_min"] = as_local(report.get(key))
        row["report"] = report
    objects = d.get("dose_objects")
    if isinstance(objects, list):
        row["dose_objects"] = [{**o, "received_at": as_utc(o.get("received_at"))} if isinstance(o, dict) else o
                               for o in objects]
    return row


def event_row(e: dict[str, Any]) -> dict[str, Any]:
    """A de-identified event as :data:`EVENT_SCHEMA` types it (a copy)."""
    row = dict(e)
    row["start_datetime"], row["start_datetime_utc_offset_min"] = as_local(e.get("start_datetime"))
    row["number_of_xray_sources"] = as_count(e.get("number_of_xray_sources"), "number_of_xray_sources")
    return row


def flatten(d: dict[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested dicts flattened with ``_``; lists and scalars kept as they are."""
    if out is None:
        out = {}
    for key, value in d.items():
        if value.__class__ is dict:
            flatten(value, f"{prefix}{key}_", out)
        else:
            out[prefix + key if prefix else key] = value
    return out


def _coerce(value: Any, f: pa.Field) -> Any:
    """A value that does not fit its column's type: converted when that is lossless, else null (logged)."""
    if value is None:
        return None
    t = f.type
    try:
        if pa.types.is_floating(t):
            out: Any = float(value)
        elif pa.types.is_integer(t):
            out = int(value)
            if out != value and not isinstance(value, str):
                raise ValueError("not a whole number")
        elif pa.types.is_boolean(t):
            out = value if isinstance(value, bool) else None
        elif pa.types.is_string(t):
            out = value if isinstance(value, str) else str(value)
        else:
            pa.array([value], type=t)
            out = value
    except (TypeError, ValueError, OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        log.warning("column %s: value of type %s does not fit %s; written as null", f.name,
                    type(value).__name__, t)
        return None
    return out


def nested_schema(flat: pa.Schema, groups: dict[str, Any]) -> pa.Schema:
    """The schema of the *unflattened* rows whose :func:`flatten` gives ``flat``.

    ``groups`` names the nested dicts: ``{"patient": {}, "report": {"has_intent": {}}}``
    means ``patient_sex`` is ``row["patient"]["sex"]`` and ``report_has_intent_value`` is
    ``row["report"]["has_intent"]["value"]``. Arrow converts such rows to struct columns
    in C++, much faster than flattening each row in Python.
    """

    def build(fields_: list[pa.Field], groups_: dict[str, Any]) -> list[pa.Field]:
        out: list[pa.Field] = []
        done: set[str] = set()
        for f in fields_:
            group = next((g for g in groups_ if f.name.startswith(g + "_")), None)
            if group is None:
                out.append(f)
            elif group not in done:
                done.add(group)
                children = [pa.field(c.name[len(group) + 1:], c.type, c.nullable, c.metadata)
                            for c in fields_ if c.name.startswith(group + "_")]
                out.append(pa.field(group, pa.struct(build(children, groups_[group]))))
        return out

    return pa.schema(build(list(flat), groups), metadata=flat.metadata)


def _flatten_batch(table: pa.Table, flat: pa.Schema) -> pa.RecordBatch:
    while any(pa.types.is_struct(t) for t in table.schema.types):
        table = table.flatten()
    table = table.rename_columns([n.replace(".", "_") for n in table.column_names])
    return table.select(flat.names).cast(flat).combine_chunks().to_batches()[0]


class ChunkedParquet:
    """Rows in, one row group of ``chunk_rows`` rows at a time out to one Parquet file (opened on
    the first flush).

    Rows are flat dicts (:meth:`append`) or, with ``groups`` (see :func:`nested_schema`),
    the unflattened dicts (:meth:`append_nested`), which Arrow flattens. Nested rows are held
    as Python dicts only :data:`CONVERT_ROWS` at a time, then kept as an Arrow record batch
    (columnar, several times smaller) until their row group is written: at ``chunk_rows`` rows
    or :data:`CHUNK_BYTES` bytes, so what a writer holds stays small whatever the rows are like.
    Rows keep their order.
    """

    def __init__(self, path: Path, schema: pa.Schema, chunk_rows: int | None = None,
                 groups: dict[str, Any] | None = None,
                 typed: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.path = path
        self._typed = typed  # a row's values as the schema types them (:func:`study_row`, :func:`event_row`)
        self.schema = schema
        self.rows = 0
        self._names = schema.names
        self._cols: dict[str, list[Any]] = {n: [] for n in self._names}
        self._nested_rows: list[dict[str, Any]] = []
        self._nested = nested_schema(schema, groups) if groups is not None else None
        self._batches: list[pa.RecordBatch] = []  # converted rows waiting for their row group
        self._batch_bytes = 0
        self._pending = 0
        self._chunk = chunk_rows or CHUNK_ROWS
        self._writer: pq.ParquetWriter | None = None

    def append(self, row: dict[str, Any]) -> None:
        if self._nested_rows:
            self._convert_nested()  # the rows before it first, so the order is kept
        cols = self._cols
        for name in self._names:
            cols[name].append(row.get(name))
        self._added()

    def append_nested(self, row: dict[str, Any]) -> None:
        """One unflattened row (``flatten(row)`` would be the flat row); needs ``groups``."""
        if self._nested is None:
            raise ValueError("append_nested needs the nested groups of the schema")
        if self._cols[self._names[0]]:
            self._convert_flat()  # the rows before it first, so the order is kept
        self._nested_rows.append(self._typed(row) if self._typed is not None else row)
        if len(self._nested_rows) >= CONVERT_ROWS:
            self._convert_nested()
        self._added()

    def _added(self) -> None:
        self._pending += 1
        self.rows += 1
        if self._pending >= self._chunk or self._batch_bytes >= CHUNK_BYTES:
            self.flush()

    def _keep(self, batch: pa.RecordBatch) -> None:
        self._batches.append(batch)
        self._batch_bytes += batch.nbytes

    def _convert_nested(self) -> None:
        rows, self._nested_rows = self._nested_rows, []
        if not rows:
            return
        try:
            table = pa.Table.from_batches([pa.RecordBatch.from_pylist(rows, schema=self._nested)])
            self._keep(_flatten_batch(table, self.schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
            # a value of the wrong type: the flat path converts or nulls it value by value (logged)
            cols = self._cols
            for row in rows:
                flat = flatten(row)
                for name in self._names:
                    cols[name].append(flat.get(name))
            self._convert_flat()

    def _convert_flat(self) -> None:
        if not self._cols[self._names[0]]:
            return
        try:
            batch = pa.RecordBatch.from_pydict(self._cols, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            batch = pa.RecordBatch.from_pydict(
                {f.name: [_coerce(v, f) for v in self._cols[f.name]] for f in self.schema}, schema=self.schema)
        self._keep(batch)
        self._cols = {n: [] for n in self._names}

    def flush(self) -> None:
        """Write the rows held as one row group (and open the file, also when there are none)."""
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        self._convert_nested()
        self._convert_flat()
        if self._batches:
            table = pa.Table.from_batches(self._batches, schema=self.schema)
            self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._batches = []
        self._batch_bytes = 0
        self._pending = 0

    def close(self) -> None:
        """Write what is buffered and close; an empty file (schema only) when there were no rows."""
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flags_row(d: dict[str, Any]) -> dict[str, Any]:
    """The billing row of an evaluated study (:data:`FLAG_COLUMNS`, reasons in words)."""
    flags = d.get("flags") or {}
    reasons = [*(flags.get("registry_reasons") or ()), *(flags.get("nomenclature_reasons") or ())]
    return {
        "accession_number": d.get("accession_number"),
        "study_instance_uid": d.get("study_instance_uid"),
        "patient_id": (d.get("patient") or {}).get("id"),
        "study_date": d.get("study_date"),
        "registry_code": flags.get("registry_code"),
        "nomenclature_code": flags.get("nomenclature_code"),
        "reasons": "; ".join(str(r) for r in reasons),
    }


class FlagsWriter:
    """The billing flags: the same rows to ``<batch>.csv`` (spreadsheet) and ``.parquet``."""

    def __init__(self, csv_path: Path, parquet_path: Path) -> None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        self.csv_path = csv_path
        self._fh = open(csv_path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(FLAG_COLUMNS)
        self._parquet = ChunkedParquet(parquet_path, FLAG_SCHEMA)
        self.rows = 0

    def append(self, row: dict[str, Any]) -> None:
        self._csv.writerow(["" if row.get(c) is None else row.get(c) for c in FLAG_COLUMNS])
        self._parquet.append(row)
        self.rows += 1

    def close(self) -> None:
        self._fh.close()
        self._parquet.close()


# = json.dumps(study, ensure_ascii=False), built once; study dicts are trees (no cycle check needed)
_STUDY_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False)


class JsonStudies:
    """A JSON object of ``header``'s members and a ``studies`` array, written one study at a time
    (``submission.json``). NaN and Infinity are refused (not JSON)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "w", encoding="utf-8")
        head = json.dumps(header, ensure_ascii=False, indent=1, allow_nan=False)
        self._fh.write(head[:-2] + ',\n "studies": [')
        self._first = True
        self.rows = 0

    def append(self, study: dict[str, Any]) -> None:
        self._fh.write(("\n  " if self._first else ",\n  ") + _STUDY_JSON.encode(study))
        self._first = False
        self.rows += 1

    def close(self) -> None:
        self._fh.write("\n ]\n}\n")
        self._fh.close()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

