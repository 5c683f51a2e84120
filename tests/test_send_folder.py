"""``kind = "folder"``: the batch folder placed in a drop folder, read back, receipted by the manifest's SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dosereg.conf.fsutil import is_private
from dosereg.registry_export.destinations import ManifestError, deliver

from .send_peers import BATCH, FACILITY, dest, make_batch, sample_parcel

FILES = ("studies.parquet", "events.parquet", "submission.json", "manifest.json")


def test_placed_read_back_and_receipted(tmp_path: Path) -> None:
    batch = make_batch(tmp_path / "data")
    drop = tmp_path / "outbox"
    d = deliver(dest("folder", path=str(drop)), sample_parcel(batch, []))
    assert d.state == "acknowledged" and d.attempts == 1 and not d.failures
    assert d.receipt == hashlib.sha256((batch / "manifest.json").read_bytes()).hexdigest()
    assert d.acknowledged == frozenset(FILES)
    placed = drop / FACILITY / BATCH
    assert sorted(p.name for p in placed.iterdir()) == sorted(FILES)  # no temporary file left behind
    for name in FILES:
        assert (placed / name).read_bytes() == (batch / name).read_bytes()
        assert is_private(placed / name)

    # a re-run given what is acknowledged copies nothing; without it, files already in place are kept
    stamps = {n: (placed / n).stat().st_mtime_ns for n in FILES}
    again = deliver(dest("folder", path=str(drop)), sample_parcel(batch, []), done=d.acknowledged)
    assert again.state == "acknowledged" and again.acknowledged == frozenset() and again.receipt == d.receipt
    repeat = deliver(dest("folder", path=str(drop)), sample_parcel(batch, []))
    assert repeat.state == "acknowledged" and repeat.receipt == d.receipt
    assert {n: (placed / n).stat().st_mtime_ns for n in FILES} == stamps


def test_a_damaged_copy_in_the_drop_folder_is_replaced(tmp_path: Path) -> None:
    batch = make_batch(tmp_path / "data")
    drop = tmp_path / "outbox"
    deliver(dest("folder", path=str(drop)), sample_parcel(batch, []))
    (drop / FACILITY / BATCH / "events.parquet").write_bytes(b"half a file")
    d = deliver(dest("folder", path=str(drop)), sample_parcel(batch, []))
    assert d.state == "acknowledged"
    assert (drop / FACILITY / BATCH / "events.parquet").read_bytes() == (batch / "events.parquet").read_bytes()


def test_a_batch_file_that_differs_from_its_manifest_is_not_placed(tmp_path: Path) -> None:
    batch = make_batch(tmp_path / "data")
    (batch / "submission.json").write_bytes(b"{}")
    drop = tmp_path / "outbox"
    d = deliver(dest("folder", path=str(drop)), sample_parcel(batch, []))
    assert d.state == "failed" and d.receipt is None and d.attempts == 1
    (f,) = d.failures
    assert f.key == "submission.json" and not f.retryable and "differs from its manifest" in f.reason
    placed = drop / FACILITY / BATCH
    # no manifest: a reader waiting for it never takes the incomplete batch
    assert not (placed / "manifest.json").exists() and not (placed / "submission.json").exists()
    assert d.acknowledged == {"studies.parquet", "events.parquet"}


def test_an_unusable_drop_folder_fails_with_the_reason(tmp_path: Path) -> None:
    batch = make_batch(tmp_path / "data")
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the folder should be")
    d = deliver(dest("folder", path=str(blocker)), sample_parcel(batch, []))
    assert d.state == "failed" and d.attempts == 2 and str(blocker) in (d.last_error or "")
    assert {f.key for f in d.failures} == set(FILES)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.replace('"batch_id": "', '"batch_id": "X'), "batch_id"),
    (lambda m: m.replace('"name": "events.parquet"', '"name": "../events.parquet"'), "not a plain file name"),
    (lambda m: m.replace('"sha256": "', '"sha256": "Z', 1), "SHA-256"),
    (lambda m: "not json", "not JSON"),
])
def test_an_unusable_manifest_sends_nothing(tmp_path: Path, edit: object, words: str) -> None:
    batch = make_batch(tmp_path / "data")
    manifest = batch / "manifest.json"
    manifest.write_text(edit(manifest.read_text()))  # type: ignore[operator]
    with pytest.raises(ManifestError, match=words):
        deliver(dest("folder", path=str(tmp_path / "outbox")), sample_parcel(batch, []))
    assert not (tmp_path / "outbox").exists()


def test_files_are_fsynced_before_the_manifest_is_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order a reader relies on: every file durable and in place before manifest.json appears."""
    batch = make_batch(tmp_path / "data")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"rename {Path(b).name}"), real_replace(a, b))[1])
    deliver(dest("folder", path=str(tmp_path / "outbox")), sample_parcel(batch, []))
    renames = [e for e in events if e.startswith("rename")]
    assert renames[-1] == "rename manifest.json" and len(renames) == 4
    for i, e in enumerate(events):
        if e.startswith("rename"):
            assert events[i - 1] == "fsync"  # the file's own fsync before its rename
    last = events.index("rename manifest.json")
    assert "fsync" in events[last - 2:last]  # and the folder's fsync before the manifest went in
