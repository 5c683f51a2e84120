"""De-identification of study records for the registry (../shared/spec/README.md section 5).

The registry copy of a study is built by *whitelist*: only the fields named here are
copied from the evaluated study record, so a field added to the record later never leaks
by accident. Removed: patient name, ID and birth date, accession number, institution name,
person names (``dose_check.person``), device observer names and locations, free-text
comments (``events[].comment``, ``dose_check.reason``) and the offending values of invalid
elements. Every UID (study, SOP instance, irradiation event, device observer) becomes a
keyed pseudonym::

    2.25.<decimal of the first 16 bytes of HMAC-SHA256(secret, uid)>

which is a valid DICOM UID (at most 44 characters), the same for the same UID and secret.
The secret is read from the environment variable named by ``site.pseudonym_secret_env``;
without it nothing is exported (:class:`MissingSecretError`).

Ages become whole years (floor), 90 for 90 and over. Dates and date-times keep the
configured precision: ``day`` (HIPAA limited data set: exam dates and times kept),
``month`` (``YYYY-MM``) or ``year`` (``YYYY``, HIPAA Safe Harbor); with ``month`` or
``year`` times of day are dropped.

Text that stays (descriptions, protocol names, rule reasons) is scrubbed as a second line
of defence: any UID in it is replaced by its pseudonym and the study's own patient name
parts, patient ID, accession number and birth date by ``[removed]``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
from collections.abc import Callable
from typing import Any

from dosereg.config import Config

REMOVED = "[removed]"
REGISTRY_STUDY_SCHEMA_ID = "dosereg.registry-study/1"  # the de-identified form of "dosereg.study/1"
DATE_PRECISIONS = ("day", "month", "year")

# A DICOM UID inside free text: at least four numeric components.
_NAME_PARTS = re.compile(r"[\^=\s,]+")
_UID_IN_TEXT = re.compile(r"(?<![\d.])(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*)){3,}(?![\d.])")


class MissingSecretError(ValueError):
    """The pseudonym secret's environment variable is unset or empty: refuse to export."""


def secret_from_config(cfg: Config) -> bytes:
    """The site secret, from the environment variable named in ``site.pseudonym_secret_env``."""
    name = cfg.site.pseudonym_secret_env
    value = os.environ.get(name, "")
    if not value:
        raise MissingSecretError(
            f"environment variable {name} (site.pseudonym_secret_env in {cfg.path}) is not set; "
            f"refusing to export without the pseudonym secret"
        )
    return value.encode("utf-8")


def pseudonym_uid(secret: bytes, uid: str) -> str:
    """``2.25.<decimal of the first 16 bytes of HMAC-SHA256(secret, uid)>``."""
    digest = hmac.new(secret, uid.strip().encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


class Pseudonymizer:
    """Maps original UIDs to their keyed pseudonyms (``None`` stays ``None``)."""

    CACHE_SIZE = 4096  # UIDs that recur across studies (device observers) are hashed once

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise MissingSecretError("the pseudonym secret is empty; refusing to export")
        self._secret = secret
        self._keyed = hmac.new(secret, digestmod="sha256")  # OpenSSL HMAC, copied per UID: keyed once
        self._cache: dict[str, str] = {}
        self._text_cache: dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> Pseudonymizer:
        return cls(secret_from_config(cfg))

    def uids_in_text(self, text: str) -> str:
        """``text`` with every DICOM UID in it replaced by its pseudonym (cached: texts such as
        protocol names and reasons repeat across studies)."""
        out = self._text_cache.get(text)
        if out is None:
            out = _UID_IN_TEXT.sub(lambda m: self.uid(m.group(0)) or "", text)
            if len(self._text_cache) >= self.CACHE_SIZE:
                self._text_cache.clear()
            self._text_cache[text] = out
        return out

    def uid(self, uid: str | None) -> str | None:
        if uid is None:
            return None
        text = uid if uid.__class__ is str else str(uid)
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        key = text.strip()
        if not key:
            return None
        h = self._keyed.copy()
        h.update(key.encode("ascii", "replace"))
        out = "2.25." + str(int.from_bytes(h.digest()[:16], "big"))  # = pseudonym_uid(secret, uid)
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[text] = out
        return out


def age_whole_years(age: Any) -> int | None:
    """Floor of the exact age in years; 90 for 90 and over; ``None`` when unknown or invalid."""
    if age is None or isinstance(age, bool):
        return None
    try:
        value = float(age)
    except (TypeError, ValueError):
        return None
    if math.isnan(value) or value < 0:
        return None
    return 90 if value >= 90 else int(math.floor(value))


def truncate_date(value: str | None, precision: str) -> str | None:
    """An ISO date or date-time cut to ``day`` (date-times kept whole), ``month`` or ``year``."""
    if not value:
        return None
    if precision == "day":
        return value
    if precision == "month":
        return value[:7] if len(value) >= 7 else value[:4]
    return value[:4]


def truncate_time(value: str | None, precision: str) -> str | None:
    """A time of day is kept only with ``day`` precision."""
    return value if precision == "day" and value else None


class Scrubber:
    """Removes one study's identifiers and original UIDs from text that is kept."""

    def __init__(self, record: dict[str, Any], pseudo: Pseudonymizer) -> None:
        self._pseudo = pseudo
        patient = record.get("patient") or {}
        words: set[str] = set()
        for value in (patient.get("id"), record.get("accession_number")):
            if value and len(str(value).strip()) >= 3:
                words.add(str(value).strip())
        name = patient.get("name")
        if name:
            for part in _NAME_PARTS.split(str(name)):
                if len(part) >= 3:
                    words.add(part)
        birth = patient.get("birth_date")
        if birth:
            words.add(str(birth))
            words.add(str(birth).replace("-", ""))
        # longest first, so "Doe^John" parts never leave half a word behind
        self._words = sorted({w.lower() for w in words}, key=len, reverse=True)

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        out = value
        if "." in out:
            out = self._pseudo.uids_in_text(out)
        low = out.lower()
        for w in self._words:
            if w in low:  # rare: only then pay for a case-insensitive replacement
                out = re.sub(re.escape(w), REMOVED, out, flags=re.IGNORECASE)
                low = out.lower()
        return out

    def texts(self, values: Any) -> list[str]:
        return [self.text(str(v)) or "" for v in values or ()]


def _code(c: dict[str, Any] | None, scrub: Callable[[str | None], str | None]) -> dict[str, Any] | None:
    if not c:
        return None
    return {"value": c.get("value"), "scheme": c.get("scheme"), "meaning": scrub(c.get("meaning"))}


_EVENT_NUMBERS = (
    "exposure_time_s", "scanning_length_mm", "nominal_single_collimation_mm",
    "nominal_total_collimation_mm", "pitch_factor", "number_of_xray_sources",
)
_EVENT_DOSES = ("ctdivol_mGy", "phantom", "dlp_mGycm", "ssde_mGy", "water_equivalent_diameter_mm",
                "effective_dose_mSv")
_DOSE_CHECK_NUMBERS = (
    "ctdivol_alert_mGy", "dlp_alert_mGycm", "ctdivol_notification_mGy", "dlp_notification_mGycm",
    "ctdivol_forward_estimate_mGy", "dlp_forward_estimate_mGycm",
)
_SOURCE_FIELDS = ("id", "kvp_kV", "max_tube_current_mA", "tube_current_mA", "exposure_time_per_rotation_s")


def deidentify_event(e: dict[str, Any], pseudo: Pseudonymizer, scrub: Scrubber, precision: str) -> dict[str, Any]:
    """The registry copy of one event (whitelisted fields; no comment, no Dose Check person/reason)."""
    out: dict[str, Any] = {
        "irradiation_event_uid": pseudo.uid(e.get("irradiation_event_uid")),
        "acquisition_protocol": scrub.text(e.get("acquisition_protocol")),
        "target_region": _code(e.get("target_region"), scrub.text),
        "acquisition_type": e.get("acquisition_type") or "unknown",
        "acquisition_type_code": _code(e.get("acquisition_type_code"), scrub.text),
        "procedure_context": _code(e.get("procedure_context"), scrub.text),
        "start_datetime": truncate_date(e.get("start_datetime"), precision),
    }
    for key in _EVENT_NUMBERS:
        out[key] = e.get(key)
    out["sources"] = [{k: s.get(k) for k in _SOURCE_FIELDS} for s in e.get("sources") or ()]
    for key in _EVENT_DOSES:
        out[key] = e.get(key)
    out["phantom_code"] = _code(e.get("phantom_code"), scrub.text)
    dc = e.get("dose_check")
    out["dose_check"] = {k: dc.get(k) for k in _DOSE_CHECK_NUMBERS} if dc else None
    out["is_timing_run"] = bool(e.get("is_timing_run"))
    return out


def deidentify_study(d: dict[str, Any], pseudo: Pseudonymizer, precision: str) -> dict[str, Any]:
    """The registry copy of an evaluated study record (section 2 form), de-identified.

    Derived registry values (phantom-normalised doses, SSDE, profile) are added by the
    exporter; this function only removes and pseudonymises.
    """
    if precision not in DATE_PRECISIONS:
        raise ValueError(f"registry.date_precision must be one of {', '.join(DATE_PRECISIONS)}, not {precision!r}")
    scrub = Scrubber(d, pseudo)
    patient = d.get("patient") or {}
    equipment = d.get("equipment") or {}
    report = d.get("report")
    completeness = d.get("completeness") or {}
    classification = d.get("classification") or {}
    flags = d.get("flags") or {}
    return {
        "schema": REGISTRY_STUDY_SCHEMA_ID,
        "study_instance_uid": pseudo.uid(d.get("study_instance_uid")),
        "study_date": truncate_date(d.get("study_date"), precision),
        "study_time": truncate_time(d.get("study_time"), precision),
        "study_description": scrub.text(d.get("study_description")),
        "requested_procedure_description": scrub.text(d.get("requested_procedure_description")),
        "procedure_codes": [_code(c, scrub.text) for c in d.get("procedure_codes") or () if c],
        "modality": d.get("modality"),
        "patient": {
            "sex": patient.get("sex"),
            "age_years": age_whole_years(patient.get("age_years")),
            "weight_kg": patient.get("weight_kg"),
            "height_m": patient.get("height_m"),
        },
        "equipment": {
            "manufacturer": equipment.get("manufacturer"),
            "model": equipment.get("model"),
            "station_name": equipment.get("station_name"),
            "serial_number": equipment.get("serial_number"),
            "software_versions": equipment.get("software_versions"),
            "device_observer_uid": pseudo.uid(equipment.get("device_observer_uid")),
        },
        "dose_objects": [
            {
                "sop_instance_uid": pseudo.uid(o.get("sop_instance_uid")),
                "sop_class_uid": o.get("sop_class_uid"),
                "kind": o.get("kind"),
                "received_at": truncate_date(o.get("received_at"), precision),
            }
            for o in d.get("dose_objects") or ()
        ],
        "report": None if not report else {
            "procedure_reported": _code(report.get("procedure_reported"), scrub.text),
            "has_intent": _code(report.get("has_intent"), scrub.text),
            "start_datetime": truncate_date(report.get("start_datetime"), precision),
            "end_datetime": truncate_date(report.get("end_datetime"), precision),
            "source_of_dose_information": _code(report.get("source_of_dose_information"), scrub.text),
        },
        "total_events": d.get("total_events"),
        "total_dlp_mGycm": d.get("total_dlp_mGycm"),
        "reported_total_dlp_mGycm": d.get("reported_total_dlp_mGycm"),
        "events": [deidentify_event(e, pseudo, scrub, precision) for e in d.get("events") or ()],
        "completeness": {
            "status": completeness.get("status"),
            "missing": scrub.texts(completeness.get("missing")),
            # the offending value itself may be identifying: keep path and reason only
            "invalid": [
                {"path": scrub.text(i.get("path")), "reason": scrub.text(i.get("reason"))}
                for i in completeness.get("invalid") or ()
            ],
            "warnings": scrub.texts(completeness.get("warnings")),
        },
        "classification": {
            "patient_study": classification.get("patient_study"),
            "rt_planning": classification.get("rt_planning"),
            "reasons": scrub.texts(classification.get("reasons")),
        },
        "flags": {
            "registry_code": flags.get("registry_code"),
            "registry_reasons": scrub.texts(flags.get("registry_reasons")),
            "nomenclature_code": flags.get("nomenclature_code"),
            "nomenclature_reasons": scrub.texts(flags.get("nomenclature_reasons")),
        },
    }
