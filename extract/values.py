"""Decoding element values: text in the object's character set, numbers, dates, units.

Every function takes the raw bytes the byte reader kept and returns a Python value, or
raises :class:`ValueProblem` with a reason the caller records against the element.
"""

from __future__ import annotations

import math
import re
import struct
from datetime import date
from typing import Any

# Specific Character Set (0008,0005): every defined term of PS3.3 C.12.1.1.2 -> a Python codec.
# Tables C.12-2 (single-byte, no code extensions) and C.12-5 (multi-byte, no code extensions):
_SINGLE = {
    "": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4", "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6", "ISO_IR 126": "iso8859_7", "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9", "ISO_IR 203": "iso8859_15", "ISO_IR 166": "tis_620",
    "ISO_IR 13": "shift_jis", "ISO_IR 192": "utf_8", "GB18030": "gb18030", "GBK": "gbk",
}
_STAND_ALONE = frozenset({"ISO_IR 192", "GB18030", "GBK"})  # no code extensions allowed (C.12-5)
# Tables C.12-3 and C.12-4 (ISO 2022 code extensions): term -> codec of its G0 / G1 set
_ISO2022 = {
    "ISO 2022 IR 6": "ascii", "ISO 2022 IR 100": "latin_1", "ISO 2022 IR 101": "iso8859_2",
    "ISO 2022 IR 109": "iso8859_3", "ISO 2022 IR 110": "iso8859_4", "ISO 2022 IR 144": "iso8859_5",
    "ISO 2022 IR 127": "iso8859_6", "ISO 2022 IR 126": "iso8859_7", "ISO 2022 IR 138": "iso8859_8",
    "ISO 2022 IR 148": "iso8859_9", "ISO 2022 IR 203": "iso8859_15", "ISO 2022 IR 166": "tis_620",
    "ISO 2022 IR 13": "shift_jis", "ISO 2022 IR 87": "iso2022_jp", "ISO 2022 IR 159": "iso2022_jp_2",
    "ISO 2022 IR 149": "euc_kr", "ISO 2022 IR 58": "gb2312",
}
# Escape sequences (C.12-3, C.12-4) -> codec. The 7-bit JIS sets (IR 87, IR 159) are decoded by
# Python's ISO-2022-JP codecs with their escape sequence; for the others the escape is
# stripped and the bytes decoded with the set's codec (G1 sets keep ASCII in G0).
_ESCAPES = {
    b"\x1b(B": "ascii", b"\x1b(J": "shift_jis", b"\x1b)I": "shift_jis",
    b"\x1b-A": "latin_1", b"\x1b-B": "iso8859_2", b"\x1b-C": "iso8859_3", b"\x1b-D": "iso8859_4",
    b"\x1b-L": "iso8859_5", b"\x1b-G": "iso8859_6", b"\x1b-F": "iso8859_7", b"\x1b-H": "iso8859_8",
    b"\x1b-M": "iso8859_9", b"\x1b-b": "iso8859_15", b"\x1b-T": "tis_620",
    b"\x1b$B": "iso2022_jp", b"\x1b$@": "iso2022_jp", b"\x1b$(D": "iso2022_jp_2",
    b"\x1b$)C": "euc_kr", b"\x1b$)A": "gb2312",
}
_KEEP_ESCAPE = frozenset({"iso2022_jp", "iso2022_jp_2"})
_FRAGMENTS = re.compile(rb"(^[^\x1b]+|\x1b[^\x1b]*)")
# After these the value 1 set is active again (PS3.5 6.1.2.5.3): CR, LF, TAB, FF, and in
# person names "^" and "="; "\" between values.
TEXT_DELIMITERS = frozenset(b"\r\n\t\x0c\\")
PN_DELIMITERS = frozenset(b"\r\n\t\x0c\\^=")
_MISSPELLED = re.compile(r"^ISO[ _-]?(2022)?[ _-]?IR[ _-]?(\d+)$")


class ValueProblem(ValueError):
    """A value that breaks its VR or cannot be converted; the message is the reason."""


def _term(term: str, problems: list[tuple[str, str]]) -> str:
    """The defined term ``term`` stands for: itself, a corrected spelling, or "" (the default
    repertoire) for an unknown term; corrections and unknown terms are added to ``problems``."""
    if term in _SINGLE or term in _ISO2022:
        return term
    m = _MISSPELLED.match(term.upper().replace("  ", " "))
    if m:
        fixed = f"ISO 2022 IR {int(m.group(2))}" if m.group(1) else f"ISO_IR {int(m.group(2))}"
        if fixed in _SINGLE or fixed in _ISO2022:
            problems.append((term, f"Specific Character Set term {term!r} is misspelled; read as {fixed!r}"))
            return fixed
    if term.upper().replace("-", "") in ("UTF8", "ISO_IR192"):
        problems.append((term, f"Specific Character Set term {term!r} is not a defined term; read as 'ISO_IR 192'"))
        return "ISO_IR 192"
    problems.append((term, f"Specific Character Set term {term!r} is not a defined term (PS3.3 C.12.1.1.2); "
                           "text read as ASCII, other bytes as UTF-8 or else Latin-1"))
    return ""


class TextDecoder:
    """Decodes text values by the dataset's Specific Character Set (PS3.3 C.12.1.1.2, PS3.5 6.1).

    Every defined term is known, including the ISO 2022 code extensions (Japanese IR 87 /
    IR 159 / IR 13, Korean IR 149, Chinese IR 58, every single-byte set). A misspelled or
    unknown term never fails the object: text is read with the nearest defined term (else
    the default repertoire) and the term is reported in ``problems`` (value, reason), as
    are bytes that are not valid in the declared set (read with U+FFFD).

    Vendor quirk (field experience): Siemens writes UTF-8 bytes into datasets that declare
    ISO_IR 100. Bytes that form valid multi-byte UTF-8 are practically never intended
    Latin-1, so for single-byte declared sets such bytes are read as UTF-8, which
    recovers the intended text (``testæøå`` rather than ``testÃ¦Ã¸Ã¥``).
    """

    __slots__ = ("codec", "terms", "declared", "encodings", "problems", "_bad", "codes")

    def __init__(self, specific_character_set: bytes | None, problems: list[tuple[str, str]] | None = None) -> None:
        raw = (bytes(specific_character_set or b"")).decode("ascii", "replace").strip(" \x00")
        self.declared = raw
        self.problems: list[tuple[str, str]] = [] if problems is None else problems
        self._bad = False
        self.codes: dict[tuple[Any, Any, Any], Any] = {}  # encoded code triple -> Code (see sr.read_code)
        terms = [_term(t.strip(" \x00"), self.problems) for t in raw.split("\\")] if raw else [""]
        if len(terms) > 1 and terms[0] in _STAND_ALONE:
            self.problems.append((raw, f"Specific Character Set {terms[0]!r} allows no code extensions; "
                                       "the other values are ignored"))
            terms = terms[:1]
        self.terms = terms
        # value 1 (the initial set), then every set an escape sequence may designate
        self.encodings = [_SINGLE.get(t) or _ISO2022.get(t) or "ascii" for t in terms]
        single = len(terms) == 1 and terms[0] in _SINGLE
        self.codec = self.encodings[0] if single else None

    def __call__(self, raw: bytes | memoryview, person_name: bool = False) -> str:
        if not isinstance(raw, (bytes, memoryview, bytearray)):
            return ""  # a sequence where a text value belongs: no text
        b = bytes(raw)
        if b.isascii() and 0x1B not in b:
            return b.decode("ascii")
        codec = self.codec
        if codec is None:
            return self._iso2022(b, PN_DELIMITERS if person_name else TEXT_DELIMITERS)
        if codec in ("ascii", "latin_1") or codec.startswith("iso8859"):
            try:
                return b.decode("utf_8")
            except UnicodeDecodeError:
                pass
            return b.decode(codec if codec != "ascii" else "latin_1", "replace")
        return self._decode(b, codec)

    def _initial(self, b: bytes, codec: str) -> str:
        """Bytes before any escape sequence: in the set of value 1; under the default
        repertoire, high bytes are read as UTF-8, else Latin-1 (as for single-byte sets)."""
        if codec != "ascii" or b.isascii():
            return self._decode(b, codec)
        try:
            return b.decode("utf_8")
        except UnicodeDecodeError:
            return b.decode("latin_1")

    def _decode(self, b: bytes, codec: str) -> str:
        try:
            return b.decode(codec)
        except UnicodeDecodeError:
            self._undecodable(codec)
            return b.decode(codec, "replace")

    def _undecodable(self, codec: str) -> None:
        if not self._bad:
            self._bad = True
            self.problems.append((self.declared, f"text values hold bytes that are not valid in {codec} "
                                                 f"(Specific Character Set {self.declared!r}); read with U+FFFD"))

    def _iso2022(self, b: bytes, delimiters: frozenset[int]) -> str:
        """ISO 2022 code extensions (PS3.5 6.1.2.5): each part that starts with an escape
        sequence is read in the set it designates, the rest in the set of value 1."""
        first = self.encodings[0]
        out = []
        for frag in _FRAGMENTS.findall(b):
            if not frag.startswith(b"\x1b"):
                out.append(self._initial(frag, first))
                continue
            n = 4 if frag.startswith((b"\x1b$(", b"\x1b$)")) else 3
            codec = _ESCAPES.get(frag[:n])
            if codec is None:  # an escape sequence no term defines
                self._undecodable(first)
                out.append(self._decode(frag[1:], first))
            elif codec in _KEEP_ESCAPE:
                out.append(self._decode(frag, codec))
            else:
                body = frag[n:]
                cut = next((i for i, ch in enumerate(body) if ch in delimiters), len(body))
                out.append(self._decode(body[:cut], codec) + self._initial(body[cut:], first))
        return "".join(out)


def clean_text(s: str) -> str | None:
    """Strip trailing spaces and NUL padding (and leading spaces); empty -> None."""
    s = s.strip(" \x00\r\n\t")
    return s or None


def clean_name(s: str) -> str | None:
    """Person name: strip padding and empty trailing components (``SMITH^JOHN^^`` -> ``SMITH^JOHN``)."""
    s = s.strip(" \x00").rstrip("^= ").strip()
    return s or None


def ascii_text(raw: bytes | memoryview) -> str:
    """An ASCII value (UI, CS, DS, ...); a sequence where a value belongs reads as empty."""
    if not isinstance(raw, (bytes, memoryview, bytearray)):
        return ""
    return bytes(raw).decode("ascii", "replace").strip(" \x00")


def parse_ds(text: str) -> float:
    """A Decimal String (or IS) holding exactly one number."""
    t = text.strip(" \x00")
    if not t:
        raise ValueProblem("empty numeric value")
    if "\\" in t:
        raise ValueProblem(f"multi-valued numeric value '{t}' where one number is required")
    try:
        v = float(t)
    except ValueError:
        raise ValueProblem(f"numeric value '{t}' is not a number") from None
    if not math.isfinite(v):
        raise ValueProblem(f"numeric value {t!r} is not finite")
    return v


def parse_fd(raw: bytes | memoryview, little: bool = True) -> float | None:
    """An FD value; a value that is not finite raises ValueProblem (NaN and Infinity are never kept)."""
    if not isinstance(raw, (bytes, memoryview, bytearray)) or len(raw) < 8:
        return None
    v = float(struct.unpack("<d" if little else ">d", bytes(raw[:8]))[0])
    if not math.isfinite(v):
        raise ValueProblem(f"floating point value {v!r} is not finite")
    return v


def parse_us(raw: bytes | memoryview, little: bool = True) -> int | None:
    if not isinstance(raw, (bytes, memoryview, bytearray)):
        return None
    b = bytes(raw)
    if len(b) < 2:
        return None
    return int(struct.unpack("<H" if little else ">H", b[:2])[0])


_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DA_DOTTED = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")  # ACR-NEMA form, still seen


def parse_da(text: str) -> str | None:
    """DA ``YYYYMMDD`` -> ``YYYY-MM-DD``; empty -> None; invalid -> ValueProblem."""
    t = text.strip(" \x00")
    if not t:
        return None
    m = _DA.match(t) or _DA_DOTTED.match(t)
    if not m:
        raise ValueProblem(f"date {t!r} is not YYYYMMDD")
    y, mo, d = (int(g) for g in m.groups())
    try:
        date(y, mo, d)
    except ValueError:
        raise ValueProblem(f"date {t!r} is not a calendar date") from None
    return f"{y:04d}-{mo:02d}-{d:02d}"


_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")


def parse_tm(text: str) -> str | None:
    """TM ``HHMMSS.ffffff`` -> ``HH:MM:SS[.ffffff]`` (fraction kept as stated)."""
    t = text.strip(" \x00")
    if not t:
        return None
    m = _TM.match(t)
    if not m:
        raise ValueProblem(f"time {t!r} is not HHMMSS[.ffffff]")
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        raise ValueProblem(f"time {t!r} is out of range")
    return f"{hh}:{mm or '00'}:{ss or '00'}{frac or ''}"


_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def parse_dt(text: str) -> str | None:
    """DT ``YYYYMMDDHHMMSS.ffffff&ZZXX`` -> ISO 8601 (``...T...+00:00`` when an offset is stated)."""
    t = text.strip(" \x00")
    if not t:
        return None
    m = _DT.match(t)
    if not m:
        raise ValueProblem(f"datetime {t!r} is not YYYYMMDDHHMMSS[.ffffff][&ZZXX]")
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    try:
        date(int(y), int(mo or 1), int(d or 1))
    except ValueError:
        raise ValueProblem(f"datetime {t!r} is not a calendar date") from None
    out = f"{y}-{mo or '01'}-{d or '01'}T{hh or '00'}:{mi or '00'}:{ss or '00'}{frac or ''}"
    if off:
        out += f"{off[:3]}:{off[3:]}"
    return out


def age_from_dates(birth: str | None, study: str | None) -> float | None:
    """Exact age in years (2 decimals): whole years completed plus the fraction of the year since."""
    if not birth or not study:
        return None
    b = date.fromisoformat(birth)
    s = date.fromisoformat(study)
    if s < b:
        return None
    years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))

    def anniversary(n: int) -> date:
        y = b.year + n
        try:
            return b.replace(year=y)
        except ValueError:  # 29 February
            return date(y, 3, 1)

    last = anniversary(years)
    nxt = anniversary(years + 1)
    return round(years + (s - last).days / (nxt - last).days, 2)


_AS = re.compile(r"^(\d{3})([DWMY])$")


def age_from_patient_age(text: str | None) -> float | None:
    """Patient's Age (AS) ``nnnD/W/M/Y`` -> years, 2 decimals."""
    if not text:
        return None
    m = _AS.match(text.strip(" \x00").upper())
    if not m:
        raise ValueProblem(f"patient age {text!r} is not nnnD, nnnW, nnnM or nnnY")
    n, unit = int(m.group(1)), m.group(2)
    factor = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}[unit]
    return round(n * factor, 2)


# --- Units (UCUM, as vendors spell them) -> the record's unit ------------------------
def _unit_key(unit: str) -> str:
    u = unit.strip().replace("µ", "u").replace("μ", "u")
    for ch in (".", "*", "·", " ", "[", "]"):
        u = u.replace(ch, "")
    return u


# target -> {normalised spelling: factor}
_UNITS: dict[str, dict[str, float]] = {
    "mGy": {"mGy": 1, "Gy": 1000, "cGy": 10, "dGy": 100, "uGy": 0.001},
    "mGycm": {"mGycm": 1, "Gycm": 1000, "cGycm": 10, "dGycm": 100, "uGycm": 0.001,
              "mGym": 100, "mGymm": 0.1, "Gym": 100000, "cGym": 1000},
    "mm": {"mm": 1, "cm": 10, "m": 1000, "um": 0.001},
    "s": {"s": 1, "ms": 0.001, "us": 0.000001, "min": 60},
    "kV": {"kV": 1, "V": 0.001, "kVp": 1},
    "mA": {"mA": 1, "uA": 0.001, "A": 1000},
    "mSv": {"mSv": 1, "Sv": 1000, "uSv": 0.001, "cSv": 10},
}
# accepted case-insensitively for the unitless quantities (factor 1)
UNITLESS = "1"


# (stated unit, target) -> factor, None when there is none: the same few spellings in every event
_FACTORS: dict[tuple[str, str], float | None] = {}


def _factor(unit: str, target: str) -> float | None:
    if (unit, target) in _FACTORS:
        return _FACTORS[(unit, target)]
    table = _UNITS[target]
    key = _unit_key(unit)
    factor = table.get(key)
    if factor is None:
        # tolerate case differences (MGY, mgy.cm): each table is unambiguous in lower case
        factor = {k.lower(): f for k, f in table.items()}.get(key.lower())
    if len(_FACTORS) < 4096:
        _FACTORS[(unit, target)] = factor
    return factor


def convert(value: float, unit: str | None, target: str) -> float:
    """Convert ``value`` stated in ``unit`` to ``target``. No unit stated: taken as stated.

    A factor of 1 returns the value untouched (values are kept exactly as stated).
    """
    if target == UNITLESS or unit is None or not unit.strip():
        return value
    factor = _factor(unit, target)
    if factor is None:
        raise ValueProblem(f"unit {unit!r} cannot be converted to {target}")
    if factor == 1:
        return value
    converted = value * factor
    if not math.isfinite(converted):
        raise ValueProblem(f"value {value!r} {unit} is not finite in {target}")
    return converted
