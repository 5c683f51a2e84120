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
