"""One encoded dose object in, one :class:`StudyRecord` out.

Dispatch by SOP Class (field experience, "The objects that arrive"):

* X-Ray Radiation Dose SR, Enhanced SR, Comprehensive SR, Comprehensive 3D SR: the
  TID 10011 tree (:mod:`.tid10011`), once the root concept (113701) and "Procedure
  reported" say it is a CT dose report; projection X-ray, fluoroscopy and mammography
  reports are refused with the reason.
* Secondary Capture with Image Type DOSE_INFO: a Philips dose screen (:mod:`.philips`).
* Patient Radiation Dose SR: accepted but not parsed yet (a summary, not a CT report).
* Anything else: refused.

The header (patient, study, equipment) is read here for every kind.
"""

from __future__ import annotations

from typing import Any

from .dicom_bytes import DEFAULT_LIMITS, Dataset, DicomReadError, ExtractLimits, ParsedFile, parse, tag_str
from .merge import finite_sum, renumber_events, start_order
from .model import Code, DoseObjectRef, Equipment, Event, Patient, Problem, StudyRecord, error_record
from .sr import CONCEPT_NAME_CODE_SEQUENCE, ContentItem, first_code, read_code
from .values import (
    TextDecoder,
    ValueProblem,
    age_from_dates,
    age_from_patient_age,
    ascii_text,
    clean_name,
    clean_text,
    parse_da,
    parse_ds,
    parse_tm,
)

RDSR = "1.2.840.10008.5.1.4.1.1.88.67"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PATIENT_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.73"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SR_KINDS = {RDSR: "rdsr", ENHANCED_SR: "enhanced_sr", COMPREHENSIVE_SR: "comprehensive_sr",
            COMPREHENSIVE_3D_SR: "comprehensive_sr"}

# Header attributes (PS3.6 tags)
SPECIFIC_CHARACTER_SET = 0x00080005
IMAGE_TYPE = 0x00080008
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
ACCESSION_NUMBER = 0x00080050
MODALITY = 0x00080060
MANUFACTURER = 0x00080070
INSTITUTION_NAME = 0x00080080
STATION_NAME = 0x00081010
STUDY_DESCRIPTION = 0x00081030
PROCEDURE_CODE_SEQUENCE = 0x00081032
MODEL_NAME = 0x00081090
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
PATIENT_AGE = 0x00101010
PATIENT_SIZE = 0x00101020
PATIENT_WEIGHT = 0x00101030
DEVICE_SERIAL_NUMBER = 0x00181000
SOFTWARE_VERSIONS = 0x00181020
STUDY_INSTANCE_UID = 0x0020000D
REQUESTED_PROCEDURE_DESCRIPTION = 0x00321060
REQUESTED_PROCEDURE_CODE_SEQUENCE = 0x00321064
REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
REFERENCED_REQUEST_SEQUENCE = 0x0040A370
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003


class Header:
    """Typed access to top-level header attributes, collecting problems by record path."""

    def __init__(self, parsed: ParsedFile) -> None:
        self.ds: Dataset = parsed.dataset
        self.meta = parsed.meta
        self.little = parsed.little_endian
        cs = self.ds.get(SPECIFIC_CHARACTER_SET)
        self.charset_problems: list[tuple[str, str]] = []  # (value, reason), from every decoder of the object
        self.text = TextDecoder(cs[1] if cs and cs[0] != "SQ" else None, self.charset_problems)
        self.problems: list[Problem] = []

    def all_problems(self) -> tuple[Problem, ...]:
        """The header's problems, then the character set's (on ``header.SpecificCharacterSet``)."""
        seen: set[tuple[str, str]] = set()
        charset: list[Problem] = []
        for value, reason in self.charset_problems:
            if (value, reason) not in seen:
                seen.add((value, reason))
                charset.append(Problem("header.SpecificCharacterSet", value, reason))
        return tuple(self.problems) + tuple(charset)

    def raw(self, tag: int, ds: Dataset | None = None) -> Any:
        el = (self.ds if ds is None else ds).get(tag)
        return el[1] if el is not None else None

    def text_of(self, tag: int, ds: Dataset | None = None) -> str | None:
        raw = self.raw(tag, ds)
        if raw is None or isinstance(raw, list):
            return None
        return clean_text(self.text(raw))

    def uid(self, tag: int, ds: Dataset | None = None) -> str | None:
        raw = self.raw(tag, ds)
        if raw is None or isinstance(raw, list):
            return None
        return clean_text(ascii_text(raw))

    def name(self, tag: int) -> str | None:
        raw = self.raw(tag)
        if raw is None or isinstance(raw, list):
            return None
        return clean_name(self.text(raw, person_name=True))

    def typed(self, tag: int, path: str, parse_fn: Any, ds: Dataset | None = None,
              what: str | None = None, problems: list[Problem] | None = None) -> Any:
        """``parse_fn`` of the element's text (in ``ds``, else the top level); a value that
        breaks it is a Problem on ``path`` (named ``what``, else by its tag), added to
        ``problems`` (else this header's), and gives None."""
        raw = self.raw(tag, ds)
        if raw is None or isinstance(raw, list):
            return None
        text = ascii_text(raw)
        if not text:
            return None
        try:
            return parse_fn(text)
        except ValueProblem as exc:
            (self.problems if problems is None else problems).append(
                Problem(path, text, f"{what or tag_str(tag)}: {exc}"))
            return None


def _sequence(ds: Dataset, tag: int) -> list[Dataset]:
    el = ds.get(tag)
    return el[1] if el is not None and el[0] == "SQ" else []


def read_header(h: Header) -> dict[str, Any]:
    """Patient, study and equipment attributes common to every kind of dose object."""
    ds = h.ds
    study_date = h.typed(STUDY_DATE, "study_date", parse_da)
    birth = h.typed(PATIENT_BIRTH_DATE, "patient.birth_date", parse_da)
    sex_raw = h.text_of(PATIENT_SEX)
    sex: str | None = None
    if sex_raw:
        if sex_raw.upper() in ("M", "F", "O"):
            sex = sex_raw.upper()
        else:
            h.problems.append(Problem("patient.sex", sex_raw, f"Patient's Sex {sex_raw!r} is not M, F or O"))
    age = age_from_dates(birth, study_date)
    if age is None:
        age = h.typed(PATIENT_AGE, "patient.age_years", age_from_patient_age)

    # Procedure codes: Procedure Code Sequence, else the Requested Procedure Code Sequence of
    # Request Attributes / Referenced Request (docs/study-record.md), de-duplicated on (value, scheme).
    codes: list[Code] = [read_code(item, h.text) for item in _sequence(ds, PROCEDURE_CODE_SEQUENCE)]
    requests = _sequence(ds, REQUEST_ATTRIBUTES_SEQUENCE) + _sequence(ds, REFERENCED_REQUEST_SEQUENCE)
    if not codes:
        for req in requests:
            codes.extend(read_code(item, h.text) for item in _sequence(req, REQUESTED_PROCEDURE_CODE_SEQUENCE))
    seen: set[tuple[str | None, str | None]] = set()
    unique: list[Code] = []
    for c in codes:
        if c.value is None or (c.value, c.scheme) in seen:
            continue
        seen.add((c.value, c.scheme))
        unique.append(c)

    requested = h.text_of(REQUESTED_PROCEDURE_DESCRIPTION)
    if requested is None:
        for req in requests:
            requested = h.text_of(REQUESTED_PROCEDURE_DESCRIPTION, req)
            if requested:
                break

    return dict(
        study_instance_uid=h.uid(STUDY_INSTANCE_UID),
        accession_number=h.text_of(ACCESSION_NUMBER),
        study_date=study_date,
        study_time=h.typed(STUDY_TIME, "study_time", parse_tm),
        study_description=h.text_of(STUDY_DESCRIPTION),
        requested_procedure_description=requested,
        procedure_codes=tuple(unique),
        modality=h.text_of(MODALITY),
        patient=Patient(
            id=h.text_of(PATIENT_ID),
            name=h.name(PATIENT_NAME),
            birth_date=birth,
            sex=sex,
            age_years=age,
            weight_kg=h.typed(PATIENT_WEIGHT, "patient.weight_kg", parse_ds),
            height_m=h.typed(PATIENT_SIZE, "patient.height_m", parse_ds),
        ),
        equipment=Equipment(
            manufacturer=h.text_of(MANUFACTURER),
            model=h.text_of(MODEL_NAME),
            station_name=h.text_of(STATION_NAME),
            serial_number=h.text_of(DEVICE_SERIAL_NUMBER),
            software_versions=h.text_of(SOFTWARE_VERSIONS),
            institution_name=h.text_of(INSTITUTION_NAME),
        ),
    )


def _header_only(h: Header | None, source: str) -> dict[str, Any]:
    if h is None:
        return {"source_file": source}
    try:
        hdr = read_header(h)
    except Exception:  # pragma: no cover - a header that cannot even be read
        return {"source_file": source}
    return {
        "study_instance_uid": hdr["study_instance_uid"], "accession_number": hdr["accession_number"],
        "study_date": hdr["study_date"], "modality": hdr["modality"], "source_file": source,
    }


def _truncated(exc: DicomReadError, h: Header | None, data: bytes, source: str) -> StudyRecord:
    """The record of a file cut short: every header value read before the cut (a physicist can
    tell which study it was: study UID, accession number, patient, scanner), and where the cut is."""
    if h is None and exc.partial is not None:
        try:
            h = Header(exc.partial)
        except Exception:  # pragma: no cover - what was read cannot even make a header
            h = None
    size = exc.size if exc.size is not None else len(data)
    where = f"the inflated dataset ends at byte {size}" if exc.inflated else f"the file ends at byte {size}"
    message = f"{source}: {exc.message} (cut at byte {size}: {where})"
    header: dict[str, Any] = {"source_file": source}
    if h is not None:
        try:
            header.update(read_header(h))
        except Exception:  # pragma: no cover - a value cut in the middle that no reader foresaw
            header.update(_header_only(h, source))
    return error_record("truncated", message, **header)


def extract_bytes(data: bytes, *, source: str = "<bytes>", received_at: str | None = None,
                  limits: ExtractLimits = DEFAULT_LIMITS) -> StudyRecord:
    """Parse one encoded object (DICOM Part 10 bytes) within ``limits``. Never raises.

    Every failure is an error record naming the file, the element and the reason: the
    reader's own (``not_dicom``, ``truncated``, ``malformed``, ...), and, as a last safety
    net, anything else raised while reading (``malformed``, with the exception named).
    """
    h: Header | None = None
    try:
        parsed = parse(data, limits, stream=True)
        h = Header(parsed)
        return _extract(h, parsed, source, received_at)
    except DicomReadError as exc:  # the structure (or a content item) cannot be read
        if exc.code == "truncated":
            return _truncated(exc, h, data, source)
        return error_record(exc.code, f"{source}: {exc.message}", source_file=source)
    except Exception as exc:  # the safety net: an object no rule foresaw never escapes as an exception
        what = "the header" if h is not None else "the file structure"
        return error_record(
            "malformed", f"{source}: {what} cannot be read: {type(exc).__name__}: {str(exc)[:200]}",
            **_header_only(h, source))


def _extract(h: Header, parsed: ParsedFile, source: str, received_at: str | None) -> StudyRecord:
    sop_class = h.uid(SOP_CLASS_UID) or (
        clean_text(ascii_text(parsed.meta[MEDIA_STORAGE_SOP_CLASS_UID][1]))
        if MEDIA_STORAGE_SOP_CLASS_UID in parsed.meta else None
    )
    sop_instance = h.uid(SOP_INSTANCE_UID) or (
        clean_text(ascii_text(parsed.meta[MEDIA_STORAGE_SOP_INSTANCE_UID][1]))
        if MEDIA_STORAGE_SOP_INSTANCE_UID in parsed.meta else None
    )
    if sop_class in SR_KINDS:
        return _extract_sr(h, parsed, sop_class, sop_instance, source, received_at)
    # No other class is read through its Content Sequence (a Philips screen's values are
    # header attributes): read it through for errors and what follows it, keep nothing.
    parsed.drain()
    if sop_class == SECONDARY_CAPTURE:
        image_type = (h.text_of(IMAGE_TYPE) or "").upper().split("\\")
        if "DOSE_INFO" in image_type:
            from .philips import read_dose_screen

            screen = read_dose_screen(h)
            return _record(h, read_header(h), sop_class, sop_instance, "philips_dose_info", source,
                           received_at, screen.events, screen.reported_total_dlp_mGycm, screen.problems,
                           report=None, series_number=screen.series_number)
        return error_record(
            "not_dose_report",
            f"{source}: Secondary Capture (0008,0016) without DOSE_INFO in Image Type (0008,0008): "
            "not a dose screen", **_header_only(h, source))
    if sop_class == PATIENT_RADIATION_DOSE_SR:
        return error_record(
            "summary_not_parsed",
            f"{source}: Patient Radiation Dose SR (0008,0016 = {sop_class}) is a summary, "
            "not a CT dose report; kept unparsed", **_header_only(h, source))
    if sop_class is None:
        return error_record("not_dicom", f"{source}: no SOP Class UID (0008,0016): not a DICOM object",
                            source_file=source)
    return error_record(
        "unsupported_sop_class",
        f"{source}: SOP Class UID (0008,0016) {sop_class} is not a dose report class", **_header_only(h, source))


def _extract_sr(h: Header, parsed: ParsedFile, sop_class: str, sop_instance: str | None, source: str,
                received_at: str | None) -> StudyRecord:
    from .tid10011 import NotCTDose, Problems, check_ct, read_report, stream_events

    concept = first_code(h.ds, CONCEPT_NAME_CODE_SEQUENCE, h.text)
    if concept is None or concept.value != "113701":
        parsed.drain()  # a file that is cut short is reported as such first (its items are not kept)
        what = f"'{concept.meaning or concept.value}'" if concept else "no document title"
        return error_record(
            "not_dose_report",
            f"{source}: SR document title (0040,A043) is {what}, not 'X-Ray Radiation Dose Report' (113701, DCM)",
            **_header_only(h, source))
    root = ContentItem(h.ds, h.text, h.little)
    event_problems = Problems()
    events = stream_events(root, event_problems)
    try:
        check_ct(root, has_acquisitions=bool(events))
    except NotCTDose as exc:
        return error_record("not_ct_dose", f"{source}: {exc}", **_header_only(h, source))
    problems = Problems()
    ct = read_report(root, problems, events)
    problems.items.extend(event_problems.items)
    hdr = read_header(h)
    obs = ct.device_observer
    eq: Equipment = hdr["equipment"]
    # The header's equipment module states the scanner; the device observer context
    # fills what the header leaves empty (it names the same device).
    eq = Equipment(
        manufacturer=eq.manufacturer or obs["manufacturer"],
        model=eq.model or obs["model"],
        station_name=eq.station_name or obs["name"],
        serial_number=eq.serial_number or obs["serial_number"],
        software_versions=eq.software_versions,
        institution_name=eq.institution_name,
        device_observer_uid=obs["uid"],
    )
    hdr["equipment"] = eq
    if hdr["study_instance_uid"] is None and ct.scope_study_uid:
        hdr["study_instance_uid"] = ct.scope_study_uid
    return _record(h, hdr, sop_class, sop_instance, SR_KINDS[sop_class], source, received_at, ct.events,
                   ct.reported_total_dlp_mGycm, problems.items, report=ct.report)


def _record(h: Header, hdr: dict[str, Any], sop_class: str, sop_instance: str | None, kind: str, source: str,
            received_at: str | None, events: list[Event], reported_total: float | None,
            problems: list[Problem], **extra: Any) -> StudyRecord:
    """The study record of one object: header, this object, its events in order, totals."""
    if not sop_instance:
        return error_record("malformed", f"{source}: no SOP Instance UID (0008,0018)", **_header_only(h, source))
    order = start_order([e.start_datetime for e in events])
    ordered = tuple(events[i] for i in order)
    dlps = [e.dlp_mGycm for e in ordered if e.dlp_mGycm is not None]
    total = finite_sum(dlps)  # exact (math.fsum), checked like a stated value
    computed = [Problem("total_dlp_mGycm", None, "sum of event DLPs is not finite")] if dlps and total is None else []
    return StudyRecord(
        **hdr,
        dose_objects=(DoseObjectRef(sop_instance, sop_class, kind, received_at),),
        total_events=len(ordered),
        total_dlp_mGycm=total,
        reported_total_dlp_mGycm=reported_total,
        events=ordered,
        problems=h.all_problems() + renumber_events(problems, order) + tuple(computed),
        source_file=source,
        **extra,
    )


def extract_file(path: Any, *, received_at: str | None = None, limits: ExtractLimits = DEFAULT_LIMITS) -> StudyRecord:
    """Read and parse one file; an unreadable file gives an error record naming it. Never raises."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except IsADirectoryError:
        return error_record("unreadable", f"{name}: is a directory, not a file", source_file=name)
    except OSError as exc:
        return error_record("unreadable", f"{name}: cannot read file: {exc.strerror}", source_file=name)
    except (MemoryError, ValueError) as exc:  # a file too large to hold; an unusable path
        return error_record("unreadable", f"{name}: cannot read file: {type(exc).__name__}", source_file=name)
    return extract_bytes(data, source=name, received_at=received_at, limits=limits)
