"""The fuzzing harness (bench/fuzz.py) in CI: a fixed-seed few hundred hostile inputs.

Issue 8: every mutated sample through ``extract_bytes``, the rules, ``json.dumps(allow_nan=
False)`` and the schema, in worker subprocesses limited to 10 s and 1 GiB per input, gives a
record (valid or an error record) -- never an uncaught exception, a non-finite number, a
schema violation, a misdecoded name, an unreported undefined character set, an overrun or
a dead worker. The harness itself is
checked first: it must see each kind of failure it claims to count.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = 8
COUNT = 300


def _load_fuzz() -> Any:
    spec = importlib.util.spec_from_file_location("dosereg_bench_fuzz", ROOT / "bench" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("fuzz")
    summary = fuzz.run_campaign(COUNT, SEED, jobs=2, out=out, verbose=False, kill_after=30)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return summary, results


def _bad_report(summary: dict[str, Any]) -> str:
    lines = [f"{summary['bad']} bad outcomes of {summary['inputs']}: {summary['outcomes']}"]
    for key, g in summary["groups"].items():
        lines.append(f"  {g['count']} x {key}: {str(g['detail'])[:200]} (e.g. {g['examples'][0]}, "
                     f"mutations {g['mutations']})")
    return "\n".join(lines)


def test_fixed_seed_campaign_has_no_bad_outcome(campaign: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    summary, results = campaign
    assert summary["inputs"] == COUNT
    assert [r["index"] for r in results] == list(range(COUNT))
    for outcome in fuzz.BAD:
        assert summary["outcomes"].get(outcome, 0) == 0, _bad_report(summary)
    assert summary["bad"] == 0, _bad_report(summary)


def test_campaign_reaches_the_code_with_every_kind_of_mutation(
        campaign: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    """The inputs are hostile but not all refused at the door: many still give a full
    record, many an error record of several codes, and every mutation kind was tried."""
    summary, results = campaign
    outcomes = summary["outcomes"]
    assert outcomes.get("ok", 0) >= COUNT // 5
    errors = {o: n for o, n in outcomes.items() if o.startswith("error:")}
    assert {"error:malformed", "error:truncated"} <= set(errors)
    assert sum(errors.values()) >= COUNT // 5
    tried = {m.rsplit("_", 1)[0] if m.startswith(("nesting", "deflate_bomb", "many_")) else m
             for r in results for m in r["mutations"]}
    expected = {"sr_delete", "sr_duplicate", "sr_reorder", "sr_retype", "sr_concept_swap", "bad_number",
                "huge_sum", "charset", "charset_broken", "undefined_lengths", "nesting_sr", "nesting_private",
                "deflate_bomb_zeros", "deflate_bomb_items", "deflated", "huge_length", "length_off", "truncate",
                "byte_flip", "vr_swap", "tag_swap", "many_events"}
    assert expected <= tried, f"never tried: {sorted(expected - tried)}"
    assert not any(m.startswith("make_failed") for m in tried), "pydicom could not write some mutants"


def test_inputs_are_reproducible_from_seed_and_index() -> None:
    a, b = fuzz.Maker(SEED), fuzz.Maker(SEED)
    for index in (0, 7, 123):
        x, y = a.make(index), b.make(index)
        assert (x.sample, x.mutations, x.data) == (y.sample, y.mutations, y.data)
    assert a.make(1).data != fuzz.Maker(SEED + 1).make(1).data


def test_nested_chain_is_well_formed_and_as_deep_as_asked() -> None:
    """pydicom reads the spliced chain back with the depth asked (the mutation is real)."""
    import random

    import pydicom
    from pydicom.filereader import read_dataset

    chain = fuzz.nested_chain(40, random.Random(1))
    raw = fuzz.seq_open(fuzz.CONTENT_SEQUENCE) + chain + fuzz.SEQ_CLOSE
    ds = read_dataset(io.BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    depth, item = 0, ds.ContentSequence[0]
    while "ContentSequence" in item:
        depth, item = depth + 1, item.ContentSequence[0]
    assert depth == 40
    assert item.ValueType == "NUM"
    assert float(item.MeasuredValueSequence[0].NumericValue) == 12.5
    assert isinstance(pydicom.dcmread(io.BytesIO(fuzz.Maker(SEED).make(0).data), force=True), pydicom.Dataset)


def test_deflate_bomb_inflates_far_beyond_its_size() -> None:
    import zlib

    body, inflated = fuzz.bomb_body("zeros_1g", fuzz.CACHE_DIR)
    assert len(body) <= 1.1 * 2**20
    assert inflated >= 2**30 - 4096
    head = zlib.decompressobj(-15).decompress(body, 2**20)
    assert head == bytes(2**20)


def test_runner_counts_each_bad_outcome() -> None:
    """The judge sees what the campaign claims to count (so 0 means none happened)."""
    runner = fuzz.Runner()
    record = {"error": None, "events": [{"dlp": math.inf}]}
    verdict = runner.judge(record, None)
    assert verdict["outcome"] == "nonfinite"
    assert "/events/0/dlp = inf" in verdict["detail"]
    assert runner.judge({"schema_version": 12}, None)["outcome"] == "schema_invalid"

    def boom(data: bytes, source: str) -> Any:
        raise LookupError("unknown encoding: ISO 2022 IR 999")

    runner.extract_bytes = boom
    result = runner.run(b"", "x.dcm")
    assert (result["outcome"], result["type"], result["stage"]) == ("exception", "LookupError", "extract")
    assert "boom" in result["traceback"]

    def hog(data: bytes, source: str) -> Any:
        return bytearray(2 * fuzz.MEMORY_LIMIT)

    runner.extract_bytes = hog
    assert runner.run(b"", "x.dcm")["outcome"] == "memory"
    fresh = fuzz.Runner()
    good = (ROOT / "sample_dicom" / "ct_siemens_single_source.dcm").read_bytes()
    assert fresh.run(good, "ct.dcm")["outcome"] == "ok"
    name = fresh.run(good, "ct.dcm", expect_name="Nobody^Else")
    assert name["outcome"] == "misdecoded"
    assert fresh.run(good, "ct.dcm", expect_problem="Specific Character Set")["outcome"] == "unreported"
    from dosereg.extract import error_record

    caught = error_record("malformed", "x.dcm: the header cannot be read: MemoryError: ", source_file="x.dcm")
    assert fresh.judge(fresh.evaluated_dict(caught, fresh.rules, None), None)["outcome"] == "memory"
