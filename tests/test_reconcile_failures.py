"""The PACS's failures, reported per study: a pynetdicom PACS that fails on purpose (a C-GET
failure status, a series query that never gets an answer within ``pacs.timeout_s``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from .conftest import jsonl, run_cli
from .orthanc_peer import free_port

DAY = "20261110"
GOOD, SLOW, FAILING = "1.2.826.0.1.3680043.9.7777.60.1", "1.2.826.0.1.3680043.9.7777.60.2", \
    "1.2.826.0.1.3680043.9.7777.60.3"


def _study(uid: str, accession: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.StudyDate = DAY
    ds.AccessionNumber = accession
    ds.ModalitiesInStudy = ["CT", "SR"]
    return ds


def _on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
    q = event.identifier
    level = q.QueryRetrieveLevel
    if level == "STUDY":
        for uid, acc in ((GOOD, "F1"), (SLOW, "F2"), (FAILING, "F3")):
            yield 0xFF00, _study(uid, acc)
        return
    uid = q.StudyInstanceUID
    if uid == SLOW:
        time.sleep(4)  # longer than pacs.timeout_s
    if level == "SERIES":
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = uid
        ds.SeriesInstanceUID = uid + ".1"
        ds.Modality = "SR"
        ds.SeriesDescription = "Dose Report"
        yield 0xFF00, ds
        return
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = uid + ".1.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    yield 0xFF00, ds


def _on_get(event: Any) -> Iterator[Any]:
    yield 1  # one sub-operation
    status = Dataset()
    status.Status = 0xA702  # Refused: Out of Resources - Unable to perform sub-operations
    status.NumberOfFailedSuboperations = 1
    status.ErrorComment = "archive offline"
    yield status, None


@pytest.fixture
def failing_pacs() -> Iterator[int]:
    ae = AE(ae_title="FAILPACS")
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, _on_find), (evt.EVT_C_GET, _on_get)])
    try:
        yield port
    finally:
        threading.Thread(target=server.shutdown, daemon=True).start()


def test_failures_are_reported_per_study_and_the_day_is_asked_again(tmp_path: Path, failing_pacs: int) -> None:
    cfg = tmp_path / "dosereg.toml"
    cfg.write_text(f'[pacs]\nae_title = "FAILPACS"\nhost = "127.0.0.1"\nport = {failing_pacs}\ntimeout_s = 1.5\n'
                   f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    r = run_cli("reconcile", "--config", str(cfg), "--since", "2026-11-10", "--until", "2026-11-10")
    assert r.returncode == 1, r.stderr
    assert r.stdout.strip() == ("CT studies found 3, already complete 0, dose objects retrieved 0, "
                                "still without a dose report 3, failures 3")
    lines = r.stderr.splitlines()
    # each study's own failure: the C-GET status with its comment, and the query left unanswered
    for uid in (GOOD, FAILING):
        assert any(f"study {uid}: C-GET of series {uid}.1: status 0xA702, 1 sub-operation(s) failed "
                   "(archive offline)" in line for line in lines), r.stderr
    assert any(f"study {SLOW}: C-FIND (SERIES): the PACS FAILPACS did not answer within 1.5 s" in line
               for line in lines), r.stderr
    # still recorded as exams (without a dose report now), and the day is not done
    r = run_cli("studies", "--json", "--config", str(cfg))
    assert sorted(d["accession_number"] for d in jsonl(r.stdout) if d.get("source") == "pacs") == ["F1", "F2", "F3"]
    from .test_listener import db_rows

    assert db_rows(tmp_path / "data", "SELECT day FROM reconcile_days") == []
