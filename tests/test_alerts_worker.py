"""The alert worker's pass over a real catalog (docs/alerts.md): the watermark follows the catalog's
received order, an object replaced in place (its ``seq`` reused) is evaluated again, and an alert
is recorded once however often its study changes."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dosereg.conf.alerts import AlertsSettings
from dosereg.conf.config import Config, StorageSettings
from dosereg.extract import StudyRecord
from dosereg.ingest import open_catalog
from dosereg.registry_export.alert_state import AlertStore
from dosereg.registry_export.alert_worker import run_pass
from tests.synthetic import synthetic_study


def fresh(i: int) -> StudyRecord:
    """Study ``i`` of the synthetic set, as if scanned and received now."""
    now = datetime.now(timezone.utc)
    record = synthetic_study(i)
    objects = tuple(replace(o, received_at=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) for o in record.dose_objects)
    local = now.astimezone()
    return replace(record, study_date=local.strftime("%Y-%m-%d"), study_time=local.strftime("%H:%M:%S"),
                   dose_objects=objects)


def test_watermark_follows_the_catalog_and_a_replaced_object_is_seen(tmp_path: Path) -> None:
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "data")), alerts=AlertsSettings(enabled=True))
    writer = open_catalog(cfg)
    reader = open_catalog(cfg, readonly=True)
    store = AlertStore(cfg.data_dir)
    writer.add_object(fresh(57))  # in the catalog before alerts: never alerted
    assert run_pass(cfg, store, reader).recorded == 0
    first = store.watermark()
    assert first is not None and first.seq == reader.last_object_seq() == 1

    a = fresh(7)  # one event above the adult body notification value
    assert writer.add_object(a) == "new"
    result = run_pass(cfg, store, reader)
    assert (result.objects, result.studies, result.recorded) == (1, 1, 1)
    assert run_pass(cfg, store, reader).objects == 0  # nothing new: nothing read again

    # the same object received again with one more high event: it replaces the newest row, whose seq is reused
    scan = a.events[-1]
    extra = replace(scan, irradiation_event_uid=scan.irradiation_event_uid + ".9", ctdivol_mGy=120.0)
    later = tuple(replace(o, received_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
                  for o in a.dose_objects)
    changed = replace(a, events=(*a.events, extra), total_events=len(a.events) + 1, dose_objects=later)
    assert writer.add_object(changed) == "replaced"
    assert reader.last_object_seq() == 2  # the same seq as before
    result = run_pass(cfg, store, reader)
    assert (result.objects, result.recorded) == (1, 1)  # only the new event's alert: the first is not repeated
    # an object received three days ago that the worker reads only now (alerts were off): too late
    stale = fresh(107)
    old_receipt = (datetime.now(timezone.utc) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    stale = replace(stale, dose_objects=tuple(replace(o, received_at=old_receipt) for o in stale.dose_objects),
                    study_date=(datetime.now() - timedelta(days=3)).strftime("%Y-%m-%d"))
    assert writer.add_object(stale) == "new"
    assert (run_pass(cfg, store, reader).objects, store.watermark().seq) == (1, 3)  # type: ignore[union-attr]
    rows = store.listing()
    assert [(r["alert"]["event_uid"], r["alert"]["value"], r["deliveries"]) for r in rows] == [
        (scan.irradiation_event_uid, scan.ctdivol_mGy, {}), (extra.irradiation_event_uid, 120.0, {})]
    store.close()
    reader.close()
    writer.close()


def test_cumulative_dlp_through_the_worker(tmp_path: Path) -> None:
    settings = AlertsSettings(enabled=True, cumulative_dlp_mgycm=1500.0, cumulative_window_days=30)
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "data")), alerts=settings)
    writer = open_catalog(cfg)
    reader = open_catalog(cfg, readonly=True)
    store = AlertStore(cfg.data_dir)
    assert run_pass(cfg, store, reader).recorded == 0  # the first watermark
    first = fresh(8)  # a head CT, DLP 904 mGy.cm: alone below the threshold
    second = fresh(12)  # another head CT of the same patient, 916 mGy.cm and a timing run (dose too)
    second = replace(second, patient=replace(second.patient, id=first.patient.id))
    writer.add_object(first)
    assert run_pass(cfg, store, reader).recorded == 0
    writer.add_object(second)
    assert run_pass(cfg, store, reader).recorded == 1
    [row] = store.listing()
    a = row["alert"]
    assert (a["kind"], a["accession_number"], a["value"], a["threshold"], a["studies"]) == (
        "cumulative_dlp", second.accession_number, 1820.94, 1500.0, 2)  # 904 + 916 + the timing run's 0.41 x 2.3
    assert first.patient.id not in json.dumps(row)  # the patient is named by the study, never by ID
    store.close()
    reader.close()
    writer.close()
