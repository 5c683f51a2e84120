"""A single-pass reader of encoded DICOM bytes (PS3.5 section 7) into plain dicts.

pydicom turns every element into a DataElement object and every sequence item into a
Dataset; a dose report has thousands of small items, so that dominates extraction time.
This reader walks the bytes once and keeps each element as ``(vr, raw_value)`` in a dict
keyed by the integer tag, decoding only what the extractor later asks for. It also checks
what pydicom does not: every element and sequence must end inside the file (a truncated
file is reported, not silently half-read; domain primer, vendor behaviour).

Transfer syntaxes: implicit VR little endian, explicit VR little endian (and every
encapsulated syntax, whose non-pixel data is explicit VR little endian), deflated explicit
VR little endian, explicit VR big endian.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

ITEM = 0xFFFEE000
ITEM_DELIM = 0xFFFEE00D
SEQ_DELIM = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})

# Tags that are sequences, for implicit VR (where the VR is not in the stream). Unknown
# tags whose value starts with an item tag are read as sequences too (as dcmtk does).
SQ_TAGS = frozenset({
    0x0040A730,  # Content Sequence
    0x0040A043,  # Concept Name Code Sequence
    0x0040A168,  # Concept Code Sequence
    0x0040A300,  # Measured Value Sequence
    0x004008EA,  # Measurement Units Code Sequence
    0x0040A504,  # Content Template Sequence
    0x00081032,  # Procedure Code Sequence
    0x0040A370,  # Referenced Request Sequence
    0x0040A375,  # Current Requested Procedure Evidence Sequence
    0x0040A385,  # Pertinent Other Evidence Sequence
    0x0040A525,  # Identical Documents Sequence
    0x00400275,  # Request Attributes Sequence
    0x00400008,  # Scheduled Protocol Code Sequence
    0x00401008,  # (retired) / misc
    0x0032_1064,  # Requested Procedure Code Sequence
    0x0040_030E,  # Exposure Dose Sequence
    0x0040_A073,  # Verifying Observer Sequence
    0x0040_A078,  # Author Observer Sequence
    0x0040_A07A,  # Participant Sequence
    0x0040_A07C,  # Custodial Organization Sequence
    0x0040_A088,  # Verifying Observer Identification Code Sequence
    0x0008_1110,  # Referenced Study Sequence
    0x0008_1111,  # Referenced Performed Procedure Step Sequence
    0x0008_1115,  # Referenced Series Sequence
    0x0008_1199,  # Referenced SOP Sequence
    0x0008_9215,  # Derivation Code Sequence
    0x0012_0064,  # De-identification Method Code Sequence
    0x0040_0260,  # Performed Protocol Code Sequence
    0x0040_A360,  # Predecessor Documents Sequence
    0x0008_0096,  # Referring Physician Identification Sequence
    0x0040_1101,  # Person Identification Code Sequence
    0x0010_1002,  # Other Patient IDs Sequence
    0x0040_A195,  # Modifier Code Sequence
    0x0008_0051,  # Issuer of Accession Number Sequence
    0x0018_9346,  # CTDI Phantom Type Code Sequence
})


class DicomReadError(Exception):
    """The bytes are not a readable DICOM object. ``code`` is a short machine word."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Dataset = dict[int, tuple[str, Any]]  # tag -> (VR, bytes | list[Dataset])


def tag_str(tag: int) -> str:
    """``(gggg,eeee)``, as dcmtk and the standard write a tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Reader:
    """Reads datasets and sequences from one buffer in one encoding.

    Errors name the element and the byte offset; no path is built while reading (the
    hot loop runs once per element of every content item).
    """

    __slots__ = ("buf", "explicit", "little", "head", "head_impl", "u32")

    def __init__(self, buf: bytes | memoryview, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        self.little = little
        e = "<" if little else ">"
        self.head = struct.Struct(e + "HH2sH").unpack_from  # group, element, VR, 16-bit length
        self.head_impl = struct.Struct(e + "HHL").unpack_from  # group, element, 32-bit length
        self.u32 = struct.Struct(e + "L").unpack_from

    def dataset(self, pos: int, end: int) -> tuple[Dataset, int]:
        """Read elements from ``pos`` up to ``end``, or to an item delimiter."""
        buf = self.buf
        ds: Dataset = {}
        n = len(buf)
        explicit = self.explicit
        head = self.head
        head_impl = self.head_impl
        u32 = self.u32
        long_vrs = _LONG_VRS
        while pos < end:
            if pos + 8 > n:
                raise DicomReadError("truncated", f"element header at byte {pos} runs past the end of the file")
            if explicit:
                g, e, vr_b, length = head(buf, pos)
                tag = (g << 16) | e
                if g == 0xFFFE:
                    if e == 0xE00D or e == 0xE0DD:  # item delimiter (or a stray sequence delimiter)
                        return ds, pos + 8
                    length = u32(buf, pos + 4)[0]
                    pos += 8
                    vr = "UN"
                elif vr_b in long_vrs:
                    if pos + 12 > n:
                        raise DicomReadError("truncated", f"element {tag_str(tag)} header is cut short")
                    length = u32(buf, pos + 8)[0]
                    pos += 12
                    vr = vr_b.decode("ascii")
                elif vr_b.isalpha() and vr_b.isupper():
                    pos += 8
                    vr = vr_b.decode("ascii")
                else:
                    raise DicomReadError(
                        "malformed", f"element {tag_str(tag)} at byte {pos} has no valid VR ({vr_b!r})"
                    )
            else:
                g, e, length = head_impl(buf, pos)
                tag = (g << 16) | e
                if g == 0xFFFE and (e == 0xE00D or e == 0xE0DD):
                    return ds, pos + 8
                pos += 8
                vr = "SQ" if tag in SQ_TAGS else "UN"
            if length == UNDEFINED:
                if vr in ("OB", "OW") or tag == 0x7FE00010:
                    pos = self._skip_fragments(pos)
                    ds[tag] = (vr, b"")
                    continue
                # SQ, or UN / implicit with undefined length: a sequence (PS3.5 6.2.2)
                sub = _Reader(buf, False, True) if (vr == "UN" and explicit) else self
                items, pos = sub.sequence(pos, None, tag)
                ds[tag] = ("SQ", items)
                continue
            vend = pos + length
            if vend > n:
                raise DicomReadError(
                    "truncated", f"element {tag_str(tag)} of {length} bytes at byte {pos} runs past the end of the file"
                )
            if vr == "SQ":
                ds[tag] = ("SQ", self.sequence(pos, vend, tag)[0])
            elif vr == "UN" and length >= 8 and tag != 0x7FE00010 and head_impl(buf, pos)[:2] == (0xFFFE, 0xE000):
                try:  # an unknown element holding items: a sequence (as dcmtk reads it)
                    ds[tag] = ("SQ", _Reader(buf, False, True).sequence(pos, vend, tag)[0])
                except DicomReadError:
                    ds[tag] = (vr, buf[pos:vend])
            else:
                ds[tag] = (vr, buf[pos:vend])
            pos = vend
        return ds, pos

    def sequence(self, pos: int, end: int | None, tag: int) -> tuple[list[Dataset], int]:
        buf = self.buf
        n = len(buf)
        items: list[Dataset] = []
        limit = n if end is None else end
        head_impl = self.head_impl
        while pos < limit:
            if pos + 8 > n:
                raise DicomReadError("truncated", f"sequence {tag_str(tag)} is cut short (no sequence delimiter)")
            g, e, length = head_impl(buf, pos)
            pos += 8
            if g == 0xFFFE and e == 0xE0DD:
                return items, pos
            if g != 0xFFFE or e != 0xE000:
                raise DicomReadError(
                    "malformed",
                    f"sequence {tag_str(tag)} holds {tag_str((g << 16) | e)} at byte {pos - 8} where an item was expected",
                )
            if length == UNDEFINED:
                ds, pos = self.dataset(pos, n)
                if pos > n or (pos == n and head_impl(buf, pos - 8)[:2] != (0xFFFE, 0xE00D)):
                    raise DicomReadError(
                        "truncated", f"item {len(items) + 1} of sequence {tag_str(tag)} is cut short (no item delimiter)"
                    )
            else:
                iend = pos + length
                if iend > n:
                    raise DicomReadError(
                        "truncated",
                        f"item {len(items) + 1} of sequence {tag_str(tag)} ({length} bytes at byte {pos}) "
                        "runs past the end of the file",
                    )
                ds, _ = self.dataset(pos, iend)
                pos = iend
            items.append(ds)
        if end is None:
            raise DicomReadError("truncated", f"sequence {tag_str(tag)} is cut short (no sequence delimiter)")
        return items, pos

    def _skip_fragments(self, pos: int) -> int:
        buf = self.buf
        n = len(buf)
        while True:
            if pos + 8 > n:
                raise DicomReadError("truncated", "encapsulated pixel data is cut short")
            g, e, length = self.head_impl(buf, pos)
            pos += 8
            if g == 0xFFFE and e == 0xE0DD:
                return pos
            if length == UNDEFINED or pos + length > n:
                raise DicomReadError("truncated", "encapsulated pixel data fragment is cut short")
            pos += length


class ParsedFile:
    """The file meta information and the dataset of one encoded object."""

    __slots__ = ("meta", "dataset", "transfer_syntax", "little_endian")

    def __init__(self, meta: Dataset, dataset: Dataset, transfer_syntax: str, little_endian: bool) -> None:
        self.meta = meta
        self.dataset = dataset
        self.transfer_syntax = transfer_syntax
        self.little_endian = little_endian


def parse(data: bytes) -> ParsedFile:
    """Parse a DICOM Part 10 file (or a bare implicit-VR dataset) from bytes."""
    buf = memoryview(data)
    n = len(buf)
    meta: Dataset = {}
    pos = 0
    if n >= 132 and bytes(buf[128:132]) == b"DICM":
        pos = 132
    elif n >= 4 and bytes(buf[0:4]) == b"DICM":
        pos = 4
    else:
        # A bare dataset (no preamble): plausible only if it starts with a group 0002 or 0008 tag.
        if n >= 8 and struct.unpack_from("<H", buf, 0)[0] in (0x0002, 0x0008):
            pos = 0
        else:
            raise DicomReadError("not_dicom", "not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
    # File meta group: always explicit VR little endian (PS3.10 7.1)
    meta_reader = _Reader(buf, True, True)
    end = pos
    while end + 8 <= n and struct.unpack_from("<H", buf, end)[0] == 0x0002:
        one, end = meta_reader.dataset(end, _next_elem_end(buf, end, n))
        meta.update(one)
    ts = _text(meta.get(0x00020010, ("UI", b""))[1]).strip("\x00 ") or (IMPLICIT_LE if pos == 0 else EXPLICIT_LE)
    body: Any = buf
    start = end
    if ts == DEFLATED_LE:
        try:
            body = memoryview(zlib.decompress(bytes(buf[end:]), -15))
        except zlib.error as exc:
            raise DicomReadError("malformed", f"deflated dataset cannot be inflated: {exc}") from None
        start = 0
    explicit = ts != IMPLICIT_LE
    little = ts != EXPLICIT_BE
    if explicit and little and start + 6 <= len(body):
        # Some writers declare explicit VR but write implicit: detect by the VR bytes.
        vr = bytes(body[start + 4:start + 6])
        if not (vr.isalpha() and vr.isupper()):
            explicit = False
    reader = _Reader(body, explicit, little)
    ds, _ = reader.dataset(start, len(body))
    return ParsedFile(meta, ds, ts, little)


def _next_elem_end(buf: Any, pos: int, n: int) -> int:
    """End of the single explicit-VR-LE element at ``pos`` (for reading the meta group)."""
    vr = bytes(buf[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > n:
            raise DicomReadError("truncated", "file meta information is cut short")
        length = struct.unpack_from("<L", buf, pos + 8)[0]
        return pos + 12 + length
    length = struct.unpack_from("<H", buf, pos + 6)[0]
    return pos + 8 + length


def _text(raw: Any) -> str:
    return bytes(raw).decode("ascii", "replace")
