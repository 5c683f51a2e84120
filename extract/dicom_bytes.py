"""A single-pass reader of encoded DICOM bytes (PS3.5 section 7) into plain dicts.

pydicom turns every element into a DataElement object and every sequence item into a
Dataset; a dose report has thousands of small items, so that dominates extraction time.
This reader walks the bytes once and keeps each element as ``(vr, raw_value)`` in a dict
keyed by the integer tag, decoding only what the extractor later asks for. It also checks
what pydicom does not: every element and sequence must end inside the file (a truncated
file is reported, not silently half-read; field experience, vendor behaviour).

Transfer syntaxes: implicit VR little endian, explicit VR little endian (and every
encapsulated syntax, whose non-pixel data is explicit VR little endian), deflated explicit
VR little endian, explicit VR big endian.

Reading is bounded whatever the bytes claim (issue 8): the reader is iterative (a stack of
open datasets and sequences, not one Python call per level), so nesting deeper than
:attr:`ExtractLimits.max_nesting` is reported as ``malformed`` and never becomes a
RecursionError; a deflated dataset is inflated piece by piece and abandoned as
``malformed`` once it passes :meth:`ExtractLimits.inflation_cap`. Values are kept as
``bytes`` copies (a memoryview per element costs four times the memory of a short value).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
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

@dataclass(frozen=True)
class ExtractLimits:
    """What reading one object may cost, whatever the object claims (README, operations).

    * ``max_inflated_bytes``, ``max_inflation_ratio``: a deflated dataset (transfer syntax
      1.2.840.10008.1.2.1.99) inflates to at most the smaller of ``max_inflated_bytes`` and
      ``max_inflation_ratio`` times the size of the encoded object; beyond it the object is
      ``malformed`` (a deflate bomb, not a dose report).
    * ``max_nesting``: sequences nested deeper than this are ``malformed``. A CT dose report
      nests about eight levels; 64 is far beyond any real SR.

    The defaults are those of ``[extract]`` in conf/dosereg.toml; a caller with a config passes
    ``ExtractLimits(max_inflated_bytes=cfg.extract.max_inflated_bytes, max_nesting=cfg.extract.max_nesting)``.
    """

    max_inflated_bytes: int = 256 * 1024 * 1024
    max_inflation_ratio: int = 200
    max_nesting: int = 64

    def inflation_cap(self, encoded_size: int) -> int:
        """The most bytes a deflated dataset of an object of ``encoded_size`` bytes may inflate to."""
        return min(self.max_inflated_bytes, self.max_inflation_ratio * max(encoded_size, 1))


DEFAULT_LIMITS = ExtractLimits()


class DicomReadError(Exception):
    """The bytes are not a readable DICOM object. ``code`` is a short machine word."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: what :func:`parse` had read of the top-level dataset when it stopped (a truncated
        #: file's header precedes the cut), and the size of the bytes it read (the cut's offset)
        self.partial: ParsedFile | None = None
        self.size: int | None = None
        self.inflated = False


Dataset = dict[int, tuple[str, Any]]  # tag -> (VR, bytes | list[Dataset])

PIXEL_DATA = 0x7FE00010
# The VRs of PS3.5 table 6.2-1 as shared strings (one object per VR, not one per element).
_VR_NAMES = {vr.encode("ascii"): vr for vr in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
    "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")}


def tag_str(tag: int) -> str:
    """``(gggg,eeee)``, as dcmtk and the standard write a tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Codec:
    """The header layouts of one encoding (explicit or implicit VR, byte order)."""

    __slots__ = ("explicit", "head", "head_impl", "u32")

    def __init__(self, explicit: bool, little: bool) -> None:
        e = "<" if little else ">"
        self.explicit = explicit
        self.head = struct.Struct(e + "HH2sH").unpack_from  # group, element, VR, 16-bit length
        self.head_impl = struct.Struct(e + "HHL").unpack_from  # group, element, 32-bit length
        self.u32 = struct.Struct(e + "L").unpack_from


_CODECS = {(x, le): _Codec(x, le) for x in (False, True) for le in (False, True)}
_IMPLICIT_LE = _CODECS[(False, True)]  # unknown (UN) content is implicit VR little endian (PS3.5 6.2.2)


class _Frame:
    """One open dataset or sequence of the iterative reader."""

    __slots__ = ("is_seq", "value", "end", "tag", "codec", "depth", "index")

    def __init__(self, is_seq: bool, value: Any, end: int | None, tag: int, codec: _Codec, depth: int,
                 index: int = 0) -> None:
        self.is_seq = is_seq  # a sequence (value: its items) or a dataset (value: its dict)
        self.value = value
        self.end = end  # where it ends and reading goes on; None: undefined length (a delimiter ends it)
        self.tag = tag  # the sequence's tag (for an item: its sequence's)
        self.codec = codec
        self.depth = depth  # sequences open around it, itself included
        self.index = index  # item number within its sequence, for messages


class _Parser:
    """Reads datasets and sequences from one buffer, with an explicit stack of open frames.

    Errors name the element and the byte offset; no path is built while reading (the
    hot loop runs once per element of every content item).
    """

    __slots__ = ("buf", "n", "max_nesting")

    def __init__(self, buf: bytes, max_nesting: int) -> None:
        self.buf = buf
        self.n = len(buf)
        self.max_nesting = max_nesting

    def dataset(self, pos: int, end: int, codec: _Codec) -> tuple[Dataset, int]:
        """Read elements from ``pos`` up to ``end``, or to an item delimiter."""
        ds: Dataset = {}
        return ds, self._run([_Frame(False, ds, end, 0, codec, 0)], pos)

    def sequence(self, pos: int, end: int, tag: int, depth: int) -> list[Dataset]:
        """The items of an implicit VR little endian sequence from ``pos`` to ``end`` (an UN value)."""
        items: list[Dataset] = []
        self._run([self._sequence_frame(items, end, tag, _IMPLICIT_LE, depth + 1, pos)], pos)
        return items

    def _run(self, stack: list[_Frame], pos: int, floor: int = 0, stop: int | None = None) -> int:
        """Read until the stack is down to ``floor`` frames (or, with ``stop``, until the
        top-level dataset opens the sequence of that tag)."""
        while len(stack) > floor:
            fr = stack[-1]
            if fr.is_seq:
                pos = self._item(stack, fr, pos)
            else:
                pos = self._elements(stack, fr, pos)
                if stop is not None and len(stack) == 2 and stack[1].tag == stop and stack[1].is_seq:
                    break
        return pos

    def _sequence_frame(self, items: list[Dataset], end: int | None, tag: int, codec: _Codec, depth: int,
                        pos: int) -> _Frame:
        if depth > self.max_nesting:
            raise DicomReadError(
                "malformed", f"sequence {tag_str(tag)} at byte {pos} is nested {depth} levels deep, "
                f"beyond the limit of {self.max_nesting} levels")
        return _Frame(True, items, end, tag, codec, depth)

    def _item(self, stack: list[_Frame], fr: _Frame, pos: int) -> int:
        """One step of an open sequence: open its next item, or close it."""
        buf = self.buf
        n = self.n
        limit = n if fr.end is None else fr.end
        if pos >= limit:
            if fr.end is None:
                raise DicomReadError("truncated", f"sequence {tag_str(fr.tag)} is cut short (no sequence delimiter)")
            stack.pop()
            return fr.end
        if pos + 8 > n:
            raise DicomReadError("truncated", f"sequence {tag_str(fr.tag)} is cut short (no sequence delimiter)")
        g, e, length = fr.codec.head_impl(buf, pos)
        pos += 8
        if g == 0xFFFE and e == 0xE0DD:
            stack.pop()
            return pos if fr.end is None else fr.end
        if g != 0xFFFE or e != 0xE000:
            raise DicomReadError(
                "malformed",
                f"sequence {tag_str(fr.tag)} holds {tag_str((g << 16) | e)} at byte {pos - 8} where an item was expected",
            )
        items = fr.value
        ds: Dataset = {}
        items.append(ds)
        if length == UNDEFINED:
            stack.append(_Frame(False, ds, None, fr.tag, fr.codec, fr.depth, len(items)))
            return pos
        iend = pos + length
        if iend > n:
            raise DicomReadError(
                "truncated",
                f"item {len(items)} of sequence {tag_str(fr.tag)} ({length} bytes at byte {pos}) "
                "runs past the end of the file",
            )
        stack.append(_Frame(False, ds, iend, fr.tag, fr.codec, fr.depth, len(items)))
        return pos

    def _close_dataset(self, stack: list[_Frame], fr: _Frame, pos: int) -> int:
        """The dataset of ``fr`` reached its end (``pos``): close it; where reading goes on."""
        if fr.end is None:
            raise DicomReadError(
                "truncated", f"item {fr.index} of sequence {tag_str(fr.tag)} is cut short (no item delimiter)")
        stack.pop()
        return fr.end if fr.index else pos

    def _elements(self, stack: list[_Frame], fr: _Frame, pos: int) -> int:
        """Read the elements of the open dataset ``fr`` until it ends or a sequence opens."""
        buf = self.buf
        n = self.n
        ds = fr.value
        codec = fr.codec
        explicit = codec.explicit
        head = codec.head
        head_impl = codec.head_impl
        u32 = codec.u32
        long_vrs = _LONG_VRS
        vr_names = _VR_NAMES
        end = n if fr.end is None else fr.end
        while True:
            if pos >= end:
                return self._close_dataset(stack, fr, pos)
            if pos + 8 > n:
                raise DicomReadError("truncated", f"element header at byte {pos} runs past the end of the file")
            if explicit:
                g, e, vr_b, length = head(buf, pos)
                tag = (g << 16) | e
                if g == 0xFFFE:
                    if e == 0xE00D or e == 0xE0DD:  # item delimiter (or a stray sequence delimiter)
                        stack.pop()
                        return pos + 8 if fr.end is None or not fr.index else fr.end
                    length = u32(buf, pos + 4)[0]
                    pos += 8
                    vr = "UN"
                elif vr_b in long_vrs:
                    if pos + 12 > n:
                        raise DicomReadError("truncated", f"element {tag_str(tag)} header is cut short")
                    length = u32(buf, pos + 8)[0]
                    pos += 12
                    vr = vr_names[vr_b]
                else:
                    vr = vr_names.get(vr_b) or _unlisted_vr(vr_b, tag, pos)
                    pos += 8
            else:
                g, e, length = head_impl(buf, pos)
                tag = (g << 16) | e
                if g == 0xFFFE and (e == 0xE00D or e == 0xE0DD):
                    stack.pop()
                    return pos + 8 if fr.end is None or not fr.index else fr.end
                pos += 8
                vr = "SQ" if tag in SQ_TAGS else "UN"
            if length == UNDEFINED:
                if vr in ("OB", "OW") or tag == PIXEL_DATA:
                    pos = _skip_fragments(buf, pos, head_impl)
                    ds[tag] = (vr, b"")
                    continue
                # SQ, or UN / implicit with undefined length: a sequence (PS3.5 6.2.2)
                items: list[Dataset] = []
                ds[tag] = ("SQ", items)
                sub = _IMPLICIT_LE if (vr == "UN" and explicit) else codec
                stack.append(self._sequence_frame(items, None, tag, sub, fr.depth + 1, pos))
                return pos
            vend = pos + length
            if vend > n:
                raise DicomReadError(
                    "truncated", f"element {tag_str(tag)} of {length} bytes at byte {pos} runs past the end of the file"
                )
            if vr == "SQ":
                items = []
                ds[tag] = ("SQ", items)
                stack.append(self._sequence_frame(items, vend, tag, codec, fr.depth + 1, pos))
                return pos
            if vr == "UN" and length >= 8 and tag != PIXEL_DATA and _IMPLICIT_LE.head_impl(buf, pos)[:2] == (0xFFFE, 0xE000):
                ds[tag] = self._unknown(pos, vend, tag, fr.depth)
            else:
                ds[tag] = (vr, buf[pos:vend])
            pos = vend

    def _unknown(self, pos: int, vend: int, tag: int, depth: int) -> tuple[str, Any]:
        """An unknown element holding items: a sequence (as dcmtk reads it), else its bytes."""
        try:
            return ("SQ", self.sequence(pos, vend, tag, depth))
        except (DicomReadError, RecursionError):  # not a sequence after all (or nested past any limit)
            return ("UN", self.buf[pos:vend])


def _unlisted_vr(vr_b: bytes, tag: int, pos: int) -> str:
    """The VR of the element ``tag`` at ``pos`` when it is not one of PS3.5 table 6.2-1: kept
    by its name when it looks like one (two capital letters, a VR of a later edition), else
    the element is malformed. Out of the per-element loop, where a known VR costs only its
    dict look-up."""
    if vr_b.isalpha() and vr_b.isupper():
        return vr_b.decode("ascii")
    raise DicomReadError("malformed", f"element {tag_str(tag)} at byte {pos} has no valid VR ({vr_b!r})")


def _skip_fragments(buf: bytes, pos: int, head_impl: Any) -> int:
    """The end of encapsulated pixel data (items up to a sequence delimiter) from ``pos``."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise DicomReadError("truncated", "encapsulated pixel data is cut short")
        g, e, length = head_impl(buf, pos)
        pos += 8
        if g == 0xFFFE and e == 0xE0DD:
            return pos
        if length == UNDEFINED or pos + length > n:
            raise DicomReadError("truncated", "encapsulated pixel data fragment is cut short")
        pos += length


def inflate(data: bytes, cap: int, why: str = "") -> bytes:
    """Inflate a raw deflate stream (PS3.5 A.5) to at most ``cap`` bytes, a piece at a time.

    Never holds more than ``cap`` bytes of output: a deflate bomb stops at the cap. ``why``
    says where the cap comes from, for the message.
    """
    d = zlib.decompressobj(-15)
    pieces: list[bytes] = []
    total = 0
    pending = data
    try:
        while True:
            piece = d.decompress(pending, min(1 << 20, cap + 1 - total))
            total += len(piece)
            if total > cap:
                raise DicomReadError(
                    "malformed", f"deflated dataset inflates to more than {cap} bytes{why}; not read further")
            pieces.append(piece)
            pending = d.unconsumed_tail
            if d.eof or (not pending and not piece):
                break
    except zlib.error as exc:
        raise DicomReadError("malformed", f"deflated dataset cannot be inflated: {exc}") from None
    if not d.eof:
        raise DicomReadError("malformed", "deflated dataset cannot be inflated: the deflate stream is cut short")
    return b"".join(pieces)


CONTENT_SEQUENCE = 0x0040A730


class StreamedItems:
    """The items of the top-level Content Sequence, read one at a time as they are iterated.

    A report of 10,000 events is never held whole: each item is read, handed over and
    dropped. Once the last item is read, the rest of the top-level dataset is read into
    it (so a file cut short after its content is still reported). Iterable once.
    """

    __slots__ = ("_parser", "_stack", "_pos", "done")

    def __init__(self, parser: _Parser, stack: list[_Frame], pos: int) -> None:
        self._parser = parser
        self._stack = stack
        self._pos = pos
        self.done = False

    def __iter__(self) -> Any:
        if self.done:
            raise RuntimeError("the content sequence was already read")
        parser, stack = self._parser, self._stack
        seq = stack[1]
        items: list[Dataset] = seq.value
        pos = self._pos
        while len(stack) == 2:
            pos = parser._item(stack, seq, pos)
            if len(stack) == 3:  # an item opened: read it whole
                pos = parser._run(stack, pos, floor=2)
                item = items.pop()
                yield item
        self._pos = parser._run(stack, pos)  # the rest of the top-level dataset
        self.done = True


class ParsedFile:
    """The file meta information and the dataset of one encoded object.

    With ``streamed`` set, the dataset's Content Sequence is a :class:`StreamedItems`
    (read when iterated) and the elements after it are read once it is exhausted;
    :meth:`drain` reads it through without keeping it.
    """

    __slots__ = ("meta", "dataset", "transfer_syntax", "little_endian", "streamed")

    def __init__(self, meta: Dataset, dataset: Dataset, transfer_syntax: str, little_endian: bool,
                 streamed: StreamedItems | None = None) -> None:
        self.meta = meta
        self.dataset = dataset
        self.transfer_syntax = transfer_syntax
        self.little_endian = little_endian
        self.streamed = streamed

    def drain(self) -> None:
        """Read a streamed Content Sequence through without keeping its items: for objects
        whose content is not used (not a dose report), so that a cut or malformed object is
        still reported as such and what follows the sequence is read, while millions of items
        cost no memory."""
        streamed = self.streamed
        if streamed is not None and not streamed.done:
            for _ in streamed:
                pass
            self.dataset[CONTENT_SEQUENCE] = ("SQ", [])
        self.streamed = None


def _start(buf: bytes) -> int:
    """Where the elements start: after the 128-byte preamble and 'DICM', or at 0 for a bare dataset."""
    n = len(buf)
    if n >= 132 and buf[128:132] == b"DICM":
        return 132
    if n >= 4 and buf[0:4] == b"DICM":
        return 4
    # A bare dataset (no preamble): plausible only if it starts with a group 0002 or 0008 tag.
    if n >= 8 and struct.unpack_from("<H", buf, 0)[0] in (0x0002, 0x0008):
        return 0
    raise DicomReadError("not_dicom", "not a DICOM file (no 'DICM' marker after the 128-byte preamble)")


def parse(data: bytes, limits: ExtractLimits = DEFAULT_LIMITS, *, stream: bool = False) -> ParsedFile:
    """Parse a DICOM Part 10 file (or a bare implicit-VR dataset) from bytes, within ``limits``.

    ``stream``: leave the top-level Content Sequence to be read item by item
    (:class:`StreamedItems`); the caller then iterates it once, or calls ``drain``.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    n = len(buf)
    pos = _start(buf)
    meta: Dataset = {}
    # File meta group: always explicit VR little endian (PS3.10 7.1)
    meta_parser = _Parser(buf, limits.max_nesting)
    meta_codec = _CODECS[(True, True)]
    end = pos
    while end + 8 <= n and struct.unpack_from("<H", buf, end)[0] == 0x0002:
        one, end = meta_parser.dataset(end, _next_elem_end(buf, end, n), meta_codec)
        meta.update(one)
    ts = _text(meta.get(0x00020010, ("UI", b""))[1]).strip("\x00 ") or (IMPLICIT_LE if pos == 0 else EXPLICIT_LE)
    body = buf
    start = end
    if ts == DEFLATED_LE:
        body = inflate(buf[end:], limits.inflation_cap(n),
                       f", the limit for a {n}-byte object (the smaller of max_inflated_bytes = "
                       f"{limits.max_inflated_bytes} and {limits.max_inflation_ratio} times its size)")
        start = 0
    explicit = ts != IMPLICIT_LE
    little = ts != EXPLICIT_BE
    if explicit and little and start + 6 <= len(body):
        # Some writers declare explicit VR but write implicit: detect by the VR bytes.
        vr = body[start + 4:start + 6]
        if not (vr.isalpha() and vr.isupper()):
            explicit = False
    parser = _Parser(body, limits.max_nesting)
    ds: Dataset = {}
    stack = [_Frame(False, ds, len(body), 0, _CODECS[(explicit, little)], 0)]
    try:
        pos = parser._run(stack, start, stop=CONTENT_SEQUENCE if stream else None)
    except DicomReadError as exc:  # keep what precedes the cut: it still names the study
        exc.partial = ParsedFile(meta, ds, ts, little)
        exc.size, exc.inflated = len(body), body is not buf
        raise
    if not stack:
        return ParsedFile(meta, ds, ts, little)
    streamed = StreamedItems(parser, stack, pos)
    ds[CONTENT_SEQUENCE] = ("SQ", streamed)
    return ParsedFile(meta, ds, ts, little, streamed)


def _next_elem_end(buf: bytes, pos: int, n: int) -> int:
    """End of the single explicit-VR-LE element at ``pos`` (for reading the meta group)."""
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > n:
            raise DicomReadError("truncated", "file meta information is cut short")
        length: int = struct.unpack_from("<L", buf, pos + 8)[0]
        return pos + 12 + length
    short: int = struct.unpack_from("<H", buf, pos + 6)[0]
    return pos + 8 + short


def _text(raw: Any) -> str:
    return bytes(raw).decode("ascii", "replace")
