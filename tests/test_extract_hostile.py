"""Hostile and broken input never makes extraction raise, run away or decode garbage (issue 8).

Each test builds the hostile object from the project's synthetic samples (with pydicom, or
byte by byte where pydicom would refuse) and asserts the record: error code and message
naming the element and the reason, decoded text, problem entries.
"""

from __future__ import annotations

import copy
import io
import json
import math
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from dosereg.extract import ExtractLimits, Problem, StudyRecord, extract_bytes, extract_file, merge_study
from dosereg.extract.model import DoseObjectRef, Event
from dosereg.extract.values import TextDecoder, ValueProblem, convert
from tests.conftest import SAMPLES, jsonl, run_cli
from tests.conftest import validate_record as _validate_evaluated

SIEMENS = SAMPLES / "ct_siemens_single_source.dcm"
RDSR = "1.2.840.10008.5.1.4.1.1.88.67"


def validate_record(record: dict[str, Any]) -> None:
    """The record as ``extract`` prints it (evaluated by the default rules) is schema-valid JSON."""
    from dosereg.conf.config import load_config
    from dosereg.registry_export import evaluated_dict, rules_from_config

    evaluated = evaluated_dict(StudyRecord.from_dict(record), rules_from_config(load_config()), export=None)
    _validate_evaluated(json.loads(json.dumps(evaluated, allow_nan=False)))


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _with_name(charset: str | list[str], raw_name: bytes) -> bytes:
    """The Siemens sample with this Specific Character Set and these Patient's Name bytes."""
    ds = pydicom.dcmread(SIEMENS)
    ds.SpecificCharacterSet = charset
    raw = raw_name + (b" " if len(raw_name) % 2 else b"")
    placeholder = "Q" * len(raw)
    ds.PatientName = placeholder
    data = _encode(ds)
    assert data.count(placeholder.encode()) == 1
    return data.replace(placeholder.encode(), raw)


# --- Character sets: PS3.5 Annex H (Japanese), I (Korean), J and K (Chinese) ----------------

ANNEX_NAMES = [
    # H.3.1: ISO 2022 IR 87, JIS X 0208 in G0 by escape sequences
    ("\\ISO 2022 IR 87",
     b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
     "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    # H.3.2: value 1 ISO 2022 IR 13 (half-width katakana in G1), JIS X 0201 romaji returned with ESC ( J
    ("ISO 2022 IR 13\\ISO 2022 IR 87",
     b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J",
     "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    # I.2: ISO 2022 IR 149, KS X 1001 in G1
    ("\\ISO 2022 IR 149",
     b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf",
     "Hong^Gildong=洪^吉洞=홍^길동"),
    # J.3: GB18030
    ("GB18030", b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=", "Wang^XiaoDong=王^小东"),
    # J.1: UTF-8
    ("ISO_IR 192", b"Wang^XiaoDong=\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x9d\xb1=", "Wang^XiaoDong=王^小東"),
    # K.2: ISO 2022 IR 58, GB 2312 in G1
    ("\\ISO 2022 IR 58", b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=", "Zhang^XiaoDong=张^小东"),
]


@pytest.mark.parametrize("charset, raw, expected", ANNEX_NAMES, ids=[c for c, _, _ in ANNEX_NAMES])
def test_annex_person_names_decode_exactly(charset: str, raw: bytes, expected: str) -> None:
    rec = extract_bytes(_with_name(charset.split("\\"), raw), source="name.dcm")
    assert rec.error is None, rec.error
    assert rec.patient.name == expected
    assert [p for p in rec.problems if p.path == "header.SpecificCharacterSet"] == []
    validate_record(rec.to_dict())


@pytest.mark.parametrize("charset, raw, expected", [
    ("ISO_IR 127", b"\xe2\xc8\xc7\xe6\xea^\xe4\xe6\xd2\xc7\xd1", "قباني^لنزار"),
    ("ISO_IR 126", b"\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2", "Διονυσιος"),
    ("ISO_IR 138", b"\xf9\xf8\xe5\xef^\xe3\xe1\xe5\xf8\xe4", "שרון^דבורה"),
    ("ISO_IR 144", b"\xbb\xee\xdace\xdc\xd1yp\xd3", "Люкceмбypг"),
    ("ISO_IR 203", b"\xa4uro^\xbdl\xbe", "€uro^œlŸ"),
    ("ISO_IR 166", b"\xca\xc1\xaa\xd2\xc2", "สมชาย"),
    ("ISO_IR 13", b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3", "ﾔﾏﾀﾞ^ﾀﾛｳ"),
    ("\\ISO 2022 IR 100", b"\x1b-AB\xfcrger^\x1b-AJ\xe9r\xf4me", "Bürger^Jérôme"),
    ("\\ISO 2022 IR 203", b"\x1b-b\xa4uro", "€uro"),
])
def test_single_byte_sets(charset: str, raw: bytes, expected: str) -> None:
    assert TextDecoder(charset.encode())(raw, person_name=True) == expected


def test_jis_x_0212_through_iso_2022_ir_159() -> None:
    raw = "丂".encode("iso2022_jp_2")  # a JIS X 0212 kanji: designated with ESC $ ( D
    assert raw.startswith(b"\x1b$(D")
    assert TextDecoder(b"\\ISO 2022 IR 87\\ISO 2022 IR 159")(raw) == "丂"


def test_annex_names_agree_with_pydicom() -> None:
    """Where pydicom decodes correctly (all but IR 58, which pydicom 3.0 leaves escaped), the
    two decoders give the same text for the annex bytes."""
    from pydicom.charset import convert_encodings, decode_bytes

    for charset, raw, _ in ANNEX_NAMES:
        if "58" in charset:
            continue
        terms = charset.split("\\")
        ours = TextDecoder(charset.encode())(raw, person_name=True)
        assert ours == decode_bytes(raw, convert_encodings(terms), {0x5E, 0x3D})


def test_misspelled_term_is_read_as_meant_and_reported() -> None:
    rec = extract_bytes(_with_name("ISO-IR 100", "Müller^Jürgen".encode("latin-1")), source="m.dcm")
    assert rec.error is None
    assert rec.patient.name == "Müller^Jürgen"
    assert Problem("header.SpecificCharacterSet", "ISO-IR 100",
                   "Specific Character Set term 'ISO-IR 100' is misspelled; read as 'ISO_IR 100'") in rec.problems


def test_unknown_term_falls_back_and_is_reported() -> None:
    rec = extract_bytes(_with_name(["", "ISO 2022 IR 999"], b"Smith^\xc3\xa9mile"), source="u.dcm")
    assert rec.error is None
    assert rec.patient.name == "Smith^émile"  # UTF-8 bytes read as UTF-8 under the fallback
    problem = next(p for p in rec.problems if p.path == "header.SpecificCharacterSet")
    assert problem.value == "ISO 2022 IR 999"
    assert "'ISO 2022 IR 999' is not a defined term" in problem.reason
    assert len(rec.events) == 4  # the rest of the report is kept


def test_invalid_bytes_in_a_declared_set_are_replaced_and_reported() -> None:
    rec = extract_bytes(_with_name("\\ISO 2022 IR 149", b"Kim=\x1b$)C\xff\xfe"), source="k.dcm")
    assert rec.error is None and rec.patient.name is not None and "\ufffd" in rec.patient.name
    reasons = [p.reason for p in rec.problems if p.path == "header.SpecificCharacterSet"]
    assert reasons == ["text values hold bytes that are not valid in euc_kr "
                       "(Specific Character Set '\\\\ISO 2022 IR 149'); read with U+FFFD"]


def test_stand_alone_set_with_extensions_is_reported() -> None:
    d = TextDecoder(b"ISO_IR 192\\ISO 2022 IR 87")
    assert d("Ærø".encode()) == "Ærø"
    assert d.problems == [("ISO_IR 192\\ISO 2022 IR 87",
                           "Specific Character Set 'ISO_IR 192' allows no code extensions; the other values are ignored")]


# --- Nesting ---------------------------------------------------------------------------


def _nested(levels: int, tag: int = 0x0040A730) -> bytes:
    """``levels`` sequences of undefined length, each one item holding the next (explicit VR LE)."""
    g, e = tag >> 16, tag & 0xFFFF
    open_ = struct.pack("<HH2sHL", g, e, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return open_ * levels + close * levels


def _sr_header() -> Dataset:
    ds = pydicom.dcmread(SIEMENS)
    del ds.ContentSequence
    return ds


def test_500_levels_of_nesting_are_malformed_without_recursion_error() -> None:
    data = _encode(_sr_header()) + _nested(500)
    rec = extract_bytes(data, source="deep.dcm")
    assert rec.error is not None and rec.error.code == "malformed"
    assert rec.error.message.startswith("deep.dcm: sequence (0040,A730) at byte ")
    assert "is nested 65 levels deep, beyond the limit of 64 levels" in rec.error.message
    validate_record(rec.to_dict())


def test_nesting_limit_is_a_setting() -> None:
    data = SIEMENS.read_bytes()
    assert extract_bytes(data).error is None
    rec = extract_bytes(data, source="s.dcm", limits=ExtractLimits(max_nesting=3))
    assert rec.error is not None and rec.error.code == "malformed"
    assert "is nested 4 levels deep, beyond the limit of 3 levels" in rec.error.message
    # deep, but within a raised limit: read (the inner items are empty, no events)
    rec = extract_bytes(_encode(_sr_header()) + _nested(60), limits=ExtractLimits(max_nesting=64))
    assert rec.error is not None and rec.error.code == "not_ct_dose"


def test_deep_unknown_element_is_kept_as_bytes() -> None:
    """An UN value holding items is read as a sequence only within the limit; past it the
    bytes are kept, and the report around it is read."""
    inner = _nested(200, tag=0x00091010)[12:-8]  # the items of one UN element, without its header
    element = struct.pack("<HH2sHL", 0x0009, 0x1010, b"UN", 0, len(inner)) + inner
    data = SIEMENS.read_bytes()
    meta_end = data.index(b"\x08\x00\x05\x00")  # (0008,0005), the first dataset element
    rec = extract_bytes(data[:meta_end] + data[meta_end:] + element)
    assert rec.error is None and len(rec.events) == 4


# --- Deflate bombs ---------------------------------------------------------------------


def _deflated(body: bytes) -> bytes:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
    meta.MediaStorageSOPClassUID = UID(RDSR)
    meta.MediaStorageSOPInstanceUID = UID("2.25.77")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RDSR
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    encoded = buf.getvalue()
    head = encoded[:encoded.index(b"1.2.840.10008.1.2.1.99") + 22]
    return head + body


def _bomb(compressed_size: int) -> bytes:
    """A raw deflate stream of zeros about ``compressed_size`` bytes long (about 1000x that inflated)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    out = [comp.compress(b"\x08\x00\x16\x00UI\x1e\x00" + b"1.2.840.10008.5.1.4.1.1.88.67\x00")]
    size = 0
    while size < compressed_size:
        piece = comp.compress(block)
        out.append(piece)
        size += len(piece)
    out.append(comp.flush())
    return b"".join(out)


def test_deflate_cap_is_the_smaller_of_bytes_and_ratio() -> None:
    data = (SAMPLES / "ct_deflated.dcm").read_bytes()
    assert extract_bytes(data).error is None
    rec = extract_bytes(data, source="d.dcm", limits=ExtractLimits(max_inflated_bytes=4096))
    assert rec.error is not None and rec.error.code == "malformed"
    assert "deflated dataset inflates to more than 4096 bytes" in rec.error.message
    rec = extract_bytes(data, source="d.dcm", limits=ExtractLimits(max_inflation_ratio=2))
    assert rec.error is not None and f"more than {2 * len(data)} bytes" in rec.error.message
    assert ExtractLimits().inflation_cap(1 << 20) == 200 << 20
    assert ExtractLimits().inflation_cap(10 << 20) == 256 << 20


# The child's own peak RSS in MiB. Linux keeps ru_maxrss across execve, so a child forked from
# a large pytest process would report the parent's size; VmHWM belongs to the new image.
PEAK_MIB = """
def peak_mib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
"""


def test_one_mebibyte_deflate_bomb_is_malformed_with_bounded_memory(tmp_path: Path) -> None:
    bomb = _deflated(_bomb(1 << 20))
    assert 1 << 20 < len(bomb) < 2 << 20
    path = tmp_path / "bomb.dcm"
    path.write_bytes(bomb)
    code = PEAK_MIB + textwrap.dedent(f"""
        import json
        from dosereg.extract import extract_file
        rec = extract_file({str(path)!r})
        print(json.dumps({{"error": rec.error.to_dict() if rec.error else None, "rss_mb": peak_mib()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    cap = 200 * len(bomb)
    assert result["error"]["code"] == "malformed"
    assert result["error"]["message"] == (
        f"{path}: deflated dataset inflates to more than {cap} bytes, the limit for a {len(bomb)}-byte object "
        f"(the smaller of max_inflated_bytes = {256 << 20} and 200 times its size); not read further")
    assert result["rss_mb"] < 600, result


def test_cut_deflate_stream_is_malformed() -> None:
    data = (SAMPLES / "ct_deflated.dcm").read_bytes()
    rec = extract_bytes(data[:-40], source="cut.dcm")
    assert rec.error is not None and rec.error.code == "malformed"
    assert rec.error.message == "cut.dcm: deflated dataset cannot be inflated: the deflate stream is cut short"


# --- Non-finite numbers ----------------------------------------------------------------


def _with_dlps(value: str) -> bytes:
    ds = pydicom.dcmread(SIEMENS)
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "113819":
            continue
        for child in item.ContentSequence:
            if child.ConceptNameCodeSequence[0].CodeValue == "113829":  # CT Dose
                for num in child.ContentSequence:
                    if num.ConceptNameCodeSequence[0].CodeValue == "113838":  # DLP
                        num.MeasuredValueSequence[0].NumericValue = value
    return _encode(ds)


def test_sum_of_huge_dlps_is_null_with_a_problem() -> None:
    rec = extract_bytes(_with_dlps("1e308"), source="big.dcm")
    assert rec.error is None
    assert [e.dlp_mGycm for e in rec.events] == [1e308] * 4
    assert rec.total_dlp_mGycm is None
    assert Problem("total_dlp_mGycm", None, "sum of event DLPs is not finite") in rec.problems
    text = rec.to_json()
    assert "Infinity" not in text and "NaN" not in text
    validate_record(json.loads(text))


def test_sum_is_exact() -> None:
    rec = extract_bytes(_with_dlps("0.1"), source="exact.dcm")
    assert rec.total_dlp_mGycm == math.fsum([0.1] * 4) == 0.4  # sum() gives 0.30000000000000004 + 0.1


def test_merged_sums_are_checked() -> None:
    def record(sop: str, uid: str, dlp: float, reported: float) -> StudyRecord:
        return StudyRecord(study_instance_uid="2.25.1", dose_objects=(DoseObjectRef(sop, RDSR, "rdsr"),),
                           events=(Event(irradiation_event_uid=uid, dlp_mGycm=dlp),), total_events=1,
                           total_dlp_mGycm=dlp, reported_total_dlp_mGycm=reported)

    merged = merge_study([record("2.25.10", "2.25.20", 1e308, 1e308), record("2.25.11", "2.25.21", 1e308, 1e308)])
    assert len(merged.events) == 2
    assert merged.total_dlp_mGycm is None and merged.reported_total_dlp_mGycm is None
    assert [(p.path, p.reason) for p in merged.problems] == [
        ("total_dlp_mGycm", "sum of event DLPs is not finite"),
        ("reported_total_dlp_mGycm", "sum of the objects' stated total DLPs is not finite"),
    ]
    json.loads(merged.to_json())


def test_non_finite_values_never_reach_the_record() -> None:
    with pytest.raises(ValueProblem, match="not finite"):
        convert(1e306, "Gy.cm", "mGycm")
    nan = StudyRecord(total_dlp_mGycm=float("nan"))
    with pytest.raises(ValueError):
        nan.to_json()  # allow_nan=False: a regression fails loudly


# --- Nothing escapes as an exception ---------------------------------------------------


@pytest.mark.parametrize("exc", [KeyError(0x00100010), LookupError("unknown encoding: x"), RecursionError(),
                                 MemoryError(), UnicodeDecodeError("ascii", b"\xff", 0, 1, "bad"), TypeError("x")])
def test_unexpected_errors_in_an_event_are_malformed_records(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    from dosereg.extract import tid10011

    def boom(*_: Any) -> Any:
        raise exc

    monkeypatch.setattr(tid10011, "read_event", boom)
    rec = extract_bytes(SIEMENS.read_bytes(), source="poison.dcm")
    assert rec.error is not None and rec.error.code == "malformed"
    assert rec.error.message.startswith(
        f"poison.dcm: CT Acquisition events[0] (content item (113819, DCM)) cannot be read: {type(exc).__name__}")


def test_unexpected_errors_anywhere_are_malformed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from dosereg.extract import reader

    def boom(*_: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(reader, "read_header", boom)
    rec = extract_bytes(SIEMENS.read_bytes(), source="p.dcm")
    assert rec.error is not None and rec.error.code == "malformed"
    assert rec.error.message == "p.dcm: the header cannot be read: RecursionError: maximum recursion depth exceeded"
    assert rec.source_file == "p.dcm"


def test_sequences_where_values_belong_do_not_raise() -> None:
    """Implicit VR makes every listed sequence tag a sequence: Code Value, Numeric Value and
    Text Value given as sequences read as absent values."""
    ds = pydicom.dcmread(SIEMENS)
    sq = Sequence([Dataset()])
    first = ds.ContentSequence[0]
    first.ConceptCodeSequence[0].add_new(0x00080100, "SQ", sq)
    acq = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113819")
    acq.ContentSequence[0].add_new(0x0040A160, "SQ", copy.deepcopy(sq))
    ds.add_new(0x00100010, "SQ", copy.deepcopy(sq))
    rec = extract_bytes(_encode(ds), source="sq.dcm")
    assert rec.error is None
    assert rec.patient.name is None
    assert len(rec.events) == 4


def test_extract_file_never_raises_on_odd_paths(tmp_path: Path) -> None:
    rec = extract_file(tmp_path / "missing.dcm")
    assert rec.error is not None and rec.error.code == "unreadable"
    rec = extract_file(str(tmp_path) + "/\x00bad")
    assert rec.error is not None and rec.error.code == "unreadable"


def test_many_events_are_read_whole() -> None:
    """A long report (streamed item by item) gives every event, in order, with its problems."""
    ds = pydicom.dcmread(SAMPLES / "ct_invalid_num.dcm")
    items = list(ds.ContentSequence)
    acq = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "113819"]
    rest = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue != "113819"]
    ds.ContentSequence = Sequence(rest + [copy.deepcopy(acq[k % len(acq)]) for k in range(1500)])
    small = extract_bytes(SAMPLES.joinpath("ct_invalid_num.dcm").read_bytes())
    rec = extract_bytes(_encode(ds))
    assert rec.error is None and rec.total_events == 1500 and len(rec.events) == 1500
    per_event = [p for p in small.problems if p.path.startswith("events[")]
    assert len([p for p in rec.problems if p.path.startswith("events[")]) == len(per_event) * 1500 // len(acq)


# --- The CLI goes on after a bad file --------------------------------------------------


def test_cli_extract_processes_every_file_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "deep.dcm"
    bad.write_bytes(_encode(_sr_header()) + _nested(500))
    korean = tmp_path / "korean.dcm"
    korean.write_bytes(_with_name(["", "ISO 2022 IR 149"], ANNEX_NAMES[2][1]))
    proc = run_cli("extract", str(SIEMENS), str(bad), str(korean))
    assert proc.returncode == 1, proc.stderr
    records = jsonl(proc.stdout)
    assert [r["source_file"] for r in records] == [str(SIEMENS), str(bad), str(korean)]
    assert records[0]["error"] is None and records[2]["error"] is None
    assert records[1]["error"]["code"] == "malformed"
    assert records[2]["patient"]["name"] == "Hong^Gildong=洪^吉洞=홍^길동"
    assert "Traceback" not in proc.stderr


def test_millions_of_small_content_items_are_malformed_before_memory_runs_out() -> None:
    """Items kept beside the irradiation events are capped (extract.sr.MAX_KEPT_ITEMS): a report
    of 30,000 small TEXT items is refused as malformed, naming the Content Sequence, and the
    events of a real report (read and dropped one at a time) are not counted against the cap."""
    from dosereg.extract.sr import MAX_KEPT_ITEMS

    ds = pydicom.dcmread(SAMPLES / "ct_siemens_single_source.dcm")
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121106", "DCM", "Comment"
    item.ConceptNameCodeSequence = Sequence([name])
    item.TextValue = "x"
    items = list(ds.ContentSequence)
    ds.ContentSequence = Sequence(items + [copy.deepcopy(item) for _ in range(MAX_KEPT_ITEMS + 10_000)])
    rec = extract_bytes(_encode(ds), source="items.dcm")
    assert rec.error is not None and rec.error.code == "malformed"
    assert "Content Sequence (0040,A730)" in rec.error.message
    assert f"{MAX_KEPT_ITEMS:,}" in rec.error.message
    # the same report with its own items only is read as before
    ds.ContentSequence = Sequence(items)
    ok = extract_bytes(_encode(ds), source="ok.dcm")
    assert ok.error is None and ok.total_events >= 1


def test_an_sr_that_is_not_a_dose_report_is_read_through_without_keeping_its_items(tmp_path: Path) -> None:
    """A non-dose SR whose Content Sequence holds a million small items is refused as
    not_dose_report (its content read through for errors, not kept: before, it was held whole
    and took over a gigabyte)."""
    ds = pydicom.dcmread(SAMPLES / "sr_not_dose.dcm")
    del ds.ContentSequence
    for tag in [t for t in ds.keys() if t > 0x0040A730]:
        del ds[tag]
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "x"
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(fp, item)
    body = fp.getvalue()
    one = struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
    seq = (struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + one * 1_000_000
           + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    path = tmp_path / "many.dcm"
    path.write_bytes(_encode(ds) + seq)
    code = PEAK_MIB + textwrap.dedent(f"""
        from dosereg.extract import extract_file
        r = extract_file({str(path)!r})
        print(r.error.code, peak_mib())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    error_code, peak_mib = out.stdout.split()
    assert error_code == "not_dose_report"
    assert int(peak_mib) < 400, f"peak RSS {peak_mib} MiB for a {path.stat().st_size >> 20} MiB file"


def test_an_implicit_vr_confidentiality_code_is_text_not_a_sequence() -> None:
    """(0040,1008) Confidentiality Code is LO: in implicit VR the reader once read it as a
    sequence and refused the whole object as malformed."""
    ds = pydicom.dcmread(SAMPLES / "ct_implicit_vr.dcm")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    ds.ConfidentialityCode = "PRIVATE"
    rec = extract_bytes(_encode(ds), source="conf.dcm")
    assert rec.error is None and rec.total_events == extract_file(SAMPLES / "ct_implicit_vr.dcm").total_events
