"""The two-process export path (large batches) writes exactly what the one-process path writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dosereg.conf.config import Config, load_config
from dosereg.registry_export import export_batch
from dosereg.registry_export import writer_process as export_module
from tests.lifecycle_helpers import acknowledge_all
from tests.synthetic import synthetic_study

SECRET = "parallel-test-secret-0123456789abcdef"


def _export(tmp_path: Path, name: str, parallel_after: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setattr(export_module, "PARALLEL_AFTER", parallel_after)
    cfg: Config = load_config(None, data_dir=str(tmp_path / name))
    records = [synthetic_study(i, sex=None if i % 7 == 3 else "auto", qa=(i == 4), rt=(i == 6)) for i in range(60)]
    result = export_batch(cfg, lambda: iter(records))
    assert result.batch_id is not None and result.registry_dir is not None
    reg = result.registry_dir
    submission = json.loads((reg / "submission.json").read_text())
    acknowledge_all(cfg)  # billing flags follow the acknowledgement
    flags_csv = cfg.data_dir / "flags" / f"{result.batch_id}.csv"
    with open(flags_csv, newline="", encoding="utf-8") as fh:
        # when and with which receipt the registry acknowledged differ from run to run
        flags = [{k: v for k, v in r.items() if k not in ("reported_at", "receipt")} for r in csv.DictReader(fh)]
    manifest = json.loads((reg / "manifest.json").read_text())
    report_csv = next(p for p in result.report_paths if str(p).endswith(".csv")).read_text()
    return {
        "studies": pq.read_table(reg / "studies.parquet").to_pylist(),
        "events": pq.read_table(reg / "events.parquet").to_pylist(),
        "submission_studies": submission["studies"],
        "flags": flags,
        "row_counts": {f["name"]: f["rows"] for f in manifest["files"]},
        "report_csv_lines": len(report_csv.splitlines()),
        "summary_counts": (result.registry_studies, result.registry_events, result.flag_rows),
    }


def _without_batch(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if "batch" not in k and "exported_at" not in k and "created" not in k}
            for r in rows]


def test_two_process_export_matches_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOSEREG_SECRET", SECRET)
    forked_sinks: list[bool] = []
    hand_over = export_module._HandOff._hand_over

    def spy(self: export_module._HandOff, fork: bool) -> None:
        hand_over(self, fork)
        forked_sinks.append(self.forked)

    monkeypatch.setattr(export_module._HandOff, "_hand_over", spy)
    single = _export(tmp_path, "single", 10_000, monkeypatch)
    forked = _export(tmp_path, "forked", 5, monkeypatch)
    assert forked_sinks == [False, True]  # the second export really ran its writer in a forked process
    assert single["summary_counts"] == forked["summary_counts"]
    assert single["summary_counts"][0] > 40  # type: ignore[index]
    for key in ("studies", "events", "submission_studies"):
        assert _without_batch(single[key]) == _without_batch(forked[key]), key  # type: ignore[arg-type]
    assert single["flags"] == forked["flags"]
    assert single["row_counts"] == forked["row_counts"]
    assert single["report_csv_lines"] == forked["report_csv_lines"]


def test_a_failing_second_process_fails_the_export_with_its_reason(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from dosereg.registry_export import export_marks
    from dosereg.registry_export.registry_files import RegistryFiles

    monkeypatch.setenv("DOSEREG_SECRET", SECRET)
    monkeypatch.setattr(export_module, "PARALLEL_AFTER", 5)

    def boom(self: RegistryFiles, d: dict[str, object], events: object = None) -> None:
        raise ValueError("disk says no")

    monkeypatch.setattr(RegistryFiles, "add", boom)  # inherited by the forked process
    cfg = load_config(None, data_dir=str(tmp_path / "data"))
    records = [synthetic_study(i) for i in range(20)]
    with pytest.raises(RuntimeError, match="second export process failed: ValueError: disk says no"):
        export_batch(cfg, lambda: iter(records))
    assert export_marks(cfg) == {}
    assert not (cfg.data_dir / "registry").exists() and not (cfg.data_dir / "flags").exists()
    assert not [p for p in cfg.data_dir.iterdir() if p.name.startswith(".staging")]
