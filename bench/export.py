#!/usr/bin/env python3
"""Benchmark ``dosereg export`` on a large catalog (issue 5: 100,000 studies, < 60 s, < 1 GB).

Builds a catalog of N studies in a temporary data directory with ``Catalog.add_objects``,
runs the real ``dosereg export`` in a subprocess and reports its wall time, CPU time and
peak RSS (the child's ``ru_maxrss``); then a second export, which has nothing new, is timed.

The studies (``--studies-from``):

* ``vendor`` (default): the project's own ``sample_dicom/`` dose objects (or the folder given
  with ``--objects``) are extracted once, and their records cloned with new UIDs, accession
  numbers and patient identifiers, so the events, sources, Dose Check and problems look like
  the vendors' (Siemens dual source, GE enhanced SR, Toshiba Dose Check, Philips screens...);
* ``synthetic``: ``tests/synthetic.py``'s studies (a localizer, a bolus-tracking run in every
  third study and the scan; smaller than a vendor's, so they understate memory).

``--writer inline|fork|both`` runs the export with its registry files and report written in
this process or in a second one (and ``both``: each, on the same catalog), to see whether the
second process pays. The CLI reads the catalog with its per-study version keys
(``Catalog.study_versions``); ``--versions`` runs both exports a second time through the
benchmark's own source (the same versions, or for a catalog without them the SHA-256 of each
study's stored JSON text, read without decoding it).

    python bench/export.py                       # 100,000 vendor-like studies
    python bench/export.py --studies 5000        # quick run
    python bench/export.py --studies 20000 --writer both --versions
    python bench/export.py --studies-from synthetic
    python bench/export.py --keep DIR            # build/keep the data directory in DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# the synthetic study records are test data (tests/synthetic.py), not part of the package
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_S = 60.0
TARGET_RSS_MB = 1024.0
SAMPLES = ROOT / "sample_dicom"
CLONE_ROOT = "2.25"  # cloned UIDs: 2.25.<decimal of a hash>, at most 44 characters
EXPORT_OUTPUTS = ("registry", "flags", "reports", "export-state.sqlite", "export-state.sqlite-wal",
                  "export-state.sqlite-shm", "export-state.lock")


# -- the studies ---------------------------------------------------------------------------

def vendor_templates(folder: Path) -> list[Any]:
    """The usable CT dose records of ``folder`` (each extracted once)."""
    from dosereg.extract import extract_file

    out = []
    for path in sorted(folder.glob("*.dcm")):
        record = extract_file(str(path))
        if record.error is None and record.study_instance_uid and record.dose_objects:
            out.append(record.to_dict())
    if not out:
        sys.exit(f"no usable CT dose object in {folder}")
    return out


def _uid(original: str, i: int) -> str:
    digest = hashlib.sha256(f"{original}/{i}".encode()).digest()
    return f"{CLONE_ROOT}.{int.from_bytes(digest[:16], 'big')}"


def clone(template: dict[str, Any], i: int) -> Any:
    """Study ``i``: the template's record with its own study, object and event UIDs, accession
    number and patient (the scanner and everything measured kept)."""
    from dosereg.extract import StudyRecord

    d = json.loads(json.dumps(template))
    d["study_instance_uid"] = _uid(d["study_instance_uid"], i)
    d["accession_number"] = f"BA{i:010d}"
    patient = d.get("patient") or {}
    if patient.get("id"):
        patient["id"] = f"BP{i:010d}"
    if patient.get("name"):
        patient["name"] = f"Bench^Patient{i:07d}"
    for ref in d.get("dose_objects") or ():
        ref["sop_instance_uid"] = _uid(ref["sop_instance_uid"], i)
    for ev in d.get("events") or ():
        if ev.get("irradiation_event_uid"):
            ev["irradiation_event_uid"] = _uid(ev["irradiation_event_uid"], i)
    return StudyRecord.from_dict(d)


def studies(kind: str, n: int, objects: Path) -> Any:
    if kind == "synthetic":
        from tests.synthetic import synthetic_study

        return lambda i: synthetic_study(i, sex=None if i % 10 == 3 else "auto", qa=(i % 1000 == 4),
                                         rt=(i % 500 == 6))
    templates = vendor_templates(objects)
    print(f"  {len(templates)} vendor-like templates from {objects}", file=sys.stderr)
    return lambda i: clone(templates[i % len(templates)], i)


def build_catalog(data_dir: Path, n: int, make: Any, chunk: int = 5000) -> float:
    from dosereg.conf.config import load_config
    from dosereg.ingest import open_catalog

    cfg = load_config(None, data_dir=str(data_dir))
    t0 = time.perf_counter()
    catalog = open_catalog(cfg)
    try:
        for start in range(0, n, chunk):
            catalog.add_objects(make(i) for i in range(start, min(n, start + chunk)))
            print(f"\r  catalog: {min(n, start + chunk):,} / {n:,} studies", end="", file=sys.stderr, flush=True)
    finally:
        catalog.close()
    print(file=sys.stderr)
    return time.perf_counter() - t0


# -- one export in a child process ---------------------------------------------------------

# The child: `dosereg export` as the CLI runs it, with the writer forced inline (no fork start
# method, so the export writes everything in its own process) or forked (the default), and,
# with "versions", a source that has version keys.
CHILD = r"""
import atexit, hashlib, resource, sqlite3, sys
# this process's and its second process's peak RSS (KiB) and CPU seconds, for the parent to read
def _usage():
    me, second = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print("bench-usage", me.ru_maxrss, second.ru_maxrss, me.ru_utime + me.ru_stime,
          second.ru_utime + second.ru_stime, file=sys.stderr)
atexit.register(_usage)
data_dir, writer, versions = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if writer == "inline":
    import multiprocessing
    multiprocessing.get_all_start_methods = lambda: ["spawn"]
if not versions:
    from dosereg import cli
    sys.exit(cli.main(["export", "--data-dir", data_dir]))
from dosereg.conf.config import load_config
from dosereg.ingest import open_catalog
from dosereg.registry_export import export_batch
cfg = load_config(None, data_dir=data_dir)
catalog = open_catalog(cfg, readonly=True)

class Source:
    def records(self):
        return catalog.iter_studies()
    def versions(self):
        if hasattr(catalog, "study_versions"):
            yield from catalog.study_versions()
            return
        db = sqlite3.connect(f"file:{cfg.data_dir / 'catalog.sqlite'}?mode=ro", uri=True)
        try:
            for uid, text in db.execute("SELECT study_instance_uid, record_json FROM studies "
                                        "ORDER BY study_instance_uid"):
                yield uid, hashlib.sha256(text.encode()).hexdigest()[:32]
        finally:
            db.close()
try:
    print(export_batch(cfg, Source()).summary())
finally:
    catalog.close()
"""


def run_export(data_dir: Path, writer: str = "default",
               versions: bool = False) -> tuple[float, float, str, tuple[float, float]]:
    """(seconds, peak RSS MB of the export process or its second process, its stdout, CPU seconds
    of the export process and of its second process, if any)."""
    env = dict(os.environ)
    env.setdefault("DOSEREG_SECRET", "bench-secret-0123456789abcdef0123456789")
    env.pop("DOSEREG_CONFIG", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data_dir), writer, "1" if versions else "0"],
                          capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dosereg export failed ({proc.returncode}): {proc.stderr.strip()}")
    # as the child measured them itself: peak RSS (KiB on Linux) of the export process and of the
    # second process it forks, whichever is higher, and the CPU time of each
    usage = [line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("bench-usage ")][-1]
    peak_kib = max(int(usage[0]), int(usage[1]))
    return elapsed, peak_kib / 1024.0, proc.stdout, (float(usage[2]), float(usage[3]))


def clear_exports(data_dir: Path) -> None:
    """Remove what exports wrote, so the next export is a first one again on the same catalog."""
    for name in EXPORT_OUTPUTS:
        p = data_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def measure(data_dir: Path, n: int, writer: str, versions: bool) -> bool:
    """A first export and one with nothing new after it, from the same source."""
    elapsed, rss_mb, out, (cpu_main, cpu_second) = run_export(data_dir, writer, versions)
    first_line = out.splitlines()[0] if out else ""
    again_s, _, again_out, again_cpu = run_export(data_dir, writer, versions)
    projected = elapsed * 100_000 / n  # export time grows linearly with the studies
    ok_time = projected < TARGET_S
    source = "the bench's own versioned source" if versions else "the CLI: the catalog with its study versions"
    print(f"export of {n:,} studies (writer: {writer}; source: {source})")
    print(f"  {first_line}")
    print(f"  export time      {elapsed:8.1f} s   (target < {TARGET_S:.0f} s for 100,000 studies; "
          f"{n / elapsed:,.0f} studies/s) {'OK' if ok_time else 'MISSED'}")
    if n != 100_000:
        print(f"  projected for 100,000 studies: {projected:.1f} s")
    print(f"  CPU time         {cpu_main + cpu_second:8.1f} s   (export process {cpu_main:.1f} s, "
          f"second process {cpu_second:.1f} s)")
    print(f"  peak RSS         {rss_mb:8.0f} MB  (target < {TARGET_RSS_MB:.0f} MB) "
          f"{'OK' if rss_mb < TARGET_RSS_MB else 'MISSED'}")
    print(f"  nothing new      {again_s:8.1f} s   CPU {sum(again_cpu):.1f} s "
          f"({again_out.strip().splitlines()[0][:50]}...)")
    return ok_time and rss_mb < TARGET_RSS_MB


def breakdown(data_dir: Path) -> tuple[float, float]:
    """(seconds to read every study from the catalog, seconds to read and evaluate them), in-process."""
    from dosereg.conf.config import load_config
    from dosereg.ingest import open_catalog
    from dosereg.registry_export import evaluated_dict, rules_from_config

    cfg = load_config(None, data_dir=str(data_dir))
    rules = rules_from_config(cfg)
    catalog = open_catalog(cfg, readonly=True)
    try:
        t0 = time.perf_counter()
        for _ in catalog.iter_studies():
            pass
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for record in catalog.iter_studies():
            evaluated_dict(record, rules)
        return read_s, time.perf_counter() - t0
    finally:
        catalog.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=100_000, help="number of studies (default 100000)")
    ap.add_argument("--studies-from", choices=("vendor", "synthetic"), default="vendor",
                    help="vendor-like clones of real dose objects (default) or tests/synthetic.py's studies")
    ap.add_argument("--objects", type=Path, default=SAMPLES,
                    help=f"folder of CT dose objects the vendor-like studies are cloned from (default {SAMPLES})")
    ap.add_argument("--writer", choices=("default", "inline", "fork", "both"), default="default",
                    help="registry files and report written in this process, in a second one, or each in turn")
    ap.add_argument("--versions", action="store_true",
                    help="also time the nothing-new export from a source with per-study version keys")
    ap.add_argument("--keep", metavar="DIR", help="use (and keep) DIR as the data directory")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip timing the catalog read and the rules evaluation on their own")
    args = ap.parse_args()

    tmp = None
    if args.keep:
        data_dir = Path(args.keep)
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="dosereg-bench-export-")
        data_dir = Path(tmp) / "data"
    try:
        print(f"building a catalog of {args.studies:,} {args.studies_from} studies in {data_dir} ...",
              file=sys.stderr)
        build_s = build_catalog(data_dir, args.studies, studies(args.studies_from, args.studies, args.objects))
        print(f"catalog built in {build_s:.1f} s", file=sys.stderr)
        ok = True
        for writer in (("inline", "fork") if args.writer == "both" else (args.writer,)):
            for versions in ((False, True) if args.versions else (False,)):
                clear_exports(data_dir)
                ok = measure(data_dir, args.studies, writer, versions) and ok
        if not args.no_breakdown:
            read_s, evaluate_s = breakdown(data_dir)
            print(f"  of the export:   {read_s:8.1f} s   reading the catalog (iter_studies)")
            print(f"                   {evaluate_s - read_s:8.1f} s   evaluating with the rules (evaluated_dict)")
        return 0 if ok else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
