#!/usr/bin/env python3
"""Benchmark ``dosereg import`` of many distinct dose objects, next to ``dosereg extract`` and a plain copy.

Issue 9. Builds N distinct dose objects (default 20,000) from the project's own
``sample_dicom/`` CT objects (those whose expected record has no error): each copy gets
new Study, Series and SOP Instance UIDs and new Irradiation Event UIDs (113769), so every
copy is a new study with new events. Then, in the same run and on the same files:

(a) ``dosereg import DIR`` in a subprocess, on an empty data directory: objects/s overall
    and per segment (``--segment``, default 5,000; read from the catalog's ``received``
    ledger while the import runs, so a run that slows down shows it), CPU per object (the
    import and its workers, user + system), peak RSS (the largest process, and the sum of
    the process tree sampled while it runs), catalog bytes per object (and per table when
    SQLite has the ``dbstat`` table);
(b) ``dosereg extract`` of the same files in a subprocess (one process, JSON Lines to a pipe);
(c) a plain copy of the same files, one ``fsync`` per file (what the spool's durability costs
    at least).

Prints the figures and the ratios. Target (issue 9): at least 280 objects/s for the import,
flat over the run (a ten-year archive of a million objects in under an hour on two cores).

    python bench/import.py [--objects 20000] [--segment 5000] [--jobs N] [--keep DIR] [--skip-extract]

Everything is written to a temporary folder (``--keep DIR``: there instead, and kept; a kept
folder's objects are used again by the next run with the same ``--objects``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_dicom"
TARGET_RATE = 280.0
IRRADIATION_EVENT_UID = "113769"
DEFLATED = "1.2.840.10008.1.2.1.99"
POLL_S = 0.25


# -- the objects -----------------------------------------------------------------------------------
def templates() -> list[Path]:
    """The sample CT dose objects that extract cleanly (no junk, truncated or refused files)."""
    out = []
    for path in sorted(SAMPLES.glob("*.dcm")):
        expected = SAMPLES / "expected" / f"{path.stem}.json"
        if expected.exists() and not json.loads(expected.read_text())["record"].get("error"):
            out.append(path)
    if not out:
        sys.exit(f"no usable dose objects in {SAMPLES}")
    return out


def _uids_to_renew(ds: object) -> list[str]:
    """Study, Series, SOP Instance UIDs and every Irradiation Event UID (113769) of the content tree."""
    uids = [str(getattr(ds, k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            if getattr(ds, k, None)]
    stack = list(getattr(ds, "ContentSequence", []))
    while stack:
        item = stack.pop()
        names = getattr(item, "ConceptNameCodeSequence", None)
        if names and getattr(names[0], "CodeValue", None) == IRRADIATION_EVENT_UID and getattr(item, "UID", None):
            uids.append(str(item.UID))
        stack.extend(getattr(item, "ContentSequence", []))
    return sorted(set(uids), key=len, reverse=True)


class Template:
    """One sample object and the UIDs each copy renews (replaced in the encoded bytes, same length)."""

    def __init__(self, path: Path, index: int) -> None:
        import pydicom

        self.path = path
        self.index = index
        self.raw = path.read_bytes()
        ds = pydicom.dcmread(path)
        self.deflated = str(ds.file_meta.TransferSyntaxUID) == DEFLATED
        self.uids = _uids_to_renew(ds)
        self.pattern = re.compile(
            rb"(" + b"|".join(re.escape(u.encode()) for u in self.uids) + rb")(?![0-9.])")
        self.dataset = ds if self.deflated else None

    def new_uid(self, old: str, copy: int) -> str:
        """A UID as long as ``old``, unique per (template, copy, UID): ``2.25.1<digits>``."""
        k = self.uids.index(old)
        body = f"{copy:09d}{self.index:03d}{k:04d}"
        width = len(old) - len("2.25.1")
        if width < len(body):
            raise SystemExit(f"{self.path.name}: UID {old} is too short to renew in place")
        return "2.25.1" + body.rjust(width, "0")

    def copy(self, n: int) -> bytes:
        mapping = {u.encode(): self.new_uid(u, n).encode() for u in self.uids}
        if not self.deflated:
            return self.pattern.sub(lambda m: mapping[m.group(1)], self.raw)
        # deflated: the UIDs are not in the bytes as such; re-encode through pydicom
        from io import BytesIO

        import pydicom

        ds = pydicom.dcmread(BytesIO(self.raw))
        text = {u: self.new_uid(u, n) for u in self.uids}
        ds.StudyInstanceUID = text[str(ds.StudyInstanceUID)]
        ds.SeriesInstanceUID = text[str(ds.SeriesInstanceUID)]
        ds.SOPInstanceUID = text[str(ds.SOPInstanceUID)]
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        stack = list(getattr(ds, "ContentSequence", []))
        while stack:
            item = stack.pop()
            if getattr(item, "UID", None) and str(item.UID) in text:
                item.UID = text[str(item.UID)]
            stack.extend(getattr(item, "ContentSequence", []))
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


def make_objects(out: Path, n: int) -> list[Path]:
    """``n`` distinct objects in ``out`` (one sub-folder per 1,000), in the order they are imported."""
    tpl = [Template(p, i) for i, p in enumerate(templates())]
    files = []
    for i in range(n):
        t = tpl[i % len(tpl)]
        folder = out / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:07d}-{t.path.stem}.dcm"
        path.write_bytes(t.copy(i // len(tpl)))
        files.append(path)
    return files


# -- (a) dosereg import ----------------------------------------------------------------------------
@dataclass
class ImportRun:
    seconds: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    tree_rss_mb: float = 0.0
    # (seconds since start, objects done, CPU seconds of the process tree so far)
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    catalog_bytes: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    summary: str = ""


_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> tuple[int, float]:
    """(RSS in KiB, CPU seconds used) of ``pid`` and its descendants alive now (from /proc)."""
    rss = 0
    cpu = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            # utime, stime, and cutime, cstime (the children it has reaped: pool workers that ended)
            cpu += sum(int(v) for v in fields[11:15]) / _TICK
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return rss, cpu


def _done(catalog: Path) -> int | None:
    if not catalog.exists():
        return None
    try:
        conn = sqlite3.connect(f"{catalog.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM received WHERE state = 'done'").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def run_import(src: Path, data: Path, jobs: int | None) -> ImportRun:
    run = ImportRun()
    catalog = data / "catalog.sqlite"
    cmd = [sys.executable, "-m", "dosereg.cli", "import", "--data-dir", str(data), str(src)]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    env = {k: v for k, v in os.environ.items() if k != "DOSEREG_CONFIG"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(POLL_S):
            n = _done(catalog)
            rss, cpu = _tree(proc.pid)
            if n is not None:
                run.samples.append((time.perf_counter() - t0, n, cpu))
            run.tree_rss_mb = max(run.tree_rss_mb, rss / 1024)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    run.seconds = time.perf_counter() - t0
    stop.set()
    watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"dosereg import failed ({proc.returncode}):\n{out.decode()}\n{err.decode()[-3000:]}")
    run.summary = out.decode().strip()
    run.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run.max_rss_mb = after.ru_maxrss / 1024
    run.samples.append((run.seconds, _done(catalog) or 0, run.cpu_s))
    run.catalog_bytes = sum(p.stat().st_size for p in data.glob("catalog.sqlite*"))
    run.tables = table_bytes(catalog)
    return run


def table_bytes(catalog: Path) -> dict[str, int]:
    """Bytes per table (its indexes counted with it), from SQLite's dbstat table when it has one."""
    conn = sqlite3.connect(f"{catalog.resolve().as_uri()}?mode=ro", uri=True)
    try:
        owner = {name: tbl for name, tbl in conn.execute("SELECT name, tbl_name FROM sqlite_master")}
        sizes: dict[str, int] = {}
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            sizes[table] = sizes.get(table, 0) + int(size)
        return sizes
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


@dataclass
class Segment:
    first: int
    last: int
    rate: float  # objects/s
    cpu_ms: float  # CPU of the process tree per object (sampled: the last segment includes the exit)


def segments(samples: list[tuple[float, int, float]], size: int, total: int) -> list[Segment]:
    """Rate and CPU per ``size`` objects, the moment each boundary was passed interpolated."""

    def at(n: int) -> tuple[float, float]:
        prev = (0.0, 0, 0.0)
        for t, k, c in samples:
            if k >= n:
                t0, k0, c0 = prev
                f = (n - k0) / (k - k0) if k > k0 else 1.0
                return t0 + (t - t0) * f, c0 + (c - c0) * f
            prev = (t, k, c)
        return samples[-1][0], samples[-1][2]

    out = []
    start = 0
    # the first segment starts when the first objects are done (not at the process start)
    first = next(((t, k, c) for t, k, c in samples if k > 0), (0.0, 0, 0.0))
    while start < total:
        end = min(total, start + size)
        if start == 0:
            (t_start, done_start, c_start), (t_end, c_end) = first, at(end)
        else:
            (t_start, c_start), done_start, (t_end, c_end) = at(start), start, at(end)
        n = end - done_start
        rate = n / (t_end - t_start) if t_end > t_start else float("nan")
        out.append(Segment(start + 1, end, rate, (c_end - c_start) / n * 1000))
        start = end
    return out


# -- (b) dosereg extract, (c) plain copy -------------------------------------------------------------
def run_extract(files: list[Path]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "DOSEREG_CONFIG"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dosereg.cli", "extract", *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    assert proc.stdout is not None
    n = sum(1 for _ in proc.stdout)
    proc.wait()
    seconds = time.perf_counter() - t0
    if n != len(files):
        raise SystemExit(f"dosereg extract printed {n} records for {len(files)} files")
    return seconds


def run_copy(files: list[Path], out: Path) -> float:
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for i, src in enumerate(files):
        data = src.read_bytes()
        fd = os.open(out / f"{i:07d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


# -- main ------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=20_000, help="distinct objects to build (default 20,000)")
    ap.add_argument("--segment", type=int, default=5_000, help="objects per segment of the import's rate")
    ap.add_argument("--jobs", type=int, default=None, help="dosereg import --jobs (default: all cores)")
    ap.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it (default: a temporary folder)")
    ap.add_argument("--skip-extract", action="store_true", help="measure the import and the copy only")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="dosereg-bench-import-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        for old in ("data", "copy"):  # a kept folder's earlier results
            shutil.rmtree(work / old, ignore_errors=True)
        files = sorted((work / "in").glob("*/*.dcm"))
        if len(files) != args.objects:  # a kept folder's objects are used again when there are as many
            shutil.rmtree(work / "in", ignore_errors=True)
            files = make_objects(work / "in", args.objects)
        size = sum(p.stat().st_size for p in files)
        print(f"{len(files)} distinct objects from {len(templates())} samples of {SAMPLES.name}/, "
              f"{size / len(files) / 1024:.1f} KiB each on average (built in {time.perf_counter() - t0:.0f} s); "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

        imp = run_import(work / "in", work / "data", args.jobs)
        n = len(files)
        rate = n / imp.seconds
        print(f"\n(a) dosereg import: {imp.summary}")
        print(f"    {rate:.1f} objects/s overall ({imp.seconds:.1f} s), CPU {imp.cpu_s / n * 1000:.2f} ms/object "
              f"(import + workers), peak RSS {imp.max_rss_mb:.0f} MB largest process, "
              f"{imp.tree_rss_mb:.0f} MB process tree")
        segs = segments(imp.samples, args.segment, n)
        for seg in segs:
            print(f"    objects {seg.first:>7,}-{seg.last:>7,}: {seg.rate:8.1f} objects/s, "
                  f"CPU {seg.cpu_ms:5.2f} ms/object")
        print(f"    catalog {imp.catalog_bytes / n:,.0f} bytes/object ({imp.catalog_bytes / 1e6:.1f} MB)")
        if imp.tables:
            parts = ", ".join(f"{t} {b / n:,.0f}" for t, b in sorted(imp.tables.items(), key=lambda kv: -kv[1]))
            print(f"    per table (with its indexes), bytes/object: {parts}")

        ext_rate = None
        if not args.skip_extract:
            ext_s = run_extract(files)
            ext_rate = n / ext_s
            print(f"\n(b) dosereg extract: {ext_rate:.1f} objects/s ({ext_s:.1f} s, one process)")
        copy_s = run_copy(files, work / "copy")
        copy_rate = n / copy_s
        print(f"\n(c) plain copy, fsync per file: {copy_rate:.1f} objects/s ({copy_s:.1f} s)")

        print()
        if ext_rate is not None:
            print(f"import / extract: {rate / ext_rate:.2f}")
        print(f"import / copy:    {rate / copy_rate:.2f}")
        rates = [seg.rate for seg in segs]
        flat = min(rates) / max(rates) if rates and max(rates) > 0 else float("nan")
        print(f"slowest / fastest segment: {flat:.2f}")
        print(f"target >= {TARGET_RATE:.0f} objects/s: {'met' if rate >= TARGET_RATE else 'NOT met'}; "
              f"a million objects would take {1e6 / rate / 3600:.2f} h")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
