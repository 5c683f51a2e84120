"""Typed dose-report model: the study record of docs/study-record.md.

The classes follow the DICOM templates they are read from (PS3.16):

* :class:`StudyRecord` -- header modules plus TID 10011 "CT Radiation Dose" (root 113701)
* :class:`ReportInfo` -- TID 10011 rows "Procedure reported", "Has Intent", start/end of
  X-Ray irradiation, "Source of Dose Information"
* :class:`Event` -- TID 10013 "CT Irradiation Event Data" (container 113819)
* :class:`Source` -- TID 10013 "CT X-Ray Source Parameters" (container 113831)
* :class:`DoseCheck` -- TID 10015 "CT Dose Check Details" (113900 / 113908)
* the accumulated totals come from TID 10012 "CT Accumulated Dose Data" (113811)

All are frozen dataclasses; ``to_dict`` gives the JSON form of the contract, and
``from_dict`` reads it back (the catalog stores that form). Values are kept exactly as
stated by the object; absent values are ``None``.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, TypeVar

SCHEMA_ID = "dosereg.study/1"
_R = TypeVar("_R")


# Field annotations whose values are plain JSON scalars (copied as they are by ``to_dict``).
_SCALAR_ANNOTATIONS = frozenset({"str", "str | None", "int", "int | None", "float", "float | None", "bool"})
_FIELD_NAMES: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _field_names(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every field name, the names of fields that may hold records or lists), cached per class."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        fs = fields(cls)
        names = _FIELD_NAMES[cls] = (
            tuple(f.name for f in fs),
            tuple(f.name for f in fs if f.type not in _SCALAR_ANNOTATIONS),
        )
    return names


@dataclass(frozen=True)
class _Construction:
    defaults: tuple[tuple[str, Any], ...]  # (field name, default or _REQUIRED) in declaration order
    order: tuple[str, ...]  # the field names in declaration order
    names: frozenset[str]
    required: frozenset[str]


_REQUIRED = object()
_CONSTRUCTION: dict[type, _Construction] = {}


def _construction(cls: type) -> _Construction:
    spec = _CONSTRUCTION.get(cls)
    if spec is None:
        fs = fields(cls)
        # a field with a default factory counts as required here (cls(**values) runs the factory)
        defaults = tuple((f.name, f.default if f.default is not MISSING else _REQUIRED) for f in fs)
        spec = _CONSTRUCTION[cls] = _Construction(
            defaults, tuple(n for n, _ in defaults), frozenset(n for n, _ in defaults),
            frozenset(n for n, v in defaults if v is _REQUIRED))
    return spec


def _build(cls: type[_R], values: dict[str, Any]) -> _R:
    """``cls(**values)``, without running the frozen dataclass ``__init__``.

    That ``__init__`` sets each field with ``object.__setattr__``, which is most of the cost of
    reading a catalog of 100,000 studies; this fills the instance dict in one go instead, with
    the same result (absent fields take their defaults). Unknown or missing required fields
    go through ``cls(**values)``, which raises its usual TypeError (or runs a default factory).
    """
    spec = _construction(cls)
    obj = object.__new__(cls)
    if tuple(values) == spec.order:  # the usual case: every field, in order (as to_dict wrote them)
        obj.__dict__.update(values)
        return obj
    keys = values.keys()
    if not (keys <= spec.names and spec.required <= keys):
        return cls(**values)
    obj.__dict__.update({name: values[name] if name in values else default for name, default in spec.defaults})
    return obj


class _Record:
    """Mixin: ordered ``to_dict`` over the dataclass fields (the one record-to-dict of the model)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (docs/study-record.md): the fields in declaration order, records below
        as their dicts and lists of them as lists."""
        # Hot path (export, catalog): the instance dict holds exactly the fields, in declaration
        # order (the dataclass __init__ and _build set them in that order), so copy it and
        # convert only the fields that can hold records or lists.
        all_names, nested = _field_names(type(self))
        d = self.__dict__.copy()
        if len(d) != len(all_names):  # something else was stored on the instance: the fields only
            d = {name: getattr(self, name) for name in all_names}
        for name in nested:
            value = d[name]
            if value is not None:
                d[name] = _plain(value)
        return d


def _plain(value: Any) -> Any:
    """A field value in its JSON form: a record as its :meth:`_Record.to_dict`, a list as a list."""
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Code(_Record):
    """A coded concept (value, coding scheme designator, meaning)."""

    value: str | None
    scheme: str | None
    meaning: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Code | None:
        if d is None:
            return None
        code = object.__new__(cls)  # = cls(value, scheme, meaning), without the frozen __init__ (see _build)
        code.__dict__.update(value=d.get("value"), scheme=d.get("scheme"), meaning=d.get("meaning"))
        return code


@dataclass(frozen=True)
class ErrorInfo(_Record):
    code: str
    message: str


@dataclass(frozen=True)
class Patient(_Record):
    id: str | None = None
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None  # "M" | "F" | "O" | None
    age_years: float | None = None
    weight_kg: float | None = None
    height_m: float | None = None


@dataclass(frozen=True)
class Equipment(_Record):
    manufacturer: str | None = None
    model: str | None = None
    station_name: str | None = None
    serial_number: str | None = None
    software_versions: str | None = None
    institution_name: str | None = None
    device_observer_uid: str | None = None


@dataclass(frozen=True)
class DoseObjectRef(_Record):
    sop_instance_uid: str
    sop_class_uid: str
    kind: str  # "rdsr" | "enhanced_sr" | "comprehensive_sr" | "philips_dose_info"
    received_at: str | None = None


@dataclass(frozen=True)
class ReportInfo(_Record):
    procedure_reported: Code | None = None  # (121058, DCM, "Procedure reported")
    has_intent: Code | None = None  # (363703001, SCT, "Has Intent")
    start_datetime: str | None = None  # (113809, DCM, "Start of X-Ray Irradiation")
    end_datetime: str | None = None  # (113810, DCM, "End of X-Ray Irradiation")
    source_of_dose_information: Code | None = None  # (113854, DCM)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ReportInfo | None:
        if d is None:
            return None
        return cls(
            procedure_reported=Code.from_dict(d.get("procedure_reported")),
            has_intent=Code.from_dict(d.get("has_intent")),
            start_datetime=d.get("start_datetime"),
            end_datetime=d.get("end_datetime"),
            source_of_dose_information=Code.from_dict(d.get("source_of_dose_information")),
        )


@dataclass(frozen=True)
class Source(_Record):
    """TID 10013 CT X-Ray Source Parameters (113831), one per tube."""

    id: str | None = None  # (113832) Identification of the X-Ray Source
    kvp_kV: float | None = None  # (113733) KVP
    max_tube_current_mA: float | None = None  # (113833) Maximum X-Ray Tube Current
    tube_current_mA: float | None = None  # (113734) X-Ray Tube Current
    exposure_time_per_rotation_s: float | None = None  # (113834)


@dataclass(frozen=True)
class DoseCheck(_Record):
    """TID 10015 CT Dose Check Details: Alert (113900) and Notification (113908) details."""

    ctdivol_alert_mGy: float | None = None  # (113904) CTDIvol Alert Value
    dlp_alert_mGycm: float | None = None  # (113903) DLP Alert Value
    ctdivol_notification_mGy: float | None = None  # (113912) CTDIvol Notification Value
    dlp_notification_mGycm: float | None = None  # (113911) DLP Notification Value
    ctdivol_forward_estimate_mGy: float | None = None  # (113914) CTDIvol Forward Estimate, else (113906) Accumulated
    dlp_forward_estimate_mGycm: float | None = None  # (113913) DLP Forward Estimate, else (113905) Accumulated
    reason: str | None = None  # (113907) Reason for Proceeding
    person: str | None = None  # (113870) Person Name (TID 1020)


ACQUISITION_TYPES = ("spiral", "sequenced", "constant_angle", "stationary", "free", "cone_beam", "unknown")
PHANTOMS = ("head16", "body32", "other")


@dataclass(frozen=True)
class Event(_Record):
    """TID 10013 CT Irradiation Event Data (113819)."""

    irradiation_event_uid: str | None = None  # (113769)
    acquisition_protocol: str | None = None  # (125203)
    target_region: Code | None = None  # (123014)
    acquisition_type: str = "unknown"  # from (113820) CT Acquisition Type
    acquisition_type_code: Code | None = None
    procedure_context: Code | None = None  # (G-C32C, SRT / 408730004, SCT)
    start_datetime: str | None = None  # (111526) DateTime Started
    exposure_time_s: float | None = None  # (113824)
    scanning_length_mm: float | None = None  # (113825)
    nominal_single_collimation_mm: float | None = None  # (113826)
    nominal_total_collimation_mm: float | None = None  # (113827)
    pitch_factor: float | None = None  # (113828)
    number_of_xray_sources: float | None = None  # (113823)
    sources: tuple[Source, ...] = ()
    ctdivol_mGy: float | None = None  # (113830) Mean CTDIvol
    phantom: str | None = None  # from (113835) CTDIw Phantom Type
    phantom_code: Code | None = None
    dlp_mGycm: float | None = None  # (113838)
    ssde_mGy: float | None = None  # (113930) Size Specific Dose Estimation
    water_equivalent_diameter_mm: float | None = None  # (113987 / 113980)
    effective_dose_mSv: float | None = None  # (113839)
    dose_check: DoseCheck | None = None
    # (the JSON event's is_timing_run is a registry verdict: registry_export.rules fills it in)
    comment: str | None = None  # (121106)
    # Extra (the contract allows additions): Philips dose screens have no event UID and
    # are keyed by the series number of the acquisition (docs/merging.md).
    series_number: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """The event of a JSON study record. Keys that are no field are ignored: the
        ``is_timing_run`` verdict the JSON record carries (and catalogs written before it
        left the model hold)."""
        names = _field_names(cls)[0]
        # the keys of a catalog's event are the fields in order: copy it and replace the nested values
        n = len(d)
        stored = n == len(_STORED_EVENT_KEYS) and tuple(d) == _STORED_EVENT_KEYS
        if stored or (n == len(names) and tuple(d) == names):
            kw: dict[str, Any] = dict(d)
        else:
            kw = {name: d[name] for name in names if name in d}
        for key in ("target_region", "acquisition_type_code", "procedure_context", "phantom_code"):
            kw[key] = Code.from_dict(d.get(key))
        kw["sources"] = tuple(_build(Source, s) for s in d.get("sources") or ())
        kw["dose_check"] = _build(DoseCheck, d["dose_check"]) if d.get("dose_check") else None
        kw["acquisition_type"] = d.get("acquisition_type") or "unknown"
        if not stored:
            return _build(cls, kw)
        # Written while the model held is_timing_run (catalogs of earlier versions): filled in
        # whole and the key dropped after, since a dict with a key deleted is copied item by
        # item (the instance's __dict__.update would be, for every event read), not cloned.
        event = object.__new__(cls)
        event.__dict__.update(kw)
        del event.__dict__["is_timing_run"]
        return event


_EVENT_NAMES = tuple(f.name for f in fields(Event))
# An event as catalogs stored it while the model held is_timing_run (after dose_check).
_STORED_EVENT_KEYS = (*_EVENT_NAMES[:_EVENT_NAMES.index("dose_check") + 1], "is_timing_run",
                      *_EVENT_NAMES[_EVENT_NAMES.index("dose_check") + 1:])


@dataclass(frozen=True)
class Problem(_Record):
    """Something wrong with one element of the object, found while reading it.

    ``path`` is the study-record path (``events[2].ctdivol_mGy``), ``value`` the
    offending value as text and ``reason`` what is wrong. Completeness evaluation
    reports these as ``invalid`` elements; the rest of the report is kept.
    """

    path: str
    value: str | None
    reason: str


@dataclass(frozen=True)
class StudyRecord(_Record):
    """A study record built from one dose object, or merged from all objects of a study."""

    schema: str = SCHEMA_ID
    error: ErrorInfo | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    requested_procedure_description: str | None = None
    procedure_codes: tuple[Code, ...] = ()
    modality: str | None = None
    patient: Patient = field(default_factory=Patient)
    equipment: Equipment = field(default_factory=Equipment)
    dose_objects: tuple[DoseObjectRef, ...] = ()
    report: ReportInfo | None = None
    total_events: int | None = None
    total_dlp_mGycm: float | None = None
    reported_total_dlp_mGycm: float | None = None
    events: tuple[Event, ...] = ()
    # Extra fields (the contract allows additions):
    problems: tuple[Problem, ...] = ()  # elements that could not be read, with reasons
    source_file: str | None = None  # where the object was read from (extract / import)
    series_number: int | None = None  # Philips screens: events keyed by series number
    dose_screens: tuple[DoseObjectRef, ...] = ()  # Philips screens kept but not counted

    def with_changes(self, **changes: Any) -> StudyRecord:
        return replace(self, **changes)

    def to_json(self, **kw: Any) -> str:
        """The JSON text of :meth:`to_dict`. NaN and Infinity are refused (``allow_nan=False``):
        they are not JSON, and a record never holds them, so one that does fails loudly."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyRecord:
        err = d.get("error")
        return _build(cls, dict(
            schema=d.get("schema", SCHEMA_ID),
            error=ErrorInfo(**err) if err else None,
            study_instance_uid=d.get("study_instance_uid"),
            accession_number=d.get("accession_number"),
            study_date=d.get("study_date"),
            study_time=d.get("study_time"),
            study_description=d.get("study_description"),
            requested_procedure_description=d.get("requested_procedure_description"),
            procedure_codes=tuple(c for c in (Code.from_dict(x) for x in d.get("procedure_codes") or ()) if c),
            modality=d.get("modality"),
            patient=_build(Patient, d.get("patient") or {}),
            equipment=_build(Equipment, d.get("equipment") or {}),
            dose_objects=tuple(_build(DoseObjectRef, o) for o in d.get("dose_objects") or ()),
            report=ReportInfo.from_dict(d.get("report")),
            total_events=d.get("total_events"),
            total_dlp_mGycm=d.get("total_dlp_mGycm"),
            reported_total_dlp_mGycm=d.get("reported_total_dlp_mGycm"),
            events=tuple(Event.from_dict(e) for e in d.get("events") or ()),
            problems=tuple(Problem(**p) for p in d.get("problems") or ()),
            source_file=d.get("source_file"),
            series_number=d.get("series_number"),
            dose_screens=tuple(_build(DoseObjectRef, o) for o in d.get("dose_screens") or ()),
        ))


#: Where an exam without a dose report was learned from (docs/reconcile.md).
EXAM_SOURCES = ("pacs", "ris")


@dataclass(frozen=True)
class ExamRecord(StudyRecord):
    """A CT exam the PACS (C-FIND) or the RIS (a CSV export) knows and no dose object came for.

    A study record like any other, with ``dose_objects`` and ``events`` empty, so that the rules
    evaluate it (G9326, "no dose report received") and the non-patient rules apply to what is
    known of it; ``source`` says where it was learned from. A subclass rather than a field of
    :class:`StudyRecord`, so that the JSON (and the version keys and fingerprints made of it) of
    every record with a dose object stays byte for byte what it was.
    """

    source: str = "pacs"  # one of EXAM_SOURCES


def error_record(code: str, message: str, **header: Any) -> StudyRecord:
    """A record for an input that is not a usable CT dose object."""
    return StudyRecord(error=ErrorInfo(code, message), **header)
