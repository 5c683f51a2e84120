"""``dosereg reconcile --from-csv``: a RIS export's CT exams matched to the catalog, errors naming
the line; and the pieces of the PACS client that need no PACS (dose-object choice, TLS context)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from dosereg.conf.config import Config, StorageSettings
from dosereg.conf.pacs import PacsSettings
from dosereg.ingest import CsvError, open_catalog, reconcile_csv
from dosereg.ingest.qr_find import Instance, Series
from dosereg.ingest.qr_retrieve import is_dose_object, worth_listing
from dosereg.ingest.qr_session import ssl_context
from dosereg.ingest.reconcile_csv import read_exams

from .conftest import run_cli
from .synthetic import synthetic_study

HEADER = "accession_number,study_instance_uid,study_date,modality,study_description,station_name,patient_id\n"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(storage=StorageSettings(data_dir=str(tmp_path / "data")))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ris.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_are_matched_by_uid_else_by_accession(cfg: Config, tmp_path: Path) -> None:
    held = [synthetic_study(i) for i in range(3)]
    with open_catalog(cfg) as catalog:
        catalog.add_objects(held)
    a, b, c = held
    path = write(tmp_path, HEADER
                 + f"{a.accession_number},{a.study_instance_uid},20250101,CT,CT HEAD,CT1,P1\n"
                 + f"{b.accession_number},,2025-01-02,CT,CT CHEST,CT1,P2\n"  # by accession
                 + "NEW1,1.2.3.9,20261120,CT,CT ABDOMEN,CT2,P3\n"
                 + "NEW2,,20261120,\"CT\\SR\",CT SPINE,CT2,\n"  # no UID, unknown accession
                 + "MR1,1.2.3.10,20261120,MR,MR KNEE,MR1,P4\n")
    s = reconcile_csv(cfg, path)
    assert (s.ct_studies, s.already_complete, s.without_dose_report, s.ignored_rows, s.retrieved) == (4, 2, 2, 1, 0)
    assert s.line() == ("CT studies found 4, already complete 2, dose objects retrieved 0, "
                        "still without a dose report 2, rows not CT ignored 1")
    with open_catalog(cfg) as catalog:
        rows = {(r["accession_number"], r["study_instance_uid"], r["source"], r["station_name"], r["study_date"])
                for r in catalog.exam_rows()}
        exams = list(catalog.iter_exams())
    assert rows == {("NEW1", "1.2.3.9", "ris", "CT2", "2026-11-20"), ("NEW2", None, "ris", "CT2", "2026-11-20")}
    assert [e.study_instance_uid for e in exams] == ["1.2.3.9"]
    assert exams[0].patient.id == "P3" and exams[0].study_description == "CT ABDOMEN"
    # the same file again changes nothing
    again = reconcile_csv(cfg, path)
    assert again.line() == s.line()
    with open_catalog(cfg) as catalog:
        assert len(catalog.exam_rows()) == 2
    del c


@pytest.mark.parametrize(("text", "message"), [
    ("accession_number,study_date\n", "ris.csv:1: missing column(s) study_instance_uid, modality"),
    (HEADER.replace("patient_id", "mrn"), "ris.csv:1: unknown column(s) mrn"),
    (HEADER + "A,1.2.3,20261120,CT,x,y,z\nB,,2026-13-01,CT,x,y,z\n",
     "ris.csv:3: study_date '2026-13-01' is not a date"),
    (HEADER + "A,1.2.x,20261120,CT,x,y,z\n", "ris.csv:2: study_instance_uid '1.2.x' is not a UID"),
    (HEADER + "A,1.2.3,20261120,CT,x,y,z\n,,20261120,CT,x,y,z\n",
     "ris.csv:3: neither study_instance_uid nor accession_number"),
    (HEADER + "A,1.2.3,20261120,CT,x,y,z,extra\n", "ris.csv:2: more fields than columns"),
])
def test_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CsvError) as err:
        read_exams(write(tmp_path, text))
    assert str(err.value).startswith(f"{tmp_path / 'ris.csv'}:") and message[len("ris.csv"):] in str(err.value)


def test_the_cli_reports_a_bad_file_and_keeps_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "A,1.2.3,20261120,CT,x,y,z\nB,,tomorrow,CT,x,y,z\n")
    data = tmp_path / "data"
    r = run_cli("reconcile", "--data-dir", str(data), "--from-csv", str(path))
    assert r.returncode == 2
    assert f"{path}:3: study_date 'tomorrow' is not a date" in r.stderr
    assert not (data / "catalog.sqlite").exists()
    r = run_cli("reconcile", "--data-dir", str(data), "--from-csv", str(path), "--since", "2026-01-01")
    assert r.returncode == 2 and "--since/--until do not apply" in r.stderr


def test_only_dose_objects_are_chosen() -> None:
    sr = Series("1.1", "SR", "Dose Report", "CT1", 1)
    screen = Series("1.2", "CT", "Dose Info", "CT1", 1)
    vrt = Series("1.3", "OT", "VRT Bone", "CT1", 1)
    images = Series("1.4", "CT", "Thorax 1.0 B30f", "CT1", 240)
    assert [worth_listing(s) for s in (sr, screen, vrt, images)] == [True, True, True, False]
    rdsr = Instance("2.1", "1.2.840.10008.5.1.4.1.1.88.67", ())
    sc = "1.2.840.10008.5.1.4.1.1.7"
    assert is_dose_object(sr, rdsr)
    assert not is_dose_object(sr, Instance("2.2", "1.2.840.10008.5.1.4.1.1.88.11", ()))  # Basic Text SR
    assert is_dose_object(screen, Instance("2.3", sc, ("DERIVED", "SECONDARY")))
    assert is_dose_object(vrt, Instance("2.4", sc, ("DERIVED", "SECONDARY", "DOSE_INFO")))
    assert not is_dose_object(vrt, Instance("2.5", sc, ("DERIVED", "SECONDARY", "VRT")))
    assert not is_dose_object(images, Instance("2.6", "1.2.840.10008.5.1.4.1.1.2", ("ORIGINAL",)))
    assert not is_dose_object(vrt, Instance("2.7", None, ()))  # nothing said: not guessed


def test_the_tls_context_follows_the_pacs_settings(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    base = PacsSettings(ae_title="PACS", host="pacs.example", port=2762)
    assert ssl_context(base) is None
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl_context(PacsSettings(ae_title="PACS", host="pacs.example", port=2762,
                                   tls_ca_certificates=str(ca_file)))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
