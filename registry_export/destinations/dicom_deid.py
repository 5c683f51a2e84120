"""De-identification of a DICOM dose object for a registry gateway (docs/destinations.md).

DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile with the options

* Clean Structured Content (113104): content items that may name a person or hold free
  text are removed (PNAME items, TEXT items such as Comment (121106), Acquisition Protocol
  (125203), Reason for Proceeding (113907), Device Observer Physical Location (121017),
  Organization Name (113873)); the few TEXT items that identify a device are replaced by
  their keyed pseudonyms (Device Observer Name (121013) and Device Name (113877) as a
  Station Name, Device Observer Serial Number (121016) and Device Serial Number (113880) as a
  serial number), and those that name no one are kept (Identification of the X-Ray Source
  (113832), Device (Observer) Manufacturer and Model Name (121014, 121015, 113878, 113879));
* Retain Patient Characteristics (113108): Patient's Sex, Age (90 and over becomes
  ``090Y``, as in the registry files), Size, Weight and Pregnancy Status are kept;
* Retain Longitudinal Temporal Information: every date is cut to ``registry.date_precision``
  (``month``: the first of the month, ``year``: 1 January) and, below day precision, every
  time of day is removed (``000000`` where the attribute is Type 1), which is the Modified
  Dates option (113107); with ``day`` precision nothing is modified, which is the Full Dates
  option (113106), and the object says so.

The object is rebuilt by *whitelist*: an attribute not named in :data:`_ACTIONS` is not
copied, at any depth, so a vendor's addition never leaks (private attributes are never
copied). Every instance UID becomes the batch's keyed pseudonym
(:meth:`Pseudonymizer.uid`), the same one the registry files carry, so a sent object and its
study's registry row still match; Station Name and Device Serial Number get the pseudonyms
of :meth:`Pseudonymizer.station_name` / :meth:`Pseudonymizer.serial_number`. Patient's Name,
Patient ID, Patient's Birth Date, Accession Number, Referring Physician's Name and Study ID
are emptied (Type 2). Study, Series and other descriptions are removed (the Clean Descriptors
option is not applied). Patient Identity Removed is ``YES``; De-identification Method and its
Code Sequence (CID 7050) name the profile and options.

The dose content (TID 10011 containers, numeric items, codes, irradiation event UIDs as
pseudonyms) is kept whole, so the de-identified object extracts to the same dose values.
An object with pixel data is refused (:class:`DeidentificationError`): burned-in text would
need the Clean Pixel Data option, which is not applied; so is an object that is not a
structured report (a dose screen keeps its figures in attributes this whitelist drops).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from ..deid import DATE_PRECISIONS, Pseudonymizer

#: UIDs defined by the standard (SOP classes, transfer syntaxes, coding schemes) name no one
DICOM_ROOT = "1.2.840.10008."
AGE_CAP = "090Y"


class DeidentificationError(ValueError):
    """The object cannot be de-identified by this profile (the message says why, with no identifier)."""


@dataclass
class _Context:
    pseudo: Pseudonymizer
    precision: str
    problems: list[str] = field(default_factory=list)


# -- temporal values ------------------------------------------------------------------------

def _date(value: str, precision: str) -> str:
    """A DA value cut to the precision: ``month`` -> YYYYMM01, ``year`` -> YYYY0101; "" if unusable."""
    digits = value.strip()
    if not digits[:4].isdigit():
        return ""
    if precision == "day":
        return digits
    if precision == "month" and digits[4:6].isdigit():
        return f"{digits[:6]}01"
    return f"{digits[:4]}0101"


def _datetime(value: str, precision: str) -> str:
    """A DT value: kept whole with ``day`` precision, else the truncated date alone (no time)."""
    if precision == "day":
        return value.strip()
    return _date(value[:8], precision)


#: Type 1 times (SR Document General, content items): a value must stay, so midnight
_TYPE1_TIMES = frozenset({"ContentTime", "Time"})


def _time(keyword: str, value: str, precision: str) -> str:
    if precision == "day":
        return value.strip()
    return "000000" if keyword in _TYPE1_TIMES else ""


def _temporal(elem: DataElement, ctx: _Context) -> Any:
    values = elem.value if elem.VM > 1 else [elem.value]
    out: list[str] = []
    for v in values:
        text = "" if v is None else str(v)
        if not text:
            out.append("")
        elif elem.VR == "DA":
            out.append(_date(text, ctx.precision))
        elif elem.VR == "DT":
            out.append(_datetime(text, ctx.precision))
        else:
            out.append(_time(elem.keyword, text, ctx.precision))
    return out if len(out) > 1 else out[0]


# -- element actions ------------------------------------------------------------------------

Action = Callable[[DataElement, _Context], "DataElement | None"]


def _copy(elem: DataElement, value: Any) -> DataElement:
    return DataElement(elem.tag, elem.VR, value)


def _keep(elem: DataElement, ctx: _Context) -> DataElement | None:
    if elem.VR in ("DA", "DT", "TM"):
        return _copy(elem, _temporal(elem, ctx))
    # a copy of the element, not of its value: a value the reader kept as text because it does
    # not parse (an invalid DS such as "abc") goes out as it came, for the registry to judge
    return copy.copy(elem)


def _empty(elem: DataElement, ctx: _Context) -> DataElement | None:
    return _copy(elem, None)


def _uid(elem: DataElement, ctx: _Context) -> DataElement | None:
    values = elem.value if elem.VM > 1 else [elem.value]
    out = [ctx.pseudo.uid(str(v)) or "" for v in values if v]
    return _copy(elem, out if len(out) > 1 else (out[0] if out else None))


def _content_uid(elem: DataElement, ctx: _Context) -> DataElement | None:
    """UIDREF content: instance UIDs become pseudonyms; a UID the standard defines stays."""
    value = str(elem.value or "")
    return _copy(elem, value if value.startswith(DICOM_ROOT) else (ctx.pseudo.uid(value) or None))


def _station(elem: DataElement, ctx: _Context) -> DataElement | None:
    return _copy(elem, ctx.pseudo.station_name(str(elem.value)) if elem.value else None)


def _serial(elem: DataElement, ctx: _Context) -> DataElement | None:
    return _copy(elem, ctx.pseudo.serial_number(str(elem.value)) if elem.value else None)


def _age(elem: DataElement, ctx: _Context) -> DataElement | None:
    """Patient's Age kept (Retain Patient Characteristics), 90 years and over as ``090Y``."""
    value = str(elem.value or "").strip()
    if len(value) == 4 and value[:3].isdigit() and value[3] == "Y" and int(value[:3]) >= 90:
        value = AGE_CAP
    return _copy(elem, value or None)


def _sequence(elem: DataElement, ctx: _Context) -> DataElement | None:
    return _copy(elem, DicomSequence([_clean(item, ctx) for item in elem.value]))


def _content(elem: DataElement, ctx: _Context) -> DataElement | None:
    """Content Sequence at the document root: see :func:`_clean_content`."""
    return None  # replaced as a whole by :func:`deidentify` (by-reference paths span the tree)


_KEEP = (
    # SOP Common, SR Document Series / General / Content, General Equipment (what names no one)
    "SpecificCharacterSet", "SOPClassUID", "Modality", "Manufacturer", "ManufacturerModelName",
    "SoftwareVersions", "SeriesNumber", "InstanceNumber", "TimezoneOffsetFromUTC",
    "ContentDate", "ContentTime", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime",
    "InstanceCreationDate", "InstanceCreationTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "DateOfLastCalibration", "TimeOfLastCalibration",
    "PatientSex", "PatientSize", "PatientWeight", "PregnancyStatus",
    # the content tree and coded entries (PS3.3 C.17.3, Table 8.8-1)
    "ValueType", "RelationshipType", "ContinuityOfContent", "CompletionFlag", "VerificationFlag",
    "PreliminaryFlag", "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
    "LongCodeValue", "URNCodeValue", "ContextIdentifier", "ContextUID", "MappingResource",
    "MappingResourceUID", "MappingResourceName", "ContextGroupVersion", "ContextGroupExtensionFlag",
    "ContextGroupLocalVersion", "ContextGroupExtensionCreatorUID", "TemplateIdentifier",
    "NumericValue", "FloatingPointValue", "RationalNumeratorValue", "RationalDenominatorValue",
    "DateTime", "Date", "Time", "ObservationDateTime", "ReferencedDateTime",
    "ReferencedSOPClassUID", "ReferencedFrameNumber", "ReferencedSegmentNumber",
    "GraphicType", "GraphicData", "PixelOriginInterpretation", "FiducialUID",
    "TemporalRangeType", "ReferencedSamplePositions", "ReferencedTimeOffsets",
    "CodingSchemeUID", "CodingSchemeName",
)
_SEQUENCES = (
    "ConceptNameCodeSequence", "ConceptCodeSequence", "MeasuredValueSequence", "MeasurementUnitsCodeSequence",
    "NumericValueQualifierCodeSequence", "ContentTemplateSequence", "EquivalentCodeSequence",
    "PerformedProcedureCodeSequence", "ProcedureCodeSequence", "ReferencedSOPSequence",
    "ReferencedSeriesSequence", "CurrentRequestedProcedureEvidenceSequence",
    "PertinentOtherEvidenceSequence", "PredecessorDocumentsSequence", "IdenticalDocumentsSequence",
    "CodingSchemeIdentificationSequence",
)
_UIDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "ReferencedSOPInstanceUID",
    "InstanceCreatorUID", "FrameOfReferenceUID", "ReferencedFrameOfReferenceUID", "IrradiationEventUID",
    "DeviceUID", "ObservationUID", "ConcatenationUID", "SynchronizationFrameOfReferenceUID",
)
_ACTIONS: dict[str, Action] = {
    **{k: _keep for k in _KEEP},
    **{k: _sequence for k in _SEQUENCES},
    **{k: _uid for k in _UIDS},
    # Type 2 identifiers: present, empty (Annex E action Z)
    **{k: _empty for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                           "ReferringPhysicianName", "StudyID")},
    "StationName": _station,
    "DeviceSerialNumber": _serial,
    "PatientAge": _age,
    "UID": _content_uid,
    "ContentSequence": _content,
}


def _clean(src: Dataset, ctx: _Context) -> Dataset:
    """A new dataset with only the whitelisted attributes of ``src``, each treated by its action."""
    out = Dataset()
    for elem in src:
        if elem.tag.is_private:
            continue
        action = _ACTIONS.get(elem.keyword)
        if action is None:
            continue
        new = action(elem, ctx)
        if new is not None:
            out.add(new)
    return out


# -- the content tree ------------------------------------------------------------------------

#: TEXT items kept as they are: they identify equipment parts, never a person or a site
_KEEP_TEXT = frozenset({"113832", "121014", "121015", "113878", "113879"})
#: TEXT items holding a device's name or serial: replaced by the keyed pseudonym
_STATION_TEXT = frozenset({"121013", "113877"})
_SERIAL_TEXT = frozenset({"121016", "113880"})

ItemPath = tuple[int, ...]


def _concept(item: Dataset) -> str | None:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return None
    code = seq[0]
    if str(code.get("CodingSchemeDesignator", "")) != "DCM":
        return None
    return str(code.get("CodeValue", "")) or None


def _text_verdict(item: Dataset, ctx: _Context) -> str | None:
    """The TextValue a TEXT item keeps (``None``: the item is removed)."""
    concept = _concept(item)
    value = str(item.get("TextValue", "") or "")
    if concept in _KEEP_TEXT:
        return value
    if concept in _STATION_TEXT:
        return ctx.pseudo.station_name(value)
    if concept in _SERIAL_TEXT:
        return ctx.pseudo.serial_number(value)
    return None


def _removed_by_rule(item: Dataset, ctx: _Context) -> bool:
    value_type = str(item.get("ValueType", ""))
    if value_type == "PNAME":
        return True
    return value_type == "TEXT" and _text_verdict(item, ctx) is None


def _walk(seq: Iterable[Dataset], path: ItemPath) -> Iterable[tuple[ItemPath, Dataset]]:
    for i, item in enumerate(seq, 1):
        here = (*path, i)
        yield here, item
        yield from _walk(item.get("ContentSequence") or (), here)


def _under(path: ItemPath, removed: set[ItemPath]) -> bool:
    return any(path[:n] in removed for n in range(1, len(path) + 1))


def _reference(item: Dataset) -> ItemPath | None:
    ref = item.get("ReferencedContentItemIdentifier")
    if ref is None:
        return None
    values = ref if isinstance(ref, Sequence) and not isinstance(ref, (str, bytes)) else [ref]
    return tuple(int(v) for v in values)


def _removals(root: Dataset, ctx: _Context) -> set[ItemPath]:
    """Paths (from the root, item 1) of the content items to remove: by rule, then every
    by-reference item whose target is gone (until nothing changes)."""
    items = list(_walk(root.get("ContentSequence") or (), (1,)))
    removed = {p for p, item in items if _removed_by_rule(item, ctx)}
    changed = True
    while changed:
        changed = False
        for p, item in items:
            target = _reference(item)
            if target is not None and p not in removed and (_under(target, removed) or target[:1] != (1,)):
                removed.add(p)
                changed = True
    return removed


def _new_path(path: ItemPath, removed: set[ItemPath]) -> ItemPath:
    """Where an item that stays sits once the removed ones are gone."""
    out = [path[0]]
    for depth in range(1, len(path)):
        parent = path[:depth]
        gone = sum(1 for i in range(1, path[depth]) if (*parent, i) in removed)
        out.append(path[depth] - gone)
    return tuple(out)


def _clean_content(seq: Sequence[Dataset], path: ItemPath, removed: set[ItemPath], ctx: _Context) -> DicomSequence:
    out = DicomSequence()
    for i, item in enumerate(seq, 1):
        here = (*path, i)
        if here in removed:
            continue
        new = _clean(item, ctx)
        if str(item.get("ValueType", "")) == "TEXT":
            new.TextValue = _text_verdict(item, ctx)
        target = _reference(item)
        if target is not None:
            new.ReferencedContentItemIdentifier = list(_new_path(target, removed))
        if "ContentSequence" in item:
            new.ContentSequence = _clean_content(item.ContentSequence, here, removed, ctx)
        out.append(new)
    return out


# -- the profile's own attributes --------------------------------------------------------------

_METHOD_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113104": "Clean Structured Content Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
}


def method_codes(precision: str) -> tuple[str, ...]:
    """The CID 7050 codes of what :func:`deidentify` applies with ``precision``."""
    dates = "113106" if precision == "day" else "113107"
    return ("113100", "113104", dates, "113108")


def _mark(ds: Dataset, precision: str) -> None:
    codes = method_codes(precision)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [_METHOD_CODES[c][:64] for c in codes] + [f"dosereg: dates to {precision}"]
    items = []
    for c in codes:
        item = Dataset()
        item.CodeValue = c
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = _METHOD_CODES[c]
        items.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(items)
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if precision == "day" else "MODIFIED"


def deidentify(ds: Dataset, pseudonymizer: Pseudonymizer, precision: str) -> Dataset:
    """The de-identified copy of a dose object (``ds`` is left untouched); see the module docstring.

    The copy has file meta for Explicit VR Little Endian and its pseudonymous SOP Instance
    UID, ready to be sent or written. Raises :class:`DeidentificationError` for an object
    this profile cannot clean (pixel data, no SOP Class or Instance UID) and
    :class:`ValueError` for a precision that is not ``day``, ``month`` or ``year``.
    """
    if precision not in DATE_PRECISIONS:
        raise ValueError(f"registry.date_precision must be one of {', '.join(DATE_PRECISIONS)}, not {precision!r}")
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise DeidentificationError(
            "the object has pixel data, which may hold burned-in identifiers (the Clean Pixel Data "
            "option is not applied): send it as the original or not at all")
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise DeidentificationError("the object has no SOP Class UID or SOP Instance UID")
    if "ContentSequence" not in ds or "ValueType" not in ds:
        # a dose screen keeps its figures in attributes (and free text) this whitelist drops
        raise DeidentificationError("the object is not a structured report: this profile cleans SR content only")
    ctx = _Context(pseudonymizer, precision)
    out = _clean(ds, ctx)
    out.ContentSequence = _clean_content(ds.ContentSequence, (1,), _removals(ds, ctx), ctx)
    if "VerifyingObserverSequence" in ds:  # the verifier is a person: the document goes out unverified
        out.VerificationFlag = "UNVERIFIED"
    _mark(out, precision)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta = meta
    out.preamble = b"\0" * 128
    return out


__all__ = ["DeidentificationError", "deidentify", "method_codes"]
