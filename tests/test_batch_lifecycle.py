"""The batch lifecycle end to end, through the real CLI, against real peers (tests/send_peers.py):
export -> review -> hold -> approve -> send to dcmtk's ``storescp`` and an HTTPS registry ->
acknowledged -> billing flags with receipts; failing registries; ``kill -9`` of ``send``."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dosereg.registry_export.deid import Pseudonymizer
from tests.conftest import SAMPLES, jsonl, run_cli

from .send_peers import RegistryServer, StoreSCP

trustme = pytest.importorskip("trustme")

SECRET = "lifecycle-site-secret-0123456789abcdef"
TOKEN = "lifecycle-token-0123456789"
ENV = {"DOSEREG_SECRET": SECRET, "DOSEREG_TEST_TOKEN": TOKEN}
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33"}


@dataclass
class Site:
    root: Path
    config: Path
    registry: RegistryServer
    gateway: StoreSCP

    @property
    def data(self) -> Path:
        return self.root / "data"

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return run_cli(*args, "--config", str(self.config), env={**ENV, **(env or {})})

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return str(r.stdout)

    def batches(self) -> list[dict[str, Any]]:
        return jsonl(self.ok("batches", "--json"))

    def audit(self, action: str) -> list[tuple[str, str]]:
        db = sqlite3.connect(self.data / "export-state.sqlite")
        try:
            return list(db.execute("SELECT batch_id, comment FROM audit_log WHERE action = ?", (action,)))
        finally:
            db.close()


def _config(root: Path, registry: RegistryServer, gateway: StoreSCP, ca_file: Path, review: bool = True) -> Path:
    path = root / "dosereg.toml"
    path.write_text(f"""
[storage]
data_dir = "{root / 'data'}"
[review]
required = {'true' if review else 'false'}
[[registry.destinations]]
name = "registry"
kind = "https"
url = "{registry.url}"
token_env = "DOSEREG_TEST_TOKEN"
tls_ca_certificates = "{ca_file}"
timeout_s = 5
max_attempts = 1
[[registry.destinations]]
name = "dirlink"
kind = "dicom"
ae_title = "DIRLINK"
host = "127.0.0.1"
port = {gateway.port}
calling_ae_title = "DOSEREG"
timeout_s = 20
max_attempts = 3
retry_backoff_s = 0.2
""")
    return path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with RegistryServer(tmp_path / "registry-store", ca, TOKEN) as registry, StoreSCP(tmp_path / "gateway") as gw:
        s = Site(tmp_path, _config(tmp_path, registry, gw, ca_file), registry, gw)
        s.ok("import", str(SAMPLES))
        yield s


def flags(site: Site, batch: str) -> list[dict[str, str]]:
    with open(site.data / "flags" / f"{batch}.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def sr_objects(uids: set[str]) -> set[str]:
    """SOP Instance UIDs of the samples' dose SRs of these studies (what the gateway takes)."""
    out = set()
    for p in sorted(SAMPLES.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.get("StudyInstanceUID")) in uids and str(ds.get("SOPClassUID")) in SR_CLASSES:
            out.add(str(ds.SOPInstanceUID))
    return out


def _exported(site: Site) -> tuple[str, list[dict[str, Any]]]:
    out = site.ok("export")
    assert "awaits review" in out
    (batch,) = [b for b in site.batches() if b["state"] == "pending_review"]
    return batch["batch_id"], jsonl(site.ok("review", batch["batch_id"], "--json"))


def test_export_review_hold_approve_send_acknowledged_then_flags(site: Site) -> None:
    batch, rows = _exported(site)
    assert not (site.data / "flags").exists() or not any((site.data / "flags").iterdir())  # nothing billed yet
    g9327 = {r["study_instance_uid"] for r in rows if r["registry_code"] == "G9327"}
    assert len(rows) == 18 and len(g9327) == 14
    held = sorted(g9327)[0]
    studies = {d["study_instance_uid"]: d for d in jsonl(site.ok("studies", "--json"))}
    assert studies[held]["submission"] == {"state": "pending_review", "batch_id": batch, "billed_code": None,
                                           "receipt": None, "reported_at": None}
    html = (site.data / "reports" / f"completeness-{batch}.html").read_text()
    assert "awaiting review" in html

    assert "1 studies held" in site.ok("hold", batch, held, "--by", "Dr Physicist", "--reason", "CTDI too high?")
    reg = site.data / "registry" / "FACILITY-0001" / batch
    submission = json.loads((reg / "submission.json").read_text())
    pseudo = Pseudonymizer(SECRET.encode())
    assert pseudo.uid(held) not in {s["study_instance_uid"] for s in submission["studies"]}
    assert len(submission["studies"]) == 13
    manifest = json.loads((reg / "manifest.json").read_text())
    import hashlib
    for f in manifest["files"]:
        assert hashlib.sha256((reg / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert {r["study_instance_uid"]: r["held"] for r in jsonl(site.ok("review", batch, "--json"))}[held] is True
    studies = {d["study_instance_uid"]: d for d in jsonl(site.ok("studies", "--json"))}
    assert studies[held]["submission"]["state"] == "held"

    r = site.cli("send")  # not approved yet: nothing is sent
    assert r.returncode == 0 and "nothing to send" in r.stdout and not site.registry.requests()
    site.ok("approve", batch, "--by", "Dr Physicist", "--comment", "weekly review")
    assert not (site.data / "flags" / f"{batch}.csv").exists()  # approved is not reported
    out = site.ok("send")
    assert f"batch {batch}: acknowledged" in out
    (b,) = [x for x in site.batches() if x["batch_id"] == batch]
    assert b["state"] == "acknowledged" and b["approved_by"] == "Dr Physicist"
    assert b["counts"] == {"G9327": 13, "G9326": 3, "excluded": 1, "held": 1}
    assert {d["name"]: d["state"] for d in b["destinations"]} == {"registry": "acknowledged", "dirlink": "acknowledged"}

    # the gateway holds each dose SR of the batch's studies once, de-identified; never the held study's
    sent = g9327 - {held}
    received = site.gateway.received()
    assert set(received) == {pseudo.uid(u) for u in sr_objects(sent)}
    # the registry holds the batch's files as the manifest says
    store = site.root / "registry-store" / "FACILITY-0001" / batch
    for f in manifest["files"]:
        assert hashlib.sha256((store / f["name"]).read_bytes()).hexdigest() == f["sha256"]

    rows_by_uid = {r["study_instance_uid"]: r for r in flags(site, batch)}
    assert held not in rows_by_uid and len(rows_by_uid) == 17
    receipts = {d["name"]: d["receipt"] for d in b["destinations"]}
    for uid in sent:
        row = rows_by_uid[uid]
        assert row["registry_code"] == "G9327" and row["reported_at"]
        parts = dict(p.split("=", 1) for p in row["receipt"].split(";"))
        assert parts["registry"] == receipts["registry"]
        if sr_objects({uid}):
            assert parts["dirlink"] == receipts["dirlink"]
        else:  # a Philips dose screen only: the DICOM gateway does not take it
            assert "dirlink" not in parts
    for row in rows_by_uid.values():
        if row["registry_code"] != "G9327":
            assert not row["reported_at"] and not row["receipt"]
    assert len(site.audit("flags")) == 1
    studies = {d["study_instance_uid"]: d for d in jsonl(site.ok("studies", "--json"))}
    some = sorted(sent)[0]
    assert studies[some]["submission"]["state"] == "acknowledged"
    assert studies[some]["submission"]["billed_code"] == "G9327" and studies[some]["submission"]["receipt"]

    # the held study comes back in the next batch after release, and only then
    assert "nothing new" in site.ok("export")
    site.ok("release", held, "--by", "Dr Physicist")
    batch2, rows2 = _exported(site)
    assert [r["study_instance_uid"] for r in rows2] == [held]


def test_reject_offers_the_studies_again(site: Site) -> None:
    batch, rows = _exported(site)
    site.ok("reject", batch, "--by", "QA lead", "--reason", "wrong nomenclature table")
    assert [b["state"] for b in site.batches()] == ["rejected"]
    r = site.cli("approve", batch, "--by", "x")
    assert r.returncode != 0 and "pending_review" in r.stderr
    batch2, rows2 = _exported(site)
    assert len(rows2) == len(rows)


def test_no_destination_refuses_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    r = run_cli("send", "--config", str(cfg), env=ENV)
    assert r.returncode != 0 and "registry.destinations" in r.stderr


@pytest.mark.parametrize("mode", ["500", "wrong", "cut-once"])
def test_a_failing_registry_leaves_the_batch_failed_and_the_next_send_completes_it(site: Site, mode: str) -> None:
    batch, _ = _exported(site)
    site.ok("approve", batch, "--by", "Dr Physicist")
    site.registry.state.mode = mode
    r = site.cli("send")
    assert r.returncode == 1, r.stdout
    (b,) = site.batches()
    assert b["state"] == "failed"
    dest = {d["name"]: d for d in b["destinations"]}
    assert dest["registry"]["state"] == "failed" and dest["registry"]["last_error"]
    assert dest["dirlink"]["state"] == "acknowledged", dest
    dicom_attempts = dest["dirlink"]["attempts"]
    assert {"500": "500", "wrong": "SHA-256", "cut-once": "registry"}[mode] in (dest["registry"]["last_error"]
                                                                              + " registry")
    assert not (site.data / "flags" / f"{batch}.csv").exists()
    status = json.loads(site.cli("status", "--json").stdout)  # what monitoring sees
    assert status["last_send"]["batch_id"] == batch and status["last_send"]["state"] == "failed"
    assert any(p.startswith(f"batch {batch} failed to send") for p in status["problems"])
    site.registry.state.mode = "ok"
    before = len(site.gateway.received())
    site.ok("send")
    (b,) = site.batches()
    assert b["state"] == "acknowledged"
    dest = {d["name"]: d for d in b["destinations"]}
    assert dest["dirlink"]["attempts"] == dicom_attempts  # not contacted again: it had acknowledged
    assert len(site.gateway.received()) == before
    assert len(site.audit("flags")) == 1 and any(r["receipt"] for r in flags(site, batch))
    status = json.loads(site.cli("status", "--json").stdout)
    assert status["last_send"]["state"] == "acknowledged" and not [p for p in status["problems"] if "failed" in p]


@pytest.mark.parametrize("point", ["send_before_deliver", "send_after_deliver", "send_after_record",
                                   "send_before_ack_commit", "flags_mid"])
def test_kill_9_of_send_then_send_again(site: Site, point: str) -> None:
    batch, rows = _exported(site)
    site.ok("approve", batch, "--by", "Dr Physicist")
    r = site.cli("send", env={"DOSEREG_TEST_CRASH_AT": point})
    assert r.returncode == 137, (r.stdout, r.stderr)
    puts = len(site.registry.requests("PUT"))
    site.ok("send")
    (b,) = site.batches()
    assert b["state"] == "acknowledged"
    if point in ("send_after_record", "send_before_ack_commit", "flags_mid"):
        # the registry (the first destination) had acknowledged and was recorded: never contacted again
        assert len(site.registry.requests("PUT")) == puts
    g9327 = {r["study_instance_uid"] for r in rows if r["registry_code"] == "G9327"}
    rows_by_uid = {r["study_instance_uid"]: r for r in flags(site, batch)}
    assert len(rows_by_uid) == len(rows)
    assert {u for u, r in rows_by_uid.items() if r["registry_code"] == "G9327"} == g9327
    assert all(rows_by_uid[u]["receipt"] for u in g9327)
    assert len(site.audit("flags")) == 1 and len(site.audit("acknowledge")) == 1
    assert set(site.gateway.received()) == {Pseudonymizer(SECRET.encode()).uid(u) for u in sr_objects(g9327)}
    leftovers = [p for p in (site.data / "flags").iterdir() if p.name.startswith(".")]
    assert not leftovers
    shutil.rmtree(site.data / "flags")


def test_without_review_export_approves_at_once_logged(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[review]\nrequired = false\n')
    assert run_cli("import", str(SAMPLES / "ct_qa_phantom.dcm"), "--config", str(cfg), env=ENV).returncode == 0
    r = run_cli("export", "--config", str(cfg), env=ENV)
    assert r.returncode == 0 and "acknowledged at approval" in r.stdout
    (b,) = jsonl(run_cli("batches", "--json", "--config", str(cfg), env=ENV).stdout)
    assert b["state"] == "acknowledged" and b["counts"]["excluded"] == 1
    db = sqlite3.connect(tmp_path / "data" / "export-state.sqlite")
    (comment,), = db.execute("SELECT comment FROM audit_log WHERE action = 'approve'")
    assert "[review] required = false" in comment
    rows = list(csv.DictReader(open(tmp_path / "data" / "flags" / f"{b['batch_id']}.csv", encoding="utf-8")))
    assert [r["registry_code"] for r in rows] == ["excluded"]


def test_the_report_names_each_batchs_state_and_who_approved_it(site: Site) -> None:
    first, _ = _exported(site)
    site.ok("reject", first, "--by", "QA lead", "--reason", "wrong nomenclature table")
    second, _ = _exported(site)
    site.ok("approve", second, "--by", "Dr Physicist", "--comment", "weekly review")
    (html_path,) = [Path(p) for p in site.ok("report").split() if p.endswith(".html")]
    page = html_path.read_text(encoding="utf-8")
    section = page[page.index(">Batches (2)</h2>"):]  # the heading (it carries the table of contents' id)
    rows = section.split("<tr>")[2:]  # newest first, after the header row
    assert f"<td>{second}</td><td>approved</td>" in rows[0] and "Dr Physicist" in rows[0]
    assert f"<td>{first}</td><td>rejected</td>" in rows[1] and "<td>—</td>" in rows[1]  # never approved
