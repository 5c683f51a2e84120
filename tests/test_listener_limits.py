"""The guard's rules one by one: pure checks, the pynetdicom contract, memory, PDU deadlines, TLS."""

from __future__ import annotations

import shutil
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from dosereg.ingest import guard
from dosereg.ingest.storecheck import dataset_uids, uid_problem

from .test_listener import Listener
from .test_listener_abuse import (
    associate_rq,
    associated,
    catalogued,
    connect,
    p_data,
    pacs_store,
    read_pdu,
    sample,
    store_command,
    write_config,
)


def test_pynetdicom_still_has_what_the_guard_relies_on() -> None:
    assert guard.pynetdicom_contract() == []


@pytest.mark.parametrize("raw, problem", [
    (b"PACS            ", None),
    (b"PACS\0\0\0\0\0\0\0\0\0\0\0\0", None),  # NUL padding tolerated
    (b" MY SCANNER-1   ", None),
    (b"PACS\t           ", "byte 0x09 at position 5 is outside the DICOM default repertoire"),
    (b"A\\B             ", "byte 0x5C at position 2 is outside the DICOM default repertoire"),
    (b"\xc3\x84CS           ", "byte 0xC3 at position 1 is outside the DICOM default repertoire"),
    (b"                ", "it is empty"),
])
def test_ae_title_problem(raw: bytes, problem: str | None) -> None:
    assert guard.ae_title_problem(raw) == problem


@pytest.mark.parametrize("value, problem", [
    ("1.2.840.10008.5.1.4.1.1.88.67", None),
    ("1.2.3\0", None),
    (["1.2.3", "1.2.4"], "2 values, not 1"),
    ("1.2.3\\1.2.4\\1.5", "3 values, not 1"),
    ("", "empty"),
    (None, "missing"),
    ("1." + "2" * 63, "65 chars, over 64"),
    ("1.2.3/4", "char '/' not in [0-9.]"),
    ("1.2\n.3", "char 0x0A not in [0-9.]"),
    ("1..2", "empty component"),
    (".1.2", "empty component"),
    ("1.2.", "empty component"),
])
def test_uid_problem(value: object, problem: str | None) -> None:
    assert uid_problem(value) == problem


def test_dataset_uids_from_the_encoded_bytes_also_deflated() -> None:
    ds = sample(study="1.2..3", sop="9.8.7")
    raw = encode(ds, False, True)
    assert raw is not None
    want = {"SOP Class UID (0008,0016)": "1.2.840.10008.5.1.4.1.1.88.67",
            "SOP Instance UID (0008,0018)": "9.8.7", "Study Instance UID (0020,000D)": "1.2..3"}
    assert dataset_uids(raw, ExplicitVRLittleEndian) == want
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(raw) + packer.flush()
    assert dataset_uids(deflated, DeflatedExplicitVRLittleEndian) == want
    # a deflate bomb is inflated only as far as the UIDs need
    bomb = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = bomb.compress(b"\0" * (64 << 20)) + bomb.flush()
    assert dataset_uids(payload, DeflatedExplicitVRLittleEndian) == {}
    assert dataset_uids(b"\xff" * 100, ExplicitVRLittleEndian) == {}


def test_pdv_flags() -> None:
    body = p_data(0x03, b"abc")[6:] + p_data(0x00, b"defg")[6:] + p_data(0x02, b"h")[6:]
    assert guard.pdv_flags(body) == [(3, 0x03), (4, 0x00), (1, 0x02)]
    assert guard.pdv_flags(b"\x00\x00\xff\xff\x01\x02") == []


def _limits(**kw: object) -> guard.Limits:
    base: dict[str, object] = {"max_associations": 4, "max_associations_per_address": 3, "reserved_for_allowed": 2,
                               "allowed_calling_ae_titles": frozenset({"PACS"}), "max_pdu_size": 16384,
                               "max_pending_bytes": 1 << 20}
    base.update(kw)
    return guard.Limits(**base)  # type: ignore[arg-type]


def _rq_body(calling: bytes) -> bytes:
    return associate_rq(calling)[6:]


def test_gate_slots_reserve_and_per_address() -> None:
    gate = guard.Gate(_limits())
    a = [gate.open("10.0.0.1", 1000 + i) for i in range(3)]
    assert all(c is not None for c in a)
    assert gate.open("10.0.0.1", 1100) is None  # per address
    b = gate.open("10.0.0.2", 2000)  # general slots (4 - 2 reserved) are full: waits for its title
    c = gate.open("10.0.0.3", 3000)
    assert b is not None and c is not None and b.slot is None
    refusal = gate.admit(b, _rq_body(b"INTRUDER"))
    assert refusal is not None and (refusal.result, refusal.source, refusal.reason) == (2, 3, 2)
    assert "reserved" in refusal.why and refusal.calling == "INTRUDER"
    assert gate.admit(c, _rq_body(b"PACS")) is None and c.slot == guard.RESERVED
    assert gate.snapshot() == {"connections": 5, "general": 2, "reserved": 1, "held": 0}
    for conn in (*a, b, c):
        assert conn is not None
        gate.close(conn)
    assert gate.snapshot() == {"connections": 0, "general": 0, "reserved": 0, "held": 0}


def test_gate_memory_accounting() -> None:
    gate = guard.Gate(_limits(max_pending_bytes=1 << 20))
    conn = gate.open("10.0.0.1", 1)
    assert conn is not None
    assert gate.admit(conn, _rq_body(b"PACS")) is None
    conn.pdu_type = guard.PDU_P_DATA
    assert gate.reserve(conn, 10000)
    gate.received(conn, p_data(0x03, b"c" * 100)[6:])  # a command: decoded, not held
    assert gate.held == 0
    for _ in range(3):
        assert gate.reserve(conn, 10000)
        gate.received(conn, p_data(0x00, b"d" * 9994)[6:])
    assert gate.held == 3 * 9994
    assert gate.reserve(conn, 10000)
    gate.received(conn, p_data(0x02, b"d" * 9994)[6:])  # last fragment: held until answered
    assert gate.held == 4 * 9994
    assert not gate.reserve(conn, 1 << 20)  # beyond the cap
    other = gate.open("10.0.0.2", 2)
    assert other is not None
    assert gate.admit(other, _rq_body(b"PACS")) is None
    gate.close(other)
    gate.received(conn, b"")
    gate._by_assoc[conn] = conn  # release() looks the connection up by its association
    gate.release(conn)
    assert gate.held == 0
    gate.close(conn)


def test_memory_cap_refuses_new_associations_transiently(tmp_path: Path) -> None:
    with Listener(tmp_path / "data", config=write_config(tmp_path, pending=1 << 20)) as lst:
        hog = associated(lst.port)
        hog.sendall(p_data(0x03, store_command("1.2.3")))
        fragment = b"\0" * 65000
        for _ in range(16):  # 1,040,000 bytes of a dataset that never ends
            hog.sendall(p_data(0x00, fragment))
        time.sleep(1.0)
        late = connect(lst.port, "127.0.0.3")
        late.sendall(associate_rq())
        assert read_pdu(late) == (0x03, b"\x00\x02\x03\x01")  # rejected-transient, temporary congestion
        late.close()
        hog.sendall(p_data(0x00, fragment))  # beyond the cap: aborted
        assert read_pdu(hog) == (0x07, b"\x00\x00\x02\x00")
        hog.close()
        catalogued(lst.data_dir, [pacs_store(lst.port)])  # the memory is free again
        assert "bytes held for all associations (listener.max_pending_bytes = 1048576)" in lst.log()


def test_a_pdu_trickled_after_association_is_aborted_at_its_deadline(tmp_path: Path) -> None:
    with Listener(tmp_path / "data", config=write_config(tmp_path)) as lst:
        sock = associated(lst.port)
        pdu = p_data(0x03, store_command("1.2.3"))
        sent = 0
        for byte in pdu:
            try:
                sock.sendall(bytes((byte,)))
            except OSError:
                break
            sent += 1
            sock.settimeout(0.4)
            try:
                head = sock.recv(10)
            except TimeoutError:
                continue
            finally:
                sock.settimeout(30)
            assert head == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"  # A-ABORT from the provider
            break
        else:
            pytest.fail("the trickled PDU was never aborted")
        assert sent < len(pdu)
        sock.close()
        assert "a PDU not complete within listener.pdu_deadline_s (2 s); aborted" in lst.log()


def test_tls_without_ca_warns_at_start(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed (Debian package openssl)")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    config = write_config(tmp_path, extra=f'tls_certificate = "{cert}"\ntls_private_key = "{key}"\n')
    with Listener(tmp_path / "data", config=config) as lst:
        # a silent TCP client does not stop the TLS listener from accepting the next one
        silent = connect(lst.port)
        second = connect(lst.port, "127.0.0.3")
        second.close()
        silent.close()
        assert lst.terminate() == 0
    log = lst.log()
    assert ("WARNING dosereg.ingest.listener: DICOM TLS without listener.tls_ca_certificates: any client "
            "certificate or none is accepted (no client authentication)") in log
