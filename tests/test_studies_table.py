"""``dosereg studies``: the table fits the terminal and says why a study is incomplete; the
filters (dates, scanner, code, incomplete) choose the same studies for the table and --json."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dosereg.registry_export import StudyFilter, studies_table
from tests.conftest import SAMPLES, run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("studies") / "data"
    r = run_cli("import", str(SAMPLES), "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    return str(d)


def studies(data: str, *args: str) -> list[dict[str, Any]]:
    r = run_cli("studies", "--json", "--data-dir", data, *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_the_default_table_fits_a_terminal_and_says_why(data: str) -> None:
    every = studies(data)
    incomplete = [d for d in every if d["flags"] and d["flags"]["registry_code"] == "G9326"]
    assert incomplete, "the samples have incomplete studies"
    text = studies_table(every, width=100)
    lines = text.splitlines()
    assert max(len(line) for line in lines[:-1]) <= 100  # the old table was 155 columns
    assert lines[0].split()[:3] == ["Date", "Accession", "Scanner"] and lines[0].endswith("Why incomplete")
    narrow = studies_table(every, width=60).splitlines()
    assert narrow[0].endswith("Submission    Wh…")  # too narrow a terminal: the reasons shrink first
    row = next(line for line in lines if incomplete[0]["accession_number"] in line)
    first_reason = incomplete[0]["flags"]["registry_reasons"][0]
    assert first_reason[:15] in row
    wide = studies_table(every, wide=True).splitlines()
    assert max(len(line) for line in wide) > 100 and "Description" in wide[0] and "Nomencl." in wide[0]
    assert any(first_reason in line for line in wide)  # whole in the wide table
    assert lines[-1] == f"{len(every)} studies, {sum(d['completeness'] is None or d['completeness']['status'] != 'complete' for d in every)} incomplete or in error"


def test_filters_choose_the_same_studies_in_the_table_and_in_json(data: str) -> None:
    every = studies(data)
    dates = sorted(d["study_date"] for d in every if d["study_date"])
    mid = dates[len(dates) // 2]
    since = studies(data, "--since", mid)
    assert since and {d["study_instance_uid"] for d in since} == {
        d["study_instance_uid"] for d in every if d["study_date"] and d["study_date"] >= mid}
    until = studies(data, "--until", mid)
    assert {d["study_instance_uid"] for d in until} == {
        d["study_instance_uid"] for d in every if d["study_date"] and d["study_date"] <= mid}
    g9326 = studies(data, "--code", "G9326")
    assert g9326 and all(d["flags"]["registry_code"] == "G9326" for d in g9326)
    g9320 = studies(data, "--code", "G9320")
    assert g9320 and all(d["flags"]["nomenclature_code"] == "G9320" for d in g9320)
    incomplete = studies(data, "--incomplete")
    assert incomplete and all(d["completeness"] is None or d["completeness"]["status"] != "complete"
                              for d in incomplete)
    assert len(incomplete) < len(every)
    station = next(d["equipment"]["station_name"] for d in every if (d.get("equipment") or {}).get("station_name"))
    by_scanner = studies(data, "--scanner", station.lower())
    assert by_scanner and all(station in json.dumps(d["equipment"]) for d in by_scanner)
    r = run_cli("studies", "--data-dir", data, "--code", "G9326", "--incomplete")
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith(f"{len(g9326)} stud")
    r = run_cli("studies", "--data-dir", data, "--since", "2999-01-01")
    assert r.returncode == 0 and r.stdout == "no study matches these filters\n"
    r = run_cli("studies", "--data-dir", data, "--since", "last week")
    assert r.returncode == 2 and "not a date (YYYY-MM-DD)" in r.stderr


def test_a_filter_of_nothing_passes_everything() -> None:
    d = {"study_date": None, "flags": None, "completeness": None, "equipment": None}
    assert StudyFilter()(d) and not StudyFilter(since="2020-01-01")(d) and StudyFilter(incomplete=True)(d)
