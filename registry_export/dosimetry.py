"""Dosimetry helpers on one irradiation event (docs/registry-profile.md, head or body).

Pure functions of a :class:`dosereg.extract.Event` (and, for notification values, the
patient's age and the configured :class:`dosereg.conf.config.NotificationSettings`). They never
change the event and never raise for missing values: what cannot be worked out is ``None``.

* :func:`is_head_exam` -- the event's target region lies in the head (head, brain, skull,
  face, orbits, sinuses, temporal bones ...); without a usable target region the stated
  phantom decides (``head16`` -> head, anything else -> body).
* :func:`standard_phantom` -- ``"head16"`` for head exams, ``"body32"`` for body exams:
  the phantom the registry compares the exam on.
* :func:`normalised_dose` -- (CTDIvol mGy, DLP mGy.cm) converted to the standard phantom
  (factor 2.3: stated on 32 cm and compared on 16 cm -> multiply; 16 -> 32 -> divide).
* :func:`ssde_mGy` -- the scanner's stated SSDE, else AAPM Report 220 (water-equivalent
  diameter) with the AAPM Report 204 conversion factors, for body exams.
* :func:`is_timing_run` -- bolus-tracking / test-bolus scans, excluded from dose comparisons
  (the evaluation's ``timing_runs``, the JSON event's ``is_timing_run``, docs/study-record.md).
* :func:`notification_value_mGy` -- the AAPM Dose Check notification value (CTDIvol, mGy)
  that applies to the event, expressed on the phantom its CTDIvol is stated on.

Worked example (a body exam whose CTDIvol the scanner stated on the 16 cm phantom)::

    >>> from dosereg.extract import Code, Event
    >>> e = Event(acquisition_type="spiral", ctdivol_mGy=23.0, dlp_mGycm=46.0, phantom="head16",
    ...           target_region=Code("51185008", "SCT", "Chest"))
    >>> is_head_exam(e), standard_phantom(e), normalised_dose(e)
    (False, 'body32', (10.0, 20.0))
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

from dosereg.extract import Code, Event
from dosereg.extract.concepts import srt_to_sct

__all__ = [
    "PHANTOM_FACTOR",
    "TIMING_RUN_MAX_CTDIVOL_MGY",
    "conversion_factor",
    "effective_diameter_cm",
    "is_head_exam",
    "is_timing_run",
    "normalised_dose",
    "notification_value_mGy",
    "above_notification",
    "is_compared",
    "ssde_from_diameter",
    "ssde_mGy",
    "standard_phantom",
    "timing_run_reason",
]

#: CTDIvol (and DLP) on the 16 cm head phantom is about 2.3 times the value on the 32 cm
#: body phantom for the same technique (field experience; ACR Dose Index Registry practice).
PHANTOM_FACTOR = 2.3

# --- head or body -------------------------------------------------------------------------

_SNOMED_SCHEMES = {"SCT", "SRT", "SNM3", "99SDM"}


#: Anatomic regions that lie in the head, as SNOMED CT ids (the names are pydicom's
#: ``codes.SCT`` keywords; tests check them against pydicom.sr.codedict). SNOMED-RT forms
#: are mapped through pydicom's SRT -> SCT table, so ``T-D1100`` (SRT) and ``69536005``
#: (SCT) both count. pydicom.sr itself is not imported: it costs a third of a second at
#: start-up.
HEAD_REGIONS: dict[str, str] = {
    "69536005": "Head", "12738006": "Brain", "89546000": "Skull", "89545001": "Face",
    "91397008": "FacialBones", "363654007": "Orbit", "2095001": "ParanasalSinus",
    "15924003": "MaxillarySinus", "55060009": "FrontalSinus", "60911003": "TemporalBone",
    "59066005": "MastoidBone", "361078006": "InternalAuditoryCanal", "22945000": "InnerEar",
    "25342003": "MiddleEar", "117590005": "Ear", "42575006": "SellaTurcica", "113305005": "Cerebellum",
    "11279006": "CircleOfWillis", "88556005": "CerebralArtery", "81745001": "Eye", "45206002": "Nose",
    "74386004": "NasalBone", "91609006": "Mandible", "70925003": "Maxilla",
    "53620006": "TemporomandibularJoint",
}
#: Regions that span head and body: the stated phantom decides, as without a target region.
AMBIGUOUS_REGIONS: dict[str, str] = {"774007": "HeadAndNeck"}

_HEAD_TEXT = re.compile(
    r"\b(head|brain|skull|cran\w*|face|facial|orbit\w*|\w*sinus\w*|temporal bones?|petrous|mastoid|"
    r"sella|pituitary|cerebr\w*|cerebell\w*|internal auditory|iacs?|inner ear|middle ear|mandib\w*|"
    r"maxill\w*|jaw|nasal|nose|eyes?|temporomandibular|tmj|circle of willis|dental)\b",
    re.IGNORECASE,
)
_NECK_TEXT = re.compile(r"\bneck\b", re.IGNORECASE)
_UNKNOWN_TEXT = {"", "unknown", "other", "none", "not specified", "unspecified"}


def _snomed_ct_id(code: Code) -> str | None:
    scheme = (code.scheme or "").strip().upper()
    value = (code.value or "").strip()
    if not value or scheme not in _SNOMED_SCHEMES:
        return None
    if scheme == "SCT":
        return value
    sct: str | None = srt_to_sct().get(value)
    return sct


def _region_is_head(code: Code | None) -> bool | None:
    """True: head; False: body; None: no usable region (the phantom decides)."""
    if code is None:
        return None
    try:
        return _code_is_head(code)
    except TypeError:  # a code holding unhashable values: work it out without the cache
        return _code_is_head.__wrapped__(code)


@lru_cache(maxsize=4096)  # a site has few distinct target regions; every event asks several times
def _code_is_head(code: Code) -> bool | None:
    sct = _snomed_ct_id(code)
    if sct in AMBIGUOUS_REGIONS:
        return None
    if sct in HEAD_REGIONS:
        return True
    meaning = (code.meaning or "").strip()
    if _HEAD_TEXT.search(meaning):
        return None if _NECK_TEXT.search(meaning) else True
    if sct is not None or (code.scheme or "").strip().upper() in _SNOMED_SCHEMES and code.value:
        return False  # a standard anatomic code outside the head
    if meaning.lower() in _UNKNOWN_TEXT:
        return None  # e.g. GE's private (00001, 99GEMS, "Unknown")
    return False  # a private code whose meaning names a body region


def is_head_exam(event: Event) -> bool:
    """Whether the event is a head exam (docs/registry-profile.md).

    The target region decides when it is a standard SNOMED code (SRT or SCT form) or a
    code whose meaning names a head structure (head, brain, skull, face, orbits, sinuses,
    temporal bones and their parts). Without a usable target region (none, a private code
    meaning "Unknown", or "Head and Neck", which spans both) the stated phantom decides:
    ``head16`` -> head, anything else -> body.
    """
    verdict = _region_is_head(event.target_region)
    if verdict is not None:
        return bool(verdict)
    return bool(event.phantom == "head16")


def standard_phantom(event: Event) -> str:
    """``"head16"`` for a head exam, ``"body32"`` for a body exam: the comparison phantom."""
    return "head16" if is_head_exam(event) else "body32"


def _convert(value: float, stated: str | None, target: str) -> float | None:
    """``value`` stated on phantom ``stated``, expressed on phantom ``target`` (None: no conversion)."""
    if stated == target:
        return value
    if stated == "body32" and target == "head16":
        return value * PHANTOM_FACTOR
    if stated == "head16" and target == "body32":
        return value / PHANTOM_FACTOR
    return None  # phantom not stated, or "other" (NEMA XR21): no known conversion


def normalised_dose(event: Event, head: bool | None = None) -> tuple[float | None, float | None]:
    """(CTDIvol in mGy, DLP in mGy.cm) on the event's standard phantom.

    Head exams compare on the 16 cm phantom, body exams on 32 cm. A value stated on
    32 cm for a head exam is multiplied by 2.3; one stated on 16 cm for a body exam is
    divided by 2.3; otherwise it is returned unchanged. ``None`` where the value is not
    stated, or the stated phantom is unknown or "other" (no conversion is defined).
    ``head``: :func:`is_head_exam` of the event, when the caller has it already.
    """
    if head is None:
        head = is_head_exam(event)
    target = "head16" if head else "body32"
    ctdi = None if event.ctdivol_mGy is None else _convert(event.ctdivol_mGy, event.phantom, target)
    dlp = None if event.dlp_mGycm is None else _convert(event.dlp_mGycm, event.phantom, target)
    return ctdi, dlp


# --- size-specific dose estimate ----------------------------------------------------------

#: AAPM Report 204 exponential fits f = a * exp(-b * D[cm]) of SSDE / CTDIvol, per phantom.
AAPM204_FIT = {"body32": (3.704369, 0.03671937), "head16": (1.874799, 0.03871313)}


def effective_diameter_cm(ap_cm: float, lat_cm: float) -> float:
    """AAPM Report 204 effective diameter from the AP and lateral dimensions (cm).

    The primer's linear fit on the sum of the two: ED = -0.203128 + 0.4958912 (AP + LAT).
    """
    return -0.203128 + 0.4958912 * (ap_cm + lat_cm)


def conversion_factor(diameter_cm: float, phantom: str = "body32") -> float:
    """AAPM Report 204 conversion factor for a patient of the given (water-equivalent) diameter.

    32 cm phantom: f = 3.704369 exp(-0.03671937 D); 16 cm phantom: f = 1.874799 exp(-0.03871313 D).
    """
    a, b = AAPM204_FIT[phantom]
    return a * math.exp(-b * diameter_cm)


def ssde_from_diameter(ctdivol_mGy: float, diameter_cm: float, phantom: str = "body32") -> float:
    """SSDE (mGy) = f(D) x CTDIvol, CTDIvol stated on ``phantom``."""
    return conversion_factor(diameter_cm, phantom) * ctdivol_mGy


def ssde_mGy(event: Event, head: bool | None = None) -> float | None:
    """The event's size-specific dose estimate in mGy.

    The scanner's own SSDE (113930) when stated. Otherwise, for a body exam with a
    stated CTDIvol, a known phantom and a water-equivalent diameter from the scanner,
    AAPM Report 220: SSDE = f(Dw) x CTDIvol with the AAPM Report 204 factor of the
    phantom the CTDIvol is stated on (32 cm: 3.704369 exp(-0.03671937 Dw[cm])). Head
    exams (AAPM 204/220 cover the body only) and events without size give ``None``.
    """
    if event.ssde_mGy is not None:
        return float(event.ssde_mGy)
    if is_head_exam(event) if head is None else head:
        return None
    dw = event.water_equivalent_diameter_mm
    if event.ctdivol_mGy is None or dw is None or dw <= 0 or event.phantom not in AAPM204_FIT:
        return None
    return ssde_from_diameter(event.ctdivol_mGy, dw / 10.0, event.phantom)


# --- timing runs ----------------------------------------------------------------------------

#: Bolus-tracking and test-bolus protocol names (field experience: Monitoring, Pre-Monitoring,
#: TestBolus; plus their obvious spellings "PreMonitoring", "Test Bolus", "test_bolus").
TIMING_PROTOCOL = re.compile(r"monitoring|test[\s_-]*bolus", re.IGNORECASE)


@lru_cache(maxsize=4096)  # protocol names repeat across studies
def _timing_word(protocol: str) -> str | None:
    m = TIMING_PROTOCOL.search(protocol)
    return m.group(0) if m else None


#: ``[dose] timing_run_max_ctdivol_mgy`` default: the lowest adult AAPM Dose Check notification
#: value (adult body, 50 mGy). Bolus-tracking and test-bolus scans are low-dose, well under the
#: adult notification values (docs/timing-runs.md); an exposure at or above this is no timing run.
TIMING_RUN_MAX_CTDIVOL_MGY = 50.0


def timing_run_reason(event: Event, max_ctdivol_mGy: float = TIMING_RUN_MAX_CTDIVOL_MGY) -> str | None:
    """Why the event is a timing run, or ``None`` when it is not (:func:`is_timing_run`)."""
    ctdivol = event.ctdivol_mGy
    if ctdivol is not None and not ctdivol < max_ctdivol_mGy:  # NaN is no monitoring dose either
        return None
    protocol = event.acquisition_protocol or ""
    found = _timing_word(protocol) if protocol.__class__ is str else _timing_word.__wrapped__(protocol)
    if found is not None:
        return f"protocol {protocol!r} contains {found!r}"
    if (
        event.acquisition_type == "stationary"
        and ctdivol is not None
        and event.dlp_mGycm is not None
        and ctdivol > event.dlp_mGycm
    ):
        return (
            f"stationary acquisition with CTDIvol {ctdivol:g} mGy above "
            f"DLP {event.dlp_mGycm:g} mGy.cm"
        )
    return None


def is_timing_run(event: Event, max_ctdivol_mGy: float = TIMING_RUN_MAX_CTDIVOL_MGY) -> bool:
    """A bolus-tracking or test-bolus scan, excluded from dose comparisons (docs/timing-runs.md).

    Never when the event's CTDIvol is stated and not below ``max_ctdivol_mGy`` (the
    configuration's ``[dose] timing_run_max_ctdivol_mgy``, default 50 mGy): a monitoring scan is
    low-dose, and a stationary exposure of hundreds of mGy (perfusion, a QA dose measurement) is
    exactly the event a physicist must see. Below it (or with CTDIvol not stated), true when the
    acquisition protocol contains Monitoring (so also Pre-Monitoring, PreMonitoring) or TestBolus
    / Test Bolus (case-insensitive), or when a stationary acquisition's CTDIvol exceeds its DLP
    (a scan at one table position, under 1 cm long).
    """
    return timing_run_reason(event, max_ctdivol_mGy) is not None


# --- notification values ----------------------------------------------------------------------

_PERFUSION = re.compile(r"perfusion|\bperf\b|\bctp\b|\bneuro ?pbv\b", re.IGNORECASE)
_CARDIAC = re.compile(r"cardiac|cardio|coronar|\bheart\b|calcium ?scor|\bca ?scor|\bccta\b|\bcacs?\b", re.IGNORECASE)
_RETRO = re.compile(r"retro", re.IGNORECASE)
_PROSPECTIVE = re.compile(r"prosp|\bseq\b|step.?and.?shoot|flash", re.IGNORECASE)
_CARDIAC_REGIONS: dict[str, str] = {"80891009": "Heart", "41801008": "CoronaryArtery"}
#: Reference phantom of each notification category's value (AAPM Dose Check guidance).
_REFERENCE_PHANTOM = {
    "adult_head": "head16",
    "adult_body": "body32",
    "paediatric_head_under_2y": "head16",
    "paediatric_head_2_to_5y": "head16",
    "paediatric_body_under_10y": "head16",
    "brain_perfusion": "head16",
    "cardiac_prospective": "body32",
    "cardiac_retrospective": "body32",
}
#: Primer: paediatric torso 25 mGy, "body phantom 20 when reported on 32 cm".
_PAEDIATRIC_BODY_32CM_RATIO = 20.0 / 25.0


@lru_cache(maxsize=8192)  # protocol names and region meanings repeat across events and studies
def _found(pattern: re.Pattern[str], text: str) -> bool:
    return pattern.search(text) is not None


def _is_cardiac(event: Event) -> bool:
    region = event.target_region
    if region is not None:
        sct = _snomed_ct_id(region)
        if sct in _CARDIAC_REGIONS or _found(_CARDIAC, region.meaning or ""):
            return True
    return _found(_CARDIAC, event.acquisition_protocol or "")


def _cardiac_category(event: Event) -> str:
    protocol = event.acquisition_protocol or ""
    if _RETRO.search(protocol):
        return "cardiac_retrospective"
    if _PROSPECTIVE.search(protocol):
        return "cardiac_prospective"
    if event.acquisition_type in ("sequenced", "stationary"):
        return "cardiac_prospective"  # axial step-and-shoot or single-rotation gating
    if event.acquisition_type == "spiral" and event.pitch_factor is not None and event.pitch_factor > 0.5:
        return "cardiac_prospective"  # high-pitch prospectively triggered spiral
    return "cardiac_retrospective"  # low-pitch gated spiral (or gating unknown: the higher value)


def notification_category(event: Event, age_years: float | None) -> str:
    """The AAPM Dose Check category of the event (a key of NotificationSettings).

    Exam type first: brain perfusion (head exam whose protocol says perfusion), cardiac
    (target region heart / coronary arteries, or a cardiac protocol; retrospective or
    prospective gating from the protocol name, else from the acquisition type and pitch).
    Then by age (``None``: treated as adult): head under 2 y, 2 to 5 y (under 6), body
    under 10 y; else adult head / adult body.
    """
    head = is_head_exam(event)
    if head and _found(_PERFUSION, event.acquisition_protocol or ""):
        return "brain_perfusion"
    if not head and _is_cardiac(event):
        return _cardiac_category(event)
    if age_years is not None:
        if head and age_years < 2:
            return "paediatric_head_under_2y"
        if head and age_years < 6:
            return "paediatric_head_2_to_5y"
        if not head and age_years < 10:
            return "paediatric_body_under_10y"
    return "adult_head" if head else "adult_body"


def notification_value_mGy(event: Event, age_years: float | None, notification_settings: Any) -> tuple[str, float]:
    """(category, CTDIvol notification value in mGy) for the event.

    ``notification_settings`` is the configuration's ``[notification]`` section
    (:class:`dosereg.conf.config.NotificationSettings`; defaults: AAPM CT Dose Check notification values: adult
    head 80, adult body 50, paediatric head under 2 y 50, 2-5 y 60, paediatric body under
    10 y 25, brain perfusion 600, cardiac prospective 50 / retrospective 150).

    The value is expressed on the phantom the event's CTDIvol is stated on, so callers
    compare it directly with ``event.ctdivol_mGy``: head categories refer to the 16 cm
    phantom and body / cardiac categories to 32 cm, converted by 2.3 when the event is
    stated on the other one. Paediatric body follows the primer: the configured value
    (25) on 16 cm and 20/25 of it (20) when stated on 32 cm. Unknown or "other" phantom:
    the value on the category's reference phantom.
    """
    category = notification_category(event, age_years)
    value = float(getattr(notification_settings, category))
    if category == "paediatric_body_under_10y":
        if event.phantom == "body32":
            value *= _PAEDIATRIC_BODY_32CM_RATIO
        return category, value
    converted = _convert(value, _REFERENCE_PHANTOM[category], event.phantom or "")
    return category, value if converted is None else converted


def is_compared(event: Event, timing_run: bool) -> bool:
    """Whether the event takes part in dose comparisons with reference levels (docs/dose-review.md):
    neither a timing run nor a localizer (constant-angle acquisition)."""
    return not timing_run and event.acquisition_type != "constant_angle"


def above_notification(event: Event, age_years: float | None, notification_settings: Any) -> tuple[str, float] | None:
    """(category, notification value) when the event's stated CTDIvol is above the notification
    value of its category (:func:`notification_value_mGy`), else None: the one rule the report's
    "events above the notification values" table and the dose alerts share."""
    ctdi = event.ctdivol_mGy
    if not isinstance(ctdi, (int, float)) or isinstance(ctdi, bool):
        return None
    category, value = notification_value_mGy(event, age_years, notification_settings)
    return (category, value) if ctdi > value else None
