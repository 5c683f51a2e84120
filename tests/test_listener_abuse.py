"""Raw-socket attacks on a real ``dosereg listen``: during each, an allowed PACS still stores.

Attackers connect from other loopback addresses (127.0.0.2 ...), the PACS from 127.0.0.1, so
the per-address limit is what it is on a hospital network. The listener's memory is read
from /proc/<pid>/status (VmRSS) before and after each attack. Shared raw-PDU helpers here
are used by ``test_listener_limits``.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode

from .conftest import ROOT
from .test_listener import Listener, db_rows, scu_ae, wait_processed

SAMPLE = ROOT / "sample_dicom" / "ct_siemens_single_source.dcm"
RDSR = "1.2.840.10008.5.1.4.1.1.88.67"
VERIFICATION = "1.2.840.10008.1.1"
PACS = "PACS"

CONFIG = """\
[listener]
allowed_calling_ae_titles = ["PACS", "OTHER"]
max_associations = 10
max_associations_per_address = 4
reserved_for_allowed = 2
association_deadline_s = 2
pdu_deadline_s = 2
max_pdu_size = 65536
max_pending_bytes = {pending}
"""


# -- raw PDUs (PS3.8 9.3) ----------------------------------------------------------------------
def _item(kind: int, value: bytes) -> bytes:
    return bytes((kind, 0)) + len(value).to_bytes(2, "big") + value


def associate_rq(calling: bytes = b"PACS", called: bytes = b"DOSEREG",
                 abstract: str = RDSR, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """An A-ASSOCIATE-RQ with one presentation context (ID 1); AE fields are raw bytes."""
    body = (b"\x00\x01\x00\x00" + called.ljust(16, b" ")[:16] + calling.ljust(16, b" ")[:16] + b"\0" * 32
            + _item(0x10, b"1.2.840.10008.3.1.1.1")
            + _item(0x20, b"\x01\0\0\0" + _item(0x30, abstract.encode()) + _item(0x40, syntax.encode()))
            + _item(0x50, _item(0x51, (65536).to_bytes(4, "big"))))
    return b"\x01\x00" + len(body).to_bytes(4, "big") + body


def p_data(control: int, fragment: bytes, context_id: int = 1) -> bytes:
    pdv = (len(fragment) + 2).to_bytes(4, "big") + bytes((context_id, control)) + fragment
    return b"\x04\x00" + len(pdv).to_bytes(4, "big") + pdv


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(type, body) of the next PDU; (0, b"") when the peer closed."""
    head = _read(sock, 6)
    if len(head) < 6:
        return 0, b""
    return head[0], _read(sock, int.from_bytes(head[2:6], "big"))


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def associated(port: int, source: str = "127.0.0.2", calling: bytes = b"PACS") -> socket.socket:
    sock = connect(port, source)
    sock.sendall(associate_rq(calling))
    kind, body = read_pdu(sock)
    assert kind == 0x02, (kind, body)
    return sock


def store_command(sop_instance: str, sop_class: str = RDSR) -> bytes:
    """A C-STORE-RQ command set, implicit VR little endian, with its group length."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_instance
    raw = encode(cmd, True, True)
    assert raw is not None
    return b"\0\0\0\0" + (4).to_bytes(4, "little") + len(raw).to_bytes(4, "little") + raw


def store_response(sock: socket.socket) -> Dataset:
    """The C-STORE-RSP command set of the next P-DATA (one PDV, as dosereg sends it)."""
    kind, body = read_pdu(sock)
    assert kind == 0x04, (kind, body[:20])
    return read_dataset(BytesIO(body[6:]), True, True)


# -- the PACS and the listener ---------------------------------------------------------------
def sample(study: str | None = None, sop: str | None = None) -> Dataset:
    ds = pydicom.dcmread(SAMPLE)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SOPInstanceUID = sop or generate_uid()
    return ds


def pacs_store(port: int) -> str:
    """One normal C-STORE from the PACS (127.0.0.1): its SOP Instance UID, asserted Success."""
    ds = sample()
    ae = scu_ae(PACS, contexts=[RDSR])
    assoc = ae.associate("127.0.0.1", port, ae_title="DOSEREG")
    assert assoc.is_established, "the PACS could not associate"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert "Status" in status and status.Status == 0x0000, status
    return str(ds.SOPInstanceUID)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def catalogued(data_dir: Path, sops: list[str]) -> None:
    total = db_rows(data_dir, "SELECT COUNT(*) FROM received")[0][0]
    wait_processed(data_dir, total)
    kept = {s for (s,) in db_rows(data_dir, "SELECT sop_instance_uid FROM objects")}
    assert set(sops) <= kept, set(sops) - kept


def write_config(tmp_path: Path, pending: int = 16 * 1024 * 1024, extra: str = "") -> Path:
    path = tmp_path / "listener.toml"
    path.write_text(CONFIG.format(pending=pending) + extra)
    return path


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Listener]:
    with Listener(tmp_path / "data", config=write_config(tmp_path)) as lst:
        yield lst


class Attack:
    """Runs ``fn(stop)`` in ``n`` threads until stopped; counts what they saw."""

    def __init__(self, fn: object, n: int) -> None:
        self.stop = threading.Event()
        self.closed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=fn, args=(self, i), daemon=True) for i in range(n)]  # type: ignore[arg-type]

    def saw_close(self) -> None:
        with self.lock:
            self.closed += 1

    def __enter__(self) -> Attack:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


# -- the attacks ------------------------------------------------------------------------------
def test_oversized_announced_pdu_is_cut_before_its_body(guarded: Listener) -> None:
    before = rss_kib(guarded.proc.pid)
    streamed = []
    chunk = b"\xab" * 65536

    def flood(attack: Attack, i: int) -> None:
        while not attack.stop.is_set():
            sock = connect(guarded.port, f"127.0.0.{2 + i}")
            sent = 0
            try:
                sock.sendall(b"\x01\x00\xff\xff\xff\xff")  # an A-ASSOCIATE-RQ of 4 GiB
                while sent < 64 * 1024 * 1024 and not attack.stop.is_set():
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                attack.saw_close()
            finally:
                streamed.append(sent)
                sock.close()

    with Attack(flood, 3) as attack:
        time.sleep(1.0)
        sops = [pacs_store(guarded.port) for _ in range(3)]
        after = rss_kib(guarded.proc.pid)
    assert attack.closed >= 3
    # each connection was closed long before its 4 GiB (the kernel buffers a few MB at most)
    assert max(streamed) < 64 * 1024 * 1024
    assert after - before < 30 * 1024, (before, after)
    catalogued(guarded.data_dir, sops)
    assert "announced a PDU of 4294967295 bytes (at most 262144: an A-ASSOCIATE-RQ)" in guarded.log()


def test_oversized_p_data_after_association_is_aborted(guarded: Listener) -> None:
    sock = associated(guarded.port)
    sock.sendall(b"\x04\x00" + (1 << 31).to_bytes(4, "big") + b"\0" * 4096)
    kind, body = read_pdu(sock)
    assert (kind, body) == (0x07, b"\x00\x00\x02\x06")  # A-ABORT, service-provider, invalid PDU parameter
    assert read_pdu(sock) == (0, b"")
    sock.close()
    catalogued(guarded.data_dir, [pacs_store(guarded.port)])
    assert "(at most 65536: listener.max_pdu_size)" in guarded.log()


def test_trickling_senders_do_not_keep_the_pacs_out(guarded: Listener) -> None:
    rq = associate_rq()

    def trickle(attack: Attack, i: int) -> None:
        source = f"127.0.0.{2 + i % 4}"  # 4 addresses x 5 connections: more than every slot
        while not attack.stop.is_set():
            try:
                sock = connect(guarded.port, source)
            except OSError:
                time.sleep(0.2)
                continue
            try:
                for byte in rq:
                    if attack.stop.wait(0.5):
                        break
                    sock.sendall(bytes((byte,)))
            except OSError:
                attack.saw_close()
            finally:
                sock.close()

    before = rss_kib(guarded.proc.pid)
    with Attack(trickle, 20) as attack:
        time.sleep(1.5)
        sops = []
        for _ in range(3):
            sops.append(pacs_store(guarded.port))
            time.sleep(1.0)
        after = rss_kib(guarded.proc.pid)
    assert attack.closed >= 20  # every trickler was closed, none ever finished its request
    assert after - before < 30 * 1024, (before, after)
    catalogued(guarded.data_dir, sops)
    log = guarded.log()
    assert "no complete A-ASSOCIATE-RQ within listener.association_deadline_s (2 s)" in log
    assert "connections from this address already (listener.max_associations_per_address = 4)" in log


def test_garbage_bytes(guarded: Listener) -> None:
    def garbage(attack: Attack, i: int) -> None:
        rng = random.Random(i)
        while not attack.stop.is_set():
            try:
                sock = connect(guarded.port, f"127.0.0.{2 + i}")
                sock.sendall(rng.randbytes(rng.randint(1, 200000)))
                sock.settimeout(5)
                _read(sock, 1 << 20)
            except OSError:
                pass
            attack.saw_close()
            sock.close()

    before = rss_kib(guarded.proc.pid)
    with Attack(garbage, 3) as attack:
        time.sleep(1.0)
        sops = [pacs_store(guarded.port) for _ in range(3)]
        after = rss_kib(guarded.proc.pid)
    assert attack.closed >= 3
    assert after - before < 30 * 1024, (before, after)
    catalogued(guarded.data_dir, sops)
    assert guarded.proc.poll() is None


def test_too_many_associations_from_one_address(guarded: Listener) -> None:
    held = []
    for _ in range(4):
        held.append(associated(guarded.port, calling=b"OTHER"))
    fifth = connect(guarded.port)
    fifth.sendall(associate_rq(b"OTHER"))
    assert read_pdu(fifth) == (0, b"")  # closed before any DICOM exchange
    fifth.close()
    sops = [pacs_store(guarded.port) for _ in range(2)]
    for sock in held:
        sock.close()
    catalogued(guarded.data_dir, sops)


def test_reserved_slots_only_for_allowed_titles(guarded: Listener) -> None:
    # 8 silent connections (2 addresses x 4) take every general slot ...
    silent = [connect(guarded.port, f"127.0.0.{2 + i // 4}") for i in range(8)]
    time.sleep(0.5)
    # ... so an unknown title is refused, transiently, local limit exceeded
    intruder = connect(guarded.port, "127.0.0.5")
    intruder.sendall(associate_rq(b"INTRUDER"))
    assert read_pdu(intruder) == (0x03, b"\x00\x02\x03\x02")
    intruder.close()
    # ... while the PACS takes a reserved slot
    sops = [pacs_store(guarded.port)]
    for sock in silent:
        sock.close()
    catalogued(guarded.data_dir, sops)
    assert "only the 2 slot(s) reserved for allowed calling AE titles are left" in guarded.log()


@pytest.mark.parametrize("calling, called, reason, why", [
    (b"PACS\t", b"DOSEREG", 3, "calling AE title 'PACS\\t': byte 0x09 at position 5 is outside"),
    (b"PA\rCS", b"DOSEREG", 3, "byte 0x0D at position 3"),
    (b"PACS\n", b"DOSEREG", 3, "byte 0x0A at position 5"),
    (b"PA\\CS", b"DOSEREG", 3, "byte 0x5C at position 3"),
    ("PÄCS".encode("latin-1"), b"DOSEREG", 3, "byte 0xC4 at position 2"),
    (b"   ", b"DOSEREG", 3, "calling AE title '': it is empty"),
    (b"PACS", b"DOSE\nREG", 7, "called AE title 'DOSE\\nREG': byte 0x0A at position 5"),
])
def test_ae_titles_outside_the_repertoire_are_refused(guarded: Listener, calling: bytes, called: bytes,
                                                      reason: int, why: str) -> None:
    sock = connect(guarded.port)
    sock.sendall(associate_rq(calling, called))
    assert read_pdu(sock) == (0x03, bytes((0, 1, 1, reason)))  # rejected-permanent, service-user
    sock.close()
    guarded.terminate()
    log = guarded.log()
    line = next(x for x in log.splitlines() if "refused association from" in x)
    assert "WARNING dosereg.ingest.listener:" in line and "(127.0.0.2:" in line
    assert why in line, line
    assert f"(A-ASSOCIATE-RJ result 1 source 1 reason {reason})" in line
    assert not db_rows(guarded.data_dir, "SELECT * FROM received")


def _send_store(sock: socket.socket, sop_in_command: str, ds: Dataset) -> Dataset:
    sock.sendall(p_data(0x03, store_command(sop_in_command)))
    data = encode(ds, False, True)
    assert data is not None
    sock.sendall(p_data(0x02, data))
    return store_response(sock)


@pytest.mark.parametrize("command_uid, dataset_uid, study_uid, reason", [
    ("1.2.3\\1.2.4", "1.2.3\\1.2.4", None, "SOP Instance UID (0008,0018): 2 values, not 1"),
    ("1.2.3/4", "1.2.3/4", None, "Affected SOP Instance UID: char '/' not in [0-9.]"),
    ("1.2.3", "1.2.3", "1.2..3", "Study Instance UID (0020,000D): empty component"),
    ("1.2.3", "1.2.3", "1.2\n.3", "Study Instance UID (0020,000D): char 0x0A not in [0-9.]"),
    ("1" * 65, "1" * 65, None, "Affected SOP Instance UID: 65 chars, over 64"),
    ("1.2.3", "1.2.3", "1.2.3\\4.5", "Study Instance UID (0020,000D): 2 values, not 1"),
])
def test_invalid_uids_are_answered_and_not_kept(guarded: Listener, command_uid: str, dataset_uid: str,
                                                study_uid: str | None, reason: str) -> None:
    ds = sample(study=study_uid, sop=dataset_uid)
    sock = associated(guarded.port, source="127.0.0.1")
    try:
        rsp = _send_store(sock, command_uid, ds)
    finally:
        sock.close()
    assert rsp.Status == 0xC000
    assert rsp.ErrorComment == reason
    good = pacs_store(guarded.port)
    catalogued(guarded.data_dir, [good])
    assert db_rows(guarded.data_dir, "SELECT COUNT(*) FROM received")[0][0] == 1
    assert not list((guarded.data_dir / "spool").iterdir())


def test_implicit_vr_dataset_uids_are_read_too(guarded: Listener) -> None:
    sock = connect(guarded.port, "127.0.0.1")
    sock.sendall(associate_rq(syntax=ImplicitVRLittleEndian))
    assert read_pdu(sock)[0] == 0x02
    ds = sample(sop="1.2.3\\1.2.4")
    sock.sendall(p_data(0x03, store_command("1.2.3")))
    sock.sendall(p_data(0x02, encode(ds, True, True) or b""))
    rsp = store_response(sock)
    sock.close()
    assert (rsp.Status, rsp.ErrorComment) == (0xC000, "SOP Instance UID (0008,0018): 2 values, not 1")
