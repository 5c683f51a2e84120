#!/usr/bin/env python3
"""Benchmark ``dosereg export`` on a large catalog (issue 5: 100,000 studies, < 60 s, < 1 GB).

Builds a catalog of N synthetic studies (``dosereg.registry_export.synthetic``: a localizer,
a bolus-tracking run in every third study and the diagnostic scan; one dose object each)
in a temporary data directory with ``Catalog.add_objects``, then runs the real
``dosereg export`` command in a subprocess and reports its wall time and peak RSS (the
child's ``ru_maxrss``). A second export (nothing new) is timed too.

    python bench/export.py                 # 100,000 studies
    python bench/export.py --studies 5000  # quick run
    python bench/export.py --keep DIR      # build/keep the data directory in DIR
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the synthetic study records are test data (tests/synthetic.py), not part of the package
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_S = 60.0
TARGET_RSS_MB = 1024.0


def build_catalog(data_dir: Path, n: int, chunk: int = 5000) -> float:
    from dosereg.conf.config import load_config
    from dosereg.ingest import open_catalog
    from tests.synthetic import synthetic_study

    cfg = load_config(None, data_dir=str(data_dir))
    t0 = time.perf_counter()
    catalog = open_catalog(cfg)
    try:
        for start in range(0, n, chunk):
            catalog.add_objects(
                synthetic_study(i, sex=None if i % 10 == 3 else "auto", qa=(i % 1000 == 4), rt=(i % 500 == 6))
                for i in range(start, min(n, start + chunk))
            )
            print(f"\r  catalog: {min(n, start + chunk):,} / {n:,} studies", end="", file=sys.stderr, flush=True)
    finally:
        catalog.close()
    print(file=sys.stderr)
    return time.perf_counter() - t0


def run_export(data_dir: Path) -> tuple[float, float, str, float]:
    """(seconds, peak RSS MB of the export process, its stdout, CPU seconds of the export and its
    second process)."""
    env = dict(os.environ)
    env.setdefault("DOSEREG_SECRET", "bench-secret-0123456789abcdef0123456789")
    env.pop("DOSEREG_CONFIG", None)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dosereg.cli", "export", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
    if proc.returncode != 0:
        raise SystemExit(f"dosereg export failed ({proc.returncode}): {proc.stderr.strip()}")
    # ru_maxrss of children is the largest child so far (KiB on Linux): the export process or
    # the second process it forks for a large batch, whichever peaked higher
    return elapsed, max(after, before) / 1024.0, proc.stdout, cpu


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
    ap.add_argument("--studies", type=int, default=100_000, help="number of synthetic studies (default 100000)")
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
        print(f"building a catalog of {args.studies:,} synthetic studies in {data_dir} ...", file=sys.stderr)
        build_s = build_catalog(data_dir, args.studies)
        print(f"catalog built in {build_s:.1f} s", file=sys.stderr)

        elapsed, rss_mb, out, cpu_s = run_export(data_dir)
        first_line = out.splitlines()[0] if out else ""
        again_s, _, again_out, _ = run_export(data_dir)

        projected = elapsed * 100_000 / args.studies  # export time grows linearly with the studies
        ok_time = projected < TARGET_S
        print(f"export of {args.studies:,} studies")
        print(f"  {first_line}")
        print(f"  export time      {elapsed:8.1f} s   (target < {TARGET_S:.0f} s for 100,000 studies; "
              f"{args.studies / elapsed:,.0f} studies/s) {'OK' if ok_time else 'MISSED'}")
        if args.studies != 100_000:
            print(f"  projected for 100,000 studies: {projected:.1f} s")
        print(f"  CPU time         {cpu_s:8.1f} s   (export process and its second process together)")
        print(f"  peak RSS         {rss_mb:8.0f} MB  (target < {TARGET_RSS_MB:.0f} MB) "
              f"{'OK' if rss_mb < TARGET_RSS_MB else 'MISSED'}")
        print(f"  second export    {again_s:8.1f} s   ({again_out.strip().splitlines()[0][:60]}...)")
        if not args.no_breakdown:
            read_s, evaluate_s = breakdown(data_dir)
            print(f"  of the export:   {read_s:8.1f} s   reading the catalog (iter_studies)")
            print(f"                   {evaluate_s - read_s:8.1f} s   evaluating with the rules (evaluated_dict)")
            print(f"                   {elapsed - evaluate_s:8.1f} s   the rest: start-up, de-identification, "
                  f"Parquet/JSON/CSV writing, report (a second process works on these in parallel, "
                  f"so this is what is not hidden by it)")
        return 0 if ok_time and rss_mb < TARGET_RSS_MB else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
