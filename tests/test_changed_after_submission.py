"""The report's "changed after submission" table (docs/report.md): a study billing received a code
for, in an acknowledged batch, that the rules give differently today (a site's new non-patient
pattern catches it), through the real CLI on the project's samples."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from tests.conftest import SAMPLES, jsonl, run_cli
from tests.lifecycle_helpers import acknowledge_all_in

ENV = {"DOSEREG_SECRET": "changed-site-secret-0123456789abcdef"}


def _codes(config: Path) -> dict[str, str]:
    r = run_cli("studies", "--json", "--config", str(config), env=ENV)
    assert r.returncode == 0, r.stderr
    return {s["accession_number"]: s["flags"]["registry_code"] for s in jsonl(r.stdout) if s.get("flags")}


def _report(config: Path) -> tuple[str, list[dict[str, str]]]:
    r = run_cli("report", "--config", str(config), env=ENV)
    assert r.returncode == 0, r.stderr
    html_path = Path(next(w for w in r.stdout.split() if w.endswith(".html")))
    with open(html_path.with_suffix(".csv"), newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.DictReader(fh) if row["table"] == "changed_after_submission"]
    return html_path.read_text(encoding="utf-8"), rows


def test_a_study_reclassified_after_billing_received_its_code_is_listed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "dosereg.toml"
    config.write_text(f'[storage]\ndata_dir = "{data}"\n')
    assert run_cli("import", str(SAMPLES), "--config", str(config), env=ENV).returncode == 0
    assert run_cli("export", "--config", str(config), env=ENV).returncode == 0
    acknowledge_all_in(data, ENV, config)
    before = _codes(config)
    assert before["ACC0011"] == "G9327"  # "CT HEAD WO", billed as reported to the registry

    page, rows = _report(config)
    assert "<h2 id='s" in page and "Changed after submission (0)</h2>" in page and rows == []

    # the site learns that its "CT HEAD WO" accession was a physicist's constancy scan: a new pattern
    default_patterns = ["*phantom*", "*physics*", "*quality control*", "*quality assurance*", "*constancy*",
                        "qa", "qc", "qa[_ ]*", "qc[_ ]*", "*[_ ]qa", "*[_ ]qc", "*[_ ]qa[_ ]*", "*[_ ]qc[_ ]*"]
    config.write_text(f'[storage]\ndata_dir = "{data}"\n[classification.non_patient]\n'
                      f'study_description = {default_patterns + ["ct head wo"]!r}\n')
    after = _codes(config)
    changed = {acc for acc, code in after.items() if before.get(acc) not in (None, code)}
    assert changed == {"ACC0011"}

    page, rows = _report(config)
    assert "Changed after submission (1)</h2>" in page
    (row,) = rows
    assert (row["accession_number"], row["reported_code"], row["registry_code"]) == ("ACC0011", "G9327", "excluded")
    assert re.match(r"\d{4}-\d\d-\d\dT", row["reported_at"])  # when the batch was acknowledged
    assert "study_description" in row["reasons"] and "ct head wo" in row["reasons"]
    section = page.split("Changed after submission (1)</h2>")[1].split("</table>")[0]
    assert "ACC0011" in section and "G9327" in section and "excluded" in section
