"""Decoding element values: text in the object's character set, numbers, dates, units.

Every function takes the raw bytes the byte reader kept and returns a Python value, or
raises :class:`ValueProblem` with a reason the caller records against the element.
"""

from __future__ import annotations

import re
import struct
from datetime import date

# Specific Character Set (0008,0005) defined terms -> Python codecs, for the single-byte
# and UTF-8 sets; anything else (ISO 2022 code extensions) goes through pydicom.
_CHARSETS = {
    "": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4", "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6", "ISO_IR 126": "iso8859_7", "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9", "ISO_IR 203": "iso8859_15", "ISO_IR 166": "tis_620",
    "ISO_IR 13": "shift_jis", "ISO_IR 192": "utf_8", "GB18030": "gb18030", "GBK": "gbk",
}


class ValueProblem(ValueError):
    """A value that breaks its VR or cannot be converted; the message is the reason."""


class TextDecoder:
    """Decodes text values by the dataset's Specific Character Set.

    Vendor quirk (domain primer): Siemens writes UTF-8 bytes into datasets that declare
    ISO_IR 100. Bytes that form valid multi-byte UTF-8 are practically never intended
    Latin-1, so for single-byte declared sets such bytes are read as UTF-8, which
    recovers the intended text (``testæøå`` rather than ``testÃ¦Ã¸Ã¥``).
    """

    __slots__ = ("codec", "terms", "declared")

    def __init__(self, specific_character_set: bytes | None) -> None:
        raw = (bytes(specific_character_set or b"")).decode("ascii", "replace").strip(" \x00")
        self.terms = [t.strip() for t in raw.split("\\")] if raw else [""]
        self.declared = raw
        first = self.terms[0] if len(self.terms) == 1 else None
        self.codec = _CHARSETS.get(first) if first is not None else None

    def __call__(self, raw: bytes | memoryview) -> str:
        b = bytes(raw)
        if b.isascii():
            return b.decode("ascii")
        codec = self.codec
        if codec in ("ascii", "latin_1") or (codec and codec.startswith("iso8859")):
            try:
                return b.decode("utf_8")
            except UnicodeDecodeError:
                pass
            return b.decode(codec if codec != "ascii" else "latin_1", "replace")
        if codec:
            return b.decode(codec, "replace")
        from pydicom.charset import decode_bytes  # ISO 2022 code extensions

        return str(decode_bytes(b, self.terms, set()))


def clean_text(s: str) -> str | None:
    """Strip trailing spaces and NUL padding (and leading spaces); empty -> None."""
    s = s.strip(" \x00\r\n\t")
    return s or None


def clean_name(s: str) -> str | None:
    """Person name: strip padding and empty trailing components (``SMITH^JOHN^^`` -> ``SMITH^JOHN``)."""
    s = s.strip(" \x00").rstrip("^= ").strip()
    return s or None


def ascii_text(raw: bytes | memoryview) -> str:
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
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueProblem(f"numeric value {t!r} is not finite")
    return v


def parse_fd(raw: bytes | memoryview, little: bool = True) -> float | None:
    b = bytes(raw)
    if len(b) < 8:
        return None
    return float(struct.unpack("<d" if little else ">d", b[:8])[0])


def parse_us(raw: bytes | memoryview, little: bool = True) -> int | None:
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


def convert(value: float, unit: str | None, target: str) -> float:
    """Convert ``value`` stated in ``unit`` to ``target``. No unit stated: taken as stated.

    A factor of 1 returns the value untouched (values are kept exactly as stated).
    """
    if target == UNITLESS or unit is None or not unit.strip():
        return value
    table = _UNITS[target]
    key = _unit_key(unit)
    factor = table.get(key)
    if factor is None:
        # tolerate case differences (MGY, mgy.cm): each table is unambiguous in lower case
        factor = {k.lower(): f for k, f in table.items()}.get(key.lower())
    if factor is None:
        raise ValueProblem(f"unit {unit!r} cannot be converted to {target}")
    return value if factor == 1 else value * factor
