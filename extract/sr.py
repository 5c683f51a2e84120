"""SR content items (PS3.3 C.17.3) over the byte reader's plain datasets.

A :class:`ContentItem` is a thin view of one Content Sequence item: relationship, value
type, concept name and a lazily decoded value. Reading a value never raises: a value
that breaks its VR is reported through :class:`~dosereg.extract.values.ValueProblem`
by the typed accessors, so the caller can record that one element as invalid and go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .dicom_bytes import Dataset, DicomReadError
from .model import Code
from .values import TextDecoder, ValueProblem, ascii_text, clean_name, clean_text, parse_dt, parse_fd

# Items a streamed Content Sequence keeps beside its irradiation events (which are read and
# dropped one at a time). A real CT dose report has a few dozen (header, totals, Dose Check,
# observer context); each kept item costs a few KiB, so without a cap a report of millions of
# small items holds gigabytes whatever the inflation and nesting limits say.
MAX_KEPT_ITEMS = 20_000

RELATIONSHIP_TYPE = 0x0040A010
VALUE_TYPE = 0x0040A040
CONCEPT_NAME_CODE_SEQUENCE = 0x0040A043
CONTENT_SEQUENCE = 0x0040A730
TEXT_VALUE = 0x0040A160
UID = 0x0040A124
DATETIME = 0x0040A120
PERSON_NAME = 0x0040A123
CONCEPT_CODE_SEQUENCE = 0x0040A168
MEASURED_VALUE_SEQUENCE = 0x0040A300
NUMERIC_VALUE = 0x0040A30A
FLOATING_POINT_VALUE = 0x0040A161
MEASUREMENT_UNITS_CODE_SEQUENCE = 0x004008EA
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
CODE_MEANING = 0x00080104
LONG_CODE_VALUE = 0x00080119
URN_CODE_VALUE = 0x00080120
SPECIFIC_CHARACTER_SET = 0x00080005
_TUCKED = ("HAS PROPERTIES", "HAS CONCEPT MOD")


# Codes whose encoded value, scheme and meaning are plain ASCII (no ESC) read the same in
# every character set: one instance per distinct triple serves every object a process reads
# (the few hundred codes of the templates repeat in every report). Bounded: cleared when full.
_ASCII_CODES: dict[tuple[Any, Any, Any], Code] = {}
_MAX_SHARED_CODES = 65536


def _plain_ascii(raw: Any) -> bool:
    return raw is None or (isinstance(raw, bytes) and raw.isascii() and 0x1B not in raw)


def read_code(item: Dataset, text: TextDecoder) -> Code:
    """A Code Sequence item -> :class:`Code` (Code Value, Long Code Value or URN Code Value).

    Reports repeat the same few hundred codes in every event: each distinct encoded triple is
    decoded once (codes are immutable, so one instance serves them all): per process when it
    is plain ASCII, else per object (its character set decides how it reads).
    """
    raw = item.get(CODE_VALUE) or item.get(LONG_CODE_VALUE) or item.get(URN_CODE_VALUE)
    scheme_raw = item.get(CODING_SCHEME_DESIGNATOR)
    meaning_raw = item.get(CODE_MEANING)
    key = (raw[1] if raw else None, scheme_raw[1] if scheme_raw else None, meaning_raw[1] if meaning_raw else None)
    try:
        code = _ASCII_CODES.get(key) or text.codes.get(key)
    except TypeError:  # a sequence where a value belongs (unhashable): decode it without the cache
        return Code(*(clean_text(text(v)) if v is not None else None for v in key))
    if code is None:
        code = Code(*(clean_text(text(v)) if v is not None else None for v in key))
        if _plain_ascii(key[0]) and _plain_ascii(key[1]) and _plain_ascii(key[2]):
            if len(_ASCII_CODES) >= _MAX_SHARED_CODES:
                _ASCII_CODES.clear()
            _ASCII_CODES[key] = code
        elif len(text.codes) < 65536:
            text.codes[key] = code
    return code


# Relationship Type and Value Type values as read: a few defined terms, in every item.
_TERMS: dict[bytes, str] = {}


def _term(raw: Any) -> str:
    """A CS value of a content item (ASCII), decoded once per distinct encoding."""
    term = _TERMS.get(raw) if isinstance(raw, bytes) else None
    if term is None:
        term = ascii_text(raw)
        if isinstance(raw, bytes) and len(_TERMS) < 1024:
            _TERMS[raw] = term
    return term


def first_code(ds: Dataset, tag: int, text: TextDecoder) -> Code | None:
    el = ds.get(tag)
    if not el or el[0] != "SQ" or not el[1]:
        return None
    return read_code(el[1][0], text)


class ContentItem:
    """One content item, with its children indexed by concept code once (on first lookup).

    A report of 10,000 events is looked up thousands of times per container; the index
    makes each lookup one dict access instead of a walk over the children.
    """

    __slots__ = ("ds", "text", "little", "_concept", "_children", "_index", "_relationship", "_value_type")

    def __init__(self, ds: Dataset, text: TextDecoder, little: bool = True) -> None:
        self.ds = ds
        self.text = text
        self.little = little
        self._concept: Code | None | bool = False
        self._children: list[ContentItem] | None = None
        self._index: dict[str | None, list[ContentItem]] | None = None
        self._relationship: str | None | bool = False  # False: not read yet
        self._value_type: str | None | bool = False

    # -- structure ---------------------------------------------------------------
    @property
    def relationship(self) -> str | None:
        rel = self._relationship
        if rel is False:
            el = self.ds.get(RELATIONSHIP_TYPE)
            rel = self._relationship = _term(el[1]) if el and el[0] != "SQ" else None
        return rel  # type: ignore[return-value]

    @property
    def value_type(self) -> str | None:
        vt = self._value_type
        if vt is False:
            el = self.ds.get(VALUE_TYPE)
            vt = self._value_type = _term(el[1]) if el and el[0] != "SQ" else None
        return vt  # type: ignore[return-value]

    @property
    def concept(self) -> Code | None:
        if self._concept is False:
            self._concept = first_code(self.ds, CONCEPT_NAME_CODE_SEQUENCE, self.text)
        return self._concept  # type: ignore[return-value]

    @property
    def code_value(self) -> str | None:
        c = self.concept
        return c.value if c else None

    def _child(self, ds: Dataset) -> ContentItem:
        """A child item; one that states its own Specific Character Set is read in it (PS3.5 7.5.3)."""
        cs = ds.get(SPECIFIC_CHARACTER_SET)
        text = self.text if cs is None or cs[0] == "SQ" else TextDecoder(cs[1], self.text.problems)
        return ContentItem(ds, text, self.little)

    @property
    def children(self) -> list[ContentItem]:
        if self._children is None:
            el = self.ds.get(CONTENT_SEQUENCE)
            items = el[1] if el and el[0] == "SQ" else []
            self._children = [self._child(d) for d in items]
        return self._children

    def stream_children(self, take: Callable[[ContentItem], bool]) -> None:
        """Read the children once, in order: each one ``take`` accepts is handed over and not
        kept (a streamed Content Sequence is never held whole); the rest become ``children``."""
        el = self.ds.get(CONTENT_SEQUENCE)
        kept: list[ContentItem] = []
        if el and el[0] == "SQ":
            for d in el[1]:
                child = self._child(d)
                if not take(child):
                    kept.append(child)
                    if len(kept) > MAX_KEPT_ITEMS:
                        raise DicomReadError(
                            "malformed", f"Content Sequence (0040,A730) holds more than {MAX_KEPT_ITEMS:,} "
                                         "content items besides its irradiation events (a real report has "
                                         "a few dozen); not read further")
            self.ds[CONTENT_SEQUENCE] = ("SQ", [c.ds for c in kept])
        self._children = kept
        self._index = None

    def name(self) -> str:
        """How a reason names this item: its concept meaning, else its code."""
        c = self.concept
        if c is None:
            return "content item without a concept name"
        return c.meaning or f"({c.value}, {c.scheme})"

    # -- navigation --------------------------------------------------------------
    def _lookup(self) -> dict[str | None, list[ContentItem]]:
        index = self._index
        if index is None:
            index = {}
            tucked = []
            for child in self.children:
                index.setdefault(child.code_value, []).append(child)
                # only a child with children of its own can have any tucked under it
                if CONTENT_SEQUENCE in child.ds and (child.relationship in _TUCKED or child.value_type != "CONTAINER"):
                    tucked.append(child)
            for child in tucked:
                for grandchild in child.children:
                    index.setdefault(grandchild.code_value, []).append(grandchild)
            self._index = index
        return index

    def find_all(self, code: str) -> Iterator[ContentItem]:
        """Children with this concept code value, and those a vendor tucked one level down
        under a HAS PROPERTIES / HAS CONCEPT MOD child (field experience: GE via PixelMed)."""
        return iter(self._lookup().get(code, ()))

    def find(self, code: str) -> ContentItem | None:
        found = self._lookup().get(code)
        return found[0] if found else None

    def walk(self) -> Iterator[ContentItem]:
        """Every item below this one, depth first (iterative: the depth is not Python's)."""
        stack = [iter(self.children)]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            yield child
            stack.append(iter(child.children))

    # -- values ------------------------------------------------------------------
    def text_value(self) -> str | None:
        for tag in (TEXT_VALUE, UID, PERSON_NAME):
            el = self.ds.get(tag)
            if el and el[0] != "SQ":
                if tag == PERSON_NAME:
                    return clean_name(self.text(el[1], person_name=True))
                return clean_text(self.text(el[1]))
        return None

    def uid_value(self) -> str | None:
        el = self.ds.get(UID) or self.ds.get(TEXT_VALUE)
        return clean_text(ascii_text(el[1])) if el else None

    def code(self) -> Code | None:
        """The CODE item's value; ValueProblem when the Concept Code Sequence is missing."""
        el = self.ds.get(CONCEPT_CODE_SEQUENCE)
        if not el or el[0] != "SQ" or not el[1]:
            raise ValueProblem("CODE content item has no Concept Code Sequence")
        return read_code(el[1][0], self.text)

    def datetime(self) -> str | None:
        el = self.ds.get(DATETIME)
        if not el:
            return None
        return parse_dt(ascii_text(el[1]))

    def num(self) -> tuple[float | None, str | None]:
        """(number, unit code value) of a NUM item; (None, None) when no value is stated."""
        el = self.ds.get(MEASURED_VALUE_SEQUENCE)
        if not el or el[0] != "SQ" or not el[1]:
            return None, None
        mv = el[1][0]
        units = first_code(mv, MEASUREMENT_UNITS_CODE_SEQUENCE, self.text)
        unit = units.value if units else None
        raw = mv.get(NUMERIC_VALUE)
        text = ascii_text(raw[1]) if raw else ""
        if text:
            from .values import parse_ds

            try:
                return parse_ds(text), unit
            except ValueProblem:
                fd = mv.get(FLOATING_POINT_VALUE)
                if fd:
                    v = parse_fd(fd[1], self.little)
                    if v is not None:
                        return v, unit
                raise
        fd = mv.get(FLOATING_POINT_VALUE)
        if fd:
            return parse_fd(fd[1], self.little), unit
        return None, unit


def value_repr(item: ContentItem) -> str | None:
    """The raw value of an item as text, for reporting an invalid element."""
    el = item.ds.get(MEASURED_VALUE_SEQUENCE)
    if el and el[0] == "SQ" and el[1]:
        raw = el[1][0].get(NUMERIC_VALUE)
        return ascii_text(raw[1]) if raw else None
    for tag in (TEXT_VALUE, DATETIME, UID):
        raw2: Any = item.ds.get(tag)
        if raw2:
            return ascii_text(raw2[1])
    return None
