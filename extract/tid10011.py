"""TID 10011 "CT Radiation Dose" and its children TID 10012 / 10013 / 10014 / 10015.

Each function reads one template from a :class:`ContentItem` and returns typed model
objects. A malformed content item makes that one element ``None`` and adds a
:class:`Problem` (path, value, reason); it never discards the rest of the report
(field experience: "one bad item invalidates that element, never the whole report").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import concepts as C
from .dicom_bytes import DicomReadError
from .model import Code, DoseCheck, Event, Problem, ReportInfo, Source
from .sr import ContentItem, value_repr
from .values import ValueProblem, convert


class NotCTDose(Exception):
    """The object is a dose report, but not of CT (projection X-ray, fluoroscopy, mammography)."""


@dataclass
class Problems:
    items: list[Problem] = field(default_factory=list)

    def add(self, path: str, item: ContentItem | None, reason: str) -> None:
        self.items.append(Problem(path, value_repr(item) if item is not None else None, reason))


@dataclass
class CTDoseReport:
    """What TID 10011 states, before the header is added."""

    report: ReportInfo
    device_observer: dict[str, str | None]
    scope_study_uid: str | None
    total_events_stated: int | None
    reported_total_dlp_mGycm: float | None
    effective_dose_total_mSv: float | None
    events: list[Event]


def _num(parent: ContentItem, code: str, unit: str, path: str, problems: Problems) -> float | None:
    item = parent.find(code)
    if item is None:
        return None
    try:
        value, stated_unit = item.num()
        if value is None:
            return None
        return convert(value, stated_unit, unit)
    except ValueProblem as exc:
        problems.add(path, item, f"{item.name()}: {exc}")
        return None


def _text(parent: ContentItem, code: str) -> str | None:
    item = parent.find(code)
    return item.text_value() if item is not None else None


def _read(parent: ContentItem, code: str, path: str, problems: Problems,
          read: Callable[[ContentItem], Any]) -> Any:
    """``read`` the child with concept ``code``; a value that breaks its VR is a Problem."""
    item = parent.find(code)
    if item is None:
        return None
    try:
        return read(item)
    except ValueProblem as exc:
        problems.add(path, item, f"{item.name()}: {exc}")
        return None


def _code(parent: ContentItem, code: str, path: str, problems: Problems) -> Code | None:
    return _read(parent, code, path, problems, ContentItem.code)  # type: ignore[no-any-return]


def _datetime(parent: ContentItem, code: str, path: str, problems: Problems) -> str | None:
    return _read(parent, code, path, problems, ContentItem.datetime)  # type: ignore[no-any-return]


def _find_any(parent: ContentItem, codes: frozenset[tuple[str, str]]) -> ContentItem | None:
    for child in parent.children:
        c = child.concept
        if c is not None and (c.value, c.scheme) in codes:
            return child
    wanted = {v for v, _ in codes}
    for child in parent.children:
        c = child.concept
        if c is not None and c.value in wanted:
            return child
    return None


def check_ct(root: ContentItem, has_acquisitions: bool = False) -> None:
    """Raise :class:`NotCTDose` unless this X-Ray Radiation Dose Report is of CT.

    Procedure reported (121058) decides: CT is (P5-08000, SRT) / (77477000, SCT). Without
    it, the CT containers of TID 10011 (113811, 113819) decide; TID 10001 projection
    X-ray containers (113702, 113706) mark a projection / fluoroscopy report.
    ``has_acquisitions``: CT Acquisition children were already read (:func:`stream_events`).
    """
    proc_item = root.find(C.PROCEDURE_REPORTED)
    proc: Code | None = None
    if proc_item is not None:
        try:
            proc = proc_item.code()
        except ValueProblem:
            proc = None
    if proc is not None and proc.value:
        if (proc.value, proc.scheme) in C.CT_PROCEDURE or proc.value in {v for v, _ in C.CT_PROCEDURE}:
            return
        what = proc.meaning or f"{proc.value}, {proc.scheme}"
        if (proc.value, proc.scheme) in C.MAMMOGRAPHY_PROCEDURE:
            kind = "a mammography dose report"
        elif proc.value == C.PROJECTION_XRAY:
            kind = "a projection X-ray / fluoroscopy dose report (TID 10001)"
        else:
            kind = "not a CT dose report"
        raise NotCTDose(f"Procedure reported is '{what}': {kind}, not CT")
    codes = {c.code_value for c in root.children}
    if has_acquisitions or C.CT_ACQUISITION in codes or C.CT_ACCUMULATED_DOSE_DATA in codes:
        return
    if C.IRRADIATION_EVENT_XRAY_DATA in codes or C.ACCUMULATED_XRAY_DOSE_DATA in codes:
        raise NotCTDose("the report holds projection X-ray irradiation events (TID 10001), not CT")
    raise NotCTDose("the report states no procedure and holds no CT acquisition (TID 10013)")


def stream_events(root: ContentItem, problems: Problems) -> list[Event]:
    """Read every CT Acquisition (113819) child of ``root`` as the file is read, in order.

    Each acquisition is read into an :class:`Event` and its content items are dropped, so a
    report of thousands of events is never held whole; the other children stay ``root``'s
    children. An acquisition that is not a plain CONTAINER (whose children a lookup on
    ``root`` may search, see :meth:`ContentItem.find_all`) is kept as a child as well.
    """
    events: list[Event] = []

    def take(child: ContentItem) -> bool:
        if child.code_value != C.CT_ACQUISITION:
            return False
        path = f"events[{len(events)}]"
        try:
            events.append(read_event(child, path, problems))
        except DicomReadError:
            raise
        except Exception as exc:  # a content item no rule foresaw: the object is malformed there
            raise DicomReadError("malformed", f"CT Acquisition {path} (content item (113819, DCM)) cannot be "
                                              f"read: {type(exc).__name__}: {str(exc)[:200]}") from exc
        return child.value_type == "CONTAINER" and child.relationship not in ("HAS PROPERTIES", "HAS CONCEPT MOD")

    root.stream_children(take)
    return events


def read_report(root: ContentItem, problems: Problems, events: list[Event] | None = None) -> CTDoseReport:
    """TID 10011 from its root content item (concept 113701); ``events``: those
    :func:`stream_events` already read (else read here)."""
    proc_item = root.find(C.PROCEDURE_REPORTED)
    procedure: Code | None = None
    intent: Code | None = None
    if proc_item is not None:
        try:
            procedure = proc_item.code()
        except ValueProblem as exc:
            problems.add("report.procedure_reported", proc_item, f"Procedure reported: {exc}")
        intent_item = _find_any(proc_item, C.HAS_INTENT) or _find_any(root, C.HAS_INTENT)
    else:
        intent_item = _find_any(root, C.HAS_INTENT)
    if intent_item is not None:
        try:
            intent = intent_item.code()
        except ValueProblem as exc:
            problems.add("report.has_intent", intent_item, f"Has Intent: {exc}")

    observer: dict[str, str | None] = {
        "uid": None, "name": None, "manufacturer": None, "model": None, "serial_number": None,
    }
    uid_item = root.find(C.DEVICE_OBSERVER_UID)
    if uid_item is not None:
        observer["uid"] = uid_item.uid_value()
    observer["name"] = _text(root, C.DEVICE_OBSERVER_NAME)
    observer["manufacturer"] = _text(root, C.DEVICE_OBSERVER_MANUFACTURER)
    observer["model"] = _text(root, C.DEVICE_OBSERVER_MODEL_NAME)
    observer["serial_number"] = _text(root, C.DEVICE_OBSERVER_SERIAL_NUMBER)

    scope_uid: str | None = None
    scope = root.find(C.SCOPE_OF_ACCUMULATION)
    if scope is not None:
        s = scope.find(C.STUDY_INSTANCE_UID)
        scope_uid = s.uid_value() if s is not None else None

    source_info = _code(root, C.SOURCE_OF_DOSE_INFORMATION, "report.source_of_dose_information", problems)
    report = ReportInfo(
        procedure_reported=procedure,
        has_intent=intent,
        start_datetime=_datetime(root, C.START_OF_XRAY_IRRADIATION, "report.start_datetime", problems),
        end_datetime=_datetime(root, C.END_OF_XRAY_IRRADIATION, "report.end_datetime", problems),
        source_of_dose_information=source_info,
    )

    total_events: int | None = None
    total_dlp: float | None = None
    total_e: float | None = None
    acc = root.find(C.CT_ACCUMULATED_DOSE_DATA)
    if acc is not None:
        n = _num(acc, C.TOTAL_NUMBER_OF_IRRADIATION_EVENTS, "1", "total_events", problems)
        total_events = int(n) if n is not None else None
        total_dlp = _num(acc, C.CT_DOSE_LENGTH_PRODUCT_TOTAL, "mGycm", "reported_total_dlp_mGycm", problems)
        total_e = _num(acc, C.CT_EFFECTIVE_DOSE_TOTAL, "mSv", "effective_dose_total_mSv", problems)

    if events is None:
        events = [
            read_event(item, f"events[{i}]", problems)
            for i, item in enumerate(c for c in root.children if c.code_value == C.CT_ACQUISITION)
        ]
    return CTDoseReport(report, observer, scope_uid, total_events, total_dlp, total_e, events)


def acquisition_type(code: Code | None) -> str:
    if code is None:
        return "unknown"
    t = C.ACQUISITION_TYPES.get((code.value or "", code.scheme or ""))
    if t:
        return t
    # same code value under another scheme designator spelling (e.g. "SNM3", "99SDM")
    for (value, _), name in C.ACQUISITION_TYPES.items():
        if value == code.value:
            return name
    meaning = (code.meaning or "").lower()
    for word, name in C.ACQUISITION_TYPE_WORDS:
        if word in meaning:
            return name
    return "unknown"


def _source_id(src: ContentItem) -> str | None:
    """The X-ray source's identification: its TID 10013 concept, else the first text or UID
    child whose concept meaning mentions "identification" (vendors spell it "Identification
    Number of the X-Ray Source" and otherwise)."""
    sid = _text(src, C.IDENTIFICATION_OF_THE_XRAY_SOURCE)
    if sid is None:
        for child in src.children:
            meaning = (child.concept.meaning if child.concept else "") or ""
            if "identification" in meaning.lower() and child.value_type in ("TEXT", "UIDREF", None):
                return child.text_value()
    return sid


def _read_source(src: ContentItem, sp: str, problems: Problems) -> Source:
    """One CT X-Ray Source Parameters container (113831) of an event; ``sp`` is its path
    prefix (``events[i].sources[j].``). Its own step because an event holds one per tube
    (two on a dual-source scanner) and each is read the same way."""
    return Source(
        id=_source_id(src),
        kvp_kV=_num(src, C.KVP, "kV", sp + "kvp_kV", problems),
        max_tube_current_mA=_num(src, C.MAXIMUM_XRAY_TUBE_CURRENT, "mA", sp + "max_tube_current_mA", problems),
        tube_current_mA=_num(src, C.XRAY_TUBE_CURRENT, "mA", sp + "tube_current_mA", problems),
        exposure_time_per_rotation_s=_num(
            src, C.EXPOSURE_TIME_PER_ROTATION, "s", sp + "exposure_time_per_rotation_s", problems
        ),
    )


def read_event(acq: ContentItem, path: str, problems: Problems) -> Event:
    """TID 10013 CT Irradiation Event Data from a CT Acquisition container (113819)."""
    P = path + "."
    uid_item = acq.find(C.IRRADIATION_EVENT_UID)
    acq_type_code = _code(acq, C.CT_ACQUISITION_TYPE, P + "acquisition_type", problems)
    params = acq.find(C.CT_ACQUISITION_PARAMETERS) or acq  # vendors that flatten the container
    dose = acq.find(C.CT_DOSE)

    def num(parent: ContentItem | None, code: str, unit: str, field_: str) -> float | None:
        if parent is None:
            return None
        v = _num(parent, code, unit, P + field_, problems)
        if v is None and parent is params and params is not acq:
            v = _num(acq, code, unit, P + field_, problems)  # stated at event level instead
        return v

    sources = [_read_source(src, f"{P}sources[{i}].", problems)
               for i, src in enumerate(params.find_all(C.CT_XRAY_SOURCE_PARAMETERS))]

    phantom_code: Code | None = None
    phantom: str | None = None
    ctdivol = dlp = ssde = wed = None
    dose_check: DoseCheck | None = None
    if dose is not None:
        ctdivol = _num(dose, C.MEAN_CTDIVOL, "mGy", P + "ctdivol_mGy", problems)
        dlp = _num(dose, C.DLP, "mGycm", P + "dlp_mGycm", problems)
        ssde = _num(dose, C.SIZE_SPECIFIC_DOSE_ESTIMATE, "mGy", P + "ssde_mGy", problems)
        wed = _num(dose, C.WATER_EQUIVALENT_DIAMETER, "mm", P + "water_equivalent_diameter_mm", problems)
        if wed is None:
            for code in C.WATER_EQUIVALENT_DIAMETER_VARIANTS:
                wed = _num(dose, code, "mm", P + "water_equivalent_diameter_mm", problems)
                if wed is not None:
                    break
        ph_item = next((i for i in dose.walk() if i.code_value == C.CTDIW_PHANTOM_TYPE), None)
        if ph_item is not None:
            try:
                phantom_code = ph_item.code()
                phantom = C.PHANTOMS.get(phantom_code.value or "", "other") if phantom_code else None
            except ValueProblem as exc:
                problems.add(P + "phantom", ph_item, f"CTDIw Phantom Type: {exc}")
        dose_check = read_dose_check(dose, P + "dose_check.", problems)
    if dose_check is None:
        dose_check = read_dose_check(acq, P + "dose_check.", problems)

    effective = num(dose, C.EFFECTIVE_DOSE, "mSv", "effective_dose_mSv") if dose is not None else None
    if effective is None:
        effective = _num(acq, C.EFFECTIVE_DOSE, "mSv", P + "effective_dose_mSv", problems)

    comments = [c.text_value() for c in acq.children if c.code_value == C.COMMENT]
    comment = "\n".join(c for c in comments if c) or None

    return Event(
        irradiation_event_uid=uid_item.uid_value() if uid_item is not None else None,
        acquisition_protocol=_text(acq, C.ACQUISITION_PROTOCOL),
        target_region=_code(acq, C.TARGET_REGION, P + "target_region", problems),
        acquisition_type=acquisition_type(acq_type_code),
        acquisition_type_code=acq_type_code,
        procedure_context=_code_any(acq, C.PROCEDURE_CONTEXT, P + "procedure_context", problems),
        start_datetime=_datetime(acq, C.DATETIME_STARTED, P + "start_datetime", problems),
        exposure_time_s=num(params, C.EXPOSURE_TIME, "s", "exposure_time_s"),
        scanning_length_mm=num(params, C.SCANNING_LENGTH, "mm", "scanning_length_mm"),
        nominal_single_collimation_mm=num(
            params, C.NOMINAL_SINGLE_COLLIMATION_WIDTH, "mm", "nominal_single_collimation_mm"
        ),
        nominal_total_collimation_mm=num(params, C.NOMINAL_TOTAL_COLLIMATION_WIDTH, "mm", "nominal_total_collimation_mm"),
        pitch_factor=num(params, C.PITCH_FACTOR, "1", "pitch_factor"),
        number_of_xray_sources=num(params, C.NUMBER_OF_XRAY_SOURCES, "1", "number_of_xray_sources"),
        sources=tuple(sources),
        ctdivol_mGy=ctdivol,
        phantom=phantom,
        phantom_code=phantom_code,
        dlp_mGycm=dlp,
        ssde_mGy=ssde,
        water_equivalent_diameter_mm=wed,
        effective_dose_mSv=effective,
        dose_check=dose_check,
        comment=comment,
    )


def _code_any(parent: ContentItem, codes: frozenset[tuple[str, str]], path: str, problems: Problems) -> Code | None:
    item = _find_any(parent, codes)
    if item is None:
        return None
    try:
        return item.code()
    except ValueProblem as exc:
        problems.add(path, item, f"{item.name()}: {exc}")
        return None


_DOSE_CHECK_NUMS: tuple[tuple[str, str, str], ...] = (
    (C.CTDIVOL_ALERT_VALUE, "mGy", "ctdivol_alert_mGy"),
    (C.DLP_ALERT_VALUE, "mGycm", "dlp_alert_mGycm"),
    (C.CTDIVOL_NOTIFICATION_VALUE, "mGy", "ctdivol_notification_mGy"),
    (C.DLP_NOTIFICATION_VALUE, "mGycm", "dlp_notification_mGycm"),
    (C.CTDIVOL_FORWARD_ESTIMATE, "mGy", "ctdivol_forward_estimate_mGy"),
    (C.ACCUMULATED_CTDIVOL_FORWARD_ESTIMATE, "mGy", "ctdivol_forward_estimate_mGy"),
    (C.DLP_FORWARD_ESTIMATE, "mGycm", "dlp_forward_estimate_mGycm"),
    (C.ACCUMULATED_DLP_FORWARD_ESTIMATE, "mGycm", "dlp_forward_estimate_mGycm"),
)


def read_dose_check(parent: ContentItem, path: str, problems: Problems) -> DoseCheck | None:
    """TID 10015 CT Dose Check Details: Alert (113900) and Notification (113908) containers."""
    containers = [
        c for c in parent.children
        if c.code_value in (C.DOSE_CHECK_ALERT_DETAILS, C.DOSE_CHECK_NOTIFICATION_DETAILS)
    ]
    if not containers:
        return None
    values: dict[str, Any] = {}
    for container in containers:
        for item in container.walk():
            code = item.code_value
            for concept, unit, name in _DOSE_CHECK_NUMS:
                if code == concept and values.get(name) is None:
                    try:
                        v, u = item.num()
                        values[name] = convert(v, u, unit) if v is not None else None
                    except ValueProblem as exc:
                        problems.add(path + name, item, f"{item.name()}: {exc}")
            if code == C.REASON_FOR_PROCEEDING and values.get("reason") is None:
                values["reason"] = item.text_value()
            elif code == C.PERSON_NAME and values.get("person") is None:
                values["person"] = item.text_value()
    return DoseCheck(**values)

