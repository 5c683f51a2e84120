#!/usr/bin/env python3
"""Benchmark ``dosereg reconcile``'s retrieval against dcmtk, from a local Orthanc, in one run.

Builds its own data: a temporary Orthanc (tests/orthanc_peer.py) loaded with ``--studies`` CT
studies of one day (a third with an RDSR, a third with a Philips dose screen, a third images
only). Then, each on a fresh data directory:

* dosereg C-GET: the dose series fetched by ``ingest.qr_retrieve.Retriever`` (every object
  checked, spooled with fsync, extracted and catalogued) -- and the whole ``dosereg reconcile``
  (C-FINDs included) for the end-to-end figure;
* dcmtk ``getscu``: the same series-level C-GETs, one association, objects written to disk
  (no fsync, no parsing);
* dosereg C-MOVE to a running ``dosereg listen`` (until every object is catalogued) and dcmtk
  ``movescu`` with its own storage SCP, the same C-MOVEs;
* memory: peak Python allocation (tracemalloc) while the day's study-level C-FIND is read,
  per study answered (``ingest.qr_find.StudyFinder`` keeps small tuples, never datasets).

Target (issue 12): at least half of dcmtk's objects/s. Run at a small size only in CI-like
places; ``--studies 20000`` is the issue's figure for the memory on a large query.

    python bench/reconcile.py [--studies 500]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom.dataset import Dataset  # noqa: E402

from tests.orthanc_peer import PacsStudy, Peer, free_port, load, pacs_studies, start_orthanc  # noqa: E402
from tests.send_peers import wait_port  # noqa: E402

DAY = "20261101"


def dose_series(studies: list[PacsStudy]) -> list[tuple[str, str, str]]:
    """(study UID, series UID, SOP Instance UID) of every dose series the PACS holds (one object each)."""
    out = []
    for s in studies:
        if s.kind == "rdsr":
            out.append((s.uid, s.uid_of(3, 0), s.uid_of(3)))
        elif s.kind == "screen":
            out.append((s.uid, s.uid_of(4, 0), s.uid_of(4)))
    return out


def dosereg_fetch(peer: Peer, series: list[tuple[str, str, str]], data: Path, method: str) -> float:
    from dosereg.conf.pacs import PacsSettings
    from dosereg.ingest.catalog import Catalog, catalog_path
    from dosereg.ingest.pipeline import Pipeline
    from dosereg.ingest.qr_find import Series
    from dosereg.ingest.qr_retrieve import Retriever
    from dosereg.ingest.qr_session import Session

    pacs = PacsSettings(ae_title="ORTHANC", host="127.0.0.1", port=peer.port,
                        calling_ae_title="DOSEREG", retrieve=method, timeout_s=60)
    catalog = Catalog(catalog_path(data))
    pipeline = Pipeline(data, catalog)
    retriever = Retriever(None, pipeline, catalog, method, "DOSEREG", 60)
    session = Session(pacs, retriever.on_store if method == "c-get" else None)
    retriever.session = session
    t0 = time.perf_counter()
    got = 0
    for study_uid, series_uid, sop_uid in series:
        fetched = retriever.fetch(study_uid, [(Series(series_uid, "SR", "", None, 1), [sop_uid], True)])
        assert not fetched.failures, fetched.failures
        got += fetched.new
    elapsed = time.perf_counter() - t0
    session.close()
    pipeline.close()
    catalog.close()
    assert got == len(series), (got, len(series))
    return elapsed


def query_files(series: list[tuple[str, str, str]], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (study_uid, series_uid, _sop) in enumerate(series):
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        path = folder / f"q{n:06d}.dcm"
        q.save_as(path, implicit_vr=True, little_endian=True)  # a bare dataset, as dcmtk's query files are
        paths.append(str(path))
    return paths


def _dcmtk(args: list[str], out: Path, n: int) -> float:
    """Run a dcmtk SCU over every query file; the seconds it took. dcmtk 3.6.7's getscu may crash
    (SIGSEGV) when it exits after several query files: counted as done when every object is there."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True)
    elapsed = time.perf_counter() - t0
    written = sum(1 for _ in out.iterdir())
    if written != n:
        raise RuntimeError(f"{args[0]} wrote {written} of {n} objects (exit {r.returncode}): {r.stderr[-500:]!r}")
    if r.returncode != 0:
        print(f"note: {args[0]} exited with {r.returncode} after writing every object", file=sys.stderr)
    return elapsed


def dcmtk_get(peer: Peer, queries: list[str], out: Path) -> float:
    return _dcmtk(["getscu", "-S", "-aet", "DOSEREG", "-aec", "ORTHANC", "-od", str(out), "127.0.0.1",
                   str(peer.port), *queries], out, len(queries))


def dcmtk_move(peer: Peer, queries: list[str], out: Path, port: int) -> float:
    return _dcmtk(["movescu", "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem", "MOVESCU", "--port", str(port),
                   "-od", str(out), "127.0.0.1", str(peer.port), *queries], out, len(queries))


def find_memory(peer: Peer, n: int) -> tuple[float, int]:
    from dosereg.conf.pacs import PacsSettings
    from dosereg.ingest.qr_find import StudyFinder
    from dosereg.ingest.qr_session import Session

    session = Session(PacsSettings(ae_title="ORTHANC", host="127.0.0.1", port=peer.port,
                                   calling_ae_title="DOSEREG", timeout_s=60))
    tracemalloc.start()
    t0 = time.perf_counter()
    found = sum(1 for _ in StudyFinder(session).ct_studies(DAY))
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    session.close()
    assert found == n, (found, n)
    return elapsed, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=500)
    args = ap.parse_args()
    for tool in ("Orthanc", "getscu", "movescu"):
        if shutil.which(tool) is None:
            print(f"{tool} not installed (Debian packages orthanc, dcmtk)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="dosereg-bench-reconcile-"))
    listener_port, movescu_port = free_port(), free_port()
    peer: Peer | None = None
    try:
        studies = pacs_studies(args.studies, [DAY])
        # Orthanc knows dosereg's listener and dcmtk's movescu (its own storage SCP) as C-MOVE destinations
        peer = start_orthanc(tmp / "pacs", listener_port=listener_port,
                             more_modalities={"movescu": ("MOVESCU", movescu_port)})
        t0 = time.perf_counter()
        loaded = load(peer, studies, images=1)
        print(f"loaded {loaded} objects ({args.studies} studies) into Orthanc in {time.perf_counter() - t0:.1f} s", flush=True)
        series = dose_series(studies)
        n = len(series)
        queries = query_files(series, tmp / "queries")

        rows = []
        t = dosereg_fetch(peer, series, tmp / "get-data", "c-get")
        rows.append(("dosereg C-GET (check, spool+fsync, extract, catalog)", n, t))
        t = dcmtk_get(peer, queries, tmp / "getscu-out")
        rows.append(("dcmtk getscu (write only)", n, t))
        listener = subprocess.Popen(
            [sys.executable, "-m", "dosereg.cli", "listen", "--host", "127.0.0.1", "--port", str(listener_port),
             "--data-dir", str(tmp / "move-data"), "--ae-title", "DOSEREG"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            wait_port(listener_port, timeout=30)
            t = dosereg_fetch(peer, series, tmp / "move-data", "c-move")
            rows.append(("dosereg C-MOVE to dosereg listen (until catalogued)", n, t))
        finally:
            listener.terminate()
            listener.wait(timeout=60)
        t = dcmtk_move(peer, queries, tmp / "movescu-out", movescu_port)
        rows.append(("dcmtk movescu (write only)", n, t))

        cfg_toml = tmp / "dosereg.toml"
        cfg_toml.write_text(f'[pacs]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {peer.port}\n'
                            f'[storage]\ndata_dir = "{tmp / "e2e-data"}"\n')
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "dosereg.cli", "reconcile", "--config", str(cfg_toml),
                            "--since", "2026-11-01", "--until", "2026-11-01"], capture_output=True, text=True,
                           cwd=ROOT)
        t = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        rows.append((f"dosereg reconcile end to end ({r.stdout.strip()})", n, t))

        print(f"\n{'what':<60} {'objects':>8} {'s':>7} {'objects/s':>10}")
        for what, count, secs in rows:
            print(f"{what[:60]:<60} {count:>8} {secs:>7.2f} {count / secs:>10.1f}")
        get_ratio = (rows[0][1] / rows[0][2]) / (rows[1][1] / rows[1][2])
        move_ratio = (rows[2][1] / rows[2][2]) / (rows[3][1] / rows[3][2])
        print(f"\nC-GET: dosereg at {get_ratio:.0%} of getscu's rate; C-MOVE: at {move_ratio:.0%} of movescu's "
              "(target: at least 50 %)")
        secs, peak = find_memory(peer, args.studies)
        print(f"study-level C-FIND of {args.studies} studies in one day: {secs:.2f} s, peak Python allocation "
              f"{peak / 1e6:.2f} MB ({peak / args.studies:.0f} bytes per study)")
    finally:
        if peer is not None:
            peer.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
