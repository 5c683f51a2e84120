#!/usr/bin/env python3
"""Benchmark: dose objects per second of ``dosereg extract`` versus a naive pydicom walk.

Issue 3 item 8. Both sides read the same list of files (the nine CT objects of
``../shared/corpus`` repeated to several hundred, or the project's own ``sample_dicom``
files when the corpus is absent), in the same run, pinned to one CPU core:

* **dosereg extract**: whole runs of the real CLI in a subprocess, one call over all the
  files, start-up included, stdout (JSON Lines) read and counted;
* **naive pydicom walk**: in this process, ``pydicom.dcmread`` of each file, then a recursive
  visit of every SR content item reading its Value Type, Concept Name Code Sequence and value
  (for a Philips dose screen: every Exposure Dose Sequence item's dose attributes).

Prints both rates and their ratio (target: dosereg at least 2x the naive walk).

    python bench/extract.py [--files 400] [--rounds 3] [--corpus DIR] [--require-target]
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400, help="files per run (the set repeated; default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender, best kept (default 3)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help=f"vendor corpus folder (default {CORPUS})")
    parser.add_argument("--require-target", action="store_true",
                        help=f"exit 1 when dosereg is below {TARGET_RATIO:g}x the naive walk")
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
    return 1 if args.require_target and ratio < TARGET_RATIO else 0


if __name__ == "__main__":
    raise SystemExit(main())
