"""Synthetic study records for the export tests and ``bench/export.py`` (test data: not installed).

Deterministic in ``i``: study ``i`` always has the same identifiers, scanner, protocol
and doses, so tests can state exact expectations. Identifiers are obviously fake but
shaped like real ones (PN with ``^``, accession and patient ID strings, DICOM UIDs under
the ``2.25`` root of this module).
"""

from __future__ import annotations

from typing import Any

from dosereg.extract import (
    Code,
    DoseCheck,
    DoseObjectRef,
    Equipment,
    Event,
    Patient,
    ReportInfo,
    Source,
    StudyRecord,
)

UID_ROOT = "1.2.826.0.1.3680043.9.7777"
RDSR = "1.2.840.10008.5.1.4.1.1.88.67"

SCANNERS = (
    Equipment("Siemens", "SOMATOM Definition Flash", "CTAWP91919", "73445", "syngo CT VA44A",
              "General Hospital North", f"{UID_ROOT}.900.1"),
    Equipment("GE MEDICAL SYSTEMS", "Revolution CT", "CT02", "GE-58821", "rev_ct.1.2",
              "General Hospital North", f"{UID_ROOT}.900.2"),
    Equipment("TOSHIBA", "Aquilion ONE", "AQ1", "4CA1412345", "V7.00",
              "General Hospital South", f"{UID_ROOT}.900.3"),
)

# (study description, protocol, target region, phantom, CTDIvol, DLP)
EXAMS = (
    ("CT HEAD WO CONTRAST", "Head routine", Code("69536005", "SCT", "Head"), "head16", 52.0, 880.0),
    ("CT CHEST W CONTRAST", "Thorax std", Code("51185008", "SCT", "Chest"), "body32", 8.5, 310.0),
    ("CT ABDOMEN PELVIS W CONTRAST", "Abd/Pel portal", Code("818981001", "SCT", "Abdomen and Pelvis"),
     "body32", 12.0, 560.0),
    ("Thorax-Abdomen local", "TAP 1.0 B30f", Code("416775004", "SCT", "Chest, Abdomen and Pelvis"),
     "body32", 11.0, 720.0),
)

LOCALIZER = Code("113805", "DCM", "Constant Angle Acquisition")
SPIRAL = Code("116152004", "SCT", "Spiral Acquisition")
STATIONARY = Code("113806", "DCM", "Stationary Acquisition")
PHANTOM_CODES = {"head16": Code("113690", "DCM", "IEC Head Dosimetry Phantom"),
                 "body32": Code("113691", "DCM", "IEC Body Dosimetry Phantom")}


def patient_name(i: int) -> str:
    return f"Zyxwvut^Qponmlk{i:06d}"


def study_uid(i: int) -> str:
    return f"{UID_ROOT}.1.{i}"


def synthetic_study(i: int, *, sex: str | None = "auto", ctdivol_missing: bool = False,
                    qa: bool = False, rt: bool = False, objects: int = 1, extra: dict[str, Any] | None = None,
                    ) -> StudyRecord:
    """Study ``i``: a localizer, a bolus-tracking timing run (every third study) and the scan.

    ``objects`` > 1 simulates a study that received more dose objects: each adds one more
    spiral event (cumulative reports), as a study that gains a dose object does.
    """
    scanner = SCANNERS[i % len(SCANNERS)]
    desc, protocol, region, phantom, ctdi, dlp = EXAMS[i % len(EXAMS)]
    if rt:
        desc, protocol = "RTP_4DCT thorax", "RTP 4DCT"
    if sex == "auto":
        sex = "F" if i % 2 else "M"
    day = 1 + i % 28
    month = 1 + (i // 28) % 12
    date = f"2025-{month:02d}-{day:02d}"
    age = 20.0 + (i % 75) + 0.37
    if i % 97 == 0:
        age = 91.5  # over 89: 90 in the submission
    base = f"{UID_ROOT}.2.{i}"
    events: list[Event] = [
        Event(
            irradiation_event_uid=f"{base}.1", acquisition_protocol="Topogram 0.6 T20f",
            target_region=region, acquisition_type="constant_angle", acquisition_type_code=LOCALIZER,
            exposure_time_s=3.2, scanning_length_mm=512.0, nominal_single_collimation_mm=0.6,
            nominal_total_collimation_mm=0.6, number_of_xray_sources=1,
            sources=(Source("A", 120.0, 35.0, 35.0, 0.5),), comment=f"scout for {patient_name(i)}",
        )
    ]
    if i % 3 == 0:
        events.append(Event(
            irradiation_event_uid=f"{base}.2", acquisition_protocol="PreMonitoring",
            target_region=region, acquisition_type="stationary", acquisition_type_code=STATIONARY,
            exposure_time_s=0.5, nominal_single_collimation_mm=10.0, nominal_total_collimation_mm=10.0,
            number_of_xray_sources=1, sources=(Source("A", 100.0, 40.0, 40.0, 0.5),),
            ctdivol_mGy=4.1, phantom="body32", phantom_code=PHANTOM_CODES["body32"], dlp_mGycm=0.41,
        ))
    for k in range(max(1, objects)):
        high = i % 50 == 7 and k == 0  # a few events above the notification values
        events.append(Event(
            irradiation_event_uid=f"{base}.{10 + k}", acquisition_protocol=protocol, target_region=region,
            acquisition_type="spiral", acquisition_type_code=SPIRAL,
            procedure_context=Code("373066001", "SCT", "Yes") if "W CONTRAST" in desc else None,
            exposure_time_s=5.5, scanning_length_mm=400.0 + 10 * (i % 7), nominal_single_collimation_mm=0.6,
            nominal_total_collimation_mm=38.4, pitch_factor=1.2, number_of_xray_sources=1,
            sources=(Source("A", 120.0, 400.0, 210.0 + i % 30, 0.5),),
            ctdivol_mGy=None if ctdivol_missing else (ctdi * 9 if high else ctdi + (i % 11) * 0.25),
            phantom=phantom, phantom_code=PHANTOM_CODES[phantom], dlp_mGycm=dlp + (i % 13) * 3.0,
            water_equivalent_diameter_mm=250.0 + i % 90 if phantom == "body32" else None,
            dose_check=DoseCheck(ctdivol_notification_mGy=50.0, reason="Obese patient, approved",
                                 person=f"Dr^Rad{i}") if high else None,
            comment=f"Patient {patient_name(i)} tolerated well",
        ))
    total = sum(e.dlp_mGycm or 0.0 for e in events)
    obj = tuple(DoseObjectRef(f"{UID_ROOT}.3.{i}.{k}", RDSR, "rdsr", f"2025-{month:02d}-{day:02d}T12:{k:02d}:00Z")
                for k in range(max(1, objects)))
    kw: dict[str, Any] = dict(
        study_instance_uid=study_uid(i),
        accession_number=f"ACN{i:09d}",
        study_date=date,
        study_time="10:15:30",
        study_description="Physics QA phantom" if qa else desc,
        procedure_codes=(),
        modality="CT",
        patient=Patient(id=("QA-PHANTOM" if qa else f"MRN{i:08d}"),
                        name=("Physics^QA" if qa else patient_name(i)),
                        birth_date=None if qa else f"{1925 + i % 75:04d}-03-14", sex=sex,
                        age_years=age, weight_kg=72.0, height_m=1.74),
        equipment=scanner,
        dose_objects=obj,
        report=ReportInfo(Code("P5-08000", "SRT", "Computed Tomography X-Ray"),
                          Code("R-408C3", "SRT", "Diagnostic Intent"),
                          f"{date}T10:16:00", f"{date}T10:25:00", Code("113856", "DCM", "Automated Data Collection")),
        total_events=len(events),
        total_dlp_mGycm=total,
        reported_total_dlp_mGycm=total + (25.0 if i % 40 == 5 else 0.0),
        events=tuple(events),
    )
    kw.update(extra or {})
    return StudyRecord(**kw)
