#!/usr/bin/env python3
"""Fuzzing harness: hostile variants of the synthetic samples through the public API.

Issue 8 ("A fuzzing harness in the project"). Each input is a mutation of one of the
project's synthetic files (``sample_dicom/*.dcm``), made from ``(seed, index)`` alone so any
input can be made again:

* structure-aware (pydicom loads the sample, the dataset is changed, then re-encoded):
  content items deleted, duplicated, reordered, retyped (Value Type changed, value
  sequences removed), concepts swapped; bad DS/IS values (NaN, inf, 1e308, "abc", empty,
  multi-valued); huge values whose sum is not finite; header values broken; Specific
  Character Set terms (ISO 2022 code extensions, GB18030, unknown, misspelled,
  multi-valued) with person names in those encodings (the examples of PS3.5 Annex H/I/J);
  sequences and items of undefined length; content nested 2 to 1000 levels deep; deflate
  bombs (~1 MiB compressed, up to 1 GiB inflated); 1,000 to 10,000 copies of an event; a
  deflated transfer syntax;
* byte-level, on the encoded file: declared lengths of 0xFFFFFFF0 or undefined on
  non-sequences, lengths off by a little, VRs swapped (SQ as UN, DS as FD...), tags changed
  (out of order, item tags, group lengths), truncation at a random offset, random byte
  flips, inserted / deleted / duplicated runs, a transfer syntax that lies, no preamble or
  no File Meta.

Every input runs, in a worker subprocess, through ``dosereg.extract.extract_bytes``, then
``dosereg.registry_export.evaluated_dict`` with the packaged rules, then
``json.dumps(allow_nan=False)`` and the project's schema (conf/study.schema.json); a valid
record of a sample's study is also merged (``merge_study``) with the study's clean samples
and judged the same way, as the catalog would. While the code under test runs, the worker's
whole address space is capped at 1 GiB and its CPU time at 10 s (CPU rather than wall clock,
so that a loaded machine does not fake a timeout; a worker silent for 60 s of wall clock is
killed). A worker runs many inputs; one that dies or overruns is replaced, and the input
counts as that outcome.

Outcomes: ``ok``; ``error:<code>`` (an error record: the expected answer to a broken
object); and the bad ones -- ``exception`` (uncaught, by type), ``nonfinite`` (NaN/Infinity
in the JSON), ``schema_invalid``, ``misdecoded`` (a person name in a valid character set
that does not decode to the standard's text), ``unreported`` (an undefined character set term
that no problem of the record mentions), ``timeout`` (> 10 s), ``memory`` (> 1 GiB),
``worker_died``. Each bad input is saved with its traceback in ``--out``
(``repro/<outcome>-s<seed>-i<index>.dcm`` and ``.txt``); ``results.jsonl`` and
``summary.json`` hold every outcome. Exit status 1 if any outcome is bad.

    .venv/bin/python bench/fuzz.py --count 5000 --seed 1 [--jobs 2] [--out bench/out/fuzz]
    .venv/bin/python bench/fuzz.py --replay bench/out/fuzz/repro/*.dcm    # run saved files
    .venv/bin/python bench/fuzz.py --seed 1 --make 17 --out /tmp/x         # write input 17
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import random
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_dicom"
SCHEMA_PATH = ROOT / "conf" / "study.schema.json"
DEFAULT_OUT = ROOT / "bench" / "out" / "fuzz"
CACHE_DIR = ROOT / "bench" / "out" / "fuzz-cache"  # deflate-bomb bodies, made once (~3 s)

TIME_LIMIT_S = 10.0
MEMORY_LIMIT = 1 << 30
KILL_AFTER_S = 60.0     # wall clock: a worker that did not answer by then is killed (as a timeout)
MAKE_LIMIT_S = 60.0     # making one input (in the worker) never takes this long
BAD = ("exception", "nonfinite", "schema_invalid", "misdecoded", "unreported", "timeout", "memory", "worker_died")

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

# SR attributes (PS3.3 C.17.3)
CONTENT_SEQUENCE = 0x0040A730
VALUE_TYPE = 0x0040A040
MEASURED_VALUE_SEQUENCE = 0x0040A300
NUMERIC_VALUE = 0x0040A30A
SPECIFIC_CHARACTER_SET = 0x00080005
PATIENT_NAME = 0x00100010


# ------------------------------------------------------------------------------------------
# Byte-level encoding helpers (explicit VR little endian, what the splices are written in)
# ------------------------------------------------------------------------------------------


def elem(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element (value padded to even length)."""
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB", b"UN") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def seq_open(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\0\0" + b"\xff\xff\xff\xff"


ITEM_OPEN = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
ITEM_CLOSE = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQ_CLOSE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def code_item(value: str, scheme: str, meaning: str) -> bytes:
    return ITEM_OPEN + elem(0x00080100, b"SH", value.encode()) + elem(0x00080102, b"SH", scheme.encode()) \
        + elem(0x00080104, b"LO", meaning.encode()) + ITEM_CLOSE


def concept(tag: int, value: str, scheme: str, meaning: str) -> bytes:
    return seq_open(tag) + code_item(value, scheme, meaning) + SEQ_CLOSE


def num_item(value: bytes, code: tuple[str, str, str] = ("113830", "DCM", "Mean CTDIvol")) -> bytes:
    """A NUM content item (CTDIvol by default) with an undefined-length item encoding."""
    mv = seq_open(MEASURED_VALUE_SEQUENCE) + ITEM_OPEN + concept(0x004008EA, "mGy", "UCUM", "mGy") \
        + elem(NUMERIC_VALUE, b"DS", value) + ITEM_CLOSE + SEQ_CLOSE
    return ITEM_OPEN + elem(0x0040A010, b"CS", b"CONTAINS") + elem(VALUE_TYPE, b"CS", b"NUM") \
        + concept(0x0040A043, *code) + mv + ITEM_CLOSE


def nested_chain(depth: int, rng: random.Random) -> bytes:
    """``depth`` CONTAINER items each holding the next in its Content Sequence, a NUM at the
    bottom: built front and back (linear, no recursion)."""
    names = [("113819", "DCM", "CT Acquisition"), ("113811", "DCM", "CT Accumulated Dose Data"),
             ("113701", "DCM", "X-Ray Radiation Dose Report")]
    front: list[bytes] = []
    for _ in range(depth):
        front.append(ITEM_OPEN + elem(0x0040A010, b"CS", b"CONTAINS") + elem(VALUE_TYPE, b"CS", b"CONTAINER")
                     + concept(0x0040A043, *rng.choice(names)) + elem(0x0040A050, b"CS", b"SEPARATE")
                     + seq_open(CONTENT_SEQUENCE))
    back = (SEQ_CLOSE + ITEM_CLOSE) * depth
    return b"".join(front) + num_item(b"12.5") + back


def nested_private(depth: int) -> bytes:
    """A private sequence nested ``depth`` items deep (tests the generic parser, not SR)."""
    front = (ITEM_OPEN + seq_open(0x00091001)) * depth
    return seq_open(0x00091001) + front + ITEM_OPEN + elem(0x00091002, b"LO", b"bottom") + ITEM_CLOSE \
        + (SEQ_CLOSE + ITEM_CLOSE) * depth + SEQ_CLOSE


def dataset_offset(data: bytes) -> int | None:
    """Where the dataset starts after the File Meta group (None if there is none)."""
    if data[128:132] != b"DICM" or len(data) < 144 or data[132:136] != b"\x02\x00\x00\x00":
        return None
    return 144 + struct.unpack_from("<I", data, 140)[0]


def length_fields(data: bytes, start: int, little: bool = True) -> list[tuple[int, int]]:
    """(offset, size) of every length field of an explicit-VR encoding from ``start``,
    descending into sequences and items inline; stops at the first thing it cannot read."""
    out: list[tuple[int, int]] = []
    pos, end = start, len(data)
    fmt = "<" if little else ">"
    while pos + 8 <= end and len(out) < 200_000:
        group = struct.unpack_from(fmt + "H", data, pos)[0]
        if group == 0xFFFE:
            out.append((pos + 4, 4))
            pos += 8
            continue
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > end:
                break
            length = struct.unpack_from(fmt + "I", data, pos + 8)[0]
            out.append((pos + 8, 4))
            pos += 12 if vr == b"SQ" or length == 0xFFFFFFFF else 12 + length
        elif len(vr) == 2 and vr.isalpha() and vr.isupper():
            out.append((pos + 6, 2))
            pos += 8 + struct.unpack_from(fmt + "H", data, pos + 6)[0]
        else:
            break
    return out


# ------------------------------------------------------------------------------------------
# Character sets: the standard's example names (PS3.5 Annex H, I, J) and broken terms
# ------------------------------------------------------------------------------------------

# (Specific Character Set values, raw Patient's Name bytes, the text it must decode to)
CHARSET_NAMES: list[tuple[list[str], bytes, str]] = [
    (["", "ISO 2022 IR 87"],
     b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
     "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    (["ISO 2022 IR 13", "ISO 2022 IR 87"],
     b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J",
     "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    (["", "ISO 2022 IR 149"],
     b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf",
     "Hong^Gildong=洪^吉洞=홍^길동"),
    (["", "ISO 2022 IR 58"],
     b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=",
     "Zhang^XiaoDong=张^小东="),
    (["GB18030"], b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=", "Wang^XiaoDong=王^小东="),
    (["ISO_IR 192"], "Wang^XiaoDong=王^小东=".encode(), "Wang^XiaoDong=王^小东="),
    (["ISO_IR 100"], "Buc^Jérôme".encode("latin_1"), "Buc^Jérôme"),
    (["ISO_IR 144"], "Люкceмбypг".encode("iso8859_5"), "Люкceмбypг"),
    (["ISO_IR 126"], "Διονυσιος".encode("iso8859_7"), "Διονυσιος"),
    (["ISO_IR 13"], "ﾔﾏﾀﾞ^ﾀﾛｳ".encode("shift_jis"), "ﾔﾏﾀﾞ^ﾀﾛｳ"),
]
# Terms that are not in PS3.3 C.12.1.1.2 at all (misspelled, unknown): the record must say so
UNDEFINED_TERMS = {"ISO_IR 999", "ISO IR 100", "ISO_IR100", "iso_ir 100", "ISO 2022 IR 999", "UTF-8", "\x1b$B"}
BAD_TEXT: list[bytes] = [
    b"Yamada^\x1b$B;3", b"\x1b$)Z\xfb\xf3^x", b"\x1b", b"\x1b$", b"\x1b(B\x1b$B\x1b(B", b"\xff\xfe\xfd",
    b"\x1b$(D\x30\x21\x1b(B", b"\x1b%G\xe2\x82", b"\x1b-A\xe9^\x1b-F\xe1", b"A\x00B", b"\xc3\x28\xa0\xa1",
    b"\x1b$)C" * 200, b"\x1b$B" + b"\x30\x21" * 20000,
]
BROKEN_CHARSETS: list[list[str]] = [
    ["ISO_IR 999"], ["ISO IR 100"], ["ISO_IR100"], ["iso_ir 100"], ["ISO 2022 IR 999"], ["UTF-8"],
    ["ISO 2022 IR 87"], ["", "ISO 2022 IR 149", "ISO 2022 IR 87", "ISO 2022 IR 58"], ["ISO_IR 192", "GB18030"],
    ["", "", ""], ["\x1b$B"], ["ISO_IR 100", "ISO_IR 999"], ["ISO 2022 IR 6", "ISO 2022 IR 159"],
]


# ------------------------------------------------------------------------------------------
# Structure-aware mutations (pydicom)
# ------------------------------------------------------------------------------------------

BAD_NUMBERS = ["NaN", "nan", "inf", "-inf", "Infinity", "1e308", "-1e308", "1e400", "abc", "", " ",
               "1\\2", "1\\\\", "0x10", "1,5", "--1", "1e", ".", "+", "9" * 16, "1.5e-400", "\x00\x00", "١٢"]


@dataclass
class Mutant:
    """A dataset being mutated, and what its encoding must still do."""

    ds: Any
    rng: random.Random
    ts: str
    patches: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (tag, fake VR, real VR)
    splices: list[tuple[bytes, bytes]] = field(default_factory=list)       # (placeholder, bytes)
    bomb: tuple[bytes, str] | None = None     # (placeholder, cached body name) for a deflate bomb
    expect_name: str | None = None
    expect_problem: str | None = None  # a problem whose reason holds this text must be reported


def _content_items(ds: Any) -> list[tuple[Any, int, Any]]:
    """(parent sequence, index, item) of every content item, walked without recursion."""
    out: list[tuple[Any, int, Any]] = []
    stack = [ds]
    while stack:
        node = stack.pop()
        seq = node.get(CONTENT_SEQUENCE)
        if seq is None or seq.VR != "SQ":
            continue
        for i, item in enumerate(seq.value):
            out.append((seq.value, i, item))
            stack.append(item)
    return out


def _elements(ds: Any, vrs: set[str]) -> list[Any]:
    return [el for el in ds.iterall() if el.VR in vrs]


def set_raw(m: Mutant, container: Any, tag: int, vr: str, raw: bytes) -> None:
    """Put ``raw`` bytes as the value of ``tag``: written as LT (or UN for long VRs), the VR
    field patched back after encoding, so pydicom never validates or converts it."""
    from pydicom.dataelem import DataElement

    fake = "UN" if vr.encode() in LONG_VRS else "LT"
    container[tag] = DataElement(tag, fake, raw)
    m.patches.append((tag, fake.encode(), vr.encode()))


def mut_delete(m: Mutant) -> str:
    items = _content_items(m.ds)
    if not items:
        return mut_header(m)
    parent, i, _ = m.rng.choice(items)
    del parent[i]
    return "sr_delete"


def mut_duplicate(m: Mutant) -> str:
    items = _content_items(m.ds)
    if not items:
        return mut_header(m)
    parent, i, item = m.rng.choice(items)
    for _ in range(m.rng.choice([1, 1, 2, 10, 50])):
        parent.insert(i, copy.deepcopy(item))
    return "sr_duplicate"


def mut_reorder(m: Mutant) -> str:
    items = _content_items(m.ds)
    if not items:
        return mut_header(m)
    parent = m.rng.choice(items)[0]
    order = list(parent)
    m.rng.shuffle(order)
    parent.clear()
    parent.extend(order)
    return "sr_reorder"


RETYPES = ["NUM", "TEXT", "CODE", "CONTAINER", "UIDREF", "DATETIME", "PNAME", "IMAGE", "COMPOSITE",
           "SCOORD", "DATE", "TIME", "", "XYZ", "num", "NUM\\TEXT"]
VALUE_ELEMENTS = [0x0040A300, 0x0040A168, 0x0040A043, 0x0040A160, 0x0040A124, 0x0040A120, 0x0040A010,
                  0x004008EA, 0x0040A30A]


def mut_retype(m: Mutant) -> str:
    items = _content_items(m.ds)
    if not items:
        return mut_header(m)
    for _ in range(m.rng.choice([1, 1, 3, 10])):
        item = m.rng.choice(items)[2]
        if m.rng.random() < 0.5:
            set_raw(m, item, VALUE_TYPE, "CS", m.rng.choice(RETYPES).encode())
        else:
            targets = [t for t in VALUE_ELEMENTS if t in item]
            mv = item.get(MEASURED_VALUE_SEQUENCE)
            if mv is not None and mv.VR == "SQ" and mv.value and m.rng.random() < 0.5:
                item, targets = mv.value[0], [t for t in (0x004008EA, NUMERIC_VALUE) if t in mv.value[0]]
            if targets:
                tag = m.rng.choice(targets)
                if m.rng.random() < 0.7 or item[tag].VR != "SQ":
                    del item[tag]
                else:
                    item[tag].value = []
    return "sr_retype"


def mut_concept_swap(m: Mutant) -> str:
    """Give an item another item's concept name (a DLP where a CTDIvol was...)."""
    items = [it for _, _, it in _content_items(m.ds) if 0x0040A043 in it and it[0x0040A043].value]
    if len(items) < 2:
        return mut_header(m)
    a, b = m.rng.sample(items, 2)
    a[0x0040A043].value = copy.deepcopy(b[0x0040A043].value)
    if m.rng.random() < 0.3:
        code = a[0x0040A043].value[0]
        for tag in (0x00080100, 0x00080102, 0x00080104):
            if tag in code and m.rng.random() < 0.4:
                del code[tag]
    return "sr_concept_swap"


def mut_bad_number(m: Mutant) -> str:
    elements = _elements(m.ds, {"DS", "IS"})
    if not elements:
        return mut_header(m)
    for _ in range(m.rng.choice([1, 1, 2, 5])):
        el = m.rng.choice(elements)
        value = m.rng.choice(BAD_NUMBERS)
        for container in _containers_of(m.ds, el):
            set_raw(m, container, el.tag, el.VR, value.encode("utf-8"))
    return "bad_number"


def _containers_of(ds: Any, target: Any) -> Iterator[Any]:
    """The dataset(s) holding the element object ``target`` (without recursion)."""
    stack = [ds]
    while stack:
        node = stack.pop()
        if target.tag in node and node[target.tag] is target:
            yield node
            return
        for el in node:
            if el.VR == "SQ":
                stack.extend(el.value)


def mut_huge_sum(m: Mutant) -> str:
    """Several numbers of 1e308: each finite, their sum (total DLP, CTDIvol...) is not."""
    values = [mv.value[0] for _, _, it in _content_items(m.ds)
              if (mv := it.get(MEASURED_VALUE_SEQUENCE)) is not None and mv.VR == "SQ" and mv.value
              and NUMERIC_VALUE in mv.value[0]]
    if len(values) < 2:
        elements = _elements(m.ds, {"DS", "FD"})
        for el in m.rng.sample(elements, min(len(elements), 6)):
            for container in _containers_of(m.ds, el):
                if el.VR == "FD":
                    container[el.tag].value = m.rng.choice([1e308, 1.7e308, math.inf, math.nan])
                else:
                    set_raw(m, container, el.tag, "DS", b"1e308")
        return "huge_sum"
    for item in m.rng.sample(values, max(2, len(values) * m.rng.choice([1, 2]) // 2)):
        set_raw(m, item, NUMERIC_VALUE, "DS", m.rng.choice([b"1e308", b"1.7976931348623157e308", b"-1e308"]))
    return "huge_sum"


HEADER_TAGS = [0x00080016, 0x00080018, 0x0020000D, 0x00080020, 0x00080030, 0x00100030, 0x00100040,
               0x00101010, 0x00101020, 0x00101030, 0x00080060, 0x00080070, 0x00080008, 0x00081032]
HEADER_VALUES = [b"", b"\\", b"20251399", b"99991231", b"1.2\\3.4", b"1.2.840.10008.5.1.4.1.1.88.67\\1.2",
                 b"../../etc", b"1.2.3\n4", b"x" * 70000, b"\xff\xfe\x00", b"DOSE_INFO", b"M\\F", b"120Y"]


def mut_header(m: Mutant) -> str:
    tag = m.rng.choice(HEADER_TAGS)
    if m.rng.random() < 0.3:
        if tag in m.ds:
            del m.ds[tag]
        return "header_delete"
    value = m.rng.choice(HEADER_VALUES)
    set_raw(m, m.ds, tag, "UT" if len(value) > 60000 else "LO", value)
    return "header_value"


def mut_charset(m: Mutant) -> str:
    from pydicom.dataelem import DataElement

    roll = m.rng.random()
    if roll < 0.55:
        terms, raw, text = m.rng.choice(CHARSET_NAMES)
        m.expect_name = text
    elif roll < 0.8:
        terms, raw, text = m.rng.choice(BROKEN_CHARSETS), m.rng.choice(CHARSET_NAMES)[1], ""
        if UNDEFINED_TERMS & set(terms):
            m.expect_problem = "Specific Character Set"
    else:  # a valid declaration, bytes that break it (stray/unknown escapes, cut multi-byte codes)
        terms, raw, text = m.rng.choice(CHARSET_NAMES)[0], m.rng.choice(BAD_TEXT), ""
    m.ds[SPECIFIC_CHARACTER_SET] = DataElement(SPECIFIC_CHARACTER_SET, "CS", terms if len(terms) > 1 else terms[0])
    set_raw(m, m.ds, PATIENT_NAME, "PN", raw)
    if m.rng.random() < 0.5:  # the same bytes in texts the record carries
        set_raw(m, m.ds, 0x00081030, "LO", raw)
        texts = [it for _, _, it in _content_items(m.ds) if 0x0040A160 in it]
        for item in m.rng.sample(texts, min(2, len(texts))):
            set_raw(m, item, 0x0040A160, "UT", raw)
    return "charset" if text else "charset_broken"


def mut_undefined_lengths(m: Mutant) -> str:
    share = m.rng.choice([0.3, 1.0])
    for el in m.ds.iterall():
        if el.VR == "SQ" and m.rng.random() < share:
            el.is_undefined_length = True
            for item in el.value:
                item.is_undefined_length_sequence_item = True
    return "undefined_lengths"


def _placeholder_in_content(m: Mutant) -> bytes | None:
    """An undefined-length item at the end of the root Content Sequence, to be replaced by
    bytes after encoding (None if the dataset has no content tree)."""
    from pydicom.dataset import Dataset

    seq = m.ds.get(CONTENT_SEQUENCE)
    if seq is None or seq.VR != "SQ":
        return None
    marker = f"FUZZ-PLACEHOLDER-{m.rng.getrandbits(48):012x}".encode()
    item = Dataset()
    item.TextValue = marker.decode()
    item.is_undefined_length_sequence_item = True
    seq.value.append(item)
    seq.is_undefined_length = True
    m.ts = DEFLATED if m.ts == DEFLATED else EXPLICIT_LE
    return ITEM_OPEN + elem(0x0040A160, b"UT", marker) + ITEM_CLOSE


def _placeholder_top(m: Mutant, tag: int) -> bytes:
    """A private top-level element to be replaced by bytes after encoding."""
    from pydicom.dataelem import DataElement

    marker = f"FUZZ-PLACEHOLDER-{m.rng.getrandbits(48):012x}".encode()
    creator = (tag & 0xFFFF0000) | 0x0010
    m.ds[creator] = DataElement(creator, "LO", "FUZZ")
    m.ds[tag] = DataElement(tag, "UT", marker.decode())
    m.ts = DEFLATED if m.ts == DEFLATED else EXPLICIT_LE
    return elem(tag, b"UT", marker)


def mut_nesting(m: Mutant) -> str:
    depth = m.rng.choice([2, 10, 63, 64, 65, 100, 200, 500, 1000, m.rng.randint(100, 1000)])
    holder = _placeholder_in_content(m) if m.rng.random() < 0.7 else None
    if holder is not None:
        m.splices.append((holder, nested_chain(depth, m.rng)))
        return f"nesting_sr_{depth}"
    holder = _placeholder_top(m, 0x00091001)
    m.splices.append((holder, nested_private(depth)))
    return f"nesting_private_{depth}"


BOMBS = ("zeros_1g", "items_1m", "zeros_4m", "items_100m")
PAD_TAG = 0x7FE11012  # incompressible padding of the under-cap bomb, after the content


def mut_deflate_bomb(m: Mutant) -> str:
    from pydicom.dataelem import DataElement

    kind = m.rng.choice(BOMBS)
    holder = _placeholder_in_content(m) if kind.startswith("items") else None
    if kind == "items_100m" and holder is not None:
        m.ds[0x7FE10010] = DataElement(0x7FE10010, "LO", "FUZZ")
        m.ds[PAD_TAG] = DataElement(PAD_TAG, "OB", m.rng.randbytes(900_000))
    if holder is None:
        kind = kind if kind.startswith("zeros") else "zeros_1g"
        holder = _placeholder_top(m, 0x7FE11010)
    m.ts = DEFLATED
    m.bomb = (holder, kind)
    return f"deflate_bomb_{kind}"


def mut_many_events(m: Mutant) -> str:
    """Thousands of copies of one content item (a 10,000-event report must stay fast)."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    items = [it for _, i, it in _content_items(m.ds) if CONTENT_SEQUENCE in it]
    if not items:
        return mut_duplicate(m)
    holder = _placeholder_in_content(m)
    if holder is None:
        return mut_duplicate(m)
    one = Dataset()
    one.ContentSequence = [copy.deepcopy(m.rng.choice(items))]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, one)
    item = fp.getvalue()[12:]  # the item, without the sequence's own header
    count = m.rng.choice([1000, 5000, 10000])
    m.splices.append((holder, item * count))
    return f"many_events_{count}"


def mut_many_items(m: Mutant) -> str:
    """16 to 96 MiB of small NUM items, uncompressed: memory must stay proportionate."""
    holder = _placeholder_in_content(m)
    if holder is None:
        return mut_duplicate(m)
    mib = m.rng.choice([16, 32, 64, 96])
    item = num_item(b"12.5")
    m.splices.append((holder, item * (mib * 2**20 // len(item))))
    return f"many_items_{mib}m"


def mut_deflate(m: Mutant) -> str:
    m.ts = DEFLATED
    return "deflated"


STRUCTURE: list[tuple[Callable[[Mutant], str], int]] = [
    (mut_delete, 8), (mut_duplicate, 8), (mut_reorder, 6), (mut_retype, 10), (mut_concept_swap, 5),
    (mut_bad_number, 10), (mut_huge_sum, 6), (mut_header, 8), (mut_charset, 10), (mut_undefined_lengths, 5),
    (mut_nesting, 6), (mut_deflate_bomb, 3), (mut_deflate, 3), (mut_many_events, 2), (mut_many_items, 1),
]


# ------------------------------------------------------------------------------------------
# Byte-level mutations
# ------------------------------------------------------------------------------------------


def _pick_length(data: bytes, rng: random.Random) -> tuple[int, int] | None:
    """A random length field of the File Meta, or of the dataset when it is explicit VR LE."""
    fields = length_fields(data, 132)
    start = dataset_offset(data)
    if start is not None and (EXPLICIT_LE.encode() + b"\0") in data[:start]:
        fields += length_fields(data, start)
    return rng.choice(fields) if fields else None


def byte_huge_length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    picked = _pick_length(data, rng)
    if picked is None:
        return byte_flip(data, rng)
    off, size = picked
    value = rng.choice([0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE]) if size == 4 else 0xFFFF
    return data[:off] + struct.pack("<I" if size == 4 else "<H", value) + data[off + size:], "huge_length"


def byte_length_off(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    picked = _pick_length(data, rng)
    if picked is None:
        return byte_flip(data, rng)
    off, size = picked
    fmt = "<I" if size == 4 else "<H"
    old = struct.unpack_from(fmt, data, off)[0]
    new = (old + rng.choice([-4, -2, -1, 1, 2, 4, 100])) % (1 << (8 * size))
    return data[:off] + struct.pack(fmt, new) + data[off + size:], "length_off"


def byte_truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return data[:rng.randrange(0, max(1, len(data)))], "truncate"


def byte_flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 2, 4, 16, 64])):
        if not buf:
            break
        i = rng.randrange(len(buf))
        buf[i] = rng.choice([buf[i] ^ (1 << rng.randrange(8)), rng.randrange(256), 0, 0xFF])
    return bytes(buf), "byte_flip"


def byte_splice(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if len(data) < 2:
        return data + os.urandom(8), "splice_insert"
    i = rng.randrange(len(data))
    n = rng.choice([1, 2, 4, 8, 100, 4096])
    op = rng.choice(["insert", "delete", "duplicate"])
    if op == "insert":
        return data[:i] + rng.randbytes(n) + data[i:], "splice_insert"
    if op == "delete":
        return data[:i] + data[i + n:], "splice_delete"
    return data[:i] + data[i:i + n] * rng.choice([2, 10, 1000]) + data[i:], "splice_duplicate"


def byte_transfer_syntax(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The File Meta says another transfer syntax than the dataset is written in."""
    for ts in (DEFLATED, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE):
        for pad in (b"\0", b""):
            old = ts.encode() + pad
            if old in data[:400]:
                new = rng.choice([DEFLATED, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, "1.2.840.10008.1.2.4.50",
                                  "1.2.3", "1.2.840.10008.1.2.1.98"]).encode()
                new = (new + b"\0" * 40)[:len(old)] if len(new) <= len(old) else new[:len(old)]
                return data.replace(old, new, 1), "ts_lie"
    return byte_flip(data, rng)


def _dataset_fields(data: bytes) -> list[tuple[int, int]]:
    start = dataset_offset(data)
    if start is None or (EXPLICIT_LE.encode() + b"\0") not in data[:start]:
        return []
    return [f for f in length_fields(data, start) if struct.unpack_from("<H", data, f[0] - (8 if f[1] == 4 else 6))[0] != 0xFFFE]


SAME_HEADER_VRS = {2: [b"DS", b"IS", b"FD", b"FL", b"US", b"UL", b"SS", b"CS", b"PN", b"DA", b"UI", b"AT", b"XX"],
                   4: [b"SQ", b"UN", b"OB", b"UT", b"OW", b"UC"]}


def byte_vr_swap(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """An element written with another VR of the same header layout (SQ as UN, DS as FD...)."""
    fields = _dataset_fields(data)
    if not fields:
        return byte_flip(data, rng)
    off, size = rng.choice(fields)
    vr_at = off - (4 if size == 4 else 2)
    return data[:vr_at] + rng.choice(SAME_HEADER_VRS[size]) + data[vr_at + 2:], "vr_swap"


def byte_tag_swap(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A tag changed: out of order, repeated, an item tag, a group-length or pixel tag."""
    fields = _dataset_fields(data)
    if not fields:
        return byte_flip(data, rng)
    off, size = rng.choice(fields)
    tag_at = off - (8 if size == 4 else 6)
    tags = [(0x0008, 0x0016), (0x0040, 0xA730), (0x0040, 0xA040), (0x0008, 0x0005), (0xFFFE, 0xE000),
            (0xFFFE, 0xE0DD), (0x0002, 0x0010), (0x7FE0, 0x0010), (0x0000, 0x0000), (0x0040, 0x0000)]
    new = struct.pack("<HH", *rng.choice(tags))
    return data[:tag_at] + new + data[tag_at + 4:], "tag_swap"


def byte_no_preamble(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The same object without its preamble, or without its whole File Meta group."""
    start = dataset_offset(data)
    if start is None:
        return byte_flip(data, rng)
    return (data[128:] if rng.random() < 0.5 else data[start:]), "no_preamble"


BYTES: list[tuple[Callable[[bytes, random.Random], tuple[bytes, str]], int]] = [
    (byte_huge_length, 8), (byte_length_off, 5), (byte_truncate, 8), (byte_flip, 10), (byte_splice, 5),
    (byte_transfer_syntax, 2), (byte_vr_swap, 5), (byte_tag_swap, 4), (byte_no_preamble, 1),
]


def weighted(rng: random.Random, table: list[tuple[Any, int]]) -> Any:
    return rng.choices([f for f, _ in table], weights=[w for _, w in table])[0]


# ------------------------------------------------------------------------------------------
# Making one input
# ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    name: str
    data: bytes
    structured: bool  # pydicom loads it fully, so structure mutations apply


@dataclass
class FuzzInput:
    index: int
    sample: str
    mutations: list[str]
    data: bytes
    expect_name: str | None = None
    expect_problem: str | None = None


def load_samples() -> list[Sample]:
    import pydicom

    out = []
    for path in sorted(SAMPLES.glob("*.dcm")):
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            list(ds.iterall())
            structured = True
        except Exception:
            structured = False
        out.append(Sample(path.name, data, structured))
    return out


def quiet_pydicom() -> None:
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


class Maker:
    """Makes input ``index`` of a campaign from ``(seed, index)`` alone."""

    def __init__(self, seed: int, cache_dir: Path = CACHE_DIR) -> None:
        quiet_pydicom()
        self.seed = seed
        self.samples = load_samples()
        self.cache_dir = cache_dir

    def make(self, index: int) -> FuzzInput:
        rng = random.Random(f"dosereg-fuzz:{self.seed}:{index}")
        sample = rng.choice(self.samples)
        mutations: list[str] = []
        data = sample.data
        expect: tuple[str | None, str | None] = (None, None)
        if sample.structured and rng.random() < 0.75:
            try:
                data, mutations, expect = self.structure(sample, rng)
            except Exception as exc:  # pydicom could not write this mutant: byte-level only
                data, mutations = sample.data, [f"make_failed:{type(exc).__name__}"]
        if not mutations or rng.random() < 0.3:
            for _ in range(rng.choice([1, 1, 2, 3])):
                data, name = weighted(rng, BYTES)(data, rng)
                mutations.append(name)
            expect = (None, None)
        return FuzzInput(index, sample.name, mutations, data, *expect)

    def structure(self, sample: Sample, rng: random.Random) -> tuple[bytes, list[str], tuple[str | None, str | None]]:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(sample.data))
        m = Mutant(ds, rng, str(ds.file_meta.TransferSyntaxUID))
        names = [weighted(rng, STRUCTURE)(m) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        alone = len(names) == 1 and names[0].startswith("charset")  # nothing else changed the name or set
        expect = (m.expect_name, m.expect_problem) if alone else (None, None)
        return self.encode(m), names, expect

    def encode(self, m: Mutant) -> bytes:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset, write_file_meta_info

        meta = copy.deepcopy(m.ds.file_meta)
        meta.TransferSyntaxUID = m.ts
        head = DicomBytesIO()
        head.is_little_endian, head.is_implicit_VR = True, False
        head.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(head, meta, enforce_standard=True)
        body = DicomBytesIO()
        body.is_little_endian = m.ts != EXPLICIT_BE
        body.is_implicit_VR = m.ts == IMPLICIT_LE
        write_dataset(body, m.ds)
        data = self.patch(body.getvalue(), m)
        if m.bomb is not None:
            return head.getvalue() + self.bomb(data, *m.bomb)
        if m.ts == DEFLATED:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            data = c.compress(data) + c.flush()
        return head.getvalue() + data

    @staticmethod
    def patch(data: bytes, m: Mutant) -> bytes:
        if m.ts != IMPLICIT_LE:
            fmt = ">HH" if m.ts == EXPLICIT_BE else "<HH"
            for tag, fake, real in set(m.patches):
                t = struct.pack(fmt, tag >> 16, tag & 0xFFFF)
                data = data.replace(t + fake, t + real)
        for holder, replacement in m.splices:
            data = data.replace(holder, replacement, 1)
        return data

    def bomb(self, data: bytes, holder: bytes, kind: str) -> bytes:
        """Deflate ``data`` with the placeholder replaced by a cached, pre-compressed body
        (independent deflate blocks concatenate: each part ends with a full flush)."""
        i = data.find(holder)
        if i < 0:
            raise ValueError("placeholder not found")
        prefix, suffix = data[:i], data[i + len(holder):]
        body, inflated = bomb_body(kind, self.cache_dir)
        if kind.startswith("zeros"):
            prefix += struct.pack("<HH", 0x7FE1, 0x1010) + b"OB\0\0" + struct.pack("<I", inflated)
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        first = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return first + body + c.compress(suffix) + c.flush()


def bomb_body(kind: str, cache_dir: Path) -> tuple[bytes, int]:
    """The compressed body of a bomb (made once into the cache) and its inflated size."""
    path = cache_dir / f"bomb-{kind}.bin"
    if path.exists():
        blob = path.read_bytes()
        return blob[8:], struct.unpack_from("<Q", blob)[0]
    if kind.startswith("zeros"):
        unit, total = bytes(1 << 24), (1 << 30) - 4096 if kind == "zeros_1g" else 4 << 20
    else:
        item = num_item(b"12.5")
        unit, total = item * ((1 << 24) // len(item)), 100 << 20 if kind == "items_100m" else 1 << 30
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    parts: list[bytes] = []
    inflated = compressed = 0
    while inflated < total and compressed < (1 << 20):
        chunk = unit[:total - inflated]
        parts.append(c.compress(chunk))
        inflated += len(chunk)
        compressed += len(parts[-1])
    parts.append(c.flush(zlib.Z_FULL_FLUSH))
    body = b"".join(parts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(struct.pack("<Q", inflated) + body)
    os.replace(tmp, path)
    return body, inflated


# ------------------------------------------------------------------------------------------
# Running one input (in the worker)
# ------------------------------------------------------------------------------------------


class FuzzTimeout(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` does not hide it."""


def _alarm(signum: int, frame: Any) -> None:
    raise FuzzTimeout()


def nonfinite_paths(value: Any, path: str = "") -> list[str]:
    out: list[str] = []
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            out.append(f"{p or '/'} = {v}")
        elif isinstance(v, dict):
            stack.extend((x, f"{p}/{k}") for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{p}/{i}") for i, x in enumerate(v))
    return sorted(out)


def _vm_peak_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _vm_hwm() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Runner:
    """The code under test, loaded once per worker."""

    def __init__(self) -> None:
        import jsonschema

        from dosereg.conf.config import default_config
        from dosereg.extract import extract_bytes, merge_study
        from dosereg.registry_export import evaluated_dict, rules_from_config

        self.extract_bytes = extract_bytes
        self.merge_study = merge_study
        self.evaluated_dict = evaluated_dict
        self.rules = rules_from_config(default_config())
        self.siblings: dict[str, list[Any]] = {}  # study UID -> clean records of the samples
        for path in sorted(SAMPLES.glob("*.dcm")):
            clean = extract_bytes(path.read_bytes(), source=path.name)
            if clean.error is None and clean.study_instance_uid:
                self.siblings.setdefault(clean.study_instance_uid, []).append(clean)
        schema = json.loads(SCHEMA_PATH.read_text())
        self.validator = jsonschema.validators.validator_for(schema)(schema)
        signal.signal(signal.SIGPROF, _alarm)
        self.stage = "extract"

    def run(self, data: bytes, source: str, expect_name: str | None = None,
            expect_problem: str | None = None) -> dict[str, Any]:
        """One input through extract, rules (and merge), then JSON and schema; the code under
        test limited to 10 s of CPU time and 1 GiB of address space (the harness's own JSON
        and schema checks are outside the time limit: they cost seconds on 10,000 events)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        _vm_peak_reset()
        t0, c0 = time.perf_counter(), time.process_time()
        cpu: float | None = None
        self.stage = "extract"
        try:
            limit = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            signal.setitimer(signal.ITIMER_PROF, TIME_LIMIT_S)
            dicts = self.under_test(data, source)
            signal.setitimer(signal.ITIMER_PROF, 0)
            cpu = time.process_time() - c0
            self.stage = "json"
            result = self.judge(dicts[0], expect_name, expect_problem)
            if len(dicts) > 1 and result["outcome"] not in BAD:
                verdict = self.judge(dicts[1], None)
                if verdict["outcome"] in BAD:
                    result = dict(verdict, detail=f"merged with its study's samples: {verdict['detail']}")
        except FuzzTimeout:
            result = {"outcome": "timeout", "detail": f"over {TIME_LIMIT_S:g} s of CPU in {self.stage}"}
        except MemoryError:
            result = {"outcome": "memory", "detail": f"MemoryError in {self.stage} (address space {MEMORY_LIMIT >> 20} MiB)",
                      "traceback": traceback.format_exc(limit=-8)}
        except BaseException as exc:  # noqa: B036 -- every escape from the API is the finding
            result = {"outcome": "exception", "type": type(exc).__name__, "stage": self.stage,
                      "detail": str(exc)[:300], "traceback": traceback.format_exc(limit=-12)}
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        result["seconds"] = round(time.perf_counter() - t0, 4)
        result["cpu_seconds"] = round(cpu if cpu is not None else time.process_time() - c0, 4)
        result["peak_rss"] = _vm_hwm()
        if result["cpu_seconds"] > TIME_LIMIT_S and result["outcome"] not in BAD:
            result.update(outcome="timeout", detail=f"took {result['cpu_seconds']} s of CPU")
        return result

    def under_test(self, data: bytes, source: str) -> list[dict[str, Any]]:
        """The record's dict, and for a valid record of a sample's study the dict of its
        merge with the study's clean samples (as the catalog would merge them)."""
        record = self.extract_bytes(data, source=source)
        self.stage = "rules"
        out = [self.evaluated_dict(record, self.rules, None)]
        siblings = self.siblings.get(record.study_instance_uid or "") if record.error is None else None
        if siblings:
            self.stage = "merge"
            out.append(self.evaluated_dict(self.merge_study([*siblings, record]), self.rules, None))
        return out

    def judge(self, d: dict[str, Any], expect_name: str | None, expect_problem: str | None = None) -> dict[str, Any]:
        try:
            json.dumps(d, allow_nan=False, ensure_ascii=False)
        except ValueError:
            return {"outcome": "nonfinite", "detail": "; ".join(nonfinite_paths(d)[:5])}
        errors = sorted(self.validator.iter_errors(d), key=lambda e: list(e.path))
        if errors:
            return {"outcome": "schema_invalid",
                    "detail": "; ".join(f"{'/'.join(map(str, e.path))}: {e.message[:150]}" for e in errors[:3])}
        err = d.get("error")
        if err:
            message = str(err.get("message"))
            if "MemoryError" in message:  # the limit was hit, even if the reader turned it into a record
                return {"outcome": "memory", "detail": f"error record naming a MemoryError: {message[:200]}"}
            if "RecursionError" in message or "recursion depth" in message:
                return {"outcome": "exception", "type": "RecursionError", "stage": "extract (caught)",
                        "detail": f"error record naming a RecursionError: {message[:200]}"}
            return {"outcome": f"error:{err.get('code')}", "detail": message[:200]}
        if expect_name is not None:
            got = (d.get("patient") or {}).get("name")
            want = expect_name.strip(" \x00").rstrip("^= ").strip()
            if got != want:
                return {"outcome": "misdecoded", "detail": f"patient name {got!r}, expected {want!r}"}
        if expect_problem is not None and not any(expect_problem in str(p.get("reason")) for p in d.get("problems") or ()):
            return {"outcome": "unreported", "detail": f"no problem mentions {expect_problem!r}"}
        return {"outcome": "ok"}


def worker_main(seed: int, out: Path, cache_dir: Path) -> int:
    """Read input indexes on stdin, answer one JSON line each on the original stdout."""
    import faulthandler

    faulthandler.enable()  # a worker killed for silence first gets SIGABRT: its stack goes to the log
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the code under test go to the log, not the protocol
    maker = Maker(seed, cache_dir)
    runner = Runner()
    for line in sys.stdin:
        msg = json.loads(line)
        if "file" in msg:
            inp = FuzzInput(-1, msg["file"], ["replay"], Path(msg["file"]).read_bytes())
        else:
            inp = maker.make(int(msg["index"]))
        proto.write(json.dumps({"phase": "run", "sample": inp.sample, "mutations": inp.mutations,
                                "size": len(inp.data)}) + "\n")
        result = runner.run(inp.data, source=f"fuzz-{seed}-{inp.index}.dcm", expect_name=inp.expect_name,
                            expect_problem=inp.expect_problem)
        if result["outcome"] in BAD and inp.index >= 0:
            save_reproducer(out, seed, inp, result)
        proto.write(json.dumps(result) + "\n")
        if result["outcome"] in ("timeout", "memory"):
            return 0  # state after an interrupted run is not trusted: the parent starts another
    return 0


def save_reproducer(out: Path, seed: int, inp: FuzzInput, result: dict[str, Any]) -> Path:
    repro = out / "repro"
    repro.mkdir(parents=True, exist_ok=True)
    stem = f"{result['outcome']}-s{seed}-i{inp.index}"
    path = repro / f"{stem}.dcm"
    path.write_bytes(inp.data)
    text = [f"input {inp.index} of seed {seed}: sample {inp.sample}, mutations {', '.join(inp.mutations)}",
            f"outcome: {result['outcome']} {result.get('type', '')} {result.get('stage', '')}",
            f"detail: {result.get('detail', '')}", "", result.get("traceback", "")]
    (repro / f"{stem}.txt").write_text("\n".join(text))
    return path


# ------------------------------------------------------------------------------------------
# The parent: lanes of workers, outcomes, summary
# ------------------------------------------------------------------------------------------


class Worker:
    """One worker subprocess and a line reader on its protocol pipe."""

    def __init__(self, seed: int, out: Path, cache_dir: Path, log: Path) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--seed", str(seed), "--out", str(out),
             "--cache", str(cache_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=str(ROOT))
        self.buf = b""

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any] | None:
        """The next line, or None if the worker died or ``timeout`` passed."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))

    def stop(self, dump: bool = False) -> int | None:
        """Kill this worker (its own pid); with ``dump``, SIGABRT first so that faulthandler
        writes where it was stuck into the log."""
        if dump and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        self.log.close()
        return rc


@dataclass
class Campaign:
    seed: int
    out: Path
    cache_dir: Path
    jobs: int
    kill_after: float = KILL_AFTER_S
    results: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lane(self, lane: int, tasks: Iterator[dict[str, Any]], progress: Callable[[], None]) -> None:
        worker: Worker | None = None
        log = self.out / f"worker-{lane}.log"
        while True:
            with self.lock:
                task = next(tasks, None)
            if task is None:
                break
            if worker is None or worker.proc.poll() is not None:
                worker = Worker(self.seed, self.out, self.cache_dir, log)
            result, worker = self.one(worker, task)
            with self.lock:
                self.results.append(result)
            progress()
        if worker is not None:
            worker.proc.stdin.close()  # type: ignore[union-attr]
            worker.stop()

    def one(self, worker: Worker, task: dict[str, Any]) -> tuple[dict[str, Any], Worker | None]:
        worker.send(task)
        started = worker.read(MAKE_LIMIT_S)
        if started is None:
            result = self.died(worker, task, "while making the input")
            return dict(result, **task), None
        answer = worker.read(self.kill_after)
        alive: Worker | None = worker
        if answer is not None:
            result = answer
        else:
            result = self.died(worker, task, "while running", killed=worker.proc.poll() is None)
            alive = None
        if answer is not None and result["outcome"] in ("timeout", "memory"):  # the worker leaves after these
            worker.stop()
            alive = None
        result.update(task, sample=started.get("sample"), mutations=started.get("mutations"),
                      size=started.get("size"))
        return result, alive

    def silent(self, worker: Worker) -> dict[str, Any]:
        """A worker killed for silence: a timeout, or memory if it was stuck after a MemoryError
        (its last traceback and faulthandler's dump are in its log)."""
        text = Path(worker.log.name).read_text(errors="replace")
        last = text[text.rfind("Traceback (most recent call last)"):] if "Traceback" in text else ""
        stack = "\n".join(line for line in last.splitlines() if line.strip() and not line.startswith("During"))
        if "MemoryError" in last:
            return {"outcome": "memory", "traceback": stack[:3000],
                    "detail": f"stuck after a MemoryError, killed after {self.kill_after:g} s (wall clock)"}
        return {"outcome": "timeout", "traceback": stack[:3000],
                "detail": f"no answer in {self.kill_after:g} s (wall clock): killed"}

    def died(self, worker: Worker, task: dict[str, Any], when: str, killed: bool = False) -> dict[str, Any]:
        rc = worker.stop(dump=killed)
        if killed:
            result = self.silent(worker)
        else:
            how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit {rc}"
            result = {"outcome": "worker_died", "detail": f"worker died {when} ({how})"}
        if "index" in task:  # make the input again here, to keep it
            inp = Maker(self.seed, self.cache_dir).make(int(task["index"]))
            save_reproducer(self.out, self.seed, inp, result)
        return result


def run_campaign(count: int, seed: int, jobs: int = 2, out: Path = DEFAULT_OUT, cache_dir: Path = CACHE_DIR,
                 files: list[Path] | None = None, verbose: bool = True,
                 kill_after: float = KILL_AFTER_S) -> dict[str, Any]:
    """Run ``count`` inputs of ``seed`` (or the given files) and return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    for kind in BOMBS:
        bomb_body(kind, cache_dir)  # made once here, not in every worker
    tasks: Iterator[dict[str, Any]] = (iter([{"file": str(f)} for f in files]) if files
                                       else iter([{"index": i} for i in range(count)]))
    total = len(files) if files else count
    campaign = Campaign(seed, out, cache_dir, jobs, kill_after)
    done = [0]
    t0 = time.monotonic()

    def progress() -> None:
        done[0] += 1
        if verbose and sys.stderr.isatty() and done[0] % 50 == 0:
            print(f"\r{done[0]}/{total} inputs, {done[0] / (time.monotonic() - t0):.1f}/s", end="", file=sys.stderr)

    threads = [threading.Thread(target=campaign.lane, args=(k, tasks, progress)) for k in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    results = sorted(campaign.results, key=lambda r: (r.get("index", -1), r.get("file", "")))
    with open(out / "results.jsonl", "w") as fh:
        for r in results:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "traceback"}) + "\n")
    summary = summarise(results, seed, elapsed, jobs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if verbose:
        print_summary(summary)
    return summary


def _where(tb: str) -> str:
    """The innermost frame of the project in a traceback (groups exceptions by site)."""
    frames = [line.strip() for line in tb.splitlines() if line.strip().startswith("File ")]
    ours = [f for f in frames if "/site-packages/" not in f and "bench/fuzz.py" not in f]
    return (ours or frames or ["?"])[-1].replace(str(ROOT) + "/", "")


def summarise(results: list[dict[str, Any]], seed: int, elapsed: float, jobs: int) -> dict[str, Any]:
    outcomes = Counter(r["outcome"] for r in results)
    groups: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["outcome"] not in BAD:
            continue
        key = r["outcome"]
        if r["outcome"] == "exception":
            key += f" {r.get('type')} in {r.get('stage')} at {_where(r.get('traceback', ''))}"
        g = groups.setdefault(key, {"count": 0, "mutations": Counter(), "examples": [], "detail": r.get("detail")})
        g["count"] += 1
        g["mutations"].update(m.rsplit("_", 1)[0] if m.startswith(("nesting", "deflate_bomb", "many_")) else m
                              for m in r.get("mutations") or [])
        if len(g["examples"]) < 5:
            g["examples"].append(f"repro/{r['outcome']}-s{seed}-i{r['index']}.dcm" if "index" in r else r.get("file"))
    for g in groups.values():
        g["mutations"] = dict(g["mutations"].most_common(6))
    slowest = sorted(results, key=lambda r: r.get("cpu_seconds") or 0, reverse=True)[:5]
    return {
        "seed": seed, "inputs": len(results), "jobs": jobs, "seconds": round(elapsed, 1),
        "inputs_per_s": round(len(results) / elapsed, 1) if elapsed else None,
        "outcomes": dict(sorted(outcomes.items())), "bad": sum(n for o, n in outcomes.items() if o in BAD),
        "max_peak_rss_mib": round(max((r.get("peak_rss") or 0 for r in results), default=0) / 2**20, 1),
        "slowest": [{"index": r.get("index"), "cpu_seconds": r.get("cpu_seconds"), "seconds": r.get("seconds"),
                     "size": r.get("size"), "mutations": r.get("mutations"),
                     "outcome": r["outcome"]} for r in slowest],
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1]["count"])),
    }


def print_summary(s: dict[str, Any]) -> None:
    print(f"\nseed {s['seed']}: {s['inputs']} inputs in {s['seconds']} s with {s['jobs']} workers "
          f"({s['inputs_per_s']} inputs/s); largest peak RSS of one input {s['max_peak_rss_mib']} MiB")
    print(f"{'outcome':<28}{'count':>8}")
    for outcome, n in s["outcomes"].items():
        print(f"{outcome:<28}{n:>8}{'   BAD' if outcome in BAD else ''}")
    for o in BAD:
        if o not in s["outcomes"]:
            print(f"{o:<28}{0:>8}")
    if s["groups"]:
        print("\nbad outcomes, grouped:")
        for key, g in s["groups"].items():
            print(f"  {g['count']:>5}  {key}\n         e.g. {g['examples'][0]}: {str(g['detail'])[:160]}\n"
                  f"         mutations: {g['mutations']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--cache", type=Path, default=CACHE_DIR)
    p.add_argument("--replay", type=Path, nargs="+", help="run these files instead of making inputs")
    p.add_argument("--make", type=int, nargs="+", metavar="INDEX", help="write these inputs to --out and stop")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.seed, args.out, args.cache)
    if args.make:
        maker = Maker(args.seed, args.cache)
        args.out.mkdir(parents=True, exist_ok=True)
        for i in args.make:
            inp = maker.make(i)
            path = args.out / f"input-s{args.seed}-i{i}.dcm"
            path.write_bytes(inp.data)
            print(f"{path}: {inp.sample} + {', '.join(inp.mutations)} ({len(inp.data)} bytes)")
        return 0
    summary = run_campaign(args.count, args.seed, args.jobs, args.out, args.cache, args.replay)
    return 1 if summary["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
