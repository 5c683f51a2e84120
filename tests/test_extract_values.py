"""Value decoding rules of the extractor, one by one."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dosereg.extract import extract_bytes
from dosereg.extract.dicom_bytes import DicomReadError, parse
from dosereg.extract.values import (
    TextDecoder,
    ValueProblem,
    age_from_dates,
    age_from_patient_age,
    convert,
    parse_da,
    parse_ds,
    parse_dt,
    parse_tm,
)


@pytest.mark.parametrize("value, unit, target, expected", [
    (724.52, "mGycm", "mGycm", 724.52),
    (724.52, "mGy.cm", "mGycm", 724.52),
    (724.52, "mGy*cm", "mGycm", 724.52),
    (0.72452, "Gy.cm", "mGycm", 724.52),
    (72.452, "cGy.cm", "mGycm", 724.52),
    (7245.2, "mGy.mm", "mGycm", 724.52),
    (1.2, "cGy", "mGy", 12.0),
    (1200.0, "uGy", "mGy", 1.2),
    (8.21, "cm", "mm", 82.1),
    (500.0, "ms", "s", 0.5),
    (165044.374, "uA", "mA", 165.044374),
    (0.6, "{ratio}", "1", 0.6),
    (12.0, None, "mGy", 12.0),
])
def test_units_are_converted(value: float, unit: str | None, target: str, expected: float) -> None:
    assert convert(value, unit, target) == pytest.approx(expected, rel=1e-12)


def test_identity_unit_keeps_the_value_exactly() -> None:
    v = 0.1 + 0.2
    assert convert(v, "mGy", "mGy") is v


@pytest.mark.parametrize("unit", ["mSv", "kg", "Bq", "%"])
def test_unconvertible_unit_is_rejected(unit: str) -> None:
    with pytest.raises(ValueProblem, match=f"unit '{unit}' cannot be converted to mGy"):
        convert(1.0, unit, "mGy")


@pytest.mark.parametrize("text, expected", [("724.52", 724.52), (" 1e2 ", 100.0), ("0", 0.0), ("-2.5", -2.5)])
def test_ds(text: str, expected: float) -> None:
    assert parse_ds(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("10.50/ 15.00", "not a number"), ("1\\2", "multi-valued"), ("", "empty"), ("nan", "not finite"),
])
def test_ds_invalid(text: str, reason: str) -> None:
    with pytest.raises(ValueProblem, match=reason):
        parse_ds(text)


def test_dates_and_times() -> None:
    assert parse_da("20130228") == "2013-02-28"
    assert parse_da("2013.02.28") == "2013-02-28"
    assert parse_da("") is None
    with pytest.raises(ValueProblem):
        parse_da("20130230")
    assert parse_tm("113731") == "11:37:31"
    assert parse_tm("171712.641") == "17:17:12.641"
    assert parse_tm("1137") == "11:37:00"
    assert parse_dt("19970101000631.737+0000") == "1997-01-01T00:06:31.737+00:00"
    assert parse_dt("20130313085900.432051") == "2013-03-13T08:59:00.432051"
    assert parse_dt("20180105110246") == "2018-01-05T11:02:46"
    with pytest.raises(ValueProblem):
        parse_dt("1997-01-01")


def test_age() -> None:
    assert age_from_dates("1923-05-09", "2013-02-28") == pytest.approx(89.81, abs=0.005)
    assert age_from_dates("1958-01-05", "2018-01-05") == 60.0
    # born 29 February: the first birthday falls on 1 March in a common year
    assert age_from_dates("2000-02-29", "2001-02-28") == 1.0 and age_from_dates("2000-02-29", "2001-02-01") < 1
    assert age_from_dates(None, "2018-01-05") is None
    assert age_from_patient_age("045Y") == 45.0
    assert age_from_patient_age("018M") == 1.5
    assert age_from_patient_age("010W") == pytest.approx(0.19, abs=0.005)
    with pytest.raises(ValueProblem):
        age_from_patient_age("45 years")


def test_text_decoding() -> None:
    latin1 = TextDecoder(b"ISO_IR 100")
    assert latin1("testæøå".encode()) == "testæøå"  # UTF-8 bytes under Latin-1: recovered
    assert latin1("Müller".encode("latin-1")) == "Müller"
    assert TextDecoder(b"ISO_IR 192")("Ærø".encode()) == "Ærø"
    assert TextDecoder(None)(b"plain") == "plain"


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "2.25.1"
    ds.StudyInstanceUID = "2.25.2"
    ds.PatientName = "DOE^JANE"
    ds.PatientSex = "F"
    ds.StudyDate = "20200102"
    ds.ImageType = ["DERIVED", "SECONDARY", "DOSE_INFO"]
    item = Dataset()
    item.CTDIvol = 7.25
    item.KVP = "120"
    item.AcquisitionType = "SPIRAL"
    item.SeriesNumber = "3"
    ds.ExposureDoseSequence = [item]
    return ds


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_every_transfer_syntax_reads_the_same(syntax: str) -> None:
    ds = _dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    rec = extract_bytes(buf.getvalue(), source="x.dcm")
    assert rec.error is None, rec.error
    assert rec.patient.name == "DOE^JANE" and rec.patient.sex == "F" and rec.study_date == "2020-01-02"
    assert len(rec.events) == 1
    ev = rec.events[0]
    assert ev.ctdivol_mGy == 7.25 and ev.acquisition_type == "spiral" and ev.sources[0].kvp_kV == 120.0
    assert ev.series_number == 3


def test_not_dicom() -> None:
    with pytest.raises(DicomReadError) as exc:
        parse(b"\x89PNG\r\n" + b"\0" * 300)
    assert exc.value.code == "not_dicom"
