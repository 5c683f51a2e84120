"""kill -9 of the listener in the middle of a stream: nothing acknowledged is lost.

The stream is 300 distinct copies of a sample RDSR (new Study and SOP Instance UIDs each).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom

from .test_listener import Listener, db_rows, scu_ae, storescu, synthetic, wait_processed


def test_kill_9_mid_stream_then_restart_and_resend(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    made = synthetic(tmp_path / "syn", 300)
    datasets = [pydicom.dcmread(p) for p, _, _ in made]
    acked: list[str] = []

    lst = Listener(data_dir)
    killer = threading.Thread(target=lst.proc.kill)
    try:
        ae = scu_ae()
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert assoc.is_established
        deadline = time.monotonic() + 120
        for ds in datasets:
            if time.monotonic() > deadline or not assoc.is_established:
                break
            try:
                status = assoc.send_c_store(ds)
            except Exception:
                break
            if "Status" in status and status.Status == 0x0000:
                acked.append(str(ds.SOPInstanceUID))
            if len(acked) == 100 and killer.ident is None:
                killer.start()  # SIGKILL while the stream goes on
        if assoc.is_established:
            assoc.abort()
    finally:
        if killer.ident is not None:
            killer.join(timeout=30)
        lst.kill()
    assert lst.proc.returncode == -9
    assert 100 <= len(acked) < 300, len(acked)

    # restart: whatever was spooled but not processed is processed; every ack is there
    with Listener(data_dir) as lst2:
        wait_processed(data_dir, len(acked))
        kept = {sop for (sop,) in db_rows(data_dir, "SELECT sop_instance_uid FROM objects")}
        missing = set(acked) - kept
        assert not missing, f"{len(missing)} acknowledged objects missing after kill -9"
        # anything beyond the acks was received but unacknowledged: kept too, never half
        assert not [p for p in (data_dir / "spool").iterdir()]

        # a full re-send leaves every object exactly once
        r = storescu(lst2.port, [p for p, _, _ in made])
        assert r.returncode == 0, r.stdout + r.stderr
        total = db_rows(data_dir, "SELECT COUNT(*) FROM received")[0][0]
        wait_processed(data_dir, total)
        assert lst2.terminate() == 0

    studies = db_rows(data_dir, "SELECT study_instance_uid, n_objects FROM studies")
    assert len(studies) == 300
    assert sorted(studies) == sorted((study, 1) for _, study, _ in made)
    assert db_rows(data_dir, "SELECT COUNT(*) FROM objects")[0][0] == 300
    assert len(list((data_dir / "objects").rglob("*.dcm"))) == 300
    assert db_rows(data_dir, "SELECT COUNT(*) FROM quarantine")[0][0] == 0
