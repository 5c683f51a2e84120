#!/usr/bin/env python3
"""Benchmark: dose objects per second of ``dosereg extract`` versus a naive pydicom walk.

Issue 3 item 8. Both sides read the same list of files (the nine CT objects of
the vendor corpus beside the project, when a developer has it, repeated to several hundred, or the project's own ``sample_dicom``
files when the corpus is absent), in the same run, pinned to one CPU core:

* **dosereg extract**: whole runs of the real CLI in a subprocess, one call over all the
  files, start-up included, stdout (JSON Lines) read and counted;
* **naive pydicom walk**: in this process, ``pydicom.dcmread`` of each file, then a recursive
  visit of every SR content item reading its Value Type, Concept Name Code Sequence and value
  (for a Philips dose screen: every Exposure Dose Sequence item's dose attributes).

Prints both rates and their ratio (target: dosereg at least 2x the naive walk).

Then one long report (issue 8): a 10,000-event RDSR built in memory from the events of a
sample (``--events``), extracted in a subprocess that reports its time and peak RSS (target:
under 2 s and 300 MB), next to the naive pydicom walk of the same file in another.

    python bench/extract.py [--files 400] [--rounds 3] [--corpus DIR] [--events 10000] [--require-target]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
SAMPLES = ROOT / "sample_dicom"
TARGET_RATIO = 2.0
LONG_SAMPLE = SAMPLES / "ct_pixelmed_like.dcm"  # two events of about 2.8 KB each (a PixelMed-style report)
LONG_TARGET_S = 2.0
LONG_TARGET_MB = 300.0


def corpus_files(corpus: Path = CORPUS) -> tuple[list[Path], str]:
    """The CT dose objects to measure on, and where they come from."""
    if (corpus / "README.md").exists():
        files = sorted(corpus.glob("*.dcm"))
        if files:
            return files, f"{len(files)} CT dose objects of {corpus}"
    print(f"note: vendor corpus not found at {corpus}; skipping it and using {SAMPLES} instead", file=sys.stderr)
    files = []
    for path in sorted(SAMPLES.glob("*.dcm")):
        expected = SAMPLES / "expected" / f"{path.stem}.json"
        if expected.exists() and not json.loads(expected.read_text())["record"].get("error"):
            files.append(path)  # only objects that extract cleanly (no junk, truncated or refused files)
    if not files:
        sys.exit(f"no dose objects found in {CORPUS} or {SAMPLES}")
    return files, f"{len(files)} synthetic CT dose objects of {SAMPLES}"


def repeated(files: Sequence[Path], n: int) -> list[Path]:
    return [files[i % len(files)] for i in range(max(n, len(files)))]


def pin_to_one_core() -> int | None:
    """Pin this process (and its children) to one CPU; returns the core, or None if unsupported."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


# ------------------------------------------------------------------------------------------
# The two contenders
# ------------------------------------------------------------------------------------------


def run_dosereg(files: Sequence[Path]) -> int:
    """One whole ``dosereg extract`` run over ``files``; returns the number of records printed."""
    env = dict(os.environ)
    env.pop("DOSEREG_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "dosereg.cli", "extract", *map(str, files)],
                          capture_output=True, env=env, check=False)
    if proc.returncode not in (0, 1):
        sys.exit(f"dosereg extract failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    errors = sum(1 for line in lines if json.loads(line).get("error"))
    if len(lines) != len(files) or errors:
        sys.exit(f"dosereg extract printed {len(lines)} records for {len(files)} files, {errors} with errors")
    return len(lines)


_VALUE_ATTRIBUTE = {
    "TEXT": "TextValue", "UIDREF": "UID", "DATETIME": "DateTime", "DATE": "Date", "TIME": "Time",
    "PNAME": "PersonName",
}


def _visit(items: Any, sink: list[Any]) -> None:
    for item in items:
        vt = item.ValueType
        name = item.get("ConceptNameCodeSequence")
        if name:
            sink.append((name[0].CodeValue, name[0].CodingSchemeDesignator))
        if vt == "NUM":
            mv = item.get("MeasuredValueSequence")
            if mv:
                sink.append(mv[0].get("NumericValue"))
                units = mv[0].get("MeasurementUnitsCodeSequence")
                if units:
                    sink.append(units[0].CodeValue)
        elif vt == "CODE":
            code = item.get("ConceptCodeSequence")
            if code:
                sink.append((code[0].CodeValue, code[0].CodingSchemeDesignator))
        elif vt in _VALUE_ATTRIBUTE:
            sink.append(item.get(_VALUE_ATTRIBUTE[vt]))
        children = item.get("ContentSequence")
        if children:
            _visit(children, sink)


def naive_walk(files: Sequence[Path]) -> int:
    """dcmread each file and visit every content item (or dose-screen item); returns files read."""
    import pydicom

    sink: list[Any] = []
    for path in files:
        ds = pydicom.dcmread(path)
        sink.append((ds.get("StudyInstanceUID"), ds.get("PatientSex"), ds.get("Manufacturer")))
        if "ContentSequence" in ds:
            _visit(ds.ContentSequence, sink)
        for item in ds.get("ExposureDoseSequence") or ():
            sink.extend(item.get(k) for k in ("CTDIvol", "KVP", "ScanLength", "XRayTubeCurrentInuA", "ExposureTime",
                                              "SingleCollimationWidth", "TotalCollimationWidth",
                                              "SpiralPitchFactor", "AcquisitionType", "SeriesDescription"))
        sink.clear()
    return len(files)


def best_rate(fn: Callable[[Sequence[Path]], int], files: Sequence[Path], rounds: int) -> tuple[float, float]:
    """(objects per second, seconds) of the fastest of ``rounds`` runs."""
    best = float("inf")
    count = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        count = fn(files)
        best = min(best, time.perf_counter() - t0)
    return count / best, best


def long_report(n: int, sample: Path = LONG_SAMPLE) -> bytes:
    """An RDSR of ``n`` CT Acquisition events (the sample's, repeated), encoded by pydicom."""
    import copy
    import io

    import pydicom
    from pydicom.sequence import Sequence as DicomSequence

    ds = pydicom.dcmread(sample)
    items = list(ds.ContentSequence)
    acq = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "113819"]
    rest = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue != "113819"]
    ds.ContentSequence = DicomSequence(rest + [copy.deepcopy(acq[k % len(acq)]) for k in range(n)])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {bench!r})
data = open({path!r}, "rb").read()
t0 = time.perf_counter()
if {naive!r}:
    from pathlib import Path
    from extract import naive_walk
    naive_walk([Path({path!r})])
    events = None
else:
    from dosereg.extract import extract_bytes
    rec = extract_bytes(data)
    assert rec.error is None, rec.error
    events = len(rec.events)
print(json.dumps({{"s": time.perf_counter() - t0, "events": events,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure_long(path: Path, naive: bool) -> dict[str, Any]:
    """Time and peak RSS of one extraction (or naive walk) of ``path``, in a fresh subprocess."""
    code = _MEASURE.format(bench=str(Path(__file__).resolve().parent), path=str(path), naive=naive)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"long-report run failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def bench_long(n: int) -> bool:
    """Print the long-report line; True when it meets both targets."""
    import tempfile

    data = long_report(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.dcm"
        path.write_bytes(data)
        ours = min((measure_long(path, naive=False) for _ in range(2)), key=lambda r: r["s"])
        naive = measure_long(path, naive=True)
    if ours["events"] != n:
        sys.exit(f"long report: {ours['events']} events extracted of {n}")
    ok = ours["s"] < LONG_TARGET_S and ours["rss_mb"] < LONG_TARGET_MB
    print(f"long report        : {n} events ({len(data) / 1e6:.1f} MB) in {ours['s']:6.2f} s, "
          f"peak RSS {ours['rss_mb']:5.0f} MB; naive pydicom walk {naive['s']:6.2f} s, {naive['rss_mb']:5.0f} MB "
          f"({'meets' if ok else 'MISSES'} the {LONG_TARGET_S:g} s / {LONG_TARGET_MB:g} MB target)")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400, help="files per run (the set repeated; default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender, best kept (default 3)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help=f"vendor corpus folder (default {CORPUS})")
    parser.add_argument("--events", type=int, default=10000,
                        help="events of the long report (default 10000; 0 skips it)")
    parser.add_argument("--require-target", action="store_true",
                        help=f"exit 1 when dosereg is below {TARGET_RATIO:g}x the naive walk or the long report misses")
    args = parser.parse_args(argv)

    base, origin = corpus_files(args.corpus)
    files = repeated(base, args.files)
    core = pin_to_one_core()
    print(f"input: {origin}, repeated to {len(files)} files per run; best of {args.rounds} rounds; "
          + (f"pinned to CPU {core}" if core is not None else "not pinned (no sched_setaffinity)"))

    naive_walk(base)  # warm the page cache and pydicom's imports for both contenders
    dosereg_rate, dosereg_s = best_rate(run_dosereg, files, args.rounds)
    naive_rate, naive_s = best_rate(naive_walk, files, args.rounds)
    ratio = dosereg_rate / naive_rate

    print(f"dosereg extract    : {len(files)} objects in {dosereg_s:7.3f} s = {dosereg_rate:8.1f} objects/s "
          "(whole CLI run in a subprocess, start-up included)")
    print(f"naive pydicom walk : {len(files)} objects in {naive_s:7.3f} s = {naive_rate:8.1f} objects/s "
          "(in process: dcmread + visit every content item)")
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(f"ratio              : {ratio:.2f}x ({verdict} the {TARGET_RATIO:g}x target)")
    long_ok = bench_long(args.events) if args.events > 0 else True
    return 1 if args.require_target and (ratio < TARGET_RATIO or not long_ok) else 0


if __name__ == "__main__":
    raise SystemExit(main())
