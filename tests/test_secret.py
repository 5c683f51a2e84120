"""The pseudonym secret (spec sections 5 and 8): at least 32 characters, a fingerprint in export
state, another secret refused, and ``dosereg secret change`` as the deliberate way."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq

from dosereg.registry_export.deid import Pseudonymizer, secret_fingerprint
from tests.conftest import SAMPLES, run_cli

OLD = "old-site-secret-0123456789abcdef0123456"
NEW = "new-site-secret-fedcba9876543210fedcba9"


def _import(data: Path, *names: str) -> None:
    for name in names:
        res = run_cli("import", str(SAMPLES / name), "--data-dir", str(data))
        assert res.returncode == 0, res.stderr


def _export(data: Path, secret: str, *extra: str) -> tuple[int, str, str]:
    res = run_cli("export", "--data-dir", str(data), *extra, env={"DOSEREG_SECRET": secret})
    assert "Traceback" not in res.stderr
    return res.returncode, res.stdout, res.stderr


def _meta(data: Path) -> dict[str, str]:
    db = sqlite3.connect(data / "export-state.sqlite")
    try:
        return dict(db.execute("SELECT key, value FROM meta"))
    finally:
        db.close()


def _manifests(data: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(data.glob("registry/*/*/manifest.json"))]


def test_a_short_secret_is_refused_with_one_line_and_nothing_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _import(data, "ct_siemens_single_source.dcm")
    rc, _, err = _export(data, "s" * 31)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "DOSEREG_SECRET" in err and "at least 32 characters" in err and "s" * 31 not in err
    assert not (data / "registry").exists() and not (data / "flags").exists()
    assert not (data / "export-state.sqlite").exists()
    res = run_cli("secret", "change", "--yes", "--data-dir", str(data), env={"DOSEREG_SECRET": "short"})
    assert res.returncode == 2 and "at least 32 characters" in res.stderr


def test_another_secret_is_refused_until_secret_change(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _import(data, "ct_siemens_single_source.dcm")
    rc, out, err = _export(data, OLD)
    assert rc == 0, err
    meta = _meta(data)
    assert meta["secret_fingerprint"] == secret_fingerprint(OLD.encode())
    raw = b"".join(p.read_bytes() for p in data.glob("export-state.sqlite*"))
    assert OLD.encode() not in raw  # the fingerprint, never the secret
    assert _manifests(data)[0]["pseudonyms_changed_at"] is None

    _import(data, "ct_head_sequenced.dcm")
    for extra in ((), ("--out", str(tmp_path / "preview"))):
        rc, out, err = _export(data, NEW, *extra)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "DOSEREG_SECRET" in err and "new pseudonym" in err and "count it twice" in err
        assert "`dosereg secret change`" in err
    assert len(_manifests(data)) == 1 and not (tmp_path / "preview").exists()

    # not confirmed: nothing changes
    res = run_cli("secret", "change", "--data-dir", str(data), env={"DOSEREG_SECRET": NEW}, input=b"no\n")
    assert res.returncode == 1 and "not confirmed" in res.stderr
    assert "count it twice" in res.stderr  # what changing it would do, said before asking
    assert _meta(data)["secret_fingerprint"] == secret_fingerprint(OLD.encode())

    res = run_cli("secret", "change", "--by", "A. Physicist", "--data-dir", str(data),
                  env={"DOSEREG_SECRET": NEW}, input=b"change\n")
    assert res.returncode == 0, res.stderr
    meta = _meta(data)
    assert meta["secret_fingerprint"] == secret_fingerprint(NEW.encode()) and meta["pseudonyms_changed_at"]
    assert meta["pseudonyms_changed_at"] in res.stdout
    db = sqlite3.connect(data / "export-state.sqlite")
    try:
        (audit,) = db.execute("SELECT actor, os_user, comment FROM audit_log WHERE action='secret_change'")
    finally:
        db.close()
    assert audit[0] == "A. Physicist" and audit[1] and "new pseudonyms" in audit[2]

    # the old secret is now the wrong one; the new one exports, and its batch says pseudonyms changed
    assert _export(data, OLD)[0] == 2
    rc, out, err = _export(data, NEW)
    assert rc == 0, err
    first, second = _manifests(data)
    assert first["pseudonyms_changed_at"] is None and second["pseudonyms_changed_at"] == meta["pseudonyms_changed_at"]
    second_dir = sorted(data.glob("registry/*/*"))[-1]
    uids = pq.read_table(second_dir / "studies.parquet").column("study_instance_uid").to_pylist()
    assert uids == [Pseudonymizer(NEW.encode()).uid("2.25.229470105366121905937414201137460843181.1.3")]

    res = run_cli("secret", "change", "--yes", "--data-dir", str(data), env={"DOSEREG_SECRET": NEW})
    assert res.returncode == 0 and "already the recorded one" in res.stdout


def test_secret_change_before_any_export_just_records_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = run_cli("secret", "change", "--data-dir", str(data), env={"DOSEREG_SECRET": NEW})
    assert res.returncode == 0, res.stderr  # nothing to confirm: no pseudonym was ever made
    assert "no pseudonyms to change" in res.stdout
    assert _meta(data)["secret_fingerprint"] == secret_fingerprint(NEW.encode())
    assert "pseudonyms_changed_at" not in _meta(data)
