"""How the catalog stores a record: compact JSON, compressed, and the keys derived from it.

* :func:`record_text` -- the record's JSON (``record.to_dict()``, compact separators). It is
  the one text the catalog hashes and compresses.
* :func:`pack` / :func:`unpack` -- what is kept for re-reading: a format byte, then the JSON
  compressed with zlib against a fixed dictionary (:data:`_DICTIONARY_1`). Records are a few
  KiB of mostly the same keys, and zlib alone cannot use the keys of one record to compress
  the next: the dictionary gives it those, which takes a record from about 4 KiB of JSON to
  0.8 KiB (1.3 KiB without it; measured on the sample objects, bench/import.py).
* :func:`content_key` -- identity of an object's content: its record without when and from
  where it was received (a re-send through another sender is the same content).
* :func:`version_key` -- 16 hex digits of the merged study's JSON: changes whenever that
  record changes (``Catalog.study_versions``).
* :class:`StoredRecord` (:func:`stored_record`) -- both of a record, computed once.

A stored format is never changed: a new one gets a new format byte, and :func:`unpack` keeps
reading the old ones.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

from dosereg.extract import StudyRecord

#: zlib against :data:`_DICTIONARY_1` (level 6).
FORMAT_ZLIB_DICT_1 = 1
_LEVEL = 6

# The JSON of a record with every field stated once (placeholder values): the keys in their
# order and the most common values. Frozen: stored records are compressed against exactly
# these bytes (a record of a later model still compresses, a little less well).
_DICTIONARY_1 = (
    b'{"schema":"dosereg.study/1","error":null,"study_instance_uid":"","accession_number":"",'
    b'"study_date":"","study_time":"","study_description":"","requested_procedure_description":"",'
    b'"procedure_codes":[{"value":"","scheme":"DCM","meaning":""}],"modality":"SR","patient":{"id":"",'
    b'"name":"","birth_date":"","sex":"F","age_years":0.0,"weight_kg":0.0,"height_m":0.0},'
    b'"equipment":{"manufacturer":"","model":"","station_name":"","serial_number":"","software_versions":"",'
    b'"institution_name":"","device_observer_uid":""},"dose_objects":[{"sop_instance_uid":"",'
    b'"sop_class_uid":"1.2.840.10008.5.1.4.1.1.88.67","kind":"rdsr","received_at":""}],'
    b'"report":{"procedure_reported":{"value":"","scheme":"DCM","meaning":""},"has_intent":{"value":"",'
    b'"scheme":"DCM","meaning":""},"start_datetime":"","end_datetime":"","source_of_dose_information":'
    b'{"value":"","scheme":"DCM","meaning":""}},"total_events":0,"total_dlp_mGycm":0.0,'
    b'"reported_total_dlp_mGycm":0.0,"events":[{"irradiation_event_uid":"","acquisition_protocol":"",'
    b'"target_region":{"value":"","scheme":"DCM","meaning":""},"acquisition_type":"spiral",'
    b'"acquisition_type_code":{"value":"","scheme":"DCM","meaning":""},"procedure_context":{"value":"",'
    b'"scheme":"DCM","meaning":""},"start_datetime":"","exposure_time_s":0.0,"scanning_length_mm":0.0,'
    b'"nominal_single_collimation_mm":0.0,"nominal_total_collimation_mm":0.0,"pitch_factor":0.0,'
    b'"number_of_xray_sources":0.0,"sources":[{"id":"","kvp_kV":0.0,"max_tube_current_mA":0.0,'
    b'"tube_current_mA":0.0,"exposure_time_per_rotation_s":0.0}],"ctdivol_mGy":0.0,"phantom":"body32",'
    b'"phantom_code":{"value":"","scheme":"DCM","meaning":""},"dlp_mGycm":0.0,"ssde_mGy":0.0,'
    b'"water_equivalent_diameter_mm":0.0,"effective_dose_mSv":0.0,"dose_check":{"ctdivol_alert_mGy":0.0,'
    b'"dlp_alert_mGycm":0.0,"ctdivol_notification_mGy":0.0,"dlp_notification_mGycm":0.0,'
    b'"ctdivol_forward_estimate_mGy":0.0,"dlp_forward_estimate_mGycm":0.0,"reason":"","person":""},'
    b'"is_timing_run":false,"comment":"","series_number":0}],"problems":[{"path":"events[0].","value":"",'
    b'"reason":""}],"source_file":"","series_number":null,"dose_screens":[]}'
)


def dumps(d: dict[str, Any]) -> str:
    """Compact JSON of a record's dict (non-ASCII kept as it is)."""
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))


def record_text(record: StudyRecord) -> str:
    """The JSON the catalog keeps of ``record``."""
    return dumps(record.to_dict())


@dataclass(frozen=True)
class StoredRecord:
    """One record as the catalog keeps it: :func:`pack` of its JSON and that JSON's :func:`version_key`.

    Computed where the record is made when that is another process (an import's workers),
    so that the one process writing the catalog does not serialise every record itself.
    """

    blob: bytes
    version: str


def stored_record(record: StudyRecord) -> StoredRecord:
    text = record_text(record)
    return StoredRecord(pack(text), version_key(text))


def pack(text: str) -> bytes:
    """The stored form of a record's JSON text."""
    c = zlib.compressobj(_LEVEL, zdict=_DICTIONARY_1)
    return bytes((FORMAT_ZLIB_DICT_1,)) + c.compress(text.encode("utf-8")) + c.flush()


def unpack_text(blob: bytes) -> str:
    """The JSON text of a stored record."""
    if not blob or blob[0] != FORMAT_ZLIB_DICT_1:
        raise ValueError(f"stored record of unknown format {blob[:1]!r}")
    d = zlib.decompressobj(zdict=_DICTIONARY_1)
    data = d.decompress(memoryview(blob)[1:]) + d.flush()
    return data.decode("utf-8")


def unpack(blob: bytes) -> StudyRecord:
    """The record stored as ``blob``."""
    return StudyRecord.from_dict(json.loads(unpack_text(blob)))


def content_key(d: dict[str, Any]) -> str:
    """Identity of an object's content: its record dict without when and where it was received.

    Events are compared without ``is_timing_run``, which records stored by earlier versions
    carry (the model held that registry verdict then): an object received again unchanged
    after an upgrade is a duplicate, not a replacement."""
    plain = dict(d)
    plain["source_file"] = None
    plain["dose_objects"] = [{**ref, "received_at": None} for ref in d.get("dose_objects") or ()]
    if plain.get("events"):
        plain["events"] = [{k: v for k, v in e.items() if k != "is_timing_run"} for e in plain["events"]]
    return hashlib.sha256(dumps(plain).encode("utf-8")).hexdigest()


def version_key(text: str) -> str:
    """Short key of a merged study's JSON text: equal texts, equal keys."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
