"""``kind = "dicom"`` against real gateways on loopback: dcmtk's ``storescp`` and a pynetdicom
Storage SCP with Storage Commitment (N-ACTION, then N-EVENT-REPORT on the same association)."""

from __future__ import annotations

import hashlib
import re
import ssl
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dosereg.extract import extract_bytes
from dosereg.registry_export.deid import Pseudonymizer
from dosereg.registry_export.destinations import deliver

from .conftest import SAMPLES
from .send_peers import SECRET, CommitGateway, StoreSCP, dest, make_batch, sample_parcel
from .test_send_deid import dose

PSEUDO = Pseudonymizer(SECRET)
# dose SRs of several encodings (big endian, implicit VR, deflated) and an Enhanced SR
CT = [SAMPLES / f"{n}.dcm" for n in ("ct_siemens_single_source", "ct_siemens_dual_source", "ct_big_endian",
                                      "ct_implicit_vr", "ct_deflated", "ct_ge_enhanced_sr", "ct_toshiba_dose_check")]
SC = SAMPLES / "ct_philips_dose_info.dcm"


def gateway_dest(port: int, ae_title: str = "DIRLINK", **kw: Any) -> Any:
    return dest("dicom", ae_title=ae_title, host="127.0.0.1", port=port, calling_ae_title="DOSEREG", **kw)


def identifiers(path: Path) -> list[str]:
    ds = pydicom.dcmread(path)
    out = [str(ds.get(k)) for k in ("PatientID", "AccessionNumber", "InstitutionName", "StationName",
                                    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    out += [p for p in str(ds.PatientName).split("^") if len(p) >= 3]
    out.append(str(ds.DeviceSerialNumber))
    return [v for v in out if v and v != "None"]


def test_storescp_receives_deidentified_dose_reports(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), [*CT, SC])
    with StoreSCP(tmp_path / "gateway") as scp:
        d = deliver(gateway_dest(scp.port), parcel)
        received = scp.received()
    assert d.state == "acknowledged" and d.attempts == 1 and not d.failures
    cts = {o.sop_instance_uid for o in parcel.objects if o.path != SC}
    assert d.acknowledged == cts
    # the secondary capture is not for this gateway: not sent, said so
    (sc_uid, why), = d.skipped
    assert sc_uid == pydicom.dcmread(SC).SOPInstanceUID and "sop_classes" in why
    assert set(received) == {PSEUDO.uid(u) for u in cts}
    sent = sorted(PSEUDO.uid(u) or "" for u in cts)
    assert d.receipt == "sha256:" + hashlib.sha256("\n".join(sent).encode()).hexdigest()
    for path in CT:
        original = pydicom.dcmread(path)
        data = received[PSEUDO.uid(str(original.SOPInstanceUID)) or ""]
        assert dose(extract_bytes(data)) == dose(extract_bytes(path.read_bytes())), path.name
        for value in identifiers(path):  # as whole tokens (a serial such as 10001 is no run of digits)
            assert not re.search(rb"(?<![0-9A-Za-z.])" + re.escape(value.encode()) + rb"(?![0-9A-Za-z.])", data), \
                (path.name, value)
        got = pydicom.dcmread(BytesIO(data))
        assert got.PatientIdentityRemoved == "YES" and got.StationName == PSEUDO.station_name(str(original.StationName))


def test_storescp_receives_originals_as_stored(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), CT)
    with StoreSCP(tmp_path / "gateway", extra=("+xa",)) as scp:  # accepts deflated too
        d = deliver(gateway_dest(scp.port, objects="original"), parcel)
        received = scp.received()
    assert d.state == "acknowledged" and d.acknowledged == {o.sop_instance_uid for o in parcel.objects}
    for path in CT:
        original = pydicom.dcmread(path)
        got = pydicom.dcmread(BytesIO(received[str(original.SOPInstanceUID)]))
        assert got.PatientName == original.PatientName and got.file_meta.TransferSyntaxUID == \
            original.file_meta.TransferSyntaxUID
        assert got == original  # element for element


def test_a_rerun_never_sends_twice(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), CT[:3])
    first_key = parcel.objects[0].sop_instance_uid
    with StoreSCP(tmp_path / "gateway") as scp:
        d = deliver(gateway_dest(scp.port), parcel, done=frozenset([first_key]))
        assert set(scp.received()) == {PSEUDO.uid(o.sop_instance_uid) for o in parcel.objects[1:]}
        nothing = deliver(gateway_dest(scp.port), parcel, done=frozenset([first_key]) | d.acknowledged)
    assert d.acknowledged == {o.sop_instance_uid for o in parcel.objects[1:]}
    assert nothing.state == "acknowledged" and nothing.acknowledged == frozenset() and nothing.attempts == 0


def test_objects_that_cannot_be_deidentified_are_failures_not_retried(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), [CT[1], SAMPLES / "ct_truncated.dcm", SC])
    with StoreSCP(tmp_path / "gateway") as scp:
        d = deliver(gateway_dest(scp.port, sop_classes=("1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.7")),
                    parcel)
        received = scp.received()
    assert d.state == "failed" and d.acknowledged == {parcel.objects[0].sop_instance_uid}
    reasons = {f.key: f for f in d.failures}
    assert "cannot be read: a sequence runs past the end" in reasons[parcel.objects[1].sop_instance_uid].reason
    assert "Clean Pixel Data" in reasons[parcel.objects[2].sop_instance_uid].reason
    assert not any(f.retryable for f in d.failures) and d.attempts == 1
    assert len(received) == 1


def test_a_refused_association_is_retried_then_failed(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), CT[:1])
    with CommitGateway(ae_title="GATEWAY") as gw:
        d = deliver(gateway_dest(gw.port, ae_title="WRONGAE", max_attempts=3), parcel)
    assert d.state == "failed" and d.attempts == 3 and not gw.stored
    assert "association with WRONGAE@127.0.0.1" in (d.last_error or "") and "rejected" in (d.last_error or "")


def test_nothing_listening_fails_with_the_reason(tmp_path: Path) -> None:
    from .send_peers import free_port

    parcel = sample_parcel(make_batch(tmp_path / "data"), CT[:1])
    d = deliver(gateway_dest(free_port()), parcel)
    assert d.state == "failed" and d.attempts == 2 and d.receipt is None
    assert d.failures[0].key == parcel.objects[0].sop_instance_uid and d.failures[0].retryable


# -- storage commitment -----------------------------------------------------------------------

def commit_dest(gw: CommitGateway, **kw: Any) -> Any:
    return gateway_dest(gw.port, ae_title="GATEWAY", storage_commitment=True, **{"commitment_timeout_s": 10.0, **kw})


def test_acknowledged_when_every_object_is_committed(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), CT[:4])
    with CommitGateway() as gw:
        d = deliver(commit_dest(gw), parcel)
    assert d.state == "acknowledged" and d.acknowledged == {o.sop_instance_uid for o in parcel.objects}
    ((transaction, named),) = gw.actions
    assert sorted(named) == sorted(PSEUDO.uid(o.sop_instance_uid) or "" for o in parcel.objects)
    assert d.receipt == transaction and gw.reports == [(transaction, 1, "0x0000")]
    assert set(gw.stored) == set(named)


def test_commitment_failures_are_sent_again_then_reported(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), CT[:3])
    refused = PSEUDO.uid(parcel.objects[1].sop_instance_uid) or ""
    with CommitGateway(fail=frozenset([refused])) as gw:
        d = deliver(commit_dest(gw), parcel)
    assert d.state == "failed" and d.attempts == 2
    assert d.acknowledged == {parcel.objects[0].sop_instance_uid, parcel.objects[2].sop_instance_uid}
    (f,) = d.failures
    assert f.key == parcel.objects[1].sop_instance_uid and f.status == 0x0110
    assert f.reason == "storage commitment failed: 0x0110 processing failure"
    assert gw.store_count[refused] == 2  # stored again on the second attempt, committed by neither
    assert [e for _, e, _ in gw.reports] == [2, 2] and d.receipt is None


def test_a_late_report_leaves_the_delivery_pending_then_a_later_call_completes_it(tmp_path: Path) -> None:
    parcel = sample_parcel(make_batch(tmp_path / "data"), CT[:2])
    keys = {o.sop_instance_uid for o in parcel.objects}
    with CommitGateway(delay=3.0) as gw:
        d = deliver(commit_dest(gw, commitment_timeout_s=0.5), parcel)
        assert d.state == "pending_commitment" and d.attempts == 1
        assert d.acknowledged == frozenset() and d.stored == keys and not d.failures
        assert d.transaction_uid == gw.actions[0][0] and d.receipt is None
        gw.delay = 0.05
        later = deliver(commit_dest(gw), parcel, stored=d.stored)
    assert later.state == "acknowledged" and later.acknowledged == keys
    assert all(n == 1 for n in gw.store_count.values())  # asked again, never sent again
    assert len(gw.actions) == 2 and later.receipt == gw.actions[1][0]


def test_dicom_over_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    parcel = sample_parcel(make_batch(tmp_path / "data"), CT[:2])
    with CommitGateway(ssl_context=server_ctx) as gw:
        plain = deliver(commit_dest(gw, max_attempts=1), parcel)
        assert plain.state == "failed" and not gw.stored
        d = deliver(commit_dest(gw, tls_ca_certificates=str(ca_file)), parcel)
    assert d.state == "acknowledged" and len(gw.stored) == 2


def test_originals_are_transcoded_for_a_gateway_that_takes_only_implicit_vr(tmp_path: Path) -> None:
    paths = [SAMPLES / "ct_big_endian.dcm", SAMPLES / "ct_deflated.dcm", SAMPLES / "ct_siemens_dual_source.dcm"]
    parcel = sample_parcel(make_batch(tmp_path / "data"), paths)
    with StoreSCP(tmp_path / "gateway", extra=("+xi",)) as scp:  # Implicit VR Little Endian only
        d = deliver(gateway_dest(scp.port, objects="original"), parcel)
        received = scp.received()
    assert d.state == "acknowledged" and len(received) == 3
    for path in paths:
        original = pydicom.dcmread(path)
        got = pydicom.dcmread(BytesIO(received[str(original.SOPInstanceUID)]))
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        assert dose(extract_bytes(received[str(original.SOPInstanceUID)])) == dose(extract_bytes(path.read_bytes()))
