"""``dosereg reconcile`` against a real PACS: Orthanc (C-FIND, C-GET, C-MOVE, a result limit) and
dcmtk's dcmqrscp (a stricter C-FIND and C-MOVE peer), started by the tests (tests/orthanc_peer.py).

Every CT study of the period ends with a dose object or as an exam without a dose report (G9326,
"no dose report received"); a dose object arriving later through the listener retires the exam;
a re-run, or a run after an interrupted one, fetches nothing already held; no image other than
a dose screen is ever fetched.
"""

from __future__ import annotations

import csv
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, jsonl, run_cli
from .orthanc_peer import (
    PacsStudy,
    Peer,
    free_port,
    load,
    pacs_studies,
    rdsr_of,
    start_dcmqrscp,
    start_orthanc,
    store,
)
from .test_listener import Listener
from .test_listener import db_rows as db_rows_any

DAYS = ["20261116", "20261117", "20261118"]
SINCE, UNTIL = "2026-11-15", "2026-11-18"  # one day without studies before them


@pytest.fixture(scope="module")
def listener_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def studies() -> list[PacsStudy]:
    """Nine studies (three of each kind) and one whose RDSR reaches dosereg only later."""
    out = pacs_studies(9, DAYS)
    return [*out, PacsStudy(9, "late", DAYS[0])]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, listener_port: int,
            studies: list[PacsStudy]) -> Iterator[Peer]:
    with start_orthanc(tmp_path_factory.mktemp("orthanc"), listener_port=listener_port) as peer:
        assert load(peer, studies) == 9 * 2 + 3 + 3 * 2 + 2
        yield peer


def config(tmp_path: Path, peer: Peer, retrieve: str = "c-get", listener_port: int = 11112, **extra: Any) -> Path:
    path = tmp_path / "dosereg.toml"
    path.write_text(peer.pacs_toml(retrieve, **extra)
                    + f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[listener]\nport = {listener_port}\n')
    return path


def reconcile(cfg: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return run_cli("reconcile", "--config", str(cfg), "--since", SINCE, "--until", UNTIL, *more)


def studies_json(cfg: Path) -> dict[str, dict[str, Any]]:
    r = run_cli("studies", "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    return {d["study_instance_uid"]: d for d in jsonl(r.stdout)}


def received_sops(data_dir: Path) -> Counter[str]:
    return Counter(uid for (uid,) in db_rows_any(data_dir, "SELECT sop_instance_uid FROM received"))


def check_outcome(by_uid: dict[str, dict[str, Any]], studies: list[PacsStudy], screens: bool = True) -> None:
    """Each study: its dose object catalogued, or an exam without a dose report (``screens``:
    the PACS says enough of its series to recognise a dose screen)."""
    assert set(by_uid) == {s.uid for s in studies}
    for s in studies:
        d = by_uid[s.uid]
        if s.kind == "rdsr" or s.kind == "screen" and screens:
            assert [o["sop_instance_uid"] for o in d["dose_objects"]] == [s.dose_uid], s
            assert "source" not in d
        else:
            assert d["source"] == "pacs" and d["dose_objects"] == [] and d["events"] == []
            assert d["accession_number"] == s.accession
            assert d["study_date"] == f"{s.day[:4]}-{s.day[4:6]}-{s.day[6:]}"
            assert d["equipment"]["station_name"] == (f"CT{s.i % 3}" if screens else None)
            assert d["completeness"]["missing"] == ["dose_objects"]
            assert d["flags"]["registry_code"] == "G9326"
            assert d["flags"]["registry_reasons"] == ["no dose report received"]


def test_c_get_ends_every_ct_study_with_a_dose_object_or_as_an_exam(
        tmp_path: Path, orthanc: Peer, studies: list[PacsStudy], listener_port: int) -> None:
    cfg = config(tmp_path, orthanc)
    r = reconcile(cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("CT studies found 10, already complete 0, dose objects retrieved 6, "
                                "still without a dose report 4")
    data = tmp_path / "data"
    check_outcome(studies_json(cfg), studies)
    # the dose objects only: never a CT image nor the SC that is not a dose screen
    sops = received_sops(data)
    assert sorted(sops) == sorted(s.dose_uid for s in studies if s.dose_uid)
    assert set(sops.values()) == {1}

    # again (--again: even the settled days): nothing fetched twice
    r = reconcile(cfg, "--again")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("CT studies found 10, already complete 6, dose objects retrieved 0, "
                                "still without a dose report 4")
    assert received_sops(data) == sops
    # without --again the days are settled (reconciled more than a week after they ended)
    r = reconcile(cfg)
    assert "days already reconciled 4" in r.stdout

    # the report lists the exams per scanner and day
    r = run_cli("report", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    page = next((data / "reports").glob("*.html")).read_text()
    assert "CT exams without a dose report (4)" in page

    # the late RDSR arrives through the listener: the exam is retired, the study complete
    late = studies[-1]
    with Listener(data, port=listener_port):
        store(listener_port, "DOSEREG", [rdsr_of(late)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not db_rows_any(
                data, "SELECT 1 FROM objects WHERE study_instance_uid = ?", (late.uid,)):
            time.sleep(0.1)
    after = studies_json(cfg)
    assert "source" not in after[late.uid]
    assert after[late.uid]["flags"]["registry_code"] == "G9327"
    assert db_rows_any(data, "SELECT retired_at IS NOT NULL FROM exams WHERE study_instance_uid = ?",
                       (late.uid,)) == [(1,)]
    assert sum(1 for d in after.values() if d.get("source") == "pacs") == 3

    # --from-csv: the same verdicts for the same exams, once the PACS's dose objects are catalogued
    other = tmp_path / "ris"
    other.mkdir()
    ris_cfg = other / "dosereg.toml"
    ris_cfg.write_text(f'[storage]\ndata_dir = "{other / "data"}"\n')
    objects = [p for p in (data / "objects").rglob("*.dcm")]
    r = run_cli("import", "--config", str(ris_cfg), *map(str, objects))
    assert r.returncode == 0, r.stderr
    export = other / "ris.csv"
    with open(export, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["accession_number", "study_instance_uid", "study_date", "modality", "study_description",
                    "station_name", "patient_id"])
        for s in studies:
            by_accession = s.kind == "screen"  # matched by accession number alone
            w.writerow([s.accession, "" if by_accession else s.uid, s.day, "CT", "CT CHEST W CONTRAST",
                        f"CT{s.i % 3}", f"RCPAT{s.i:06d}"])
        w.writerow(["MR0001", "1.2.3.4", "20261116", "MR", "MR KNEE", "MR1", "X"])
    r = run_cli("reconcile", "--config", str(ris_cfg), "--from-csv", str(export))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("CT studies found 10, already complete 7, dose objects retrieved 0, "
                                "still without a dose report 3, rows not CT ignored 1")
    ris = studies_json(ris_cfg)
    for uid, d in after.items():
        assert ris[uid]["flags"] == d["flags"], uid
        assert ris[uid]["completeness"] == d["completeness"], uid
        assert ris[uid].get("source") == ("ris" if d.get("source") else None)


def test_c_move_needs_the_listener_and_fetches_through_it(
        tmp_path: Path, orthanc: Peer, studies: list[PacsStudy], listener_port: int) -> None:
    cfg = config(tmp_path, orthanc, "c-move", listener_port=listener_port)
    r = reconcile(cfg)
    assert r.returncode == 2
    assert "start `dosereg listen` first" in r.stderr and f"127.0.0.1:{listener_port}" in r.stderr
    data = tmp_path / "data"
    with Listener(data, port=listener_port):
        r = reconcile(cfg)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == ("CT studies found 10, already complete 0, dose objects retrieved 6, "
                                    "still without a dose report 4")
    check_outcome(studies_json(cfg), studies)
    sops = received_sops(data)
    assert sorted(sops) == sorted(s.dose_uid for s in studies if s.dose_uid) and set(sops.values()) == {1}


def test_dcmqrscp_a_stricter_peer_for_c_find_and_c_move(
        tmp_path: Path, studies: list[PacsStudy]) -> None:
    port = free_port()
    with start_dcmqrscp(tmp_path / "qr", listener_port=port) as peer:
        load(peer, studies)
        cfg = config(tmp_path, peer, "c-move", listener_port=port)
        with Listener(tmp_path / "data", port=port):
            r = reconcile(cfg)
        assert r.returncode == 0, r.stderr
        # dcmqrscp answers only the required keys: no Series Description, SOP Class or Image
        # Type, so a dose screen cannot be told from an image: not fetched, and said so
        assert r.stdout.strip() == ("CT studies found 10, already complete 0, dose objects retrieved 3, "
                                    "still without a dose report 7")
        assert "Philips dose screens cannot be told from other images" in r.stderr
    check_outcome(studies_json(cfg), studies, screens=False)
    sops = received_sops(tmp_path / "data")
    assert sorted(sops) == sorted(s.dose_uid for s in studies if s.kind == "rdsr") and set(sops.values()) == {1}


def test_a_result_limit_never_truncates_silently(tmp_path: Path) -> None:
    # Orthanc answers at most 3 matches and says Success: pacs.max_results = 3 makes each
    # answer of 3 a reason to split the day, until every part is answered whole
    many = pacs_studies(11, ["20261117"], kinds=("images",))
    with start_orthanc(tmp_path / "pacs", limit_find_results=3) as peer:
        load(peer, many, images=1)
        cfg = config(tmp_path, peer, max_results=3)
        r = reconcile(cfg, "-v")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().startswith("CT studies found 11, ")
        assert "answers reach the PACS's limit; asking for each half" in r.stderr
    assert len(studies_json(cfg)) == 11


def test_an_unreachable_pacs_ends_the_run_naming_it(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "dosereg.toml"
    cfg.write_text(f'[pacs]\nae_title = "NOPACS"\nhost = "127.0.0.1"\nport = {port}\ntimeout_s = 3\n'
                   f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    r = reconcile(cfg)
    assert r.returncode == 2
    assert f"NOPACS at 127.0.0.1:{port}" in r.stderr and "pacs.host" in r.stderr
    r = run_cli("reconcile", "--data-dir", str(tmp_path / "d2"))
    assert r.returncode == 2 and "[pacs] is not configured" in r.stderr


def test_an_interrupted_backfill_resumes_and_fetches_each_object_once(tmp_path: Path) -> None:
    days = [f"202610{d:02d}" for d in range(1, 11)]
    backfill = pacs_studies(100, days, kinds=("rdsr", "rdsr", "screen", "images"))
    with start_orthanc(tmp_path / "pacs") as peer:
        load(peer, backfill, images=1)
        cfg = config(tmp_path, peer)
        data = tmp_path / "data"
        args = [sys.executable, "-m", "dosereg.cli", "reconcile", "--config", str(cfg),
                "--since", "2026-10-01", "--until", "2026-10-10"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(db_rows_any(data, "SELECT 1 FROM objects")) >= 25:
                    break
            except sqlite3.OperationalError:  # the catalog is being created
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        done_before = len(db_rows_any(data, "SELECT day FROM reconcile_days"))
        assert done_before < len(days)
        r = run_cli("reconcile", "--config", str(cfg), "--since", "2026-10-01", "--until", "2026-10-10")
        assert r.returncode == 0, r.stderr
        assert f"days already reconciled {done_before}" in r.stdout or done_before == 0
    wanted = sorted(s.dose_uid for s in backfill if s.dose_uid)
    sops = received_sops(data)
    assert sorted(sops) == wanted
    assert set(sops.values()) == {1}, [u for u, n in sops.items() if n > 1]
    assert len(db_rows_any(data, "SELECT 1 FROM objects")) == len(wanted)
    assert sorted(d for (d,) in db_rows_any(data, "SELECT day FROM reconcile_days")) == days
    exams = db_rows_any(data, "SELECT study_instance_uid FROM exams WHERE retired_at IS NULL")
    assert sorted(u for (u,) in exams) == sorted(s.uid for s in backfill if s.kind == "images")
