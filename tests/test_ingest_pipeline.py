"""The spool/process path shared by the listener and the import: durability, quarantine, recovery."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from dosereg.ingest import Catalog, Pipeline
from dosereg.ingest.catalog import catalog_path
from dosereg.ingest.pipeline import FAULT_ENV, content_sha256

from .conftest import SAMPLE_RDSR, SAMPLES

JUNK = b"this is not a DICOM file\n" * 10


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def make(data_dir: Path) -> tuple[Catalog, Pipeline]:
    catalog = Catalog(catalog_path(data_dir))
    return catalog, Pipeline(data_dir, catalog)


def test_receive_is_durable_and_noted(data_dir: Path) -> None:
    catalog, pipe = make(data_dir)
    item = pipe.receive(JUNK, sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.67",
                        calling_ae_title="PACS")
    assert item.path.parent == data_dir / "spool"
    assert item.path.read_bytes() == JUNK
    assert item.sha256 == hashlib.sha256(JUNK).hexdigest()
    assert item.received_at.endswith("Z") and "T" in item.received_at
    (row,) = catalog.received_rows()
    assert (row["name"], row["state"], row["sop_instance_uid"], row["calling_ae_title"]) == (
        item.name, "spooled", "1.2.3", "PACS")
    assert [p.name for p in (data_dir / "spool").iterdir()] == [item.name]  # no temp file left
    catalog.close()


def test_unusable_object_is_quarantined_with_reason_once(data_dir: Path) -> None:
    catalog, pipe = make(data_dir)
    item = pipe.receive(JUNK, sop_instance_uid="1.2.3")
    outcome = pipe.process(item)
    assert outcome.startswith("quarantined:")
    code = outcome.split(":", 1)[1]
    kept = data_dir / "quarantine" / item.name
    assert kept.read_bytes() == JUNK
    reason = (data_dir / "quarantine" / f"{item.name}.reason.txt").read_text()
    assert f"error_code: {code}\n" in reason
    assert "sop_instance_uid: 1.2.3\n" in reason
    assert f"sha256: {item.sha256}\n" in reason
    assert list((data_dir / "spool").iterdir()) == []
    # the same bytes again: nothing new
    again = pipe.receive(JUNK, sop_instance_uid="1.2.3")
    assert pipe.process(again) == "duplicate"
    assert sorted(p.name for p in (data_dir / "quarantine").iterdir()) == [item.name, f"{item.name}.reason.txt"]
    assert [r["outcome"] for r in catalog.received_rows()] == [outcome, "duplicate"]
    assert len(catalog.quarantine_rows()) == 1
    catalog.close()


def test_injected_write_failure_leaves_nothing(data_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fault = tmp_path / "fail"
    fault.touch()
    monkeypatch.setenv(FAULT_ENV, str(fault))
    catalog, pipe = make(data_dir)
    with pytest.raises(OSError) as info:
        pipe.receive(JUNK)
    assert info.value.errno == errno.ENOSPC
    assert list((data_dir / "spool").iterdir()) == []
    assert catalog.received_rows() == []
    fault.unlink()
    item = pipe.receive(JUNK)
    assert item.path.read_bytes() == JUNK
    catalog.close()


def test_recover_after_crash(data_dir: Path) -> None:
    catalog, pipe = make(data_dir)
    a = pipe.receive(JUNK + b"a")
    b = pipe.receive(JUNK + b"b")
    catalog.close()
    # a crash left: a temp file (never acknowledged), and a spooled file whose catalog row was lost
    half = data_dir / "spool" / ".tmp-half.dcm"
    half.write_bytes(b"half")
    os.utime(half, (time.time() - 3600, time.time() - 3600))
    live = data_dir / "spool" / ".tmp-live.dcm"  # another import is writing it right now
    live.write_bytes(b"live")
    orphan = data_dir / "spool" / "20260101T000000000000-1-000001-orphan.dcm"
    orphan.write_bytes(JUNK + b"c")
    catalog, pipe = make(data_dir)
    importing = pipe.receive(JUNK + b"d", state="importing")  # a live import's object: left to it
    pending = pipe.recover()
    assert [p.name for p in pending] == [a.name, b.name, orphan.name]
    assert not half.exists() and live.exists()
    assert catalog.received_state(importing.id) == "importing"
    live.unlink()
    outcomes = [pipe.process(p) for p in pending]
    assert all(o.startswith("quarantined:") for o in outcomes)
    assert list((data_dir / "spool").iterdir()) == [importing.path]
    assert pipe.recover() == []
    # an import that died long ago: its object is taken over
    old = time.time() - 3600
    os.utime(importing.path, (old, old))
    (taken,) = pipe.recover()
    assert taken.name == importing.name
    assert pipe.process(taken).startswith("quarantined:")
    assert list((data_dir / "spool").iterdir()) == []
    catalog.close()


def test_object_finished_by_another_process(data_dir: Path) -> None:
    catalog, pipe = make(data_dir)
    item = pipe.receive(JUNK)
    other_catalog, other = make(data_dir)
    assert other.process(item).startswith("quarantined:")  # e.g. an import run
    assert pipe.process(item) == "done elsewhere"
    assert pipe.pending_items() == []
    other_catalog.close()
    catalog.close()


def test_crash_between_catalog_and_file_move(data_dir: Path) -> None:
    """The catalog was updated but the file not yet moved: re-processing ends in the same state."""
    catalog, pipe = make(data_dir)
    item = pipe.receive(SAMPLE_RDSR.read_bytes())
    record = pipe.extract(item)
    assert record.error is None
    final = pipe.object_path(item.sha256)
    catalog.add_object(record, raw_path=str(final.relative_to(data_dir)), content_sha256=item.sha256)
    catalog.close()  # "crash": the file is still in the spool, its ledger row still spooled
    catalog, pipe = make(data_dir)
    (pending,) = pipe.recover()
    assert pipe.process(pending) == "duplicate"
    assert final.read_bytes() == SAMPLE_RDSR.read_bytes()
    assert list((data_dir / "spool").iterdir()) == []
    assert catalog.count_objects() == 1 and catalog.count_studies() == 1
    catalog.close()


def test_enhanced_sr_object_processed_into_catalog(data_dir: Path) -> None:
    check_enhanced_sr_processed((SAMPLES / "ct_ge_enhanced_sr.dcm").read_bytes(), data_dir)


def check_enhanced_sr_processed(raw: bytes, data_dir: Path) -> None:
    """An Enhanced SR dose object into the catalog; its identity ignores the file meta (tests/test_conformance.py
    runs this on a vendor file too)."""
    catalog, pipe = make(data_dir)
    item = pipe.receive(raw)
    assert pipe.process(item) == "new"
    (row,) = catalog.object_rows()
    assert (data_dir / row["raw_path"]).read_bytes() == raw
    # identity is the dataset without its file meta (which differs from sender to sender)
    assert row["sha256"] == content_sha256(raw) != hashlib.sha256(raw).hexdigest()
    # the same dataset behind another file meta (an extra Source Application Entity Title)
    group_length = int.from_bytes(raw[140:144], "little")
    extra = b"\x02\x00\x16\x00AE\x06\x00OTHER "
    other = (raw[:140] + (group_length + len(extra)).to_bytes(4, "little") + raw[144:144 + group_length]
             + extra + raw[144 + group_length:])
    assert hashlib.sha256(other).hexdigest() != hashlib.sha256(raw).hexdigest()
    assert content_sha256(other) == content_sha256(raw)
    (study,) = list(catalog.iter_studies())
    assert study.dose_objects[0].kind == "enhanced_sr"
    assert study.dose_objects[0].received_at == item.received_at
    catalog.close()
