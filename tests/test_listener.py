"""``dosereg listen`` over real loopback sockets: dcmtk and pynetdicom senders, a real subprocess.

Everything runs on the project's own ``sample_dicom/`` files (and distinct copies of one of
them); ``tests/test_conformance.py`` runs the ``check_*`` scenarios below on the vendor
corpus too. Helpers here (``Listener``, ``synthetic``, ``send_pynetdicom``...) are shared
with the other listener test modules.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    Verification,
    XRayRadiationDoseSRStorage,
)

from .conftest import (
    ROOT,
    SAMPLE_RDSR,
    DoseSet,
    distinct_copies,
    jsonl,
    run_cli,
    sample_expected,
    sample_set,
    validate_record,
)

# events in one copy made by ``synthetic`` (the sample's own record says how many)
SAMPLE_EVENTS: int = sample_expected(SAMPLE_RDSR.stem)["record"]["total_events"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package dcmtk; .ci/run installs it)")
    return path


class Listener:
    """``python -m dosereg.cli listen`` as a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, *, config: Path | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, ae_title: str = "DOSEREG") -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.ae_title = ae_title
        self.log_path = data_dir.parent / f"listener-{self.port}-{time.monotonic_ns()}.log"
        args = [sys.executable, "-m", "dosereg.cli", "listen", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(data_dir), "--ae-title", ae_title, "-v"]
        if config is not None:
            args += ["--config", str(config)]
        full_env = dict(os.environ)
        full_env.pop("DOSEREG_CONFIG", None)
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"listener exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise AssertionError(f"listener did not accept connections within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._log.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            try:
                self.terminate(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            self._log.close()


def db_rows(data_dir: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Query the catalog read-only (it is WAL: readable while the listener writes)."""
    path = data_dir / "catalog.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def study_records(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Every merged study record of the catalog (read-only, as ``dosereg studies`` reads it), by UID."""
    from dosereg.conf.config import Config, StorageSettings
    from dosereg.ingest import open_catalog

    catalog = open_catalog(Config(storage=StorageSettings(data_dir=str(data_dir))), readonly=True)
    try:
        return {str(r.study_instance_uid): r.to_dict() for r in catalog.iter_studies()}
    finally:
        catalog.close()


def _spooled_files(data_dir: Path) -> list[Path]:
    spool = data_dir / "spool"
    return [p for p in spool.iterdir() if not p.name.startswith(".")] if spool.is_dir() else []


def wait_processed(data_dir: Path, received: int, timeout: float = 120) -> None:
    """Until at least ``received`` objects are in the ledger, none is waiting, and their files have moved.

    The catalog is written before an object's file leaves the spool (so that a crash in
    between is recovered), so the ledger alone may say "done" a moment before the file is in
    ``objects/`` or ``quarantine/``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            n = db_rows(data_dir, "SELECT COUNT(*), SUM(state = 'spooled') FROM received")
        except sqlite3.OperationalError:
            n = []
        if n and n[0][0] >= received and not n[0][1] and not _spooled_files(data_dir):
            return
        time.sleep(0.1)
    raise AssertionError(f"catalog did not process {received} objects within {timeout} s: {n}")


def synthetic(out: Path, n: int, source: Path = SAMPLE_RDSR) -> list[tuple[Path, str, str]]:
    """``n`` distinct copies of a sample, each its own study: [(path, study uid, sop uid)] (in tmp only)."""
    return distinct_copies(out, n, source)


def reencoded(ds: Any, syntax: str) -> Any:
    """``ds`` written in ``syntax`` and read back (pynetdicom sends a dataset in its own encoding)."""
    from pydicom.filewriter import dcmwrite

    ds.file_meta.TransferSyntaxUID = syntax
    buf = BytesIO()
    if syntax == ExplicitVRBigEndian:
        dcmwrite(buf, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buf.getvalue()))


def scu_ae(ae_title: str = "TESTSCU", contexts: list[Any] | None = None,
           syntaxes: list[str] | None = None) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for cx in contexts or [XRayRadiationDoseSRStorage, Verification]:
        ae.add_requested_context(cx, syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def send_pynetdicom(port: int, datasets: list[Any], *, ae_title: str = "TESTSCU",
                    syntaxes: list[str] | None = None) -> list[int | None]:
    """C-STORE each dataset on one association; the status of each (None: no response)."""
    ae = scu_ae(ae_title, syntaxes=syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="DOSEREG")
    assert assoc.is_established, "association not established"
    statuses: list[int | None] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        assoc.release()
    return statuses


def storescu(port: int, files: list[Path], *, aet: str = "STORESCU", extra: list[str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("storescu"), "-aet", aet, "-aec", "DOSEREG", *(extra or []), "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "TCP_NODELAY": "1"},
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def listener(data_dir: Path) -> Iterator[Listener]:
    with Listener(data_dir) as lst:
        yield lst


# ---------------------------------------------------------------------------------------------


def test_echoscu_and_startup_line(listener: Listener, data_dir: Path) -> None:
    r = subprocess.run([need("echoscu"), "-aec", "DOSEREG", "127.0.0.1", str(listener.port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert listener.terminate() == 0
    log = listener.log()
    line = next(ln for ln in log.splitlines() if "AE title DOSEREG on 127.0.0.1:" in ln)
    assert f"127.0.0.1:{listener.port}" in line
    assert str(data_dir.resolve()) in line
    assert "allowed calling AE titles: any" in line
    assert "any calling AE title is accepted" in log  # the warning
    assert "stopped" in log.splitlines()[-1]


def check_storescu_twice(dose: DoseSet, listener: Listener, data_dir: Path) -> None:
    """Every file of the set by storescu, twice: stored once, refused ones quarantined with a reason."""
    files = [*dose.ct_files, *dose.refused]
    r = storescu(listener.port, files)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_processed(data_dir, len(files))
    studies = study_records(data_dir)
    assert len(studies) == dose.n_studies  # several objects of one study make one study
    multi = studies[dose.multi_study]
    assert multi["total_events"] == dose.multi_events
    assert len(multi["events"]) == dose.multi_events
    assert len(multi["dose_objects"]) == dose.multi_objects
    assert multi["total_dlp_mGycm"] == pytest.approx(dose.multi_dlp_mGycm, rel=1e-6)
    assert db_rows(data_dir, "SELECT COUNT(*) FROM objects")[0][0] == len(dose.ct_files)
    # the non-CT objects: answered Success, kept in quarantine with a reason file
    quarantined = db_rows(data_dir, "SELECT name, error_code FROM quarantine")
    assert len(quarantined) == len(dose.refused)
    for name, code in quarantined:
        assert (data_dir / "quarantine" / name).is_file()
        reason = (data_dir / "quarantine" / f"{name}.reason.txt").read_text()
        assert f"error_code: {code}" in reason and "message: " in reason
    assert sorted(p.name for p in (data_dir / "spool").iterdir()) == []

    # a second full send changes nothing
    objects_before = db_rows(data_dir, "SELECT sop_instance_uid, sha256, seq FROM objects ORDER BY seq")
    r = storescu(listener.port, files)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_processed(data_dir, 2 * len(files))
    assert study_records(data_dir) == studies
    assert db_rows(data_dir, "SELECT sop_instance_uid, sha256, seq FROM objects ORDER BY seq") == objects_before
    assert len(db_rows(data_dir, "SELECT * FROM quarantine")) == len(dose.refused)
    outcomes = [o for (o,) in db_rows(data_dir, "SELECT outcome FROM received ORDER BY id")]
    assert outcomes[len(files):] == ["duplicate"] * len(files)
    assert len(list((data_dir / "quarantine").iterdir())) == 2 * len(dose.refused)  # objects + reason files
    assert len(list((data_dir / "objects").rglob("*.dcm"))) == len(dose.ct_files)
    assert listener.terminate() == 0


def test_storescu_samples_twice(listener: Listener, data_dir: Path) -> None:
    check_storescu_twice(sample_set(), listener, data_dir)


def test_four_associations_at_once(tmp_path: Path, listener: Listener, data_dir: Path) -> None:
    made = synthetic(tmp_path / "syn", 40)
    groups = [[p for p, _, _ in made[i::4]] for i in range(4)]
    procs = [
        subprocess.Popen([need("storescu"), "-aet", f"SENDER{i}", "-aec", "DOSEREG", "127.0.0.1",
                          str(listener.port), *map(str, g)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i, g in enumerate(groups)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    wait_processed(data_dir, 40)
    rows = db_rows(data_dir, "SELECT study_instance_uid, n_objects FROM studies")
    assert sorted(rows) == sorted((study, 1) for _, study, _ in made)
    callers = {c for (c,) in db_rows(data_dir, "SELECT DISTINCT calling_ae_title FROM received")}
    assert callers == {"SENDER0", "SENDER1", "SENDER2", "SENDER3"}


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian],
    ids=["implicit", "explicit", "deflated", "big-endian"],
)
def test_transfer_syntaxes(tmp_path: Path, listener: Listener, data_dir: Path, syntax: str) -> None:
    (path, study, sop), = synthetic(tmp_path / "syn", 1)
    ds = reencoded(pydicom.dcmread(path), syntax)
    statuses = send_pynetdicom(listener.port, [ds], syntaxes=[syntax])
    assert statuses == [0x0000]
    wait_processed(data_dir, 1)
    (raw_path,) = db_rows(data_dir, "SELECT raw_path FROM objects WHERE sop_instance_uid = ?", (sop,))[0]
    kept = pydicom.dcmread(data_dir / raw_path)
    assert kept.file_meta.TransferSyntaxUID == syntax
    assert kept.SOPInstanceUID == sop
    record = study_records(data_dir)[study]
    assert record["total_events"] == SAMPLE_EVENTS
    assert record["dose_objects"][0]["sop_instance_uid"] == sop


def test_unsupported_sop_class_refused_at_negotiation(listener: Listener) -> None:
    ae = scu_ae(contexts=[CTImageStorage, XRayRadiationDoseSRStorage])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="DOSEREG")
    try:
        assert assoc.is_established
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        assert accepted == {XRayRadiationDoseSRStorage}
        assert rejected == {CTImageStorage}
    finally:
        assoc.release()


def _write_config(path: Path, listener_section: str) -> Path:
    path.write_text("[listener]\n" + listener_section)
    return path


def test_refused_calling_ae_title(tmp_path: Path, data_dir: Path) -> None:
    config = _write_config(tmp_path / "c.toml", 'allowed_calling_ae_titles = ["PACS1", "PACS2"]\n')
    (path, _, sop), = synthetic(tmp_path / "syn", 1)
    with Listener(data_dir, config=config) as lst:
        ae = scu_ae("INTRUDER")
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert not assoc.is_established and assoc.is_rejected
        r = storescu(lst.port, [path], aet="INTRUDER")
        assert r.returncode != 0
        assert send_pynetdicom(lst.port, [pydicom.dcmread(path)], ae_title="PACS2") == [0x0000]
        wait_processed(data_dir, 1)
        assert lst.terminate() == 0
        log = lst.log()
    assert "allowed calling AE titles: PACS1, PACS2" in log
    assert "refused association from INTRUDER" in log and "allowed_calling_ae_titles" in log
    assert [r[0] for r in db_rows(data_dir, "SELECT sop_instance_uid FROM received")] == [sop]


def test_require_called_ae_title(tmp_path: Path, data_dir: Path) -> None:
    config = _write_config(tmp_path / "c.toml", "require_called_ae_title = true\n")
    with Listener(data_dir, config=config) as lst:
        ae = scu_ae()
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="SOMEONE")
        assert assoc.is_rejected
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert lst.terminate() == 0
        assert "called AE title 'SOMEONE' is not ours" in lst.log()


def test_injected_write_failure_answers_out_of_resources(tmp_path: Path, data_dir: Path) -> None:
    fault = tmp_path / "disk-full"
    made = synthetic(tmp_path / "syn", 5)
    datasets = [pydicom.dcmread(p) for p, _, _ in made]
    with Listener(data_dir, env={"DOSEREG_FAULT_WRITE_FILE": str(fault)}) as lst:
        assert send_pynetdicom(lst.port, datasets[:2]) == [0x0000, 0x0000]
        wait_processed(data_dir, 2)
        deadline = time.monotonic() + 30  # ... and their files have moved out of the spool
        while any((data_dir / "spool").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        fault.touch()
        assert send_pynetdicom(lst.port, datasets[2:]) == [0xA700, 0xA700, 0xA700]
        # nothing half-written left in the spool
        assert [p.name for p in (data_dir / "spool").iterdir()] == []
        fault.unlink()
        assert send_pynetdicom(lst.port, datasets[2:]) == [0x0000, 0x0000, 0x0000]
        wait_processed(data_dir, 5)
        assert lst.terminate() == 0
        assert "answered 0xA700 Out of Resources" in lst.log()
    kept = {sop for (sop,) in db_rows(data_dir, "SELECT sop_instance_uid FROM objects")}
    assert kept == {sop for _, _, sop in made}
    assert db_rows(data_dir, "SELECT COUNT(*) FROM received")[0][0] == 5


def test_sigterm_finishes_inflight_association(tmp_path: Path, data_dir: Path) -> None:
    made = synthetic(tmp_path / "syn", 3)
    lst = Listener(data_dir)
    try:
        ae = scu_ae()
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(made[0][0])).Status == 0x0000
        lst.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # the open association is still served; new ones are not accepted
        assert assoc.send_c_store(pydicom.dcmread(made[1][0])).Status == 0x0000
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", lst.port), timeout=2).close()
        assoc.release()
        assert lst.proc.wait(timeout=60) == 0
    finally:
        lst.kill()
    kept = {sop for (sop,) in db_rows(data_dir, "SELECT sop_instance_uid FROM objects")}
    assert kept == {made[0][2], made[1][2]}


def check_studies_json_while_listening(dose: DoseSet, listener: Listener, data_dir: Path) -> None:
    files = list(dose.ct_files)
    r = storescu(listener.port, files)
    assert r.returncode == 0, r.stderr
    wait_processed(data_dir, len(files))
    out = run_cli("studies", "--json", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stderr
    records = jsonl(out.stdout)
    assert len(records) == dose.n_studies
    uids = [r["study_instance_uid"] for r in records]
    assert uids == sorted(uids)
    for r in records:
        validate_record(r)
    multi = next(r for r in records if r["study_instance_uid"] == dose.multi_study)
    assert multi["total_events"] == dose.multi_events
    assert listener.proc.poll() is None  # still running
    assert listener.terminate() == 0


def test_studies_json_while_listening(listener: Listener, data_dir: Path) -> None:
    check_studies_json_while_listening(sample_set(), listener, data_dir)


def test_tls_with_client_certificates(tmp_path: Path, data_dir: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the throw-away CA")
    import ssl

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("testscu.example")
    cert, key, ca_pem = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    config = _write_config(
        tmp_path / "c.toml",
        f'tls_certificate = "{cert}"\ntls_private_key = "{key}"\ntls_ca_certificates = "{ca_pem}"\n',
    )
    (path, _, sop), = synthetic(tmp_path / "syn", 1)
    with Listener(data_dir, config=config) as lst:
        good = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(good)
        client_cert.configure_cert(good)
        ae = scu_ae()
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="DOSEREG", tls_args=(good, "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        assoc.release()

        no_client_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(no_client_cert)
        assoc = scu_ae().associate("127.0.0.1", lst.port, ae_title="DOSEREG",
                                   tls_args=(no_client_cert, "127.0.0.1"))
        assert not assoc.is_established

        plain = scu_ae().associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert not plain.is_established
        wait_processed(data_dir, 1)
        assert lst.terminate() == 0
        assert "over TLS (client certificates required)" in lst.log()
    assert [s for (s,) in db_rows(data_dir, "SELECT sop_instance_uid FROM objects")] == [sop]


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = run_cli("listen", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "d"),
                    timeout=60)
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_threads_of_sender(tmp_path: Path, listener: Listener, data_dir: Path) -> None:
    """pynetdicom senders on four threads at once, each its own association."""
    made = synthetic(tmp_path / "syn", 20)
    results: dict[int, list[int | None]] = {}

    def run(i: int) -> None:
        results[i] = send_pynetdicom(listener.port, [pydicom.dcmread(p) for p, _, _ in made[i::4]],
                                     ae_title=f"THREAD{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(s == [0] * len(made[i::4]) for i, s in results.items())
    wait_processed(data_dir, 20)
    assert db_rows(data_dir, "SELECT COUNT(*) FROM studies")[0][0] == 20


def _associate_once_free(port: int, title: str, timeout: float = 20) -> Any:
    """An association as soon as the listener's one slot is free.

    A slot frees once the server thread of the connection holding it has ended: the previous
    association's, or the readiness probe's (``Listener`` connects once to see it listening).
    """
    deadline = time.monotonic() + timeout
    while True:
        assoc = scu_ae(title).associate("127.0.0.1", port, ae_title="DOSEREG")
        if assoc.is_established or time.monotonic() > deadline:
            return assoc
        time.sleep(0.2)


def test_max_associations(tmp_path: Path, data_dir: Path) -> None:
    config = _write_config(tmp_path / "c.toml", "max_associations = 1\n")
    with Listener(data_dir, config=config) as lst:
        first = _associate_once_free(lst.port, "FIRST")
        assert first.is_established
        second = scu_ae("SECOND").associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert second.is_rejected
        first.release()
        third = _associate_once_free(lst.port, "THIRD")
        assert third.is_established
        third.release()
        assert lst.terminate() == 0
        # Refusals are logged once per address and reason within LOG_EVERY_S: when FIRST was
        # itself refused while the readiness probe still held the slot, that line stands for
        # SECOND's too (same address, same reason).
        log_text = lst.log()
        assert re.search(r"refused association from (SECOND|FIRST)\b", log_text), log_text
        assert "too many associations (listener.max_associations = 1)" in log_text


def check_import_while_listening_then_resend(dose: DoseSet, listener: Listener, data_dir: Path) -> None:
    """``import`` and the listener on one data directory: one catalog, each object once."""
    files = list(dose.ct_files)
    n = len(files)
    r = run_cli("import", *map(str, files), "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(f"imported {n}, already known 0")
    r2 = storescu(listener.port, files)
    assert r2.returncode == 0, r2.stderr
    wait_processed(data_dir, 2 * n)
    outcomes = [o for (o,) in db_rows(data_dir, "SELECT outcome FROM received ORDER BY id")]
    assert outcomes == ["new"] * n + ["duplicate"] * n
    assert db_rows(data_dir, "SELECT COUNT(*) FROM studies")[0][0] == dose.n_studies
    assert listener.terminate() == 0


def test_import_while_listening_then_resend(listener: Listener, data_dir: Path) -> None:
    check_import_while_listening_then_resend(sample_set(), listener, data_dir)


def test_bad_settings_are_one_clear_line(tmp_path: Path, data_dir: Path) -> None:
    config = _write_config(tmp_path / "c.toml", 'allowed_calling_ae_titles = ["A_TITLE_FAR_TOO_LONG"]\n')
    r = run_cli("listen", "--config", str(config), "--port", str(free_port()), "--data-dir", str(data_dir),
                timeout=60)
    assert r.returncode == 2
    assert "listener.allowed_calling_ae_titles" in r.stderr and str(config) in r.stderr
    config = _write_config(tmp_path / "t.toml", 'tls_certificate = "/nonexistent/cert.pem"\n')
    r = run_cli("listen", "--config", str(config), "--port", str(free_port()), "--data-dir", str(data_dir),
                timeout=60)
    assert r.returncode == 2 and "listener.tls_private_key" in r.stderr
    assert "Traceback" not in r.stderr


def test_one_listener_per_data_directory(listener: Listener, data_dir: Path) -> None:
    r = run_cli("listen", "--host", "127.0.0.1", "--port", str(free_port()), "--data-dir", str(data_dir),
                timeout=60)
    assert r.returncode == 2
    assert "data directory in use by another dosereg listen" in r.stderr
    assert listener.proc.poll() is None


def test_patient_radiation_dose_sr_accepted_and_quarantined(tmp_path: Path, listener: Listener,
                                                            data_dir: Path) -> None:
    """Patient Radiation Dose SR (a summary) is accepted, answered Success and quarantined with a reason."""
    from pynetdicom.sop_class import PatientRadiationDoseSRStorage  # type: ignore[attr-defined]

    (path, _, sop), = synthetic(tmp_path / "syn", 1)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PatientRadiationDoseSRStorage
    ae = scu_ae(contexts=[PatientRadiationDoseSRStorage])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="DOSEREG")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    wait_processed(data_dir, 1)
    ((name, code, q_sop),) = db_rows(data_dir, "SELECT name, error_code, sop_instance_uid FROM quarantine")
    assert q_sop == sop
    assert (data_dir / "quarantine" / name).is_file()
    assert f"error_code: {code}" in (data_dir / "quarantine" / f"{name}.reason.txt").read_text()
    assert db_rows(data_dir, "SELECT COUNT(*) FROM objects")[0][0] == 0


def test_no_patient_identifiers_in_logs_above_debug(listener: Listener, data_dir: Path) -> None:
    check_no_patient_identifiers_in_logs(sample_set(), listener, data_dir)


def check_no_patient_identifiers_in_logs(dose: DoseSet, listener: Listener, data_dir: Path) -> None:
    files = [*dose.ct_files, *dose.refused]
    identifiers = set()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 4:
                identifiers.add(value)
    assert identifiers
    r = storescu(listener.port, files)
    assert r.returncode == 0, r.stderr
    wait_processed(data_dir, len(files))
    assert listener.terminate() == 0
    log = listener.log()  # the listener runs with -v (INFO)
    assert "stored " in log
    leaked = sorted(i for i in identifiers if i in log)
    assert not leaked, f"patient identifiers in the INFO log: {leaked}"
