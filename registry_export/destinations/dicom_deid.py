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

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO

import pydicom
import pydicom.charset
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from ..deid import DATE_PRECISIONS, Pseudonymizer
from .dicom_encoding import (
    Element,
    MalformedObject,
    NeedsTranscoding,
    element,
    explicit_little_endian,
    item,
    items_of,
    pad,
    parse,
    part10,
    plain,
    sequence,
    split_part10,
    string_value,
    text,
)

#: UIDs defined by the standard (SOP classes, transfer syntaxes, coding schemes) name no one
DICOM_ROOT = "1.2.840.10008."
AGE_CAP = "090Y"


class DeidentificationError(ValueError):
    """The object cannot be de-identified by this profile (the message says why, with no identifier)."""


@dataclass(frozen=True)
class _Context:
    pseudo: Pseudonymizer
    precision: str
    encodings: list[str]  # the document's character set (Python codecs), for values whose text is used


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover -- a typo in the tables below
        raise KeyError(keyword)
    return int(tag)


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
_TYPE1_TIMES = frozenset({_tag("ContentTime"), _tag("Time")})


def _temporal(el: Element, ctx: _Context) -> bytes:
    out = []
    for v in string_value(el).split("\\"):
        if not v:
            out.append("")
        elif el.vr == b"DA":
            out.append(_date(v, ctx.precision))
        elif el.vr == b"DT":
            out.append(_datetime(v, ctx.precision))
        else:
            out.append(v.strip() if ctx.precision == "day" else "000000" if el.tag in _TYPE1_TIMES else "")
    return text(el.tag, el.vr, "\\".join(out).rstrip("\\"))


# -- element actions ------------------------------------------------------------------------

Action = Callable[[Element, _Context], "bytes | None"]
_TEMPORAL_VRS = frozenset({b"DA", b"DT", b"TM"})


def _decoded(el: Element, ctx: _Context) -> str:
    return pydicom.charset.decode_bytes(el.value, ctx.encodings, set()).rstrip("\0 ").strip()


def _keep(el: Element, ctx: _Context) -> bytes | None:
    if el.vr == b"SQ":  # a kept attribute encoded as a sequence: not what the whitelist names
        return None
    if el.vr in _TEMPORAL_VRS:
        return _temporal(el, ctx)
    return el.raw  # byte for byte, as read


def _empty(el: Element, ctx: _Context) -> bytes | None:
    return element(el.tag, el.vr, b"")


def _uid(el: Element, ctx: _Context) -> bytes | None:
    out = [ctx.pseudo.uid(v) or "" for v in string_value(el).split("\\") if v]
    return text(el.tag, b"UI", "\\".join(out))


def _content_uid(el: Element, ctx: _Context) -> bytes | None:
    """UIDREF content: instance UIDs become pseudonyms; a UID the standard defines stays."""
    value = string_value(el)
    return text(el.tag, b"UI", value if value.startswith(DICOM_ROOT) else (ctx.pseudo.uid(value) or ""))


def _station(el: Element, ctx: _Context) -> bytes | None:
    return text(el.tag, el.vr, ctx.pseudo.station_name(_decoded(el, ctx)) or "")


def _serial(el: Element, ctx: _Context) -> bytes | None:
    return text(el.tag, el.vr, ctx.pseudo.serial_number(_decoded(el, ctx)) or "")


def _age(el: Element, ctx: _Context) -> bytes | None:
    """Patient's Age kept (Retain Patient Characteristics), 90 years and over as ``090Y``."""
    value = string_value(el)
    if len(value) == 4 and value[:3].isdigit() and value[3] == "Y" and int(value[:3]) >= 90:
        return text(el.tag, b"AS", AGE_CAP)
    return el.raw


def _sequence(el: Element, ctx: _Context) -> bytes | None:
    if el.vr != b"SQ":
        return None
    if el.items is None and plain(el.value, _PLAIN, _PLAIN_SEQUENCES):
        return el.raw  # codes and measured values: nothing in them to change, copied as encoded
    return sequence(el.tag, [item([b for _, b in _clean(i, ctx)]) for i in items_of(el, _KNOWN, _LAZY)])


def _content(el: Element, ctx: _Context) -> bytes | None:
    return None  # the content tree is rebuilt as a whole by _clean_content (by-reference paths span it)


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
_ACTIONS: dict[int, Action] = {
    **{_tag(k): _keep for k in _KEEP},
    **{_tag(k): _sequence for k in _SEQUENCES},
    **{_tag(k): _uid for k in _UIDS},
    # Type 2 identifiers: present, empty (Annex E action Z)
    **{_tag(k): _empty for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                                 "ReferringPhysicianName", "StudyID")},
    _tag("StationName"): _station,
    _tag("DeviceSerialNumber"): _serial,
    _tag("PatientAge"): _age,
    _tag("UID"): _content_uid,
    _tag("ContentSequence"): _content,
}
_KNOWN = frozenset(_ACTIONS)
#: what a sequence copied as encoded may hold: attributes kept unchanged, and such sequences
_PLAIN = frozenset(_tag(k) for k in _KEEP)
_PLAIN_SEQUENCES = frozenset(_tag(k) for k in _SEQUENCES)
#: sequences read only when needed: coded entries and measured values, of which a report has hundreds
_LAZY = frozenset(_tag(k) for k in ("ConceptNameCodeSequence", "ConceptCodeSequence", "MeasuredValueSequence",
                                    "MeasurementUnitsCodeSequence", "ContentTemplateSequence",
                                    "NumericValueQualifierCodeSequence", "EquivalentCodeSequence"))


def _clean(elements: Iterable[Element], ctx: _Context) -> list[tuple[int, bytes]]:
    """(tag, encoded element) of the whitelisted elements, each treated by its action."""
    out = []
    for el in elements:
        action = _ACTIONS.get(el.tag)  # private tags (odd groups) are never in the table
        if action is None:
            continue
        encoded = action(el, ctx)
        if encoded is not None:
            out.append((el.tag, encoded))
    return out


# -- the content tree ------------------------------------------------------------------------

#: TEXT items kept as they are: they identify equipment parts, never a person or a site
_KEEP_TEXT = frozenset({"113832", "121014", "121015", "113878", "113879"})
#: TEXT items holding a device's name or serial: replaced by the keyed pseudonym
_STATION_TEXT = frozenset({"121013", "113877"})
_SERIAL_TEXT = frozenset({"121016", "113880"})
_VALUE_TYPE, _CONCEPT_NAME = _tag("ValueType"), _tag("ConceptNameCodeSequence")
_CODE_VALUE, _SCHEME = _tag("CodeValue"), _tag("CodingSchemeDesignator")
_TEXT_VALUE, _CONTENT = _tag("TextValue"), _tag("ContentSequence")
_BY_REFERENCE = _tag("ReferencedContentItemIdentifier")

ItemPath = tuple[int, ...]
Item = tuple[Element, ...]


def _get(elements: Item, tag: int) -> Element | None:
    for el in elements:
        if el.tag == tag:
            return el
    return None


def _value_type(it: Item) -> str:
    el = _get(it, _VALUE_TYPE)
    return string_value(el) if el is not None else ""


def _concept(it: Item) -> str | None:
    seq = _get(it, _CONCEPT_NAME)
    items = items_of(seq, _KNOWN, _LAZY) if seq is not None else ()
    if not items:
        return None
    code, scheme = _get(items[0], _CODE_VALUE), _get(items[0], _SCHEME)
    if code is None or scheme is None or string_value(scheme) != "DCM":
        return None
    return string_value(code) or None


def _text_verdict(it: Item, ctx: _Context) -> bytes | None:
    """The TextValue element a TEXT item keeps (``None``: the item is removed)."""
    concept = _concept(it)
    value = _get(it, _TEXT_VALUE)
    if concept in _KEEP_TEXT:
        return value.raw if value is not None else None
    if concept in _STATION_TEXT or concept in _SERIAL_TEXT:
        original = _decoded(value, ctx) if value is not None else ""
        to = ctx.pseudo.station_name if concept in _STATION_TEXT else ctx.pseudo.serial_number
        return element(_TEXT_VALUE, b"UT", pad((to(original) or "").encode("ascii"), b"UT"))
    return None


def _removed_by_rule(it: Item, ctx: _Context) -> bool:
    value_type = _value_type(it)
    if value_type == "PNAME":
        return True
    return value_type == "TEXT" and _text_verdict(it, ctx) is None


def _children(it: Item) -> tuple[Item, ...]:
    seq = _get(it, _CONTENT)
    return seq.items if seq is not None and seq.items is not None else ()


def _walk(items: Iterable[Item], path: ItemPath) -> Iterator[tuple[ItemPath, Item]]:
    for i, it in enumerate(items, 1):
        here = (*path, i)
        yield here, it
        yield from _walk(_children(it), here)


def _under(path: ItemPath, removed: set[ItemPath]) -> bool:
    return any(path[:n] in removed for n in range(1, len(path) + 1))


def _reference(it: Item) -> ItemPath | None:
    el = _get(it, _BY_REFERENCE)
    if el is None:
        return None
    return struct.unpack(f"<{len(el.value) // 4}I", el.value[: len(el.value) // 4 * 4])


def _removals(root: Item, ctx: _Context) -> set[ItemPath]:
    """Paths (from the root, item 1) of the content items to remove: by rule, then every
    by-reference item whose target is gone (until nothing changes)."""
    items = list(_walk(_children(root), (1,)))
    removed = {p for p, it in items if _removed_by_rule(it, ctx)}
    changed = True
    while changed:
        changed = False
        for p, it in items:
            target = _reference(it)
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


def _clean_content(items: Iterable[Item], path: ItemPath, removed: set[ItemPath], ctx: _Context) -> bytes:
    encoded_items = []
    for i, it in enumerate(items, 1):
        here = (*path, i)
        if here in removed:
            continue
        parts = _clean(it, ctx)
        if _value_type(it) == "TEXT":
            verdict = _text_verdict(it, ctx)
            if verdict is not None:
                parts.append((_TEXT_VALUE, verdict))
        target = _reference(it)
        if target is not None:
            new = _new_path(target, removed)
            parts.append((_BY_REFERENCE, element(_BY_REFERENCE, b"UL", struct.pack(f"<{len(new)}I", *new))))
        if _get(it, _CONTENT) is not None:
            parts.append((_CONTENT, _clean_content(_children(it), here, removed, ctx)))
        parts.sort(key=lambda p: p[0])
        encoded_items.append(item([b for _, b in parts]))
    return sequence(_CONTENT, encoded_items)


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


def _marks(precision: str) -> list[tuple[int, bytes]]:
    codes = method_codes(precision)
    methods = "\\".join([_METHOD_CODES[c][:64] for c in codes] + [f"dosereg: dates to {precision}"])
    items = [item([text(_CODE_VALUE, b"SH", c), text(_SCHEME, b"SH", "DCM"),
                   text(_tag("CodeMeaning"), b"LO", _METHOD_CODES[c])]) for c in codes]
    return [
        (_tag("PatientIdentityRemoved"), text(_tag("PatientIdentityRemoved"), b"CS", "YES")),
        (_tag("DeidentificationMethod"), text(_tag("DeidentificationMethod"), b"LO", methods)),
        (_tag("DeidentificationMethodCodeSequence"), sequence(_tag("DeidentificationMethodCodeSequence"), items)),
        (_tag("LongitudinalTemporalInformationModified"), text(
            _tag("LongitudinalTemporalInformationModified"), b"CS", "UNMODIFIED" if precision == "day" else "MODIFIED")),
    ]


_PIXELS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_VERIFYING_OBSERVERS, _VERIFICATION_FLAG = _tag("VerifyingObserverSequence"), _tag("VerificationFlag")


def _deidentify(root: Item, pseudonymizer: Pseudonymizer, precision: str) -> bytes:
    tags = {el.tag for el in root}
    if tags & _PIXELS:
        raise DeidentificationError(
            "the object has pixel data, which may hold burned-in identifiers (the Clean Pixel Data "
            "option is not applied): send it as the original or not at all")
    sop_class, sop_instance = _get(root, _tag("SOPClassUID")), _get(root, _tag("SOPInstanceUID"))
    if sop_class is None or sop_instance is None or not string_value(sop_instance):
        raise DeidentificationError("the object has no SOP Class UID or SOP Instance UID")
    if _CONTENT not in tags or _VALUE_TYPE not in tags:
        # a dose screen keeps its figures in attributes (and free text) this whitelist drops
        raise DeidentificationError("the object is not a structured report: this profile cleans SR content only")
    charset = _get(root, _tag("SpecificCharacterSet"))
    encodings = pydicom.charset.convert_encodings(string_value(charset).split("\\") if charset is not None else None)
    ctx = _Context(pseudonymizer, precision, encodings)
    parts = _clean(root, ctx)
    parts.append((_CONTENT, _clean_content(_children(root), (1,), _removals(root, ctx), ctx)))
    if _VERIFYING_OBSERVERS in tags:  # the verifier is a person: the document goes out unverified
        parts = [p for p in parts if p[0] != _VERIFICATION_FLAG]
        parts.append((_VERIFICATION_FLAG, text(_VERIFICATION_FLAG, b"CS", "UNVERIFIED")))
    parts += _marks(precision)
    parts.sort(key=lambda p: p[0])
    new_instance = pseudonymizer.uid(string_value(sop_instance)) or ""
    return part10(b"".join(b for _, b in parts), string_value(sop_class), new_instance)


def _check(precision: str) -> None:
    if precision not in DATE_PRECISIONS:
        raise ValueError(f"registry.date_precision must be one of {', '.join(DATE_PRECISIONS)}, not {precision!r}")


def deidentify_bytes(data: bytes, pseudonymizer: Pseudonymizer, precision: str) -> bytes:
    """The de-identified copy (a Part 10 file, Explicit VR Little Endian) of a Part 10 dose object.

    Most elements are copied as encoded; an object in another transfer syntax is transcoded by
    pydicom first. Raises :class:`DeidentificationError` (pixel data, not a structured report,
    malformed) and :class:`ValueError` for a precision that is not ``day``, ``month`` or ``year``.
    """
    _check(precision)
    try:
        try:
            syntax, body = split_part10(data)
            if syntax != ExplicitVRLittleEndian:
                raise NeedsTranscoding(syntax)
            return _deidentify(parse(body, _KNOWN, _LAZY), pseudonymizer, precision)
        except NeedsTranscoding:  # (also from a sequence read only when needed)
            return _deidentify(parse(explicit_little_endian(data), _KNOWN, _LAZY), pseudonymizer, precision)
    except (NeedsTranscoding, MalformedObject) as exc:
        raise DeidentificationError(f"the object cannot be read: {exc}") from None
    except DeidentificationError:
        raise
    except Exception as exc:  # pydicom's reading raises many types for odd input
        raise DeidentificationError(f"the object cannot be read: {type(exc).__name__}") from None


def deidentify(ds: Dataset, pseudonymizer: Pseudonymizer, precision: str) -> Dataset:
    """The de-identified copy of a dose object as a pydicom dataset (``ds`` is left untouched).

    The same rules as :func:`deidentify_bytes` (``ds`` is encoded as Explicit VR Little Endian
    first); the copy has file meta with its pseudonymous SOP Instance UID, ready to be sent or
    written."""
    _check(precision)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    try:
        write_dataset(buf, ds)
        data = _deidentify(parse(bytes(buf.getvalue()), _KNOWN, _LAZY), pseudonymizer, precision)
    except (NeedsTranscoding, MalformedObject) as exc:
        raise DeidentificationError(f"the dataset cannot be encoded: {exc}") from None
    return pydicom.dcmread(BytesIO(data))


__all__ = ["DeidentificationError", "deidentify", "deidentify_bytes", "method_codes"]
