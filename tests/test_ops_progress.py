"""The import's progress bar and the log cooperate (issue 14): each warning is a whole line."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import pytest

from dosereg.conf.config import Config, StorageSettings
from dosereg.ingest import import_paths

from .conftest import SAMPLES


def test_warnings_during_import_are_whole_lines_beside_the_bar(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    console = io.StringIO()
    monkeypatch.setattr(sys, "stderr", console)
    handler = logging.StreamHandler(sys.stderr)  # as logging.basicConfig makes it for the CLI
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        files = [SAMPLES / n for n in ("ct_siemens_single_source.dcm", "rf_fluoro_rdsr.dcm", "sr_not_dose.dcm",
                                       "ct_head_sequenced.dcm", "dx_projection_rdsr.dcm")]
        cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "data")))
        summary = import_paths(cfg, files, jobs=1, progress=True)
    finally:
        root.removeHandler(handler)
    assert summary.total_quarantined == 3
    out = console.getvalue()
    assert "import:" in out  # the bar was drawn
    starts = [m.start() for m in re.finditer(r"WARNING dosereg\.ingest: quarantined ", out)]
    assert len(starts) == 3, out
    for at in starts:  # each starts a line of its own, not after the bar's text
        assert at == 0 or out[at - 1] in "\r\n", repr(out[max(0, at - 80):at + 40])
    for line in out.replace("\r", "\n").splitlines():
        if "quarantined " in line:
            assert line.startswith("WARNING dosereg.ingest: quarantined "), repr(line)
    assert root.handlers.count(handler) == 0
