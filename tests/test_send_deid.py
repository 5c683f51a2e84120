"""PS3.15 Annex E de-identification of dose objects (``destinations.deidentify``).

On the project's own ``sample_dicom/`` (and on the vendor corpus when it is present): the
de-identified copy extracts to the same dose content, and no identifier of the original is
left anywhere in its bytes.
"""

from __future__ import annotations

import copy
import re
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dosereg.extract import StudyRecord, extract_bytes
from dosereg.registry_export.deid import Pseudonymizer
from dosereg.registry_export.destinations import DeidentificationError, deidentify

from .conftest import SAMPLES, corpus_present, sample_expected
from .send_peers import SECRET

PSEUDO = Pseudonymizer(SECRET)
# the samples that extract (truncated and junk files do not; Philips screens have pixel data)
GOOD = sorted(p for p in SAMPLES.glob("*.dcm") if (sample_expected(p.stem)["record"].get("error") or {}).get("code")
              not in ("truncated", "not_dicom") and p.stem != "ct_philips_dose_info")


def encoded(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dose(r: StudyRecord) -> tuple[Any, ...]:
    """Dose content, events in any order (with month precision their start times are gone)."""
    return (r.error.code if r.error else None, r.total_events, r.total_dlp_mGycm, r.reported_total_dlp_mGycm,
            [(e.ctdivol_mGy, e.dlp_mGycm, e.ssde_mGy, e.phantom, e.acquisition_type, e.exposure_time_s,
              e.scanning_length_mm, e.pitch_factor, [(s.kvp_kV, s.tube_current_mA) for s in e.sources],
              e.dose_check is not None and (e.dose_check.ctdivol_alert_mGy, e.dose_check.dlp_alert_mGycm))
             for e in sorted(r.events, key=lambda e: repr((e.ctdivol_mGy, e.dlp_mGycm, e.exposure_time_s)))])


def identifiers(ds: Dataset) -> dict[str, str]:
    """Every identifier of the original a byte search must not find (values of 3 characters or more)."""
    found: dict[str, str] = {}
    for kw in ("PatientID", "AccessionNumber", "InstitutionName", "StationName", "DeviceSerialNumber",
               "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstitutionAddress",
               "OtherPatientIDs", "RequestedProcedureID", "PerformedProcedureStepID"):
        v = str(ds.get(kw, "") or "").strip()
        if len(v) >= 3:
            found[kw] = v
    for kw in ("PatientName", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName"):
        for i, part in enumerate(str(ds.get(kw, "") or "").replace("=", "^").split("^")):
            if len(part.strip()) >= 3:
                found[f"{kw}[{i}]"] = part.strip()
    birth = str(ds.get("PatientBirthDate", "") or "")
    if birth:
        found["PatientBirthDate"] = birth

    def walk(items: Any) -> None:
        for item in items or ():
            code = item.ConceptNameCodeSequence[0].CodeValue if item.get("ConceptNameCodeSequence") else ""
            if item.get("ValueType") == "UIDREF" and not str(item.UID).startswith("1.2.840.10008."):
                found[f"UIDREF {code}"] = str(item.UID)
            if item.get("ValueType") == "PNAME":
                for part in str(item.PersonName).split("^"):
                    if len(part) >= 3:
                        found[f"PNAME {code}"] = part
            if item.get("ValueType") == "TEXT" and code in ("121013", "121016", "113880", "113877", "121017",
                                                            "113873", "113724"):
                if len(str(item.TextValue).strip()) >= 3:
                    found[f"TEXT {code}"] = str(item.TextValue).strip()
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return found


def check_object(path: Path, precision: str) -> Dataset:
    raw = path.read_bytes()
    original = pydicom.dcmread(BytesIO(raw))
    before = copy.deepcopy(original)
    out = deidentify(original, PSEUDO, precision)
    assert original == before, "the original dataset was changed"
    data = encoded(out)
    assert dose(extract_bytes(data)) == dose(extract_bytes(raw)), path.name
    vocabulary = {w.lower() for ds in (original, out) for e in ds.iterall()
                  if e.keyword in ("CodeMeaning", "DeidentificationMethod", "Manufacturer", "ManufacturerModelName")
                  for w in re.split(r"[^0-9A-Za-z]+", str(e.value))}
    for what, value in identifiers(original).items():
        if value.lower() in vocabulary:  # a dummy name such as "Patient" (an anonymised corpus file)
            continue
        # as a whole token: "CONT" of a patient name is not the CONTAINER value type, and a serial
        # "10001" is not a run of digits inside a pseudonymous UID
        token = re.compile(rb"(?<![0-9A-Za-z.])" + re.escape(value.encode()) + rb"(?![0-9A-Za-z.])")
        assert not token.search(data), (path.name, what)
    assert out.PatientIdentityRemoved == "YES"
    return out


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_samples_keep_their_dose_and_lose_their_identifiers(path: Path) -> None:
    original = pydicom.dcmread(path)
    out = check_object(path, "day")
    assert out.SOPInstanceUID == PSEUDO.uid(str(original.SOPInstanceUID))
    assert out.StudyInstanceUID == PSEUDO.uid(str(original.StudyInstanceUID))
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPClassUID == original.SOPClassUID
    assert out.StationName == PSEUDO.station_name(str(original.StationName)) and len(out.StationName) == 16
    assert out.DeviceSerialNumber == PSEUDO.serial_number(str(original.DeviceSerialNumber))
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"):
        assert kw in out and not out[kw].value, kw  # Type 2: present and empty
    assert "InstitutionName" not in out and "StudyDescription" not in out and "SeriesDescription" not in out
    assert (out.PatientSex, out.PatientAge or "") == (original.PatientSex, original.PatientAge or "")
    assert out.StudyDate == original.StudyDate and out.StudyTime == original.StudyTime  # day: kept
    codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113104", "113106", "113108"]
    assert {c.CodingSchemeDesignator for c in out.DeidentificationMethodCodeSequence} == {"DCM"}
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert not any(e.tag.is_private for e in out.iterall())


def content(ds: Dataset) -> list[Dataset]:
    out: list[Dataset] = []

    def walk(items: Any) -> None:
        for item in items or ():
            out.append(item)
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return out


def test_clean_structured_content() -> None:
    path = SAMPLES / "ct_toshiba_dose_check.dcm"  # with a Dose Check person name and reason
    original, out = pydicom.dcmread(path), check_object(path, "day")
    kinds = {i.ValueType for i in content(original)}
    assert "PNAME" in kinds and "PNAME" not in {i.ValueType for i in content(out)}
    texts = {i.ConceptNameCodeSequence[0].CodeValue: str(i.TextValue) for i in content(out) if i.ValueType == "TEXT"}
    assert not {"121106", "125203", "113907"} & set(texts)  # comments, protocols, reasons: gone
    original_texts = {i.ConceptNameCodeSequence[0].CodeValue: str(i.TextValue) for i in content(original)
                      if i.ValueType == "TEXT"}
    assert texts["121013"] == PSEUDO.station_name(original_texts["121013"])
    assert texts["121016"] == PSEUDO.serial_number(original_texts["121016"])
    assert texts["121014"] == original_texts["121014"]  # a manufacturer names no one
    uids = [str(i.UID) for i in content(out) if i.ValueType == "UIDREF"]
    assert uids and all(u.startswith("2.25.") for u in uids)
    assert {str(i.UID) for i in content(out) if i.ValueType == "UIDREF"} == {
        PSEUDO.uid(str(i.UID)) for i in content(original) if i.ValueType == "UIDREF"}


@pytest.mark.parametrize("precision, date, codes", [
    ("month", "20240301", ["113100", "113104", "113107", "113108"]),
    ("year", "20240101", ["113100", "113104", "113107", "113108"]),
])
def test_dates_cut_to_the_registry_precision(precision: str, date: str, codes: list[str]) -> None:
    path = SAMPLES / "ct_siemens_single_source.dcm"
    out = check_object(path, precision)
    assert out.StudyDate == date and out.ContentDate == date
    assert not out.StudyTime and out.ContentTime == "000000"  # Type 1 keeps a value
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == codes
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    datetimes = {str(i.DateTime) for i in content(out) if i.ValueType == "DATETIME"}
    assert datetimes == {date}
    data = encoded(out)
    assert b"101530" not in data and b"20240305" not in data  # no time of day, no exact date anywhere


def test_ages_of_90_and_over_are_aggregated() -> None:
    ds = pydicom.dcmread(SAMPLES / "ct_siemens_single_source.dcm")
    ds.PatientAge = "097Y"
    assert deidentify(ds, PSEUDO, "day").PatientAge == "090Y"
    ds.PatientAge = "089Y"
    assert deidentify(ds, PSEUDO, "day").PatientAge == "089Y"


def test_pixel_data_and_objects_that_are_not_reports_are_refused() -> None:
    ds = pydicom.dcmread(SAMPLES / "ct_philips_dose_info.dcm")
    with pytest.raises(DeidentificationError, match="Clean Pixel Data"):
        deidentify(ds, PSEUDO, "day")
    del ds.PixelData
    with pytest.raises(DeidentificationError, match="not a structured report"):
        deidentify(ds, PSEUDO, "day")


def test_by_reference_items_follow_the_items_removed_before_them() -> None:
    ds = pydicom.dcmread(SAMPLES / "ct_siemens_single_source.dcm")

    def item(value_type: str, code: str, **kw: Any) -> Dataset:
        it = Dataset()
        it.RelationshipType = "CONTAINS"
        it.ValueType = value_type
        name = Dataset()
        name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = code, "DCM", code
        it.ConceptNameCodeSequence = Sequence([name])
        for k, v in kw.items():
            setattr(it, k, v)
        return it

    n = len(ds.ContentSequence)
    target = item("CODE", "121058", ConceptCodeSequence=ds.ContentSequence[0].ConceptCodeSequence)
    ds.ContentSequence = Sequence([item("TEXT", "121106", TextValue="DOE said so"), *ds.ContentSequence, target])
    by_ref = Dataset()
    by_ref.RelationshipType = "HAS PROPERTIES"
    by_ref.ReferencedContentItemIdentifier = [1, n + 2]  # the target, after the comment and the original items
    gone = Dataset()
    gone.RelationshipType = "HAS PROPERTIES"
    gone.ReferencedContentItemIdentifier = [1, 1]  # the comment, which is removed
    ds.ContentSequence.extend([by_ref, gone])
    out = deidentify(ds, PSEUDO, "day")
    refs = [list(i.ReferencedContentItemIdentifier) for i in out.ContentSequence if "ReferencedContentItemIdentifier" in i]
    assert refs == [[1, n + 1]]  # moved up by the removed comment; the reference to the comment removed
    assert out.ContentSequence[n].ConceptNameCodeSequence[0].CodeValue == "121058"


def test_unknown_and_private_attributes_are_not_copied() -> None:
    ds = pydicom.dcmread(SAMPLES / "ct_siemens_single_source.dcm")
    ds.add_new(0x00091010, "LO", "PRIVATE DOE")
    ds.OperatorsName = "SMITH^ANNA"
    ds.AdditionalPatientHistory = "allergic, lives at 3 Elm St"
    ds.ContentSequence[0].add_new(0x00191001, "LO", "VENDOR NOTE")
    # inside the coded entries and measured values that are otherwise copied as encoded
    ds.ContentSequence[0].ConceptNameCodeSequence[0].add_new(0x00291010, "LO", "CODED SECRET")
    num = next(i for i in content(ds) if i.ValueType == "NUM")
    num.MeasuredValueSequence[0].OperatorsName = "JONES^MEASURER"
    num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].StudyDate = "19991231"
    out = deidentify(ds, PSEUDO, "month")
    data = encoded(out)
    for text in (b"PRIVATE DOE", b"SMITH", b"Elm St", b"VENDOR NOTE", b"CODED SECRET", b"JONES", b"19991231"):
        assert text not in data
    assert dose(extract_bytes(data)) == dose(extract_bytes(SAMPLES.joinpath("ct_siemens_single_source.dcm").read_bytes()))
    assert "OperatorsName" not in out and "AdditionalPatientHistory" not in out


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="date_precision"):
        deidentify(pydicom.dcmread(SAMPLES / "ct_siemens_single_source.dcm"), PSEUDO, "week")


@pytest.mark.skipif(not corpus_present(), reason="vendor corpus not found beside the project (../shared/corpus)")
@pytest.mark.parametrize("precision", ["day", "month"])
def test_corpus_conformance(corpus: Path, precision: str) -> None:
    paths = [p for p in sorted(corpus.glob("*.dcm")) + sorted((corpus / "not-ct").glob("*.dcm"))
             if "ContentSequence" in pydicom.dcmread(p)]
    assert len(paths) >= 9
    for path in paths:
        check_object(path, precision)


@pytest.mark.parametrize("path", [SAMPLES / f"{n}.dcm" for n in ("ct_siemens_single_source", "ct_big_endian",
                                                                  "ct_implicit_vr", "ct_deflated", "ct_ge_enhanced_sr")],
                         ids=lambda p: p.stem)
def test_the_bytes_entry_point_gives_the_same_object(path: Path) -> None:
    """What the sender uses (file bytes in, transcoded when not Explicit VR Little Endian) and
    the dataset entry point give the same de-identified object."""
    from dosereg.registry_export.destinations.dicom_deid import deidentify_bytes

    data = deidentify_bytes(path.read_bytes(), PSEUDO, "month")
    via_bytes = pydicom.dcmread(BytesIO(data))
    assert via_bytes.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert via_bytes == deidentify(pydicom.dcmread(path), PSEUDO, "month")
    assert dose(extract_bytes(data)) == dose(extract_bytes(path.read_bytes()))
