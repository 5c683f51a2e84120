#!/usr/bin/env python3
"""Benchmark ``dosereg listen`` against a bare pynetdicom SCP that writes + fsyncs each object.

Same sender for both (dcmtk ``storescu``, TCP_NODELAY=1), 1 and 4 senders in parallel,
same run, same synthetic objects. Prints objects/s, p50/p99 C-STORE round-trip (from
storescu's own timestamped log: "Sending Store Request" -> "Received Store Response"),
their ratios and the listener's peak RSS (VmHWM of /proc/<pid>/status).

Targets (issue 4): >= 80 % of the bare SCP's throughput, p99 < 50 ms, RSS < 300 MB.

    python bench/listen.py [--objects 400] [--source FILE] [--repeat 2]

Synthetic objects are copies of one dose object (default: the vendor corpus's
CT-RDSR-Siemens-Multi-1.dcm where a developer has the corpus beside the project, else the first of
sample_dicom/) with new Study and SOP
Instance UIDs, written to a temporary folder only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 3.0
LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s} %D{%Q} %m%n
"""


# -- the bare SCP (run as a subprocess of this script) ---------------------------------------
def bare_scp(port: int, out_dir: Path) -> None:
    """pynetdicom SCP, same contexts as dosereg: write + fsync the encoded bytes, answer."""
    from pynetdicom import AE, evt

    from dosereg.ingest.listener import STORAGE_CLASSES, TRANSFER_SYNTAXES

    out_dir.mkdir(parents=True, exist_ok=True)
    counter = [0]

    def on_store(event: object) -> int:
        counter[0] += 1
        path = out_dir / f"{counter[0]:08d}.dcm"
        with open(path, "wb") as fh:
            fh.write(event.encoded_dataset())  # type: ignore[attr-defined]
            fh.flush()
            os.fsync(fh.fileno())
        return 0x0000

    ae = AE(ae_title="DOSEREG")
    ae.maximum_pdu_size = 0
    ae.maximum_associations = 10
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
    while not stop[0]:
        time.sleep(0.1)
    if server is not None:
        server.shutdown()


# -- helpers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server did not listen on {port} within {timeout} s")


def make_objects(source: Path, out: Path, n: int) -> list[Path]:
    import pydicom
    from pydicom.uid import generate_uid

    raw = source.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        ds = pydicom.dcmread(BytesIO(raw))
        ds.StudyInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"obj{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in descendants(k)]


def parse_rtts(log: str) -> tuple[list[float], int]:
    """Round-trip times (ms) from a storescu log in the LOG_CONFIG pattern, and the successes."""
    rtts: list[float] = []
    sent: float | None = None
    ok = 0
    for line in log.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        t = int(parts[0]) * 1000.0 + float(parts[1])
        if parts[2].startswith("Sending Store Request"):
            sent = t
        elif parts[2].startswith("Received Store Response"):
            if sent is not None:
                rtts.append(t - sent)
                sent = None
            if "(Success)" in parts[2]:
                ok += 1
    return rtts, ok


def run_senders(port: int, files: list[Path], senders: int, log_config: Path) -> tuple[float, list[float], int]:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu not found (Debian package dcmtk)")
    groups = [files[i::senders] for i in range(senders)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([storescu, "-lc", str(log_config), "-aet", f"BENCH{i}", "-aec", "DOSEREG",
                          "127.0.0.1", str(port), *map(str, g)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        for i, g in enumerate(groups)
    ]
    rtts: list[float] = []
    ok = 0
    for p in procs:
        out, _ = p.communicate(timeout=900)
        r, n = parse_rtts(out.decode(errors="replace"))
        rtts += r
        ok += n
    return time.perf_counter() - t0, rtts, ok


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def one_run(kind: str, files: list[Path], senders: int, work: Path, log_config: Path) -> dict[str, float]:
    port = free_port()
    data = work / f"{kind}-{senders}-{port}"
    if kind == "bare":
        cmd = [sys.executable, __file__, "--bare-scp", str(port), str(data)]
    else:
        cmd = [sys.executable, "-m", "dosereg.cli", "listen", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data)]
    env = {k: v for k, v in os.environ.items() if k != "DOSEREG_CONFIG"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        wait_port(port, proc)
        time.sleep(SETTLE_S)  # steady state: dosereg's processing process has started
        elapsed, rtts, ok = run_senders(port, files, senders, log_config)
        rss = peak_rss_mb(proc.pid) or float("nan")
        # dosereg's processing process (and multiprocessing's resource tracker) count too
        rss_all = rss + sum(peak_rss_mb(k) or 0.0 for k in descendants(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    if ok != len(files):
        raise SystemExit(f"{kind}: only {ok} of {len(files)} objects acknowledged")
    return {"rate": len(files) / elapsed, "p50": pct(rtts, 50), "p99": pct(rtts, 99), "rss": rss,
            "rss_all": rss_all}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=400)
    ap.add_argument("--source", type=Path, default=None, help="the dose object to copy")
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration (best throughput kept)")
    ap.add_argument("--bare-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), Path(args.bare_scp[1]))
        return 0

    source = args.source
    if source is None:
        candidates = [ROOT.parent / "shared" / "corpus" / "CT-RDSR-Siemens-Multi-1.dcm",
                      *sorted((ROOT / "sample_dicom").glob("*.dcm"))]
        source = next((c for c in candidates if c.exists()), None)
        if source is None:
            raise SystemExit("no dose object to copy: pass --source FILE")
    with tempfile.TemporaryDirectory(prefix="dosereg-bench-") as tmp:
        work = Path(tmp)
        log_config = work / "storescu-log.cfg"
        log_config.write_text(LOG_CONFIG)
        files = make_objects(source, work / "objects", args.objects)
        print(f"{args.objects} objects of {source.stat().st_size} bytes ({source.name}); "
              f"sender: dcmtk storescu, TCP_NODELAY=1; {os.cpu_count()} cores")
        results: dict[tuple[str, int], dict[str, float]] = {}
        for senders in (1, 4):
            for _ in range(args.repeat):
                for kind in ("bare", "dosereg"):  # interleaved: same conditions for both
                    r = one_run(kind, files, senders, work, log_config)
                    best = results.get((kind, senders))
                    if best is None or r["rate"] > best["rate"]:
                        results[(kind, senders)] = r
        print()
        print(f"{'server':<16}{'senders':>8}{'objects/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'peak RSS MB':>13}"
              f"{'+children':>11}")
        for (kind, senders), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            name = "bare pynetdicom" if kind == "bare" else "dosereg listen"
            print(f"{name:<16}{senders:>8}{r['rate']:>12.1f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['rss']:>13.1f}"
                  f"{r['rss_all']:>11.1f}")
        print()
        verdicts = []
        for senders in (1, 4):
            d, b = results[("dosereg", senders)], results[("bare", senders)]
            ratio = d["rate"] / b["rate"]
            print(f"{senders} sender(s): dosereg/bare throughput {ratio:.2f} (target >= 0.80), "
                  f"p99 {d['p99']:.1f} ms (target < 50), p50 ratio {d['p50'] / b['p50']:.2f}")
            verdicts += [ratio >= 0.8, d["p99"] < 50]
        rss = max(results[("dosereg", s)]["rss"] for s in (1, 4))
        rss_all = max(results[("dosereg", s)]["rss_all"] for s in (1, 4))
        print(f"dosereg listen peak RSS {rss:.1f} MB, with its processing process {rss_all:.1f} MB "
              "(target < 300)")
        rss = rss_all
        verdicts.append(rss < 300)
        print("all targets met" if all(verdicts) else "some targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
