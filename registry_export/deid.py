"""De-identification of study records for the registry (docs/files.md).

The registry copy of a study is built by *whitelist*: only the fields named here are
copied from the evaluated study record, so a field added to the record later never leaks
by accident. Removed: patient name, ID and birth date, accession number, institution name,
person names (``dose_check.person``), device observer names and locations, free-text
comments (``events[].comment``, ``dose_check.reason``) and the offending values of invalid
elements. Every UID (study, SOP instance, irradiation event, device observer) becomes a
keyed pseudonym::

    2.25.<decimal of the first 16 bytes of HMAC-SHA256(secret, uid)>

which is a valid DICOM UID (at most 44 characters), the same for the same UID and secret.
Device identifiers (HIPAA lists them for Safe Harbor and for a limited data set) are keyed
the same way, in forms that fit their DICOM VRs, so the registry can still tell scanners
apart: Station Name (SH, 16 characters) becomes ``S`` + 15 upper-case hex digits, a
Device Serial Number or Device Observer Serial Number (LO, 64 characters) ``SN`` + 30 hex
digits; each HMAC is domain-separated (``station_name:`` / ``serial_number:`` before the
value) so a station called like a UID never shares its pseudonym.

The secret is read from the environment variable named by ``site.pseudonym_secret_env``;
without it nothing is exported (:class:`MissingSecretError`), and one shorter than
:data:`MIN_SECRET_LENGTH` characters is refused (:class:`WeakSecretError`): a short secret
can be guessed, and whoever guesses it can recompute every pseudonym from a known UID.

Ages become whole years (floor), 90 for 90 and over. Dates and date-times keep the
configured precision: ``day`` (HIPAA limited data set: exam dates and times kept),
``month`` (``YYYY-MM``) or ``year`` (``YYYY``, HIPAA Safe Harbor); with ``month`` or
``year`` times of day are dropped.

Text that stays (descriptions, protocol names, rule reasons) is scrubbed as a second line
of defence: any UID in it is replaced by its pseudonym and the study's own patient name
parts, patient ID, accession number and birth date by ``[removed]``, its station name and
serial number by their pseudonyms (a rule's reason may quote the station name).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
from collections.abc import Callable
from typing import Any

from dosereg.conf.config import Config

REMOVED = "[removed]"
MIN_SECRET_LENGTH = 32
#: the fingerprint export state keeps of the secret (never the secret): HMAC(secret, this)
SECRET_FINGERPRINT_MESSAGE = b"dosereg-secret-fingerprint"
STATION_NAME_LENGTH = 16  # SH
_STATION_DIGITS = STATION_NAME_LENGTH - 1
_SERIAL_DIGITS = 30  # "SN" + 30 hex digits = 32 characters, within LO's 64
REGISTRY_STUDY_SCHEMA_ID = "dosereg.registry-study/1"  # the de-identified form of "dosereg.study/1"
DATE_PRECISIONS = ("day", "month", "year")

# A DICOM UID inside free text: at least four numeric components.
_NAME_PARTS = re.compile(r"[\^=\s,]+")
_UID_IN_TEXT = re.compile(r"(?<![\d.])(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*)){3,}(?![\d.])")


class MissingSecretError(ValueError):
    """No usable pseudonym secret (its environment variable is unset or empty): refuse to export."""


class WeakSecretError(MissingSecretError):
    """The pseudonym secret is shorter than :data:`MIN_SECRET_LENGTH` characters: refuse to export."""


def secret_from_config(cfg: Config) -> bytes:
    """The site secret, from the environment variable named in ``site.pseudonym_secret_env``."""
    name = cfg.site.pseudonym_secret_env
    value = os.environ.get(name, "")
    if not value:
        raise MissingSecretError(
            f"environment variable {name} (site.pseudonym_secret_env in {cfg.path}) is not set; "
            f"refusing to export without the pseudonym secret"
        )
    if len(value) < MIN_SECRET_LENGTH:
        raise WeakSecretError(
            f"environment variable {name} (site.pseudonym_secret_env in {cfg.path}) is only {len(value)} "
            f"character{'' if len(value) == 1 else 's'} long; the pseudonym secret must be at least "
            f"{MIN_SECRET_LENGTH} characters "
            f"(e.g. the output of `openssl rand -hex 32`)"
        )
    return value.encode("utf-8")


def secret_fingerprint(secret: bytes) -> str:
    """What export state keeps to recognise the secret: HMAC-SHA256(secret, a fixed message), hex.

    It cannot be turned back into the secret, nor used to compute a pseudonym.
    """
    return hmac.new(secret, SECRET_FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()


def _keyed(secret: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with the secret once, copied for each value (OpenSSL keeps the key schedule)."""
    return hmac.new(secret, digestmod="sha256")


def _uid_pseudonym(keyed: hmac.HMAC, uid: str) -> str:
    """``2.25.<decimal of the first 16 bytes of HMAC-SHA256(secret, uid)>`` (``uid`` stripped)."""
    h = keyed.copy()
    h.update(uid.strip().encode("ascii", "replace"))
    return "2.25." + str(int.from_bytes(h.digest()[:16], "big"))


#: device identifier -> (the domain its HMAC is separated by, the pseudonym's prefix, its hex digits)
_DEVICE_FORMS = {
    "station_name": (b"station_name:", "S", _STATION_DIGITS),  # S + 15: SH, 16 characters
    "serial_number": (b"serial_number:", "SN", _SERIAL_DIGITS),  # SN + 30: within LO's 64
}


def _device_pseudonym(keyed: hmac.HMAC, kind: str, value: str) -> str:
    """The prefix + the first hex digits (upper case) of HMAC-SHA256(secret, domain + value)."""
    domain, prefix, digits = _DEVICE_FORMS[kind]
    h = keyed.copy()
    h.update(domain + value.strip().encode("utf-8"))
    return prefix + h.hexdigest()[:digits].upper()


class Pseudonymizer:
    """Maps original UIDs and device identifiers to their keyed pseudonyms (``None`` stays ``None``)."""

    CACHE_SIZE = 4096  # UIDs that recur across studies (device observers) are hashed once

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise MissingSecretError("the pseudonym secret is empty; refusing to export")
        if len(secret) < MIN_SECRET_LENGTH:
            raise WeakSecretError(f"the pseudonym secret must be at least {MIN_SECRET_LENGTH} characters")
        self._keyed = _keyed(secret)
        self._cache: dict[str, str] = {}
        self._text_cache: dict[str, str] = {}
        self._devices: dict[tuple[str, str], str | None] = {}  # few scanners: never cleared
        self.fingerprint = secret_fingerprint(secret)

    def station_name(self, name: str | None) -> str | None:
        """``S`` + the first 15 hex digits (upper case) of HMAC-SHA256(secret, "station_name:" +
        name): 16 characters, a valid Station Name (SH)."""
        return self._device("station_name", name)

    def serial_number(self, serial: str | None) -> str | None:
        """``SN`` + the first 30 hex digits (upper case) of HMAC-SHA256(secret, "serial_number:" +
        serial): a valid Device (Observer) Serial Number (LO)."""
        return self._device("serial_number", serial)

    def _device(self, kind: str, value: str | None) -> str | None:
        if value is None:
            return None
        text = value if value.__class__ is str else str(value)
        key = (kind, text)
        if key in self._devices:
            return self._devices[key]
        out = _device_pseudonym(self._keyed, kind, text) if text.strip() else None
        if len(self._devices) >= self.CACHE_SIZE:
            self._devices.clear()
        self._devices[key] = out
        return out

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
        """``2.25.<decimal of the first 16 bytes of HMAC-SHA256(secret, uid)>`` (the one UID
        pseudonym: registry files, DICOM objects sent, manifests); None for None or blank."""
        if uid is None:
            return None
        text = uid if uid.__class__ is str else str(uid)
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        if not text.strip():
            return None
        out = _uid_pseudonym(self._keyed, text)
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
        words: dict[str, str] = {}  # lower-case word -> what replaces it
        for value in (patient.get("id"), record.get("accession_number")):
            if value and len(str(value).strip()) >= 3:
                words[str(value).strip().lower()] = REMOVED
        name = patient.get("name")
        if name:
            for part in _NAME_PARTS.split(str(name)):
                if len(part) >= 3:
                    words[part.lower()] = REMOVED
        birth = patient.get("birth_date")
        if birth:
            words[str(birth).lower()] = REMOVED
            words[str(birth).replace("-", "").lower()] = REMOVED
        # device identifiers become their pseudonyms, and only as whole words: a serial number
        # such as "10001" is also a run of digits inside pseudonymous UIDs and dose values
        devices: dict[str, str] = {}
        equipment = record.get("equipment") or {}
        for value, to in ((equipment.get("station_name"), pseudo.station_name),
                          (equipment.get("serial_number"), pseudo.serial_number)):
            text = str(value).strip() if value else ""
            if len(text) >= 3 and text.lower() not in words:
                devices[text.lower()] = to(text) or REMOVED
        self._words = {**words, **devices}
        self._devices = frozenset(devices)
        self._pattern: re.Pattern[str] | None = None

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        out = value
        if "." in out:
            out = self._pseudo.uids_in_text(out)
        low = out.lower()
        if any(w in low for w in self._words):  # rare: only then pay for a case-insensitive replacement
            if self._pattern is None:
                # longest first, so "Doe^John" parts never leave half a word behind; one pass, so a
                # replacement is never matched again
                alternatives = sorted(self._words, key=len, reverse=True)
                self._pattern = re.compile("|".join(
                    rf"(?<![0-9a-z]){re.escape(w)}(?![0-9a-z])" if w in self._devices else re.escape(w)
                    for w in alternatives), re.IGNORECASE)
            words = self._words
            out = self._pattern.sub(lambda m: words.get(m.group(0).lower(), REMOVED), out)
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
            "station_name": pseudo.station_name(equipment.get("station_name")),
            "serial_number": pseudo.serial_number(equipment.get("serial_number")),
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
