"""kill -9 of `dosereg export` at chosen instants: the next export repairs the batch, and no study is
ever submitted twice nor its billing flags written twice (issue 8, item 8).

The real CLI runs in a subprocess on the project's samples; ``DOSEREG_TEST_CRASH_AT=<point>`` makes
it ``os._exit(137)`` at that point (no clean-up of any kind, as after kill -9).
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from dosereg.registry_export.deid import Pseudonymizer
from dosereg.registry_export.placement import CRASH_POINTS
from tests.conftest import SAMPLES, jsonl, run_cli
from tests.lifecycle_helpers import acknowledge_all_in

SECRET = "crash-test-secret-0123456789abcdef0123"
ENV = {"DOSEREG_SECRET": SECRET}
EXPORT_POINTS = [p for p in CRASH_POINTS if not p.startswith("repair_")]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    """A data directory with the samples imported (copied for each test), and its studies."""
    data = tmp_path_factory.mktemp("crash-template") / "data"
    res = run_cli("import", str(SAMPLES), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    studies = jsonl(run_cli("studies", "--json", "--data-dir", str(data)).stdout)
    assert len(studies) >= 10
    return data, studies


def _copy(template: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(template, data)
    return data


def _export(data: Path, crash_at: str | None = None) -> int:
    env = dict(ENV)
    if crash_at:
        env["DOSEREG_TEST_CRASH_AT"] = crash_at
    res = run_cli("export", "--data-dir", str(data), env=env)
    assert "Traceback" not in res.stderr, res.stderr
    if crash_at is None:
        assert res.returncode == 0, res.stderr
    return res.returncode


def _submitted(data: Path) -> Counter[str]:
    """Pseudonymous study UID -> in how many batches' submission.json it is."""
    seen: Counter[str] = Counter()
    for sub in sorted(data.glob("registry/*/*/submission.json")):
        if sub.parent.name.startswith("."):
            continue
        seen.update(s["study_instance_uid"] for s in json.loads(sub.read_text())["studies"])
    return seen


def _flag_rows(data: Path) -> Counter[str]:
    """Original study UID -> how many flags rows (all flags files) carry it."""
    rows: Counter[str] = Counter()
    for path in sorted(data.glob("flags/*.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            rows.update(r["study_instance_uid"] for r in csv.DictReader(fh))
    return rows


def _batch_states(data: Path) -> dict[str, str]:
    db = sqlite3.connect(data / "export-state.sqlite")
    try:
        return dict(db.execute("SELECT batch_id, state FROM batches ORDER BY seq"))
    finally:
        db.close()


def _assert_once_each(data: Path, studies: list[dict[str, object]]) -> None:
    g9327 = {Pseudonymizer(SECRET.encode()).uid(str(s["study_instance_uid"])) for s in studies
             if s["flags"]["registry_code"] == "G9327"}  # type: ignore[index]
    submitted = _submitted(data)
    assert set(submitted) == g9327, "every G9327 study submitted, nothing else"
    assert {uid for uid, n in submitted.items() if n != 1} == set(), submitted
    acknowledge_all_in(data, ENV)  # billing flags follow the acknowledgement (docs/lifecycle.md)
    rows = _flag_rows(data)
    assert set(rows) == {s["study_instance_uid"] for s in studies}
    assert {uid for uid, n in rows.items() if n != 1} == set(), rows
    # every flags file has its parquet twin with the same rows
    for path in data.glob("flags/*.csv"):
        import pyarrow.parquet as pq

        with open(path, newline="", encoding="utf-8") as fh:
            n = sum(1 for _ in csv.DictReader(fh))
        assert pq.read_table(path.with_suffix(".parquet")).num_rows == n
    assert not [p for p in data.iterdir() if p.name.startswith(".staging")]
    assert "writing" not in _batch_states(data).values()
    # and a further export finds nothing new
    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0 and "nothing new" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("point", EXPORT_POINTS)
def test_killed_export_is_repaired_by_the_next_one(point: str, template: tuple[Path, list[dict[str, object]]],
                                                   tmp_path: Path) -> None:
    data = _copy(template[0], tmp_path)
    assert _export(data, crash_at=point) == 137
    _export(data)
    _assert_once_each(data, template[1])
    states = _batch_states(data)
    if point == "after_staging":  # before the intent: nothing recorded, the staging folder was stale
        assert list(states.values()) == ["acknowledged"]
    elif point in ("after_intent", "after_reports", "after_flags"):  # nothing the registry reads was placed
        assert list(states.values()) == ["discarded", "acknowledged"]
        discarded = next(iter(states))
        assert not list(data.glob(f"reports/*{discarded}*")) and not list(data.glob(f"flags/{discarded}*"))
    else:  # something was placed: the same batch was completed or adopted, no second batch
        assert list(states.values()) == ["acknowledged"]


def test_a_repair_that_is_itself_killed_is_repaired_again(template: tuple[Path, list[dict[str, object]]],
                                                          tmp_path: Path) -> None:
    data = _copy(template[0], tmp_path)
    assert _export(data, crash_at="after_rename") == 137  # the registry folder is in place, not recorded
    (batch_id,) = _batch_states(data)
    assert (data / "registry" / "FACILITY-0001" / batch_id).is_dir()
    assert _export(data, crash_at="repair_after_place") == 137
    assert _export(data, crash_at="repair_before_commit") == 137
    assert _batch_states(data) == {batch_id: "writing"}
    _export(data)
    states = _batch_states(data)
    assert states[batch_id] in ("pending_review", "discarded") and "writing" not in states.values()
    _assert_once_each(data, template[1])


def test_a_repaired_batch_records_what_was_submitted(tmp_path: Path) -> None:
    """After an adopted batch, a study that gains a dose object is re-submitted once, its flags not again."""
    data = tmp_path / "data"
    assert run_cli("import", str(SAMPLES / "ct_cumulative_1.dcm"), "--data-dir", str(data)).returncode == 0
    assert _export(data, crash_at="before_state_commit") == 137
    _export(data)
    (uid,) = _submitted(data)
    acknowledge_all_in(data, ENV)
    assert run_cli("import", str(SAMPLES / "ct_cumulative_2.dcm"), "--data-dir", str(data)).returncode == 0
    res = run_cli("export", "--data-dir", str(data), env=ENV)
    assert res.returncode == 0 and "1 re-submitted after a change" in res.stdout, res.stdout + res.stderr
    assert _submitted(data) == Counter({uid: 2})  # two versions of the study, one batch each
    assert list(_flag_rows(data).values()) == [1]  # its flags did not change: no second row
