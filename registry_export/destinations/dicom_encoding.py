"""Explicit VR Little Endian datasets as a tree of encoded elements (PS3.5 7.1.2, 7.5), for
rebuilding a dose object without decoding the values it keeps.

A de-identified copy keeps most elements byte for byte: reading them into pydicom values and
writing them back is most of the cost of de-identifying with pydicom, so the copy is made at
this level and only the values that change are decoded. :func:`parse` gives the tree; the
``encode_*`` functions build elements, items and sequences (defined lengths). Anything this
reader does not take (another transfer syntax, a UN or undefined-length value on a
whitelisted tag) is :class:`NeedsTranscoding`: pydicom writes the object as Explicit VR
Little Endian first (resolving UN to the dictionary's VR) and the tree is read from that.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import NamedTuple

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
MAX_DEPTH = 64
_HEAD_SHORT = struct.Struct("<HH2sH")
_HEAD_LONG = struct.Struct("<HH2sHI")
_TAG_LENGTH = struct.Struct("<HHI")


class NeedsTranscoding(Exception):
    """The bytes are not plain Explicit VR Little Endian as this reader takes it."""


class MalformedObject(ValueError):
    """The dataset's encoding is broken (a length past the end, nesting too deep)."""


class Element(NamedTuple):
    """One encoded element: ``raw`` is the whole element (header and value) as read; ``value``
    its value bytes, or for a sequence ``items``, each a tuple of elements. (A named tuple: a
    dose report has a thousand elements or more, and this is built for every one.)"""

    tag: int
    vr: bytes
    raw: bytes
    value: bytes
    items: tuple[tuple[Element, ...], ...] | None = None


_HEAD = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")


def _parse(buf: bytes, pos: int, end: int, depth: int, until_item_end: bool,
           known: frozenset[int], lazy: frozenset[int]) -> tuple[tuple[Element, ...], int]:
    """Elements from ``pos`` to ``end`` (or to an item delimiter); (elements, position after)."""
    if depth > MAX_DEPTH:
        raise MalformedObject(f"content nested deeper than {MAX_DEPTH} levels")
    out: list[Element] = []
    head, long_length, long_vrs = _HEAD.unpack_from, _LONG_LENGTH.unpack_from, LONG_VRS
    while pos < end:
        if pos + 8 > end:
            raise MalformedObject("an element header runs past the end")
        group, elem, vr, length = head(buf, pos)
        tag = group << 16 | elem
        if tag == ITEM_END and until_item_end:
            return tuple(out), pos + 8
        if vr in long_vrs:
            if pos + 12 > end:
                raise MalformedObject("an element header runs past the end")
            (length,) = long_length(buf, pos + 8)
            start = pos + 12
        else:
            start = pos + 8
        if vr == b"SQ" and tag in lazy and length != UNDEFINED and start + length <= end:
            # its items are read only if they are needed (see :func:`items_of`)
            out.append(Element(tag, vr, buf[pos:start + length], buf[start:start + length], None))
            pos = start + length
            continue
        if vr == b"SQ":
            items, after = _sequence(buf, start, length, end, depth + 1, known, lazy)
            out.append(Element(tag, vr, buf[pos:after], b"", items))
            pos = after
            continue
        stop = start + length
        if length == UNDEFINED or (vr == b"UN" and tag in known) or not vr.isalpha():
            raise NeedsTranscoding(f"element ({group:04X},{elem:04X}) is encoded as {vr!r} "
                                   f"{'with undefined length' if length == UNDEFINED else ''}")
        if stop > end:
            raise MalformedObject(f"element ({group:04X},{elem:04X}) runs past the end of its dataset")
        out.append(Element(tag, vr, buf[pos:stop], buf[start:stop]))
        pos = stop
    if until_item_end:
        raise MalformedObject("an item of undefined length has no delimiter")
    return tuple(out), pos


def _sequence(buf: bytes, pos: int, length: int, end: int, depth: int,
              known: frozenset[int], lazy: frozenset[int]) -> tuple[tuple[tuple[Element, ...], ...], int]:
    stop = end if length == UNDEFINED else pos + length
    if stop > end:
        raise MalformedObject("a sequence runs past the end of its dataset")
    items: list[tuple[Element, ...]] = []
    while pos < stop:
        if pos + 8 > stop:
            raise MalformedObject("an item header runs past the end")
        group, elem, item_length = _TAG_LENGTH.unpack_from(buf, pos)
        tag = group << 16 | elem
        if tag == SEQUENCE_END and length == UNDEFINED:
            return tuple(items), pos + 8
        if tag != ITEM:
            raise MalformedObject(f"({group:04X},{elem:04X}) where a sequence item should be")
        if item_length == UNDEFINED:
            elements, pos = _parse(buf, pos + 8, stop, depth, True, known, lazy)
        else:
            if pos + 8 + item_length > stop:
                raise MalformedObject("a sequence item runs past the end of its sequence")
            elements, _ = _parse(buf, pos + 8, pos + 8 + item_length, depth, False, known, lazy)
            pos += 8 + item_length
        items.append(elements)
    if length == UNDEFINED:
        raise MalformedObject("a sequence of undefined length has no delimiter")
    return tuple(items), pos


def parse(dataset: bytes, known: frozenset[int], lazy: frozenset[int] = frozenset()) -> tuple[Element, ...]:
    """The elements of an Explicit VR Little Endian dataset (no preamble, no file meta).

    ``known``: the tags whose value is used; one of them encoded as UN must be transcoded first.
    ``lazy``: sequence tags whose items are not read now (``items`` is ``None``, ``value`` the
    encoded items) when their length is defined: most of them are copied as they are."""
    elements, _ = _parse(dataset, 0, len(dataset), 0, False, known, lazy)
    return elements


def items_of(el: Element, known: frozenset[int], lazy: frozenset[int] = frozenset()) -> tuple[tuple[Element, ...], ...]:
    """The items of a sequence element, read now if :func:`parse` left them."""
    if el.items is not None:
        return el.items
    items, _ = _sequence(el.value, 0, len(el.value), len(el.value), 1, known, lazy)
    return items


def plain(value: bytes, allowed: frozenset[int], sequences: frozenset[int]) -> bool:
    """True when encoded sequence items hold only ``allowed`` tags (none temporal, none UN, no
    undefined length) and ``sequences`` of the same: the whole sequence may be copied as it is."""
    pos, end = 0, len(value)
    head, long_length = _HEAD.unpack_from, _LONG_LENGTH.unpack_from
    while pos + 8 <= end:
        group, elem, vr, length = head(value, pos)
        if group == 0xFFFE:  # item, item delimiter, sequence delimiter: the content follows in line
            pos += 8
            continue
        tag = group << 16 | elem
        if vr in LONG_VRS:
            (length,) = long_length(value, pos + 8)
            header = 12
        else:
            header = 8
        if vr == b"SQ":
            if tag not in sequences:
                return False
            pos += header  # the items follow in line
            continue
        if tag not in allowed or vr in (b"DA", b"DT", b"TM", b"UN") or length == UNDEFINED:
            return False
        pos += header + length
    return pos == end


def split_part10(data: bytes) -> tuple[str, bytes]:
    """(Transfer Syntax UID, the dataset's bytes) of a DICOM Part 10 file."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise NeedsTranscoding("no DICOM file preamble")
    pos = 132
    group_end = None
    syntax = ""
    while pos + 8 <= len(data):
        group, elem = int.from_bytes(data[pos:pos + 2], "little"), int.from_bytes(data[pos + 2:pos + 4], "little")
        if group != 0x0002 or (group_end is not None and pos >= group_end):
            break
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            length, start = int.from_bytes(data[pos + 8:pos + 12], "little"), pos + 12
        else:
            length, start = int.from_bytes(data[pos + 6:pos + 8], "little"), pos + 8
        value = data[start:start + length]
        if elem == 0x0000 and length == 4:
            group_end = start + 4 + int.from_bytes(value, "little")
        elif elem == 0x0010:
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return syntax, data[pos:]


def explicit_little_endian(data: bytes) -> bytes:
    """The dataset of a Part 10 file as Explicit VR Little Endian, transcoded by pydicom when it is
    not already (implicit VR, big endian, deflated; UN values resolved to the dictionary's VR)."""
    ds = pydicom.dcmread(BytesIO(data), force=True)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return bytes(buf.getvalue())


# -- encoding ---------------------------------------------------------------------------------

def pad(value: bytes, vr: bytes) -> bytes:
    """Values are an even number of bytes: UI pads with NUL, the other string VRs with a space."""
    if len(value) % 2:
        return value + (b"\0" if vr == b"UI" else b" ")
    return value


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in LONG_VRS:
        return _HEAD_LONG.pack(tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    if len(value) > 0xFFFF:
        raise MalformedObject(f"a {vr.decode()} value of {len(value)} bytes")
    return _HEAD_SHORT.pack(tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def text(tag: int, vr: bytes, value: str) -> bytes:
    """A string element from an ASCII value (pseudonyms, dates, codes)."""
    return element(tag, vr, pad(value.encode("ascii"), vr))


def item(encoded_elements: list[bytes]) -> bytes:
    body = b"".join(encoded_elements)
    return _TAG_LENGTH.pack(0xFFFE, 0xE000, len(body)) + body


def sequence(tag: int, encoded_items: list[bytes]) -> bytes:
    return element(tag, b"SQ", b"".join(encoded_items))


def string_value(el: Element) -> str:
    """An ASCII-repertoire value (CS, UI, DA, DT, TM, AS, IS) without its padding."""
    return el.value.decode("ascii", "replace").rstrip("\0 ").strip()


def part10(dataset: bytes, sop_class: str, sop_instance: str) -> bytes:
    """A Part 10 file: preamble, file meta (Explicit VR Little Endian), the dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + bytes(buf.getvalue()) + dataset


__all__ = [
    "Element", "MalformedObject", "NeedsTranscoding", "element", "explicit_little_endian", "item", "items_of", "pad",
    "parse", "part10", "plain", "sequence", "split_part10", "string_value", "text",
]
