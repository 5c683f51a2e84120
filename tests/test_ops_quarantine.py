"""The quarantine's tools (issue 14): list, reprocess, purge; the sender named; one object kept once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import XRayRadiationDoseSRStorage  # type: ignore[attr-defined]

from dosereg.conf.config import Config, StorageSettings
from dosereg.ingest import import_paths, list_quarantine, purge, reprocess

from .conftest import SAMPLES, jsonl, run_cli
from .test_listener import Listener, db_rows, scu_ae, wait_processed

FLUORO = SAMPLES / "rf_fluoro_rdsr.dcm"  # an RDSR of a fluoroscopy system: quarantined (not_ct_dose)
RDSR = SAMPLES / "ct_siemens_single_source.dcm"


def _cfg(tmp_path: Path) -> Config:
    return Config(storage=StorageSettings(data_dir=str(tmp_path / "data")))


def test_reprocess_after_a_fix_keeps_the_raw_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug in this version")

    with monkeypatch.context() as m:  # a bug quarantines a good object as processing_error
        m.setattr("dosereg.ingest.importer.extract_bytes", broken)
        summary = import_paths(cfg, [RDSR], jobs=1)
    assert dict(summary.quarantined) == {"processing_error": 1}
    (entry,) = list_quarantine(cfg)
    assert entry.error_code == "processing_error" and entry.calling_ae_title is None
    assert (cfg.data_dir / "quarantine" / f"{entry.name}.reason.txt").is_file()

    assert reprocess(cfg, [entry.name]) == [(entry.name, "new")]  # after the fix
    assert list_quarantine(cfg) == []
    assert sorted(p.name for p in (cfg.data_dir / "quarantine").iterdir()) == []
    ((raw_path,),) = db_rows(cfg.data_dir, "SELECT raw_path FROM objects")
    assert (cfg.data_dir / raw_path).read_bytes() == RDSR.read_bytes()
    assert db_rows(cfg.data_dir, "SELECT COUNT(*) FROM studies") == [(1,)]


def test_reprocess_cli_still_unusable_is_quarantined_again_and_unknown_name_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("import", str(FLUORO), "--data-dir", str(data)).returncode == 0
    (before,) = jsonl(run_cli("quarantine", "list", "--json", "--data-dir", str(data)).stdout)
    r = run_cli("quarantine", "reprocess", "--all", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert f"{before['name']}: quarantined:not_ct_dose" in r.stdout
    assert "reprocessed 1: usable now 0, quarantined again 1" in r.stdout
    (after,) = jsonl(run_cli("quarantine", "list", "--json", "--data-dir", str(data)).stdout)
    assert after["name"] != before["name"] and after["sha256"] == before["sha256"]
    assert not (data / before["path"]).exists()
    assert (data / after["path"]).read_bytes() == FLUORO.read_bytes()
    r = run_cli("quarantine", "reprocess", "nosuch.dcm", "--data-dir", str(data))
    assert r.returncode == 2 and "nosuch.dcm: not in quarantine" in r.stderr
    r = run_cli("quarantine", "reprocess", "--data-dir", str(data))
    assert r.returncode == 2 and "--all" in r.stderr


def test_purge_older_than(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    import_paths(cfg, [FLUORO, SAMPLES / "sr_not_dose.dcm"], jobs=1)
    assert len(list_quarantine(cfg)) == 2
    assert purge(cfg, 30) == []
    removed = purge(cfg, 30, now=datetime.now(timezone.utc) + timedelta(days=31))
    assert len(removed) == 2
    assert list_quarantine(cfg) == [] and list((cfg.data_dir / "quarantine").iterdir()) == []
    r = run_cli("quarantine", "purge", "--older-than", "-1", "--data-dir", str(cfg.data_dir))
    assert r.returncode == 2


def test_sender_named_and_one_object_kept_once_over_network_and_import(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ds = pydicom.dcmread(FLUORO)
    with Listener(data) as lst:
        # the PACS sends it in implicit VR: not the bytes of the file imported afterwards
        ae = scu_ae("PACS9", contexts=[XRayRadiationDoseSRStorage], syntaxes=[ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        wait_processed(data, 1)
        r = run_cli("import", str(FLUORO), "--data-dir", str(data))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("imported 0, already known 1, quarantined 0"), r.stdout
        assert lst.terminate() == 0
        log = lst.log()
    (entry,) = jsonl(run_cli("quarantine", "list", "--json", "--data-dir", str(data)).stdout)
    assert entry["calling_ae_title"] == "PACS9" and entry["error_code"] == "not_ct_dose"
    reason = (data / entry["path"]).with_name(entry["name"] + ".reason.txt").read_text()
    assert "calling_ae_title: PACS9\n" in reason
    assert f"quarantined {entry['name']}: not_ct_dose" in log and "(sender PACS9)" in log
    assert len(list((data / "quarantine").glob("*.dcm"))) == 1
    table = run_cli("quarantine", "list", "--data-dir", str(data)).stdout
    assert entry["name"] in table and "PACS9" in table and "1 object in quarantine" in table
    assert json.loads(json.dumps(entry))["size_bytes"] > 0
