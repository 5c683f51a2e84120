#!/usr/bin/env python3
"""Benchmark ``dosereg report`` (the completeness report with the dose review, issue 13) on a large
catalog: 100,000 studies written in under 30 s and 1 GB.

Builds a catalog of N studies in a temporary data directory (``bench/export.py``'s builder:
``--studies-from synthetic`` (default) or ``vendor``), runs the real ``dosereg report`` in a
subprocess and prints its wall time and peak RSS (the child's ``ru_maxrss``), and the size of the
page and the CSV.

    python bench/report.py                  # 100,000 synthetic studies
    python bench/report.py --studies 5000   # quick run
    python bench/report.py --keep DIR       # build/keep the data directory in DIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import SAMPLES, build_catalog, studies  # noqa: E402  (bench/export.py)

CHILD = r"""
import atexit, resource, sys
atexit.register(lambda: print("bench-usage", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
from dosereg import cli
sys.exit(cli.main(["report", "--data-dir", sys.argv[1]]))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--studies-from", choices=("vendor", "synthetic"), default="synthetic")
    ap.add_argument("--keep", metavar="DIR", help="use (and keep) DIR as the data directory")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="dosereg-bench-report-")
    data_dir = Path(args.keep or tmp.name)  # type: ignore[union-attr]
    try:
        if not (data_dir / "catalog.sqlite").exists():
            build = build_catalog(data_dir, args.studies, studies(args.studies_from, args.studies, SAMPLES))
            print(f"  catalog of {args.studies:,} studies built in {build:.1f} s")
        env = {k: v for k, v in os.environ.items() if k != "DOSEREG_CONFIG"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(data_dir)], capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"dosereg report failed ({proc.returncode}): {proc.stderr.strip()}")
        usage = [line.split() for line in proc.stderr.splitlines() if line.startswith("bench-usage ")][-1]
        peak_mb = int(usage[1]) / 1024.0
        reports = sorted((data_dir / "reports").glob("completeness-*"))
        sizes = ", ".join(f"{p.suffix[1:]} {p.stat().st_size / 1e6:.1f} MB" for p in reports[-2:])
        print(f"  report time   {elapsed:6.1f} s   (target < 30 s) {'OK' if elapsed < 30 else 'MISSED'}")
        print(f"  peak RSS      {peak_mb:6.0f} MB  (target < 1024 MB) {'OK' if peak_mb < 1024 else 'MISSED'}")
        print(f"  written       {sizes}")
        return 0 if elapsed < 30 and peak_mb < 1024 else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
