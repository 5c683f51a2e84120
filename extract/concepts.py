"""Concept codes as data (PS3.16; names follow pydicom.sr.codedict keywords).

Code values are matched as ``(value, scheme)`` pairs. SNOMED concepts appear in the
legacy SNOMED-RT form (``SRT``, e.g. P5-08001) and the SNOMED CT form (``SCT``,
116152004); the two are equal (field experience), so each SNOMED concept is listed with
both. DCM code values are unique on their own.
"""

from __future__ import annotations

# --- TID 10011 CT Radiation Dose ------------------------------------------------------
XRAY_RADIATION_DOSE_REPORT = "113701"
PROCEDURE_REPORTED = "121058"
DEVICE_OBSERVER_UID = "121012"
DEVICE_OBSERVER_NAME = "121013"
DEVICE_OBSERVER_MANUFACTURER = "121014"
DEVICE_OBSERVER_MODEL_NAME = "121015"
DEVICE_OBSERVER_SERIAL_NUMBER = "121016"
START_OF_XRAY_IRRADIATION = "113809"
END_OF_XRAY_IRRADIATION = "113810"
SCOPE_OF_ACCUMULATION = "113705"
STUDY_INSTANCE_UID = "110180"
SOURCE_OF_DOSE_INFORMATION = "113854"

# --- TID 10012 CT Accumulated Dose Data ------------------------------------------------
CT_ACCUMULATED_DOSE_DATA = "113811"
TOTAL_NUMBER_OF_IRRADIATION_EVENTS = "113812"
CT_DOSE_LENGTH_PRODUCT_TOTAL = "113813"
CT_EFFECTIVE_DOSE_TOTAL = "113814"

# --- TID 10013 CT Irradiation Event Data -----------------------------------------------
CT_ACQUISITION = "113819"
ACQUISITION_PROTOCOL = "125203"
TARGET_REGION = "123014"
CT_ACQUISITION_TYPE = "113820"
IRRADIATION_EVENT_UID = "113769"
DATETIME_STARTED = "111526"
CT_ACQUISITION_PARAMETERS = "113822"
EXPOSURE_TIME = "113824"
SCANNING_LENGTH = "113825"
NOMINAL_SINGLE_COLLIMATION_WIDTH = "113826"
NOMINAL_TOTAL_COLLIMATION_WIDTH = "113827"
PITCH_FACTOR = "113828"
NUMBER_OF_XRAY_SOURCES = "113823"
CT_XRAY_SOURCE_PARAMETERS = "113831"
IDENTIFICATION_OF_THE_XRAY_SOURCE = "113832"
KVP = "113733"
MAXIMUM_XRAY_TUBE_CURRENT = "113833"
XRAY_TUBE_CURRENT = "113734"
EXPOSURE_TIME_PER_ROTATION = "113834"
CT_DOSE = "113829"
MEAN_CTDIVOL = "113830"
CTDIW_PHANTOM_TYPE = "113835"
DLP = "113838"
EFFECTIVE_DOSE = "113839"
SIZE_SPECIFIC_DOSE_ESTIMATE = "113930"
WATER_EQUIVALENT_DIAMETER = "113980"
# scanner-stated water-equivalent diameter variants (TID 10024), used when 113980 is absent
WATER_EQUIVALENT_DIAMETER_VARIANTS = ("113981", "113983", "113984", "113992")
COMMENT = "121106"

# --- TID 10015 CT Dose Check Details ---------------------------------------------------
DOSE_CHECK_ALERT_DETAILS = "113900"
DOSE_CHECK_NOTIFICATION_DETAILS = "113908"
DLP_ALERT_VALUE = "113903"
CTDIVOL_ALERT_VALUE = "113904"
ACCUMULATED_DLP_FORWARD_ESTIMATE = "113905"
ACCUMULATED_CTDIVOL_FORWARD_ESTIMATE = "113906"
REASON_FOR_PROCEEDING = "113907"
DLP_NOTIFICATION_VALUE = "113911"
CTDIVOL_NOTIFICATION_VALUE = "113912"
DLP_FORWARD_ESTIMATE = "113913"
CTDIVOL_FORWARD_ESTIMATE = "113914"
PERSON_NAME = "113870"

# --- TID 10001 (projection X-ray) markers, to recognise and refuse ----------------------
ACCUMULATED_XRAY_DOSE_DATA = "113702"
IRRADIATION_EVENT_XRAY_DATA = "113706"
PROJECTION_XRAY = "113704"

# --- SNOMED concepts: both forms of one concept ----------------------------------------
# Procedure reported = Computed Tomography X-Ray
CT_PROCEDURE = frozenset({("P5-08000", "SRT"), ("77477000", "SCT"), ("P5-08000", "SNM3")})
MAMMOGRAPHY_PROCEDURE = frozenset({("P5-40010", "SRT"), ("71651007", "SCT")})
HAS_INTENT = frozenset({("G-C0E8", "SRT"), ("363703001", "SCT")})
PROCEDURE_CONTEXT = frozenset({("G-C32C", "SRT"), ("408730004", "SCT")})

# CT Acquisition Type (CID 10013) -> the record's acquisition_type
ACQUISITION_TYPES: dict[tuple[str, str], str] = {
    ("P5-08001", "SRT"): "spiral",
    ("116152004", "SCT"): "spiral",
    ("113804", "DCM"): "sequenced",
    ("113805", "DCM"): "constant_angle",
    ("113806", "DCM"): "stationary",
    ("113807", "DCM"): "free",
    ("702569007", "SCT"): "cone_beam",
    ("P5-08004", "SRT"): "cone_beam",
}
# Fallback on the meaning when a vendor uses a private scheme
ACQUISITION_TYPE_WORDS = (
    ("spiral", "spiral"), ("helical", "spiral"), ("sequenced", "sequenced"), ("axial", "sequenced"),
    ("constant angle", "constant_angle"), ("localizer", "constant_angle"), ("scout", "constant_angle"),
    ("stationary", "stationary"), ("free", "free"), ("cone beam", "cone_beam"),
)

# CTDIw Phantom Type (CID 4052)
PHANTOMS: dict[str, str] = {
    "113690": "head16",  # IEC Head Dosimetry Phantom
    "113691": "body32",  # IEC Body Dosimetry Phantom
    "113692": "other",  # NEMA XR21-2000 Phantom
}


def srt_to_sct() -> dict[str, str]:
    """pydicom's SNOMED-RT -> SNOMED CT mapping (``pydicom/sr/_snomed_dict.py``).

    The file is a plain dict literal; it is executed on its own so that reading it does not
    import the whole pydicom package (a third of a second at start-up, paid by every
    ``dosereg extract`` call otherwise).
    """
    global _SRT_TO_SCT
    if _SRT_TO_SCT is None:
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("pydicom")
        path = Path(spec.origin).parent / "sr" / "_snomed_dict.py" if spec and spec.origin else None
        if path is not None and path.exists():
            # loaded by file (with its cached bytecode), outside the pydicom package
            mspec = importlib.util.spec_from_file_location("dosereg_snomed_dict", path)
            assert mspec is not None and mspec.loader is not None
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
            _SRT_TO_SCT = dict(module.mapping["SRT"])
        else:  # pragma: no cover - layout changed: fall back to the import
            from pydicom.sr._snomed_dict import mapping

            _SRT_TO_SCT = dict(mapping["SRT"])
    return _SRT_TO_SCT


def snomed_key(value: str | None, scheme: str | None) -> tuple[str | None, str | None]:
    """A comparison key in which the SRT and SCT forms of one concept are equal."""
    if scheme not in ("SRT", "SNM3"):
        return (value, scheme)
    sct = srt_to_sct().get(value or "")
    return (sct, "SCT") if sct else (value, scheme)


_SRT_TO_SCT: dict[str, str] | None = None
