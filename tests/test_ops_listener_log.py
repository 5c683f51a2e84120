"""What the listener's log says (issue 14): refusals at WARNING with the calling AE title, the peer
address and the PS3.8 code; ``-v`` one line per object."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from .test_listener import Listener, scu_ae, send_pynetdicom, synthetic, wait_processed


def test_refused_context_and_association_logged_at_warning_with_codes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "c.toml"
    config.write_text('[listener]\nallowed_calling_ae_titles = ["PACS1", "CTSCANNER"]\n')
    with Listener(data_dir, config=config) as lst:
        assoc = scu_ae("CTSCANNER", contexts=[CTImageStorage]).associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        if assoc.is_established:  # pynetdicom's requestor aborts an association without a context
            assoc.release()
        refused = scu_ae("INTRUDER").associate("127.0.0.1", lst.port, ae_title="DOSEREG")
        assert refused.is_rejected
        assert lst.terminate() == 0
        log = lst.log()
    assert re.search(
        r"WARNING dosereg\.ingest\.listener: refused presentation context\(s\) from CTSCANNER "
        r"\(127\.0\.0\.1:\d+\): CT Image Storage \(1\.2\.840\.10008\.5\.1\.4\.1\.1\.2\): "
        r"presentation context result 3 abstract-syntax-not-supported; 0 accepted", log), log
    assert re.search(
        r"WARNING dosereg\.ingest\.listener: refused association from INTRUDER \(127\.0\.0\.1:\d+\): "
        r"calling AE title 'INTRUDER' is not in listener.allowed_calling_ae_titles \(A-ASSOCIATE-RJ result 1 "
        r"rejected-permanent, source 1 service-user, reason 3 calling-AE-title-not-recognized\)", log), log


def test_verbose_is_one_line_per_object(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    made = synthetic(tmp_path / "syn", 3)
    with Listener(data_dir) as lst:  # runs with -v
        assert send_pynetdicom(lst.port, [pydicom.dcmread(p) for p, _, _ in made], ae_title="PACS7") == [0] * 3
        wait_processed(data_dir, 3)
        assert lst.terminate() == 0
        log = lst.log()
    assert "pynetdicom" not in log  # its per-message INFO lines show only with -vv
    for _, _, sop in made:
        lines = [line for line in log.splitlines() if sop in line]
        assert len(lines) == 1, lines
        assert " INFO dosereg.ingest: stored " in lines[0] and " from PACS7: " in lines[0]
        assert lines[0].endswith("outcome=new")
    per_object = [line for line in log.splitlines() if "Store Request" in line or "established" in line]
    assert per_object == []
