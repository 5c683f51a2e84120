#!/usr/bin/env python3
"""Benchmark the workbench on a large catalog (issue 11: 100,000 studies, p99 < 300 ms per page).

Builds a catalog of N vendor-like studies as ``bench/export.py`` does, builds the study index
(``web-index.sqlite``: the evaluated verdicts as indexed columns) and times that, starts the
real ``dosereg serve`` in a subprocess, logs in, and requests the studies page and
``/api/studies`` with several filters, R times each: p50 and p99 latency and the server's
peak memory (VmHWM). In the same run, the same queries straight on SQLite (the index, no
HTTP, no templates), and once the query as it would be without the index: decode and
evaluate every study of the catalog to filter by registry code.

    python bench/web.py                    # 100,000 studies
    python bench/web.py --studies 5000     # quick run
    python bench/web.py --keep DIR         # build/keep the data directory in DIR
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from export import SAMPLES, build_catalog, studies  # noqa: E402  (bench/export.py's catalog)

PASSWORD = "benchmark password 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def queries(data_dir: Path) -> list[tuple[str, dict[str, str]]]:
    """Filters a physicist uses: none, a code, completeness, a scanner, a protocol, a month,
    a page deep in the list, and two submission states (a common one and a rare one)."""
    db = sqlite3.connect(data_dir / "web-index.sqlite")
    scanner = db.execute("SELECT scanner FROM studies GROUP BY scanner ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
    protocol = db.execute("SELECT protocol FROM protocols GROUP BY protocol ORDER BY COUNT(*) LIMIT 1").fetchone()[0]
    month = db.execute("SELECT substr(study_date, 1, 7) FROM studies GROUP BY 1 ORDER BY COUNT(*) DESC").fetchone()[0]
    db.close()
    return [("all", {}), ("G9326", {"registry_code": "G9326"}), ("incomplete", {"completeness": "incomplete"}),
            ("scanner", {"scanner": scanner}), ("rare protocol", {"protocol": protocol}),
            ("month+G9327", {"date_from": f"{month}-01", "date_to": f"{month}-31", "registry_code": "G9327"}),
            ("page 500", {"page": "500", "offset": "24950"}),
            ("eligible", {"submission_state": "eligible"}), ("held", {"submission_state": "held"})]


def direct(data_dir: Path, params: dict[str, str], repeat: int) -> list[float]:
    """The index's query (count + one page) straight on SQLite: the floor under HTTP and templates."""
    from dosereg.web import Query

    count, listing, args = Query.of(params).statements()
    offset = int(params.get("offset", 0))
    db = sqlite3.connect(f"file:{data_dir / 'web-index.sqlite'}?mode=ro", uri=True)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        db.execute(count, args).fetchone()
        db.execute(f"{listing} LIMIT 50 OFFSET ?", [*args, offset]).fetchall()
        out.append(time.perf_counter() - t0)
    db.close()
    return out


def without_index(data_dir: Path, sample: int) -> float:
    """Seconds to filter the whole catalog by registry code without the index (decode and
    evaluate each study), extrapolated from ``sample`` studies."""
    from dosereg.conf.config import load_config
    from dosereg.ingest import open_catalog
    from dosereg.registry_export import evaluate, rules_from_config

    cfg = load_config(None, data_dir=str(data_dir))
    rules = rules_from_config(cfg)
    catalog = open_catalog(cfg, readonly=True)
    try:
        total = catalog.count_studies()
        t0 = time.perf_counter()
        n = 0
        for record in catalog.iter_studies():
            evaluate(record, rules).flags.registry_code == "G9326"  # noqa: B015
            n += 1
            if n >= sample:
                break
        return (time.perf_counter() - t0) * total / max(1, n)
    finally:
        catalog.close()


def serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ)
    env.pop("DOSEREG_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "dosereg.cli", "serve", "--data-dir", str(data_dir),
                             "--port", str(port)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("dosereg serve exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("dosereg serve did not start")


def measure(port: int, pid: int, qs: list[tuple[str, dict[str, str]]], repeat: int, data_dir: Path) -> bool:
    import httpx

    ok = True
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
        page = c.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token
        r = c.post("/login", data={"csrf": token.group(1), "name": "bench", "password": PASSWORD})
        assert r.status_code == 303, r.text
        print(f"{'query':<14} {'matches':>8} | {'page p50':>9} {'p99':>7} | {'API p50':>8} {'p99':>7} | "
              f"{'SQLite p50':>10} {'p99':>7}   (ms)")
        for name, params in qs:
            page_params = {k: v for k, v in params.items() if k != "offset"}
            api_params = {k: v for k, v in params.items() if k != "page"}
            api_params["limit"] = "100"
            times: dict[str, list[float]] = {"page": [], "api": []}
            total: Any = None
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = c.get("/studies", params=page_params)
                times["page"].append(time.perf_counter() - t0)
                assert r.status_code == 200
                t0 = time.perf_counter()
                r = c.get("/api/studies", params=api_params)
                times["api"].append(time.perf_counter() - t0)
                total = r.json()["total"]
            sql = direct(data_dir, params, repeat)
            row = [pct(times["page"], .5), pct(times["page"], .99), pct(times["api"], .5), pct(times["api"], .99),
                   pct(sql, .5), pct(sql, .99)]
            print(f"{name:<14} {total:>8,} | {row[0] * 1e3:>9.1f} {row[1] * 1e3:>7.1f} | {row[2] * 1e3:>8.1f} "
                  f"{row[3] * 1e3:>7.1f} | {row[4] * 1e3:>10.2f} {row[5] * 1e3:>7.2f}")
            ok = ok and row[1] < 0.3 and row[3] < 0.3
    print(f"server peak memory (VmHWM): {vm_hwm_mib(pid):.0f} MiB")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=50, help="requests per query and kind (default 50)")
    ap.add_argument("--keep", metavar="DIR", help="use (and keep) DIR as the data directory")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        data_dir = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="dosereg-bench-web-")
        data_dir = Path(tmp) / "data"
    try:
        from dosereg.conf.config import load_config
        from dosereg.web import Store, StudyIndex

        if not (data_dir / "catalog.sqlite").exists():
            print(f"building a catalog of {args.studies:,} vendor-like studies in {data_dir} ...", file=sys.stderr)
            build_s = build_catalog(data_dir, args.studies, studies("vendor", args.studies, SAMPLES))
            print(f"catalog built in {build_s:.1f} s", file=sys.stderr)
        cfg = load_config(None, data_dir=str(data_dir))
        index = StudyIndex(cfg)
        t0 = time.perf_counter()
        n = index.refresh()
        print(f"study index: {n:,} studies evaluated in {time.perf_counter() - t0:.1f} s (cold build)")
        index.close()
        index = StudyIndex(cfg)  # as a server starting on it: compares every study's version
        t0 = time.perf_counter()
        n = index.refresh()
        print(f"study index: nothing new, {n} evaluated, in {(time.perf_counter() - t0) * 1e3:.0f} ms")
        from dosereg.registry_export import release

        release(cfg, [], by="bench")  # export state changes (here: it is made): every submission recomputed
        t0 = time.perf_counter()
        index.refresh()
        print(f"study index: export state changed, every study's submission recomputed in "
              f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
        index.close()
        store = Store(data_dir)
        if "bench" not in {u["name"] for u in store.users()}:
            store.add_user("bench", "viewer", PASSWORD)
        store.close()
        print(f"without the index, filtering by registry code: {without_index(data_dir, 2000):.1f} s per request "
              "(decode and evaluate every study; extrapolated from 2,000)")
        proc, port = serve(data_dir)
        try:
            ok = measure(port, proc.pid, queries(data_dir), args.repeat, data_dir)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        print("p99 under 300 ms: " + ("yes" if ok else "NO"))
        return 0 if ok else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
