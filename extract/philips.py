"""Philips CT "Dose Info" Secondary Capture screens (field experience, objects table).

Values live in the header, not in an SR tree: Exposure Dose Sequence (0040,030E) holds one
item per acquisition with CTDIvol (0018,9345), KVP (0018,0060), Scan Length (0018,1302),
collimation (0018,9306/9307), Spiral Pitch Factor (0018,9311), Acquisition Type
(0018,9302), Exposure Time (0018,1150) in ms and X-Ray Tube Current in uA (0018,8151);
DLP is text in the private ELSCINT1 element (00E1,xx21), per item and at top level
(the study total). Each item's Series Description names the acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .dicom_bytes import Dataset
from .model import Code, Event, Problem, Source
from .values import ValueProblem, ascii_text, clean_text, parse_ds, parse_fd

EXPOSURE_DOSE_SEQUENCE = 0x0040030E
SERIES_DESCRIPTION = 0x0008103E
KVP = 0x00180060
EXPOSURE_TIME = 0x00181150
SCAN_LENGTH = 0x00181302
TUBE_CURRENT_UA = 0x00188151
TUBE_CURRENT = 0x00181151
ACQUISITION_TYPE = 0x00189302
SINGLE_COLLIMATION = 0x00189306
TOTAL_COLLIMATION = 0x00189307
SPIRAL_PITCH = 0x00189311
CTDIVOL = 0x00189345
SERIES_NUMBER = 0x00200011
ACQUISITION_DATETIME = 0x0008002A
PRIVATE_CREATOR = "ELSCINT1"
PRIVATE_GROUP = 0x00E1
DLP_ELEMENT = 0x21  # (00E1,xx21): DLP as text

# Acquisition Type (0018,9302) defined terms -> record type and CID 10013 code
_TYPES: dict[str, tuple[str, Code]] = {
    "SPIRAL": ("spiral", Code("P5-08001", "SRT", "Spiral Acquisition")),
    "SEQUENCED": ("sequenced", Code("113804", "DCM", "Sequenced Acquisition")),
    "CONSTANT_ANGLE": ("constant_angle", Code("113805", "DCM", "Constant Angle Acquisition")),
    "STATIONARY": ("stationary", Code("113806", "DCM", "Stationary Acquisition")),
    "FREE": ("free", Code("113807", "DCM", "Free Acquisition")),
}


@dataclass
class DoseScreen:
    events: list[Event] = field(default_factory=list)
    reported_total_dlp_mGycm: float | None = None
    series_number: int | None = None
    problems: list[Problem] = field(default_factory=list)


def _private_tag(ds: Dataset, group: int, creator: str, element: int) -> int | None:
    """The tag of (group, element) in the block reserved by ``creator`` (PS3.5 7.8.1)."""
    for block in range(0x10, 0x100):
        el = ds.get((group << 16) | block)
        if el is None:
            continue
        if ascii_text(el[1]).strip() == creator:
            return (group << 16) | (block << 8) | element
    return None


def read_dose_screen(h: Any) -> DoseScreen:
    ds: Dataset = h.ds
    screen = DoseScreen()
    little = h.little

    def number(item: Dataset, tag: int, path: str, what: str) -> float | None:
        el = item.get(tag)
        if el is not None and (el[0] == "FD" or (el[0] in ("UN", "OB") and len(el[1]) == 8 and tag in _FD_TAGS)):
            try:
                return parse_fd(el[1], little)
            except ValueProblem as exc:
                screen.problems.append(Problem(path, None, f"{what}: {exc}"))
                return None
        return h.typed(tag, path, parse_ds, ds=item, what=what, problems=screen.problems)  # type: ignore[no-any-return]

    top = _private_tag(ds, PRIVATE_GROUP, PRIVATE_CREATOR, DLP_ELEMENT)
    if top is not None:
        screen.reported_total_dlp_mGycm = number(ds, top, "reported_total_dlp_mGycm", "ELSCINT1 DLP total")
    screen.series_number = _series_number(ds)

    el = ds.get(EXPOSURE_DOSE_SEQUENCE)
    items = el[1] if el is not None and el[0] == "SQ" else []
    for i, item in enumerate(items):
        P = f"events[{i}]."
        type_raw = ascii_text(item[ACQUISITION_TYPE][1]).upper() if ACQUISITION_TYPE in item else ""
        acq_type, acq_code = _TYPES.get(type_raw, ("unknown", None)) if type_raw else ("unknown", None)
        desc = item.get(SERIES_DESCRIPTION)
        exp_ms = number(item, EXPOSURE_TIME, P + "exposure_time_s", "Exposure Time (0018,1150)")
        ua = number(item, TUBE_CURRENT_UA, P + "sources[0].tube_current_mA", "X-Ray Tube Current in uA (0018,8151)")
        ma = ua / 1000 if ua is not None else number(
            item, TUBE_CURRENT, P + "sources[0].tube_current_mA", "X-Ray Tube Current (0018,1151)")
        dlp_tag = _private_tag(item, PRIVATE_GROUP, PRIVATE_CREATOR, DLP_ELEMENT)
        screen.events.append(Event(
            irradiation_event_uid=None,
            acquisition_protocol=clean_text(h.text(desc[1])) if desc is not None else None,
            acquisition_type=acq_type,
            acquisition_type_code=acq_code,
            exposure_time_s=exp_ms / 1000 if exp_ms is not None else None,
            scanning_length_mm=number(item, SCAN_LENGTH, P + "scanning_length_mm", "Scan Length (0018,1302)"),
            nominal_single_collimation_mm=number(item, SINGLE_COLLIMATION, P + "nominal_single_collimation_mm",
                                                 "Single Collimation Width (0018,9306)"),
            nominal_total_collimation_mm=number(item, TOTAL_COLLIMATION, P + "nominal_total_collimation_mm",
                                                "Total Collimation Width (0018,9307)"),
            pitch_factor=number(item, SPIRAL_PITCH, P + "pitch_factor", "Spiral Pitch Factor (0018,9311)"),
            sources=(Source(
                id=None,
                kvp_kV=number(item, KVP, P + "sources[0].kvp_kV", "KVP (0018,0060)"),
                tube_current_mA=ma,
            ),),
            ctdivol_mGy=number(item, CTDIVOL, P + "ctdivol_mGy", "CTDIvol (0018,9345)"),
            dlp_mGycm=number(item, dlp_tag, P + "dlp_mGycm", "ELSCINT1 DLP") if dlp_tag is not None else None,
            series_number=_series_number(item),
        ))
    return screen


# FD-valued attributes, for implicit VR where the stream carries no VR
_FD_TAGS = frozenset({SINGLE_COLLIMATION, TOTAL_COLLIMATION, SPIRAL_PITCH, CTDIVOL})


def _series_number(item: Dataset) -> int | None:
    """Series Number (0020,0011): the key of a screen's events; unreadable -> None."""
    el = item.get(SERIES_NUMBER)
    if el is None:
        return None
    try:
        return int(parse_ds(ascii_text(el[1])))
    except ValueProblem:
        return None
