"""The workbench's study index: verdicts as indexed columns, kept in step with the catalog
(per study version) and the rules (``Rules.key``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dosereg.conf.config import load_config
from dosereg.ingest import open_catalog
from dosereg.registry_export import evaluate, rules_from_config
from dosereg.web import Query, StudyIndex
from tests.synthetic import study_uid, synthetic_study


def _add(cfg, records) -> None:  # type: ignore[no-untyped-def]
    cat = open_catalog(cfg)
    try:
        cat.add_objects(records)
    finally:
        cat.close()


def test_index_follows_versions_and_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = load_config(None, data_dir=str(data))
    _add(cfg, [synthetic_study(i) for i in range(12)])
    index = StudyIndex(cfg)
    assert index.refresh() == 12
    assert index.refresh() == 0  # nothing changed: not even the versions are read
    rules = rules_from_config(cfg)
    total, rows = index.search(Query(), 100, 0)
    assert total == 12
    by_uid = {r["study_instance_uid"]: r for r in rows}
    for i in range(12):
        expected = evaluate(synthetic_study(i), rules)
        assert by_uid[study_uid(i)]["registry_code"] == expected.flags.registry_code
        assert by_uid[study_uid(i)]["completeness"] == expected.completeness.status
    index.close()

    again = StudyIndex(cfg)  # a restarted server: same versions, nothing evaluated
    assert again.refresh() == 0
    # a study gains a dose object: only it is evaluated again
    _add(cfg, [synthetic_study(3, objects=2)])
    assert again.refresh() == 1
    assert again.search(Query(), 100, 0)[1][0]["key"]
    row = next(r for r in again.search(Query(), 100, 0)[1] if r["study_instance_uid"] == study_uid(3))
    assert row["events"] == len(synthetic_study(3, objects=2).events)

    # other rules (every patient ID is "QA"): every study again, now excluded
    conf = tmp_path / "c.toml"
    conf.write_text('[classification.non_patient]\npatient_id = ["*"]\n')
    other = load_config(str(conf), data_dir=str(data))
    changed = StudyIndex(other)
    assert rules_from_config(other).key != rules.key
    assert changed.refresh() == 12
    assert changed.search(Query(registry_code="excluded"), 100, 0)[0] == 12
    assert changed.search(Query(registry_code="G9327"), 100, 0)[0] == 0


def test_filters_keys_and_privacy(tmp_path: Path) -> None:
    cfg = load_config(None, data_dir=str(tmp_path / "data"))
    _add(cfg, [synthetic_study(i) for i in range(30)])
    index = StudyIndex(cfg)
    index.refresh()
    everything = index.search(Query(), 1000, 0)[1]
    protocol = "Head routine"
    with_protocol = index.search(Query(protocol=protocol), 1000, 0)[1]
    assert with_protocol and all(synthetic_study(int(r["study_instance_uid"].rsplit(".", 1)[1])).events[-1]
                                 .acquisition_protocol == protocol for r in with_protocol)
    assert len(with_protocol) == sum(1 for i in range(30) if i % 4 == 0)
    march = index.search(Query(date_from="2025-02-01", date_to="2025-02-28"), 1000, 0)[0]
    assert march == sum(1 for r in everything if r["study_date"].startswith("2025-02"))
    key = everything[0]["key"]
    assert len(key) == 32 and index.uid_of(key) == everything[0]["study_instance_uid"]
    assert everything[0]["study_instance_uid"] not in key
    assert index.key_of(everything[0]["study_instance_uid"]) == key
    assert (tmp_path / "data" / "web-index.sqlite").stat().st_mode & 0o077 == 0
    assert (tmp_path / "data" / "web-secret").stat().st_mode & 0o077 == 0
    plan = " ".join(str(r) for r in sqlite3.connect(tmp_path / "data" / "web-index.sqlite").execute(
        "EXPLAIN QUERY PLAN SELECT * FROM studies s WHERE s.registry_code = 'G9326' "
        "ORDER BY s.study_date DESC, s.sid DESC LIMIT 50"))
    assert "studies_registry" in plan and "TEMP B-TREE" not in plan  # indexed, no sort step


# -- submission state ---------------------------------------------------------------------------

def _export(cfg) -> str:  # type: ignore[no-untyped-def]
    from dosereg.registry_export import CatalogSource, export_batch

    with open_catalog(cfg, readonly=True) as catalog:
        result = export_batch(cfg, CatalogSource(catalog))
    assert result.batch_id and result.state == "pending_review", result
    return result.batch_id


def _reference(cfg) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    """Each study's ``submission`` as ``dosereg studies --json`` gives it (no index)."""
    from dosereg.registry_export import evaluated_dict, submission_lookup

    rules, add = rules_from_config(cfg), submission_lookup(cfg)
    with open_catalog(cfg, readonly=True) as catalog:
        return {r.study_instance_uid or "": add(evaluated_dict(r, rules))["submission"] for r in catalog.iter_studies()}


def _by_state(index: StudyIndex) -> dict[str, set[str]]:
    from dosereg.registry_export import SUBMISSION_STATES

    index.refresh()
    return {state: {r["study_instance_uid"] for r in index.search(Query(submission_state=state), 10_000, 0)[1]}
            for state in SUBMISSION_STATES}


def test_submission_state_filter_follows_the_lifecycle(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Samples exported, one held, the rest acknowledged; a batch failed, one approved, one
    awaiting review; an exam without a dose report; studies not exported yet: every state's
    filter gives exactly its studies, as ``dosereg studies`` says of each."""
    from dataclasses import replace

    from dosereg.conf.config import DestinationSettings
    from dosereg.extract import ExamRecord, Patient
    from dosereg.registry_export import approve, hold, send
    from tests.conftest import run_cli
    from tests.lifecycle_helpers import acknowledge_all

    monkeypatch.setenv("DOSEREG_SECRET", "web-index-secret-0123456789abcdef0123")
    data = tmp_path / "data"
    assert run_cli("import", str(Path(__file__).resolve().parents[1] / "sample_dicom"),
                   "--data-dir", str(data)).returncode == 0
    cfg = load_config(None, data_dir=str(data))
    index = StudyIndex(cfg)
    index.refresh()
    samples = {r["study_instance_uid"] for r in index.search(Query(), 10_000, 0)[1]}
    assert len(samples) > 5
    before = _by_state(index)
    assert before["eligible"] | before["not_eligible"] == samples and before["eligible"]

    a = _export(cfg)
    assert _by_state(index)["pending_review"] == samples  # approving changes export state only
    held = sorted(samples)[0]
    hold(cfg, a, [held], by="test", reason="check the protocol")
    acknowledge_all(cfg)
    assert index.refresh() == 0  # nothing re-evaluated: only the submission columns changed
    after_a = _by_state(index)
    assert after_a["held"] == {held} and after_a["acknowledged"] == samples - {held}

    _add(cfg, [synthetic_study(i) for i in (0, 1)])
    b = _export(cfg)
    approve(cfg, b, by="test")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the drop folder should be")
    bad = DestinationSettings(name="bad", kind="folder", path=str(blocked / "drop"))
    assert not send(replace(cfg, registry=replace(cfg.registry, destinations=(bad,))), lambda: [], batch_id=b).ok
    _add(cfg, [synthetic_study(i) for i in (2, 3)])
    approve(cfg, _export(cfg), by="test")
    _add(cfg, [synthetic_study(i) for i in (4, 5)])
    _export(cfg)
    _add(cfg, [*(synthetic_study(i) for i in range(6, 12)), synthetic_study(12, ctdivol_missing=True)])
    exam = "1.2.826.0.1.3680043.10.999.4242"
    with open_catalog(cfg) as catalog:
        catalog.add_exam(ExamRecord(study_instance_uid=exam, accession_number="EXAM1", study_date="2026-11-20",
                                    study_description="CT HEAD", modality="CT", patient=Patient(id="P9"), source="ris"))

    got, reference = _by_state(index), _reference(cfg)
    for state, uids in got.items():
        assert uids == {u for u, s in reference.items() if s["state"] == state}, state
    assert got["held"] == {held} and got["acknowledged"] == samples - {held}
    assert got["failed"] == {study_uid(i) for i in (0, 1)}
    assert got["approved"] == {study_uid(i) for i in (2, 3)}
    assert got["pending_review"] == {study_uid(i) for i in (4, 5)}
    assert got["no_dose_report"] == {exam} and got["sending"] == set()
    assert got["eligible"] == {study_uid(i) for i in range(6, 12)} and got["not_eligible"] == {study_uid(12)}
    # the listing's submission columns are the study record's `submission`
    rows = {r["study_instance_uid"]: r for r in index.search(Query(), 10_000, 0)[1]}
    assert len(rows) == len(reference) == len(samples) + 14
    for uid, sub in reference.items():
        assert {f: rows[uid][f"submission_{f}"] for f in ("state", "batch_id", "billed_code", "receipt",
                                                         "reported_at")} == sub, uid
    reported = [r for r in rows.values() if r["submission_billed_code"] == "G9327"]
    assert reported and all(r["submission_batch_id"] == a and r["submission_receipt"].startswith("drop=")
                            for r in reported)
    # a filter combines with the others, and an unknown state is refused before any query
    g9327 = index.search(Query(submission_state="acknowledged", registry_code="G9327"), 10_000, 0)[0]
    assert g9327 == len(reported)
    assert Query(submission_state="reported").problem() is not None and Query(submission_state="held").problem() is None
    db = sqlite3.connect(data / "web-index.sqlite")
    for q in (Query(submission_state="held"), Query(submission_state="acknowledged", date_from="2024-01-01")):
        count, listing, args = q.statements()
        for sql in (count, f"{listing} LIMIT 50"):
            plan = " ".join(str(r) for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "submissions_state" in plan and "TEMP B-TREE" not in plan, plan  # indexed, no sort step
    db.close()
