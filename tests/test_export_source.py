"""What an export reads (:mod:`dosereg.registry_export.source`): with per-study version keys an
export with nothing new decodes no record; from records alone it still works."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dosereg.conf.config import Config, load_config
from dosereg.extract import StudyRecord
from dosereg.registry_export import CatalogSource, StudySource, VersionedSource, export_batch
from dosereg.registry_export.source import VersionCursor, as_source, versions_of
from tests.lifecycle_helpers import acknowledge_all
from tests.synthetic import synthetic_study

SECRET = "source-test-secret-0123456789abcdef0123"


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("DOSEREG_SECRET", SECRET)
    return load_config(None, data_dir=str(tmp_path / "data"))


class FakeCatalog:
    """Studies in UID order with a version key each (the hash of the record's JSON, as a catalog
    could keep it), counting how many records were decoded."""

    def __init__(self, records: list[StudyRecord]) -> None:
        self.set(records)
        self.decoded = 0

    def set(self, records: list[StudyRecord]) -> None:
        self.studies = sorted(records, key=lambda r: str(r.study_instance_uid))

    def iter_studies(self) -> Iterator[StudyRecord]:
        for r in self.studies:
            self.decoded += 1
            yield r

    def study_versions(self) -> Iterator[tuple[str, str]]:
        for r in self.studies:
            yield str(r.study_instance_uid), hashlib.sha256(r.to_json().encode()).hexdigest()[:16]


def corpus(n: int) -> list[StudyRecord]:
    return [synthetic_study(i, sex=None if i % 10 == 3 else "auto", qa=(i == 4)) for i in range(n)]


def test_with_versions_nothing_new_decodes_no_record(cfg: Config) -> None:
    catalog = FakeCatalog(corpus(20))
    source = CatalogSource(catalog)
    assert isinstance(source, VersionedSource)
    first = export_batch(cfg, source)
    assert first.batch_id is not None and first.flag_rows == 20 and catalog.decoded == 20
    acknowledge_all(cfg)

    catalog.decoded = 0
    again = export_batch(cfg, source)
    assert again.batch_id is None and again.studies_seen == 20 and catalog.decoded == 0
    assert again.already_submitted == first.registry_studies
    assert "nothing new" in again.summary()

    # a study gains a dose object: its version changes, the batch carries it (every record is read
    # for the report)
    changed = synthetic_study(2, objects=2)
    catalog.set([changed if r.study_instance_uid == changed.study_instance_uid else r for r in catalog.studies])
    catalog.decoded = 0
    third = export_batch(cfg, source)
    assert (third.registry_studies, third.registry_resubmitted, third.flag_rows) == (1, 1, 0)
    assert catalog.decoded == 20
    catalog.decoded = 0
    assert export_batch(cfg, source).batch_id is None and catalog.decoded == 0


def test_a_new_version_with_nothing_to_send_is_settled_once(cfg: Config) -> None:
    records = corpus(8)
    catalog = FakeCatalog(records)
    export_batch(cfg, CatalogSource(catalog))
    # the same study re-sent: only when it arrived changed, which is not content (a new version)
    resent = records[5]
    resent = resent.with_changes(dose_objects=tuple(o.__class__(o.sop_instance_uid, o.sop_class_uid, o.kind,
                                                                 "2026-03-03T03:03:03Z")
                                                     for o in resent.dose_objects))
    catalog.set([resent if r.study_instance_uid == resent.study_instance_uid else r for r in records])
    catalog.decoded = 0
    again = export_batch(cfg, CatalogSource(catalog))
    assert again.batch_id is None and catalog.decoded == 8  # evaluated, nothing to send
    catalog.decoded = 0
    assert export_batch(cfg, CatalogSource(catalog)).batch_id is None and catalog.decoded == 0


def test_other_rules_evaluate_again(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = FakeCatalog(corpus(6))
    export_batch(cfg, CatalogSource(catalog))
    import dosereg.registry_export.rules as rules_module

    # a new meaning of the evaluation code (Rules.key includes the revision)
    monkeypatch.setattr(rules_module, "RULES_REVISION", rules_module.RULES_REVISION + 1)
    catalog.decoded = 0
    assert export_batch(cfg, CatalogSource(catalog)).batch_id is None and catalog.decoded == 6
    catalog.decoded = 0
    assert export_batch(cfg, CatalogSource(catalog)).batch_id is None and catalog.decoded == 0


def test_records_alone_still_decide_after_an_export_with_versions(cfg: Config) -> None:
    records = corpus(10)
    catalog = FakeCatalog(records)
    export_batch(cfg, CatalogSource(catalog))
    plain = export_batch(cfg, lambda: iter(records))  # no versions: every record evaluated, nothing new
    assert plain.batch_id is None and plain.studies_seen == 10
    assert export_batch(cfg, lambda: iter(records)).batch_id is None  # settled by input key now
    records.append(synthetic_study(50))
    assert export_batch(cfg, lambda: iter(records)).flag_rows == 1


def test_sources_and_the_version_cursor() -> None:
    records = corpus(3)
    plain = as_source(lambda: iter(records))
    assert isinstance(plain, StudySource) and versions_of(plain) is None and list(plain.records()) == records
    catalog = FakeCatalog(records)
    assert as_source(CatalogSource(catalog)).records is not None
    assert versions_of(CatalogSource(catalog)) is not None

    class NoVersions:
        def iter_studies(self) -> Iterator[StudyRecord]:
            return iter(records)

    assert not isinstance(CatalogSource(NoVersions()), VersionedSource)
    cursor = VersionCursor([("1.1", "a"), ("1.3", "c"), ("1.5", "e")])
    assert [cursor.get(u) for u in ("1.0", "1.1", "1.2", "1.3", "1.3", "1.2", "1.5", "1.6")] == [
        None, "a", None, "c", "c", None, "e", None]


def test_the_catalog_as_a_source_skips_decoding_when_nothing_is_new(cfg: Config) -> None:
    """Catalog.study_versions() is what CatalogSource reads: a second export reads no record."""
    from dosereg.ingest import open_catalog

    records = corpus(12)
    catalog = open_catalog(cfg)
    try:
        catalog.add_objects(records)
    finally:
        catalog.close()
    catalog = open_catalog(cfg, readonly=True)
    try:
        source = CatalogSource(catalog)
        assert isinstance(source, VersionedSource)
        first = export_batch(cfg, source)
        assert first.flag_rows == 12
        read: list[StudyRecord] = []
        plain_records = source.records

        def counted() -> Iterator[StudyRecord]:
            for r in plain_records():
                read.append(r)
                yield r

        source.records = counted  # type: ignore[method-assign]
        again = export_batch(cfg, source)
        assert again.batch_id is None and again.studies_seen == 12 and read == []
    finally:
        catalog.close()
