"""Files holding patient data are owner-only (0600, folders 0700), whatever the umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dosereg.conf.config import Config, StorageSettings
from dosereg.conf.fsutil import create_private, is_private, private_dir, private_file, write_private
from dosereg.ingest import Catalog, import_paths
from dosereg.ingest.catalog import catalog_path

from .conftest import SAMPLES
from .test_listener import Listener, need, storescu, wait_processed

UMASKS = [0o022, 0o000]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything under it, by relative path."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def assert_owner_only(root: Path) -> dict[str, int]:
    found = modes(root)
    wrong = {
        name: oct(mode) for name, mode in found.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert not wrong, f"not owner-only: {wrong}"
    return found


@pytest.mark.parametrize("mask", UMASKS, ids=["umask-022", "umask-000"])
def test_import_creates_owner_only_files(tmp_path: Path, mask: int) -> None:
    data = tmp_path / "data"
    cfg = Config(storage=StorageSettings(data_dir=str(data)))
    with umask(mask):
        summary = import_paths(cfg, [SAMPLES], jobs=1)
        catalog = Catalog(catalog_path(data))  # a second connection: the WAL stays while it is open
        try:
            assert summary.imported > 10 and summary.total_quarantined >= 3
            found = assert_owner_only(data)
        finally:
            catalog.close()
    assert found["."] == 0o700
    for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "listener.lock"):
        assert found[name] == 0o600, name
    for name in ("objects", "spool", "quarantine"):
        assert found[name] == 0o700, name
    reasons = [n for n in found if n.endswith(".reason.txt")]
    assert len(reasons) == summary.total_quarantined
    objects = [n for n in found if n.startswith("objects/") and n.endswith(".dcm")]
    assert len(objects) == summary.imported


@pytest.mark.parametrize("mask", UMASKS, ids=["umask-022", "umask-000"])
def test_listener_creates_owner_only_files(tmp_path: Path, mask: int) -> None:
    need("storescu")
    data = tmp_path / "data"
    files = [SAMPLES / "ct_siemens_single_source.dcm", SAMPLES / "sr_not_dose.dcm"]
    with umask(mask):
        lst = Listener(data)  # inherits the umask, and so does its processing process
    with lst:
        r = storescu(lst.port, files)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_processed(data, len(files))
        found = assert_owner_only(data)
        assert lst.terminate() == 0
    assert found["catalog.sqlite"] == 0o600 and found["catalog.sqlite-wal"] == 0o600
    assert len([n for n in found if n.startswith("objects/") and n.endswith(".dcm")]) == 1
    assert len([n for n in found if n.endswith(".reason.txt")]) == 1
    assert_owner_only(data)


def test_older_world_readable_catalog_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = catalog_path(data)
    with umask(0o022):
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
            catalog = Catalog(path)
            catalog.close()
        finally:
            conn.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o777], ids=["umask-022", "umask-000", "umask-777"])
def test_fsutil_helpers(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        d = private_dir(tmp_path / "a" / "b")
        assert private_dir(d) == d  # existing: fine
        write_private(d / "state.json", b"{}")
        write_private(d / "state.json", b'{"v": 2}')  # replaced atomically
        assert create_private(d / "db") is True
        assert create_private(d / "db") is False
        fd = private_file(d / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"x")
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert modes(d) == {".": 0o700, "db": 0o600, "log": 0o600, "state.json": 0o600}
    assert (d / "state.json").read_bytes() == b'{"v": 2}'
    assert is_private(d / "state.json")
    (d / "wide").write_bytes(b"")
    os.chmod(d / "wide", 0o644)
    assert not is_private(d / "wide")
    os.close(private_file(d / "wide"))  # a file dosereg writes is tightened when opened for writing
    assert stat.S_IMODE((d / "wide").stat().st_mode) == 0o600
    with pytest.raises(NotADirectoryError):
        private_dir(d / "wide")
