"""Nothing received stays stuck: transient failures retried, anything else quarantined, killed imports taken over.

The disk-full tests mount a real 5 MiB tmpfs (root only; skipped with the reason otherwise).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dosereg.extract import extract_bytes
from dosereg.ingest import Catalog, Pipeline
from dosereg.ingest import pipeline as pipeline_module
from dosereg.ingest.catalog import catalog_path
from dosereg.ingest.pipeline import PROCESSING_ERROR, TransientError, quote_value
from dosereg.ingest.processor import Drainer, Processor

from .conftest import ROOT, SAMPLES

JUNK = b"this is not a DICOM file\n" * 10
GOOD = "ct_siemens_single_source.dcm"
OTHER = "ct_ge_enhanced_sr.dcm"
REASON_KEYS = ["error_code", "message", "source", "received_at", "sop_instance_uid", "sha256", "calling_ae_title"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def make(data_dir: Path) -> tuple[Catalog, Pipeline]:
    catalog = Catalog(catalog_path(data_dir))
    return catalog, Pipeline(data_dir, catalog)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``condition`` (a deadline for a hung test, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def reason_fields(path: Path) -> list[tuple[str, str]]:
    """The reason file's ``key: value`` lines, quoted values decoded."""
    out = []
    for line in path.read_text(encoding="ascii").split("\n")[:-1]:
        key, value = line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
        out.append((key, json.loads(value) if value.startswith('"') else value))
    return out


def drain(drainer: Drainer, until: Callable[[], bool], sweeps: int = 200) -> None:
    """Run the processing loop's sweeps in this process (waiting for each back-off) until ``until``."""
    for _ in range(sweeps):
        drainer.sweep(lambda: False)
        if until():
            return
        time.sleep(min(0.5, drainer.seconds_to_next() or 0.01))
    raise AssertionError("the spool did not drain")


# -- reason files ---------------------------------------------------------------------------
def test_reason_file_values_cannot_forge_lines(data_dir: Path) -> None:
    catalog, pipe = make(data_dir)
    uid = "1.2.3\nerror_code: ok\r\nmessage: forged"
    source = "scan\x1b[2J\tnamé\u2028.dcm"
    item = pipe.receive(JUNK, sop_instance_uid=uid, source=source)
    assert pipe.process(item) == "quarantined:not_dicom"
    text = (data_dir / "quarantine" / f"{item.name}.reason.txt").read_text(encoding="ascii")
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == 8  # seven lines, whatever the values hold
    fields = reason_fields(data_dir / "quarantine" / f"{item.name}.reason.txt")
    assert [k for k, _ in fields] == REASON_KEYS
    values = dict(fields)
    assert values["sop_instance_uid"] == uid and values["source"] == source
    assert values["error_code"] == "not_dicom" and values["sha256"] == item.sha256
    assert lines[4] == 'sop_instance_uid: "1.2.3\\nerror_code: ok\\r\\nmessage: forged"'
    assert all(0x20 <= b < 0x7f for b in text.replace("\n", "").encode("ascii"))
    catalog.close()


@pytest.mark.parametrize(("value", "written"), [
    ("1.2.840.10008", "1.2.840.10008"),
    ("", ""),
    (" padded", '" padded"'),
    ('"quoted"', '"\\"quoted\\""'),
    ("a\x00b", '"a\\u0000b"'),
    ("Yamada^Tarou=山田^太郎", '"Yamada^Tarou=\\u5c71\\u7530^\\u592a\\u90ce"'),
])
def test_quote_value(value: str, written: str) -> None:
    assert quote_value(value) == written
    assert (json.loads(written) if written.startswith('"') else written) == value


# -- non-transient exceptions: quarantined with the reason ------------------------------------
def test_extraction_exception_is_quarantined_with_reason(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def boom(data: bytes, **kwargs: Any) -> Any:
        raise RuntimeError("bad value 'Doe^Jane'\nforged: line")

    monkeypatch.setattr(pipeline_module, "extract_bytes", boom)
    catalog, pipe = make(data_dir)
    item = pipe.receive((SAMPLES / GOOD).read_bytes(), sop_instance_uid="1.2.3", calling_ae_title="PACS")
    caplog.set_level(logging.INFO, logger="dosereg")
    drainer = Drainer(pipe, catalog)
    drain(drainer, lambda: catalog.received_state(item.id) == "done")
    assert list((data_dir / "spool").iterdir()) == []
    (row,) = catalog.quarantine_rows()
    assert row["error_code"] == PROCESSING_ERROR
    assert row["message"].startswith("extraction raised RuntimeError: bad value 'Doe^Jane'\nforged: line (at ")
    assert row["sop_instance_uid"] == "1.2.3"
    assert (data_dir / "quarantine" / item.name).read_bytes() == (SAMPLES / GOOD).read_bytes()
    fields = reason_fields(data_dir / "quarantine" / f"{item.name}.reason.txt")
    assert [k for k, _ in fields] == REASON_KEYS
    assert dict(fields)["message"] == row["message"]
    assert [r["outcome"] for r in catalog.received_rows()] == [f"quarantined:{PROCESSING_ERROR}"]
    # the exception's text (which may quote data) is not in the log, its type is
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "Doe^Jane" not in logged
    assert f"quarantined {item.name}: {PROCESSING_ERROR}: extraction raised RuntimeError (at " in logged
    catalog.close()


def test_catalog_exception_is_quarantined(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Catalog, record: Any, **kwargs: Any) -> str:
        raise ValueError("merge failed")

    monkeypatch.setattr(Catalog, "add_object", refuse)
    catalog, pipe = make(data_dir)
    item = pipe.receive((SAMPLES / GOOD).read_bytes())
    assert pipe.process_safely(item) == f"quarantined:{PROCESSING_ERROR}"
    (row,) = catalog.quarantine_rows()
    assert row["message"].startswith("processing raised ValueError: merge failed (at ")
    assert list((data_dir / "spool").iterdir()) == []
    assert catalog.count_objects() == 0
    catalog.close()


# -- transient failures: retried, others not held up ------------------------------------------
def test_transient_failure_is_retried_until_it_works(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = Catalog.add_object

    def flaky(self: Catalog, record: Any, **kwargs: Any) -> str:
        calls.append(record.study_instance_uid)
        if len(calls) <= 3:
            raise sqlite3.OperationalError("database is locked")
        return real(self, record, **kwargs)

    monkeypatch.setattr(Catalog, "add_object", flaky)
    catalog, pipe = make(data_dir)
    item = pipe.receive((SAMPLES / GOOD).read_bytes())
    with pytest.raises(TransientError) as info:
        pipe.process_safely(item)
    assert isinstance(info.value.cause, sqlite3.OperationalError)
    assert str(info.value) == "OperationalError: database is locked"
    assert item.path.exists() and catalog.received_state(item.id) == "spooled"
    drainer = Drainer(pipe, catalog)
    drain(drainer, lambda: catalog.received_state(item.id) == "done")
    assert len(calls) == 4  # one above, two more failures in the loop, then the success
    assert [r["outcome"] for r in catalog.received_rows()] == ["new"]
    assert catalog.count_objects() == 1 and catalog.quarantine_rows() == []
    assert list((data_dir / "spool").iterdir()) == []
    catalog.close()


def test_one_failing_object_does_not_hold_up_the_others(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = {"on": True}
    bad_sha: list[str] = []
    real = Catalog.add_object

    def disk_trouble(self: Catalog, record: Any, **kwargs: Any) -> str:
        if broken["on"] and kwargs.get("content_sha256") in bad_sha:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, record, **kwargs)

    monkeypatch.setattr(Catalog, "add_object", disk_trouble)
    catalog, pipe = make(data_dir)
    bad = pipe.receive((SAMPLES / GOOD).read_bytes())
    bad_sha.append(bad.sha256)
    good = pipe.receive((SAMPLES / OTHER).read_bytes())
    drainer = Drainer(pipe, catalog)
    drain(drainer, lambda: catalog.received_state(good.id) == "done")
    assert catalog.received_state(bad.id) == "spooled" and bad.path.exists()
    assert drainer.waiting[bad.id].attempts >= 1
    broken["on"] = False  # the cause is gone
    drain(drainer, lambda: catalog.received_state(bad.id) == "done")
    assert sorted(r["outcome"] for r in catalog.received_rows()) == ["new", "new"]
    assert list((data_dir / "spool").iterdir()) == []
    catalog.close()


def test_failed_transaction_reports_the_real_error(data_dir: Path) -> None:
    """SQLite rolls back by itself on SQLITE_FULL: the error raised is the disk-full one."""
    catalog, pipe = make(data_dir)
    item = pipe.receive((SAMPLES / GOOD).read_bytes())
    record = extract_bytes(item.path.read_bytes(), source=item.source)
    # a record that needs pages the file does not have (a compressed record of a few hundred
    # bytes fits in the pages an empty catalog already has)
    record = record.with_changes(study_description=random.Random(0).randbytes(64_000).hex())
    pages = catalog._conn.execute("PRAGMA page_count").fetchone()[0]
    catalog._conn.execute(f"PRAGMA max_page_count = {pages}")  # the catalog file cannot grow
    with pytest.raises(sqlite3.OperationalError, match="^database or disk is full$"):
        catalog.add_object(record, content_sha256=item.sha256, received_id=item.id)
    assert not catalog._conn.in_transaction
    catalog._conn.execute("PRAGMA max_page_count = 1073741823")
    assert catalog.add_object(record, content_sha256=item.sha256, received_id=item.id) == "new"
    catalog.close()


# -- a real full disk ---------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 5 MiB file system (tmpfs), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs `mount -t tmpfs`, which needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here (unprivileged container?): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory: Path) -> Path:
    """A ballast file taking every free byte of ``directory``'s file system."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 14, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (directory / "probe").write_bytes(b"x" * 8192)
    (directory / "probe").unlink(missing_ok=True)
    return ballast


def test_disk_full_then_freed_object_catalogued_without_restart(small_fs: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    data_dir = small_fs / "data"
    catalog, pipe = make(data_dir)
    raw = (SAMPLES / GOOD).read_bytes()
    item = pipe.receive(raw, sop_instance_uid="1.2.3", calling_ae_title="PACS")  # the spool write works...
    ballast = fill(small_fs)  # ...then the disk is full before the catalog write
    proc = Processor(data_dir)
    proc.start()
    seen: list[str] = []
    try:
        proc.poke()

        def failed_once() -> bool:
            seen.append(capfd.readouterr().err)
            return "failed (attempt 1)" in "".join(seen)

        wait_until(failed_once, "the processing process meets the full disk")
        log = "".join(seen)
        assert "database or disk is full" in log or "No space left on device" in log, log
        assert "cannot rollback" not in log
        assert item.path.exists() and catalog.received_state(item.id) == "spooled"
        ballast.unlink()  # the cause is gone: no restart
        wait_until(lambda: catalog.received_state(item.id) == "done", "the object is catalogued")
        assert proc.pid is not None and proc._proc.is_alive()
    finally:
        proc.stop(drain_s=1)
    assert list((data_dir / "spool").iterdir()) == []
    (row,) = catalog.object_rows()
    assert row["sha256"] == item.sha256
    assert (data_dir / row["raw_path"]).read_bytes() == raw
    assert [r["outcome"] for r in catalog.received_rows()] == ["new"]
    assert catalog.count_studies() == 1 and catalog.quarantine_rows() == []
    catalog.close()


def test_disk_full_catalog_write_raises_the_disk_error(small_fs: Path) -> None:
    data_dir = small_fs / "data"
    catalog, pipe = make(data_dir)
    item = pipe.receive((SAMPLES / GOOD).read_bytes())
    ballast = fill(small_fs)
    with pytest.raises(TransientError) as info:
        pipe.process_safely(item)
    assert str(info.value) in ("OperationalError: database or disk is full",
                               "OSError: [ENOSPC] No space left on device"), str(info.value)
    assert catalog.received_state(item.id) == "spooled" and item.path.exists()
    ballast.unlink()
    assert pipe.process_safely(item) == "new"
    assert list((data_dir / "spool").iterdir()) == []
    catalog.close()


# -- killed imports ------------------------------------------------------------------------------
CLAIMANT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from dosereg.ingest import Catalog, Pipeline
    from dosereg.ingest.catalog import catalog_path
    data_dir = Path(sys.argv[1])
    catalog = Catalog(catalog_path(data_dir))
    pipe = Pipeline(data_dir, catalog)
    item = pipe.receive(Path(sys.argv[2]).read_bytes(), source="claimed.dcm", state="importing")
    child = 0
    if sys.argv[3] == "fork":  # like the import's process pool
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # the fork hooks have run: say so, then outlive the parent
            os.write(w, b"x")
            time.sleep(300)
            os._exit(0)
        os.read(r, 1)
    print(item.id, child, flush=True)
    time.sleep(300)
""")


def start_claimant(data_dir: Path, source: Path, fork: bool) -> tuple[subprocess.Popen[str], int, int]:
    """A process that took an object in as ``importing`` and sits on it (an import mid-run)."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(data_dir), str(source), "fork" if fork else "-"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the claimant did not start"
    rid, child = (int(v) for v in line.split())
    return proc, rid, child


@pytest.mark.parametrize("fork", [False, True], ids=["plain", "with-forked-worker"])
def test_killed_import_is_taken_over_at_once(data_dir: Path, fork: bool) -> None:
    data_dir.mkdir(parents=True)
    proc, rid, child = start_claimant(data_dir, SAMPLES / GOOD, fork)
    catalog, pipe = make(data_dir)
    try:
        assert pipe.recover() == []  # alive: its claim is left to it
        assert catalog.received_state(rid) == "importing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if fork:  # the forked worker outlives it, and must not keep the claim
            os.kill(child, 0)
        (taken,) = pipe.recover()  # at once: no 600 s wait
        assert taken.id == rid and taken.source == "claimed.dcm"
        assert pipe.process_safely(taken) == "new"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if child:
            os.kill(child, signal.SIGKILL)  # not ours to wait for: the claimant's child
    assert list((data_dir / "spool").iterdir()) == []
    assert catalog.count_objects() == 1
    assert [r["state"] for r in catalog.received_rows()] == ["done"]
    catalog.close()


def test_killed_import_taken_over_by_a_running_listener(data_dir: Path) -> None:
    """While a listener's processing process runs, a killed import's objects do not wait for a restart."""
    data_dir.mkdir(parents=True)
    catalog, pipe = make(data_dir)
    proc = Processor(data_dir)
    proc.start()
    claimant, rid, _ = start_claimant(data_dir, SAMPLES / GOOD, False)
    try:
        proc.poke()
        assert catalog.received_state(rid) == "importing"
        claimant.send_signal(signal.SIGKILL)
        claimant.wait(timeout=30)
        wait_until(lambda: catalog.received_state(rid) == "done", "the processing process adopts it")
    finally:
        if claimant.poll() is None:
            claimant.kill()
            claimant.wait(timeout=30)
        proc.stop(drain_s=1)
    assert list((data_dir / "spool").iterdir()) == []
    assert [r["outcome"] for r in catalog.received_rows()] == ["new"]
    catalog.close()


def test_dead_writers_temporary_files_removed_at_once(data_dir: Path) -> None:
    catalog, pipe = make(data_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    orphan = data_dir / "spool" / f".tmp-20260101T000000000000-{pid}-000001-0123456789ab.dcm"
    orphan.write_bytes(b"half")
    mine = data_dir / "spool" / f".tmp-20260101T000000000000-{os.getpid()}-000002-0123456789ab.dcm"
    mine.write_bytes(b"half")  # a live writer's (this process)
    assert pipe.recover() == []
    assert not orphan.exists() and mine.exists()
    catalog.close()


@pytest.mark.parametrize("jobs", [1, 2], ids=["in-process", "worker-pool"])
def test_import_quarantines_an_object_whose_extraction_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              jobs: int) -> None:
    from dosereg.conf.config import Config, StorageSettings
    from dosereg.ingest import import_paths
    from dosereg.ingest import importer as importer_module

    real = extract_bytes

    def poisoned(data: bytes, **kwargs: Any) -> Any:
        if str(kwargs.get("source", "")).endswith("ct_rt_sim.dcm"):
            raise RecursionError("maximum recursion depth exceeded")
        return real(data, **kwargs)

    monkeypatch.setattr(importer_module, "extract_bytes", poisoned)  # forked workers inherit it
    monkeypatch.setattr(pipeline_module, "extract_bytes", poisoned)
    data = tmp_path / "data"
    cfg = Config(storage=StorageSettings(data_dir=str(data)))
    summary = import_paths(cfg, [SAMPLES], jobs=jobs)
    assert summary.ok and summary.quarantined[PROCESSING_ERROR] == 1
    assert summary.imported == len(list(SAMPLES.glob("ct_*.dcm"))) - 2  # all but the poisoned and truncated
    catalog = Catalog(catalog_path(data))
    try:
        (row,) = [r for r in catalog.quarantine_rows() if r["error_code"] == PROCESSING_ERROR]
        assert row["message"].startswith("extraction raised RecursionError: maximum recursion depth exceeded (at ")
        assert row["message"].endswith(" in poisoned)")
        assert [r["source"] for r in catalog.received_rows() if r["outcome"] == f"quarantined:{PROCESSING_ERROR}"] \
            == [str(SAMPLES / "ct_rt_sim.dcm")]
        assert {r["state"] for r in catalog.received_rows()} == {"done"}
    finally:
        catalog.close()
    assert list((data / "spool").iterdir()) == []


# -- objects the processing process dies or hangs on ----------------------------------------------
@pytest.mark.parametrize("how", ["crash", "hang"])
def test_object_that_kills_the_processing_process_is_quarantined(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 how: str) -> None:
    """A crash in a library (here os._exit) or a hang on one object: restarted, then quarantined; others pass."""
    from dosereg.ingest import processor as processor_module

    real = extract_bytes
    poison = (SAMPLES / GOOD).read_bytes()

    def deadly(data: bytes, **kwargs: Any) -> Any:
        if data == poison:
            if how == "crash":
                os._exit(70)
            time.sleep(3600)
        return real(data, **kwargs)

    monkeypatch.setattr(pipeline_module, "extract_bytes", deadly)
    monkeypatch.setattr(processor_module, "STUCK_AFTER_S", 1.0)
    monkeypatch.setattr(processor_module, "WATCH_EVERY_S", 0.2)
    catalog, pipe = make(data_dir)
    bad = pipe.receive(poison)
    good = pipe.receive((SAMPLES / OTHER).read_bytes())
    proc = Processor(data_dir)
    proc._ctx = processor_module.multiprocessing.get_context("fork")  # the child keeps the patches
    proc.start()
    try:
        proc.poke()
        wait_until(lambda: catalog.received_state(bad.id) == "done", "the deadly object is quarantined")
        wait_until(lambda: catalog.received_state(good.id) == "done", "the next object is processed")
    finally:
        proc.stop(drain_s=1)
    (row,) = catalog.quarantine_rows()
    assert row["error_code"] == PROCESSING_ERROR and row["name"] == bad.name
    assert row["message"] == ("processing raised ProcessingDied: the processing process died or hung (over 1 s) "
                              "2 times while processing it")
    assert [r["outcome"] for r in catalog.received_rows()] == [f"quarantined:{PROCESSING_ERROR}", "new"]
    assert list((data_dir / "spool").iterdir()) == []
    assert (data_dir / "processing.current").read_text().split() == ["0", "0"]
    catalog.close()
