"""``kind = "https"`` against a real HTTPS registry on loopback (certificates from trustme)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dosereg.registry_export.destinations import Delivery, deliver

from .send_peers import BATCH, FACILITY, RegistryServer, dest, make_batch, sample_parcel

trustme = pytest.importorskip("trustme")
TOKEN = "tok-6f1c2d9e-secret-value-never-logged"
FILES = ("studies.parquet", "events.parquet", "submission.json")


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: Any, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DOSEREG_TEST_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    return make_batch(tmp_path / "data", {"studies.parquet": 5000, "events.parquet": 300_000, "submission.json": 2500})


def serve(tmp_path: Path, ca: Any, mode: str = "ok", **kw: Any) -> RegistryServer:
    return RegistryServer(tmp_path / f"registry-{mode}", ca, TOKEN, mode=mode, **kw)


def https(server: RegistryServer, ca_file: str, **kw: Any) -> Any:
    return dest("https", url=server.url, token_env="DOSEREG_TEST_TOKEN", tls_ca_certificates=ca_file, **kw)


def assert_no_token(delivery: Delivery) -> None:
    assert TOKEN not in repr(delivery)


@pytest.fixture
def registry(tmp_path: Path, ca: Any) -> Iterator[RegistryServer]:
    with serve(tmp_path, ca) as server:
        yield server


def test_acknowledged_on_a_receipt_whose_hashes_match(registry: RegistryServer, ca_file: str, batch: Path,
                                                      token: str) -> None:
    parcel = sample_parcel(batch, [])
    d = deliver(https(registry, ca_file), parcel)
    assert d.state == "acknowledged" and d.attempts == 1
    assert d.receipt == "R-" + hashlib.sha256(f"{FACILITY}/{BATCH}".encode()).hexdigest()[:16]
    assert d.acknowledged == frozenset([*FILES, "manifest.json"]) and not d.failures and d.last_error is None
    puts = registry.requests("PUT")
    assert sorted(p for _, p, _ in puts) == sorted(f"/api/batches/{FACILITY}/{BATCH}/{n}" for n in FILES)
    assert registry.requests("POST") == [("POST", f"/api/batches/{FACILITY}/{BATCH}/commit", 200)]
    for name in FILES:  # what the registry holds is the batch's file, byte for byte
        assert (registry.state.store / FACILITY / BATCH / name).read_bytes() == (batch / name).read_bytes()
    assert all(h["Authorization"] == f"Bearer {TOKEN}" for h in registry.state.headers)
    put_types = {h["Content-Type"] for h in registry.state.headers[:3]}
    assert put_types == {"application/octet-stream"} and registry.state.headers[3]["Content-Type"] == "application/json"
    assert_no_token(d)

    # a re-run given what is acknowledged sends nothing; without it, the PUTs and the commit repeat
    # and the registry answers the same receipt
    again = deliver(https(registry, ca_file), parcel, done=d.acknowledged)
    assert again.state == "acknowledged" and again.acknowledged == frozenset() and len(registry.requests()) == 4
    repeat = deliver(https(registry, ca_file), parcel)
    assert repeat.receipt == d.receipt and len(registry.requests()) == 8


def test_files_stored_by_an_earlier_call_are_only_committed(tmp_path: Path, ca: Any, ca_file: str, batch: Path,
                                                           token: str) -> None:
    with serve(tmp_path, ca, "wrong") as server:  # every commit refused: the files stay stored
        first = deliver(https(server, ca_file, max_attempts=1), sample_parcel(batch, []))
        assert first.state == "failed" and first.stored == {"events.parquet", "submission.json"}
        server.state.mode = "ok"
        d = deliver(https(server, ca_file), sample_parcel(batch, []), stored=first.stored)
    assert d.state == "acknowledged" and d.acknowledged == frozenset([*FILES, "manifest.json"])
    # the second call sent only the file the receipt had wrong, then committed
    assert [(m, p.rsplit("/", 1)[1]) for m, p, _ in server.requests()][4:] == [
        ("PUT", "studies.parquet"), ("POST", "commit")]


def test_wrong_hashes_are_a_failure_and_the_file_is_sent_again(tmp_path: Path, ca: Any, ca_file: str, batch: Path,
                                                               token: str) -> None:
    with serve(tmp_path, ca, "wrong") as server:
        d = deliver(https(server, ca_file), sample_parcel(batch, []))
        assert d.state == "failed" and d.receipt is None and d.acknowledged == frozenset() and d.attempts == 2
        (f,) = d.failures
        assert f.key == "studies.parquet" and f.status == 200 and "not the manifest's" in f.reason
        # every attempt sent the file whose hash was wrong again, and committed again
        assert [p.rsplit("/", 1)[1] for _, p, _ in server.requests("PUT")].count("studies.parquet") == 2
        assert len(server.requests("POST")) == 2
    with serve(tmp_path, ca, "wrong-once") as server:
        d = deliver(https(server, ca_file), sample_parcel(batch, []))
        assert d.state == "acknowledged" and d.attempts == 2 and d.receipt is not None


def test_500_keeps_status_and_first_500_bytes_then_retries(tmp_path: Path, ca: Any, ca_file: str, batch: Path,
                                                           token: str) -> None:
    with serve(tmp_path, ca, "500") as server:
        d = deliver(https(server, ca_file, max_attempts=3), sample_parcel(batch, []))
        assert d.state == "failed" and d.attempts == 3
        assert {f.key for f in d.failures} == set(FILES) and {f.status for f in d.failures} == {500}
        body = d.failures[0].reason.split("HTTP 500: ", 1)[1]
        assert body == "E" * 300 + "F" * 200  # the first 500 bytes, not one more
        assert len(server.requests("PUT")) == 9 and not server.requests("POST")  # never committed
    with serve(tmp_path, ca, "500-once") as server:
        d = deliver(https(server, ca_file), sample_parcel(batch, []))
        assert d.state == "acknowledged" and d.attempts == 2
        # the files accepted in the first attempt were not sent again
        assert len(server.requests("PUT")) == 4


def test_a_timeout_is_retried(tmp_path: Path, ca: Any, ca_file: str, batch: Path, token: str) -> None:
    with serve(tmp_path, ca, "slow-once") as server:
        d = deliver(https(server, ca_file, timeout_s=0.5), sample_parcel(batch, []))
        assert d.state == "acknowledged" and d.attempts == 2


def test_a_connection_cut_mid_upload_is_retried(tmp_path: Path, ca: Any, ca_file: str, batch: Path,
                                                token: str) -> None:
    with serve(tmp_path, ca, "cut-once") as server:
        d = deliver(https(server, ca_file), sample_parcel(batch, []))
        assert d.state == "acknowledged" and d.attempts == 2
        for name in FILES:
            assert (server.state.store / FACILITY / BATCH / name).read_bytes() == (batch / name).read_bytes()


def test_a_cut_that_never_heals_fails_with_the_reason(tmp_path: Path, ca: Any, ca_file: str, batch: Path,
                                                     token: str) -> None:
    with serve(tmp_path, ca, "cut-once") as server:
        d = deliver(https(server, ca_file, max_attempts=1), sample_parcel(batch, []))
    assert d.state == "failed" and d.attempts == 1
    assert d.failures[0].key == "studies.parquet" and d.failures[0].status is None
    assert "PUT studies.parquet:" in d.failures[0].reason
    assert d.stored == {"events.parquet", "submission.json"}  # accepted after the cut, on a new connection


def test_the_token_never_leaves_the_header(tmp_path: Path, ca: Any, ca_file: str, batch: Path, token: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with serve(tmp_path, ca, "echo-401") as server:  # a registry that echoes the Authorization header
        d = deliver(https(server, ca_file), sample_parcel(batch, []))
    assert d.state == "failed" and {f.status for f in d.failures} == {401}
    assert "[redacted]" in d.failures[0].reason
    assert_no_token(d)
    assert TOKEN not in caplog.text


def test_without_the_token_nothing_is_sent(registry: RegistryServer, ca_file: str, batch: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOSEREG_TEST_TOKEN", raising=False)
    d = deliver(https(registry, ca_file), sample_parcel(batch, []))
    assert d.state == "failed" and d.attempts == 0 and not registry.requests()
    assert "DOSEREG_TEST_TOKEN" in (d.last_error or "") and all(not f.retryable for f in d.failures)


def test_an_untrusted_server_certificate_is_refused(registry: RegistryServer, batch: Path, token: str,
                                                    tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    d = deliver(https(registry, str(other)), sample_parcel(batch, []))
    assert d.state == "failed" and "TLS error" in d.failures[0].reason and not registry.requests()


def test_client_certificate(tmp_path: Path, ca: Any, ca_file: str, batch: Path, token: str) -> None:
    client_ca = trustme.CA()
    cert = client_ca.issue_cert("dosereg-site.example")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    with serve(tmp_path, ca, client_ca=client_ca) as server:
        refused = deliver(https(server, ca_file, max_attempts=1), sample_parcel(batch, []))
        assert refused.state == "failed" and not server.requests()
        d = deliver(https(server, ca_file, tls_certificate=str(cert_file), tls_private_key=str(key_file)),
                    sample_parcel(batch, []))
        assert d.state == "acknowledged"


def test_a_batch_file_changed_after_its_manifest_is_not_committed(registry: RegistryServer, ca_file: str,
                                                                  batch: Path, token: str) -> None:
    data = bytearray((batch / "events.parquet").read_bytes())
    data[100] ^= 0xFF
    (batch / "events.parquet").write_bytes(bytes(data))
    d = deliver(https(registry, ca_file), sample_parcel(batch, []))
    assert d.state == "failed" and d.attempts == 1  # not retried: sending again cannot help
    (f,) = d.failures
    assert f.key == "events.parquet" and not f.retryable and "differs from its manifest" in f.reason
    assert not registry.requests("POST")


def test_uploads_stream_in_bounded_memory(registry: RegistryServer, ca_file: str, tmp_path: Path, token: str) -> None:
    import tracemalloc

    batch = make_batch(tmp_path / "big", {"submission.json": 8_000_000})
    tracemalloc.start()
    try:
        d = deliver(https(registry, ca_file), sample_parcel(batch, []))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert d.state == "acknowledged"
    assert peak < 1_000_000, peak  # an 8 MB file, client and server in this process: blocks, never the file
