#!/usr/bin/env python3
"""Generate dosereg's synthetic dose objects and their expected extraction results.

Run from anywhere: ``python sample_dicom/generate.py`` rewrites every ``*.dcm`` in this folder
and ``expected/<stem>.json`` beside them. The output is deterministic (fixed UIDs under one
``2.25`` root, fixed dates, fixed implementation UID), so a re-run gives byte-identical files;
``tests/test_samples.py`` checks that.

The CT dose trees follow DICOM PS3.16 TID 10011 "CT Radiation Dose" and its children
(TID 10012 accumulated dose, TID 10013 irradiation event, TID 10014 scanning length,
TID 10015 dose check details); the refused objects follow TID 10001 "Projection X-Ray
Radiation Dose". SR content items are built with highdicom (``highdicom.sr``); the dataset
around them with pydicom, since highdicom has no X-Ray Radiation Dose SR class. Concept
codes are taken from pydicom's concept dictionary (``pydicom.sr.codedict.codes``), checked
against PS3.16; SNOMED codes are written in the legacy SNOMED-RT form (``SRT``) where real
scanners do and in SNOMED CT (``SCT``) form elsewhere, so both spellings are exercised.

Besides well-formed reports from several (simulated) vendors, the set deliberately holds
the quirks seen in the field: values under HAS PROPERTIES, CODE
items without a Concept Code Sequence, DATETIMEs with a UTC offset, unparsable NUM values,
unit spellings such as ``mGycm`` and ``Gy.cm``, a Philips "Dose Info" secondary capture,
a junk file, a truncated file and three other transfer syntaxes.

Expected files use the comparison format of tests/compare.py,
plus optional ``checks`` the sample test applies on top (``missing_contains``,
``invalid_contains``: substrings that some ``completeness.missing`` entry / some
``completeness.invalid[].path`` must contain).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    DateTimeContentItem,
    NumContentItem,
    PnameContentItem,
    RelationshipTypeValues,
    TextContentItem,
    UIDRefContentItem,
)
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected"

# One fixed UID root (2.25 + a fixed 128-bit integer); every UID is ROOT.<kind>.<n>.
ROOT = "2.25.229470105366121905937414201137460843181"
IMPLEMENTATION_CLASS_UID = ROOT + ".0.1"
IMPLEMENTATION_VERSION = "DOSEREG_SAMPLES"

RDSR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR Storage
ENHANCED_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"

CONTAINS = RelationshipTypeValues.CONTAINS
HAS_PROPERTIES = RelationshipTypeValues.HAS_PROPERTIES
HAS_CONCEPT_MOD = RelationshipTypeValues.HAS_CONCEPT_MOD
HAS_OBS_CONTEXT = RelationshipTypeValues.HAS_OBS_CONTEXT


def uid(kind: int, n: int) -> str:
    return f"{ROOT}.{kind}.{n}"


# --------------------------------------------------------------------------------------------
# Codes (PS3.16; pydicom's concept dictionary holds the DCM and SCT ones)
# --------------------------------------------------------------------------------------------

Triple = tuple[str, str, str]  # (code value, scheme, meaning)


def cc(t: Triple | Any) -> CodedConcept:
    if isinstance(t, tuple):
        return CodedConcept(t[0], t[1], t[2])
    return CodedConcept(t.value, t.scheme_designator, t.meaning)


def triple(code: Any) -> Triple:
    return (code.value, code.scheme_designator, code.meaning)


D = codes.DCM
C_REPORT = triple(D.XRayRadiationDoseReport)  # 113701
C_PROCEDURE_REPORTED = triple(D.ProcedureReported)  # 121058
C_HAS_INTENT = ("363703001", "SCT", "Has Intent")
C_CT = ("P5-08000", "SRT", "Computed Tomography X-Ray")  # = 77477000 SCT
C_CT_SCT = ("77477000", "SCT", "Computed Tomography X-Ray")
C_DIAGNOSTIC = ("R-408C3", "SRT", "Diagnostic Intent")  # = 261004008 SCT
C_PROJECTION_XRAY = triple(D.ProjectionXRay)  # 113704
C_MAMMOGRAPHY = ("71651007", "SCT", "Mammography")  # P5-40010 SRT
C_OBSERVER_TYPE = triple(D.ObserverType)  # 121005
C_DEVICE = triple(D.Device)  # 121007
C_DEVICE_OBSERVER_UID = triple(D.DeviceObserverUID)  # 121012
C_DEVICE_OBSERVER_NAME = triple(D.DeviceObserverName)  # 121013
C_DEVICE_OBSERVER_MANUFACTURER = triple(D.DeviceObserverManufacturer)  # 121014
C_DEVICE_OBSERVER_MODEL = triple(D.DeviceObserverModelName)  # 121015
C_DEVICE_OBSERVER_SERIAL = triple(D.DeviceObserverSerialNumber)  # 121016
C_START_IRRADIATION = triple(D.StartOfXRayIrradiation)  # 113809
C_END_IRRADIATION = triple(D.EndOfXRayIrradiation)  # 113810
C_SCOPE = triple(D.ScopeOfAccumulation)  # 113705
C_STUDY = triple(D.Study)  # 113014
C_STUDY_INSTANCE_UID = triple(D.StudyInstanceUID)  # 110180
C_CT_ACCUMULATED = triple(D.CTAccumulatedDoseData)  # 113811
C_TOTAL_EVENTS = triple(D.TotalNumberOfIrradiationEvents)  # 113812
C_DLP_TOTAL = triple(D.CTDoseLengthProductTotal)  # 113813
C_EFFECTIVE_DOSE_TOTAL = triple(D.CTEffectiveDoseTotal)  # 113814
C_CT_ACQUISITION = triple(D.CTAcquisition)  # 113819
C_PROTOCOL = triple(D.AcquisitionProtocol)  # 125203
C_TARGET_REGION = triple(D.TargetRegion)  # 123014
C_ACQ_TYPE = triple(D.CTAcquisitionType)  # 113820
C_PROCEDURE_CONTEXT = ("G-C32C", "SRT", "Procedure Context")  # = 408730004 SCT
C_EVENT_UID = triple(D.IrradiationEventUID)  # 113769
C_DATETIME_STARTED = triple(D.DatetimeStarted)  # 111526
C_ACQ_PARAMS = triple(D.CTAcquisitionParameters)  # 113822
C_EXPOSURE_TIME = triple(D.ExposureTime)  # 113824
C_SCANNING_LENGTH = triple(D.ScanningLength)  # 113825
C_SINGLE_COLL = triple(D.NominalSingleCollimationWidth)  # 113826
C_TOTAL_COLL = triple(D.NominalTotalCollimationWidth)  # 113827
C_PITCH = triple(D.PitchFactor)  # 113828
C_N_SOURCES = triple(D.NumberOfXRaySources)  # 113823
C_SOURCE_PARAMS = triple(D.CTXRaySourceParameters)  # 113831
C_SOURCE_ID = triple(D.IdentificationOfTheXRaySource)  # 113832
C_KVP = triple(D.KVP)  # 113733
C_MAX_MA = triple(D.MaximumXRayTubeCurrent)  # 113833
C_MA = triple(D.XRayTubeCurrent)  # 113734
C_ROTATION_TIME = triple(D.ExposureTimePerRotation)  # 113834
C_CT_DOSE = triple(D.CTDose)  # 113829
C_CTDIVOL = triple(D.MeanCtdivol)  # 113830
C_PHANTOM_TYPE = triple(D.CtdiwPhantomType)  # 113835
C_HEAD16 = triple(D.IECHeadDosimetryPhantom)  # 113690
C_BODY32 = triple(D.IECBodyDosimetryPhantom)  # 113691
C_DLP = triple(D.DLP)  # 113838
C_EFFECTIVE_DOSE = triple(D.EffectiveDose)  # 113839
C_SSDE = triple(D.SizeSpecificDoseEstimate)  # 113930
C_WED = triple(D.WaterEquivalentDiameter)  # 113980
C_MEASUREMENT_METHOD = triple(codes.SCT.MeasurementMethod)  # 370129005
C_SSDE_FROM_WED = ("113988", "DCM", "Estimated from Water Equivalent Diameter")
C_WED_FROM_LOCALIZER = ("113984", "DCM", "Water Equivalent Diameter From Localizer")
# TID 10015 CT Dose Check Details
C_ALERT_DETAILS = triple(D.DoseCheckAlertDetails)  # 113900
C_DLP_ALERT_CONFIGURED = triple(D.DLPAlertValueConfigured)  # 113901
C_CTDIVOL_ALERT_CONFIGURED = triple(D.CtdivolAlertValueConfigured)  # 113902
C_DLP_ALERT_VALUE = triple(D.DLPAlertValue)  # 113903
C_CTDIVOL_ALERT_VALUE = triple(D.CtdivolAlertValue)  # 113904
C_ACC_DLP_FORWARD = triple(D.AccumulatedDLPForwardEstimate)  # 113905
C_ACC_CTDIVOL_FORWARD = triple(D.AccumulatedCtdivolForwardEstimate)  # 113906
C_REASON = triple(D.ReasonForProceeding)  # 113907
C_NOTIFICATION_DETAILS = triple(D.DoseCheckNotificationDetails)  # 113908
C_DLP_NOTIFICATION_CONFIGURED = triple(D.DLPNotificationValueConfigured)  # 113909
C_CTDIVOL_NOTIFICATION_CONFIGURED = triple(D.CtdivolNotificationValueConfigured)  # 113910
C_DLP_NOTIFICATION_VALUE = triple(D.DLPNotificationValue)  # 113911
C_CTDIVOL_NOTIFICATION_VALUE = triple(D.CtdivolNotificationValue)  # 113912
C_DLP_FORWARD = triple(D.DLPForwardEstimate)  # 113913
C_CTDIVOL_FORWARD = triple(D.CtdivolForwardEstimate)  # 113914
C_PERSON_NAME = triple(D.PersonName)  # 113870 (TID 1020 Person Participant)
C_PERSON_ROLE = triple(D.PersonRoleInProcedure)  # 113875
C_IRRADIATION_AUTHORIZING = triple(D.IrradiationAuthorizing)  # 113850
C_YES = ("R-0038D", "SRT", "Yes")  # = 373066001 SCT
C_COMMENT = triple(D.Comment)  # 121106
C_SOURCE_OF_DOSE_INFO = triple(D.SourceOfDoseInformation)  # 113854
C_AUTOMATED = triple(D.AutomatedDataCollection)  # 113856
C_DEVICE_ROLE = triple(D.DeviceRoleInProcedure)  # 113876
C_IRRADIATING_DEVICE = triple(D.IrradiatingDevice)  # 113859
C_DEVICE_MANUFACTURER = triple(D.DeviceManufacturer)  # 113878
C_DEVICE_MODEL = triple(D.DeviceModelName)  # 113879
C_DEVICE_SERIAL = triple(D.DeviceSerialNumber)  # 113880

SPIRAL = ("P5-08001", "SRT", "Spiral Acquisition")  # = 116152004 SCT
SPIRAL_SCT = ("116152004", "SCT", "Spiral Acquisition")
SEQUENCED = triple(D.SequencedAcquisition)  # 113804
CONSTANT_ANGLE = triple(D.ConstantAngleAcquisition)  # 113805
STATIONARY = triple(D.StationaryAcquisitionCT)  # 113806
ACQ_TYPE_NAMES = {"P5-08001": "spiral", "116152004": "spiral", "113804": "sequenced",
                  "113805": "constant_angle", "113806": "stationary", "113807": "free",
                  "702569007": "cone_beam"}

NO_CONTRAST = ("P5-0808E", "SRT", "CT without contrast")  # = 399331006 SCT
WITH_CONTRAST = ("P5-00100", "SRT", "Diagnostic radiography with contrast media")  # = 27483000 SCT
CHEST = ("T-D3000", "SRT", "Chest")  # = 51185008 SCT
ABDOMEN = ("T-D4000", "SRT", "Abdomen")  # = 113345001 SCT
CHEST_ABDOMEN_PELVIS = ("R-FAB56", "SRT", "Chest, Abdomen and Pelvis")  # = 416775004 SCT
ENTIRE_BODY = ("T-D0010", "SRT", "Entire body")  # = 38266002 SCT
HEAD_SCT = ("69536005", "SCT", "Head")  # = T-D1100 SRT
BRAIN_SCT = ("12738006", "SCT", "Brain")  # = T-A0100 SRT
PHANTOM_NAMES = {"113690": "head16", "113691": "body32"}

UNIT_MGY = ("mGy", "UCUM", "mGy")
UNIT_MGYCM = ("mGy.cm", "UCUM", "mGy.cm")
UNIT_MM = ("mm", "UCUM", "mm")
UNIT_S = ("s", "UCUM", "s")
UNIT_KV = ("kV", "UCUM", "kV")
UNIT_MA = ("mA", "UCUM", "mA")
UNIT_MSV = ("mSv", "UCUM", "mSv")
UNIT_RATIO = ("{ratio}", "UCUM", "ratio")
UNIT_EVENTS = ("{events}", "UCUM", "events")
UNIT_SOURCES = ("{X-Ray sources}", "UCUM", "X-Ray sources")


# --------------------------------------------------------------------------------------------
# Content item helpers (highdicom items; values written exactly as the given strings)
# --------------------------------------------------------------------------------------------


def num(concept: Triple, value: str, unit: Triple, rel: Any = CONTAINS) -> NumContentItem:
    """A NUM item whose Numeric Value is exactly ``value`` (DS text, as scanners write it)."""
    try:
        placeholder: float = float(value)
    except ValueError:
        placeholder = 0.0
    item = NumContentItem(cc(concept), placeholder, cc(unit), relationship_type=rel)
    mv = item.MeasuredValueSequence[0]
    if "FloatingPointValue" in mv:
        del mv.FloatingPointValue
    # Raw encoded text, so malformed values ("abc", "5\\6") are written exactly as given.
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b" "
    mv[0x0040A30A] = RawDataElement(Tag(0x0040A30A), "DS", len(raw), raw, 0, False, True)
    return item


def code_item(concept: Triple, value: Triple, rel: Any = CONTAINS) -> CodeContentItem:
    return CodeContentItem(cc(concept), cc(value), relationship_type=rel)


def text(concept: Triple, value: str, rel: Any = CONTAINS) -> TextContentItem:
    return TextContentItem(cc(concept), value, relationship_type=rel)


def uidref(concept: Triple, value: str, rel: Any = CONTAINS) -> UIDRefContentItem:
    return UIDRefContentItem(cc(concept), value, relationship_type=rel)


def dt_item(concept: Triple, value: str, rel: Any = CONTAINS) -> DateTimeContentItem:
    """A DATETIME item whose DateTime is exactly ``value`` (offsets kept as written)."""
    item = DateTimeContentItem(cc(concept), pydicom.valuerep.DT("20000101000000"), relationship_type=rel)
    item.DateTime = pydicom.valuerep.DT(value)
    return item


def container(concept: Triple, children: Sequence[Dataset], rel: Any = CONTAINS,
              continuous: bool = False, template_id: str | None = None) -> ContainerContentItem:
    item = ContainerContentItem(cc(concept), is_content_continuous=continuous,
                                template_id=template_id, relationship_type=rel)
    item.ContentSequence = DicomSequence(list(children))
    return item


def with_children(item: Dataset, children: Sequence[Dataset]) -> Dataset:
    item.ContentSequence = DicomSequence(list(children))
    return item


# --------------------------------------------------------------------------------------------
# Report specification (one source of truth for the DICOM content and the expected values)
# --------------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    id: str | None
    kvp: str | None = "120"
    max_ma: str | None = None
    ma: str | None = None
    rotation_s: str | None = None


@dataclass
class DoseCheckSpec:
    """TID 10015: alert (113900) and/or notification (113908) details."""

    alert_ctdivol: str | None = None
    alert_dlp: str | None = None
    alert_acc_ctdivol_forward: str | None = None
    alert_acc_dlp_forward: str | None = None
    alert_reason: str | None = None
    alert_person: str | None = None
    notification_ctdivol: str | None = None
    notification_dlp: str | None = None
    notification_ctdivol_forward: str | None = None
    notification_dlp_forward: str | None = None
    notification_reason: str | None = None
    notification_person: str | None = None


@dataclass
class EventSpec:
    uid: str
    protocol: str | None
    acq_type: Triple
    target: Triple | None = CHEST
    target_without_code_sequence: bool = False  # CODE item lacking Concept Code Sequence
    context: Triple | None = NO_CONTRAST
    started: str | None = None  # DateTime Started (111526) exactly as written
    exposure_time: str | None = None
    length: str | None = None
    length_unit: Triple = UNIT_MM
    single_coll: str | None = None
    total_coll: str | None = None
    pitch: str | None = None
    n_sources: str | None = "1"
    sources: list[SourceSpec] = field(default_factory=list)
    source_id_concept: Triple = C_SOURCE_ID
    ctdivol: str | None = None
    ctdivol_unit: Triple = UNIT_MGY
    phantom: Triple | None = C_BODY32
    phantom_relationship: Any = CONTAINS
    dlp: str | None = None
    dlp_unit: Triple = UNIT_MGYCM
    ssde: str | None = None
    wed: str | None = None
    effective_dose: str | None = None
    dose_check: DoseCheckSpec | None = None
    comment: str | None = None
    has_ct_dose: bool = True
    device_manufacturer: str | None = None
    device_model: str | None = None
    # what a correct extractor reports for fields whose DICOM value is deliberately broken
    expected_overrides: dict[str, Any] = field(default_factory=dict)
    is_timing_run: bool = False


@dataclass
class ReportSpec:
    stem: str
    description: str  # what the file exercises (goes into the expected file)
    sop_class: str = RDSR_SOP_CLASS
    transfer_syntax: str = ExplicitVRLittleEndian
    study: int = 1  # UID number of the study
    sop: int = 1  # UID number of the SOP instance
    series: int = 1
    charset: str = "ISO_IR 100"
    patient_name: str = "DOE^JANE"
    patient_id: str = "PID0001"
    birth_date: str = "19650412"
    sex: str = "F"
    patient_age: str = "058Y"
    weight: str | None = "72"
    size: str | None = "1.68"
    study_date: str = "20240305"
    study_time: str = "101530"
    accession: str = "ACC0001"
    study_description: str = "Thorax^ThoraxRoutine (Adult)"
    requested_description: str | None = None
    manufacturer: str = "SIEMENS"
    model: str = "SOMATOM Definition AS+"
    station: str = "CTAWP10001"
    serial: str = "10001"
    software: str = "syngo CT VA48A"
    institution: str = "Dosereg General Hospital"
    series_description: str = "Dose Report"
    procedure: Triple = C_CT
    has_intent: Triple | None = C_DIAGNOSTIC
    start: str | None = "20240305101610"
    end: str | None = "20240305102212"
    scope_study_uid: str | None = None  # default: the header's Study Instance UID
    events: list[EventSpec] = field(default_factory=list)
    total_events: str | None = None  # default: number of events
    dlp_total: str | None = None  # default: sum of event DLPs as written
    dlp_total_unit: Triple = UNIT_MGYCM
    dlp_total_phantom: Triple | None = None  # CTDIw Phantom Type under HAS PROPERTIES of the total (PixelMed)
    effective_dose_total: str | None = None
    accumulated_extra: list[Dataset] = field(default_factory=list)
    continuous: bool = False  # ContinuityOfContent CONTINUOUS on every container (GE)
    template_on_root: bool = True
    source_of_dose_info: Triple | None = C_AUTOMATED
    # expectations beyond the values derived from the spec
    registry_code: str | None = None
    nomenclature_code: str | None = None
    completeness_status: str | None = None
    patient_study: bool | None = None
    rt_planning: bool | None = None
    missing_contains: list[str] = field(default_factory=list)
    invalid_contains: list[str] = field(default_factory=list)

    @property
    def study_uid(self) -> str:
        return uid(1, self.study)

    @property
    def sop_uid(self) -> str:
        return uid(3, self.sop)


def device_observer_uid(spec: ReportSpec) -> str:
    return uid(4, abs(hash_text(spec.serial)) % 100000)


def hash_text(s: str) -> int:
    """Small deterministic hash (Python's hash() is salted per process)."""
    return zlib.crc32(s.encode())


# --------------------------------------------------------------------------------------------
# Building the TID 10011 tree
# --------------------------------------------------------------------------------------------


def _dose_check_details(
    container_concept: Triple, concepts: tuple[Triple, Triple, Triple, Triple, Triple, Triple],
    dlp: str | None, ctdivol: str | None, dlp_forward: str | None, ctdivol_forward: str | None,
    reason: str | None, person: str | None, continuous: bool,
) -> list[Dataset]:
    """One TID 10015 details container (alert or notification), or none when nothing is stated.

    ``concepts``: DLP configured, CTDIvol configured, DLP value, CTDIvol value, DLP forward
    estimate, CTDIvol forward estimate (the alert and notification containers differ only there).
    """
    if all(v is None for v in (ctdivol, dlp, reason, ctdivol_forward, dlp_forward)):
        return []
    dlp_conf, ctdivol_conf, dlp_value, ctdivol_value, dlp_fwd, ctdivol_fwd = concepts
    items: list[Dataset] = []
    if dlp is not None:
        items.append(code_item(dlp_conf, C_YES))
    if ctdivol is not None:
        items.append(code_item(ctdivol_conf, C_YES))
    if dlp is not None:
        items.append(num(dlp_value, dlp, UNIT_MGYCM))
    if ctdivol is not None:
        items.append(num(ctdivol_value, ctdivol, UNIT_MGY))
    if dlp_forward is not None:
        items.append(num(dlp_fwd, dlp_forward, UNIT_MGYCM))
    if ctdivol_forward is not None:
        items.append(num(ctdivol_fwd, ctdivol_forward, UNIT_MGY))
    if reason is not None:
        items.append(text(C_REASON, reason))
    if person is not None:
        items.append(with_children(PnameContentItem(cc(C_PERSON_NAME), person, relationship_type=CONTAINS),
                                   [code_item(C_PERSON_ROLE, C_IRRADIATION_AUTHORIZING, HAS_PROPERTIES)]))
    return [container(container_concept, items, continuous=continuous)]


def _dose_check_items(dc: DoseCheckSpec, continuous: bool) -> list[Dataset]:
    return _dose_check_details(
        C_ALERT_DETAILS,
        (C_DLP_ALERT_CONFIGURED, C_CTDIVOL_ALERT_CONFIGURED, C_DLP_ALERT_VALUE, C_CTDIVOL_ALERT_VALUE,
         C_ACC_DLP_FORWARD, C_ACC_CTDIVOL_FORWARD),
        dc.alert_dlp, dc.alert_ctdivol, dc.alert_acc_dlp_forward, dc.alert_acc_ctdivol_forward,
        dc.alert_reason, dc.alert_person, continuous,
    ) + _dose_check_details(
        C_NOTIFICATION_DETAILS,
        (C_DLP_NOTIFICATION_CONFIGURED, C_CTDIVOL_NOTIFICATION_CONFIGURED, C_DLP_NOTIFICATION_VALUE,
         C_CTDIVOL_NOTIFICATION_VALUE, C_DLP_FORWARD, C_CTDIVOL_FORWARD),
        dc.notification_dlp, dc.notification_ctdivol, dc.notification_dlp_forward,
        dc.notification_ctdivol_forward, dc.notification_reason, dc.notification_person, continuous,
    )


def event_container(spec: ReportSpec, ev: EventSpec) -> ContainerContentItem:
    k = spec.continuous
    items: list[Dataset] = []
    if ev.protocol is not None:
        items.append(text(C_PROTOCOL, ev.protocol))
    if ev.target is not None:
        target = code_item(C_TARGET_REGION, ev.target)
        if ev.target_without_code_sequence:
            del target.ConceptCodeSequence
        items.append(target)
    items.append(code_item(C_ACQ_TYPE, ev.acq_type))
    if ev.context is not None:
        items.append(code_item(C_PROCEDURE_CONTEXT, ev.context))
    items.append(uidref(C_EVENT_UID, ev.uid))
    if ev.started is not None:
        items.append(dt_item(C_DATETIME_STARTED, ev.started))

    params: list[Dataset] = []
    if ev.exposure_time is not None:
        params.append(num(C_EXPOSURE_TIME, ev.exposure_time, UNIT_S))
    if ev.length is not None:
        params.append(num(C_SCANNING_LENGTH, ev.length, ev.length_unit))
    if ev.single_coll is not None:
        params.append(num(C_SINGLE_COLL, ev.single_coll, UNIT_MM))
    if ev.total_coll is not None:
        params.append(num(C_TOTAL_COLL, ev.total_coll, UNIT_MM))
    if ev.pitch is not None:
        params.append(num(C_PITCH, ev.pitch, UNIT_RATIO))
    if ev.n_sources is not None:
        params.append(num(C_N_SOURCES, ev.n_sources, UNIT_SOURCES))
    for src in ev.sources:
        s_items: list[Dataset] = []
        if src.id is not None:
            s_items.append(text(ev.source_id_concept, src.id))
        if src.kvp is not None:
            s_items.append(num(C_KVP, src.kvp, UNIT_KV))
        if src.max_ma is not None:
            s_items.append(num(C_MAX_MA, src.max_ma, UNIT_MA))
        if src.ma is not None:
            s_items.append(num(C_MA, src.ma, UNIT_MA))
        if src.rotation_s is not None:
            s_items.append(num(C_ROTATION_TIME, src.rotation_s, UNIT_S))
        params.append(container(C_SOURCE_PARAMS, s_items, continuous=k))
    items.append(container(C_ACQ_PARAMS, params, continuous=k))

    if ev.has_ct_dose:
        dose: list[Dataset] = []
        if ev.ctdivol is not None:
            dose.append(num(C_CTDIVOL, ev.ctdivol, ev.ctdivol_unit))
        if ev.phantom is not None and ev.phantom_relationship == HAS_PROPERTIES and dose:
            # PixelMed style: the phantom type qualifies the CTDIvol (NUM HAS PROPERTIES CODE)
            with_children(dose[-1], [code_item(C_PHANTOM_TYPE, ev.phantom, HAS_PROPERTIES)])
        elif ev.phantom is not None:
            dose.append(code_item(C_PHANTOM_TYPE, ev.phantom))
        if ev.dlp is not None:
            dose.append(num(C_DLP, ev.dlp, ev.dlp_unit))
        if ev.effective_dose is not None:
            dose.append(num(C_EFFECTIVE_DOSE, ev.effective_dose, UNIT_MSV))
        if ev.ssde is not None:
            dose.append(with_children(num(C_SSDE, ev.ssde, UNIT_MGY),
                                      [code_item(C_MEASUREMENT_METHOD, C_SSDE_FROM_WED, HAS_CONCEPT_MOD)]))
        if ev.wed is not None:
            dose.append(with_children(num(C_WED, ev.wed, UNIT_MM),
                                      [code_item(C_MEASUREMENT_METHOD, C_WED_FROM_LOCALIZER, HAS_CONCEPT_MOD)]))
        if ev.dose_check is not None:
            dose.extend(_dose_check_items(ev.dose_check, k))
        items.append(container(C_CT_DOSE, dose, continuous=k))
    if ev.comment is not None:
        items.append(text(C_COMMENT, ev.comment))
    items.append(with_children(code_item(C_DEVICE_ROLE, C_IRRADIATING_DEVICE), [
        text(C_DEVICE_MANUFACTURER, ev.device_manufacturer or spec.manufacturer, HAS_PROPERTIES),
        text(C_DEVICE_MODEL, ev.device_model or spec.model, HAS_PROPERTIES),
        text(C_DEVICE_SERIAL, spec.serial, HAS_PROPERTIES),
    ]))
    return container(C_CT_ACQUISITION, items, continuous=k)


def stated_total_dlp(spec: ReportSpec) -> str:
    if spec.dlp_total is not None:
        return spec.dlp_total
    total = sum(float(e.dlp) for e in spec.events if e.dlp is not None and _is_number(e.dlp))
    return f"{total:.2f}"


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def ct_content(spec: ReportSpec) -> ContainerContentItem:
    k = spec.continuous
    proc = with_children(code_item(C_PROCEDURE_REPORTED, spec.procedure, HAS_CONCEPT_MOD),
                         [code_item(C_HAS_INTENT, spec.has_intent, HAS_CONCEPT_MOD)] if spec.has_intent else [])
    items: list[Dataset] = [
        proc,
        code_item(C_OBSERVER_TYPE, C_DEVICE, HAS_OBS_CONTEXT),
        uidref(C_DEVICE_OBSERVER_UID, device_observer_uid(spec), HAS_OBS_CONTEXT),
        text(C_DEVICE_OBSERVER_NAME, spec.station, HAS_OBS_CONTEXT),
        text(C_DEVICE_OBSERVER_MANUFACTURER, spec.manufacturer, HAS_OBS_CONTEXT),
        text(C_DEVICE_OBSERVER_MODEL, spec.model, HAS_OBS_CONTEXT),
        text(C_DEVICE_OBSERVER_SERIAL, spec.serial, HAS_OBS_CONTEXT),
    ]
    if spec.start is not None:
        items.append(dt_item(C_START_IRRADIATION, spec.start, HAS_OBS_CONTEXT))
    if spec.end is not None:
        items.append(dt_item(C_END_IRRADIATION, spec.end, HAS_OBS_CONTEXT))
    items.append(with_children(code_item(C_SCOPE, C_STUDY, HAS_OBS_CONTEXT), [
        uidref(C_STUDY_INSTANCE_UID, spec.scope_study_uid or spec.study_uid, HAS_PROPERTIES)]))
    accumulated: list[Dataset] = [
        num(C_TOTAL_EVENTS, spec.total_events or str(len(spec.events)), UNIT_EVENTS),
        num(C_DLP_TOTAL, stated_total_dlp(spec), spec.dlp_total_unit),
    ]
    if spec.dlp_total_phantom is not None:
        with_children(accumulated[1], [code_item(C_PHANTOM_TYPE, spec.dlp_total_phantom, HAS_PROPERTIES)])
    if spec.effective_dose_total is not None:
        accumulated.append(num(C_EFFECTIVE_DOSE_TOTAL, spec.effective_dose_total, UNIT_MSV))
    accumulated.extend(spec.accumulated_extra)
    items.append(container(C_CT_ACCUMULATED, accumulated, continuous=k))
    items.extend(event_container(spec, ev) for ev in spec.events)
    if spec.source_of_dose_info is not None:
        items.append(code_item(C_SOURCE_OF_DOSE_INFO, spec.source_of_dose_info))
    root = container(C_REPORT, items, rel=None, continuous=k,
                     template_id="10011" if spec.template_on_root else None)
    return root


# --------------------------------------------------------------------------------------------
# The dataset around the content (pydicom)
# --------------------------------------------------------------------------------------------


def header(spec: ReportSpec, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = spec.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyDate = spec.study_date
    ds.ContentDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.Modality = modality
    ds.Manufacturer = spec.manufacturer
    ds.InstitutionName = spec.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = spec.station
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = spec.series_description
    ds.ManufacturerModelName = spec.model
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    ds.PatientAge = spec.patient_age
    if spec.size is not None:
        ds.PatientSize = spec.size
    if spec.weight is not None:
        ds.PatientWeight = spec.weight
    ds.DeviceSerialNumber = spec.serial
    ds.SoftwareVersions = spec.software
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = uid(2, spec.series)
    ds.StudyID = "1"
    ds.SeriesNumber = "990"
    ds.InstanceNumber = "1"
    if spec.requested_description is not None:
        req = Dataset()
        req.RequestedProcedureDescription = spec.requested_description
        req.RequestedProcedureID = "RP1"
        ds.RequestAttributesSequence = [req]
    return ds


def sr_dataset(spec: ReportSpec, content: ContainerContentItem, template_id: str | None) -> Dataset:
    ds = header(spec, spec.sop_class, "SR")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = content.ConceptNameCodeSequence
    ds.ContinuityOfContent = content.ContinuityOfContent
    if template_id is not None:
        tpl = Dataset()
        tpl.MappingResource = "DCMR"
        tpl.TemplateIdentifier = template_id
        ds.ContentTemplateSequence = [tpl]
    ds.ContentSequence = content.ContentSequence
    return ds


def file_bytes(ds: Dataset, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True,
               little_endian=transfer_syntax != ExplicitVRBigEndian,
               implicit_vr=transfer_syntax == ImplicitVRLittleEndian)
    return buf.getvalue()


def ct_report_bytes(spec: ReportSpec) -> bytes:
    root = ct_content(spec)
    ds = sr_dataset(spec, root, "10011" if spec.template_on_root else None)
    return file_bytes(ds, spec.transfer_syntax)


# --------------------------------------------------------------------------------------------
# Expected records
# --------------------------------------------------------------------------------------------


def iso_date(da: str | None) -> str | None:
    return f"{da[0:4]}-{da[4:6]}-{da[6:8]}" if da else None


def iso_time_any(tm: str) -> Any:
    base = f"{tm[0:2]}:{tm[2:4]}:{tm[4:6]}"
    if len(tm) > 6 and tm[6] == ".":
        frac = tm[7:]
        return {"$any": [f"{base}.{frac}", f"{base}.{frac.ljust(6, '0')}"]}
    return base


def iso_datetime_any(dt: str | None) -> Any:
    """Accepted ISO forms of a DICOM DT: fraction padded or not; a UTC offset kept (+hh:mm)."""
    if dt is None:
        return None
    offset = ""
    body = dt
    for sign in "+-":
        if sign in dt[8:]:
            i = dt.rindex(sign)
            body, off = dt[:i], dt[i:]
            offset = f"{off[0]}{off[1:3]}:{off[3:5]}"
    base = f"{body[0:4]}-{body[4:6]}-{body[6:8]}T{body[8:10]}:{body[10:12]}:{body[12:14]}"
    if "." in body:
        frac = body.split(".", 1)[1]
        forms = [f"{base}.{frac}", f"{base}.{frac.ljust(6, '0')}", f"{base}.{frac.rstrip('0')}"]
    else:
        forms = [base]
    forms = list(dict.fromkeys(forms))
    if offset:
        forms = [f + offset for f in forms] + ([f + "Z" for f in forms] if offset in ("+00:00", "-00:00") else [])
    return forms[0] if len(forms) == 1 else {"$any": forms}


def code_json(t: Triple | None) -> dict[str, str] | None:
    return None if t is None else {"value": t[0], "scheme": t[1]}


def fnum(s: str | None, factor: float = 1.0) -> float | None:
    """The value a correct extractor reports: null when absent or not a single valid number."""
    if s is None or not _is_number(s):
        return None
    return float(s) * factor


UNIT_FACTORS = {"mGy": 1.0, "cGy": 10.0, "Gy": 1000.0, "uGy": 0.001, "mGy.cm": 1.0, "mGycm": 1.0,
                "mGy*cm": 1.0, "Gy.cm": 1000.0, "cGy.cm": 10.0, "mm": 1.0, "cm": 10.0}


def age_years(birth: str, study: str) -> float:
    b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
    s = date(int(study[:4]), int(study[4:6]), int(study[6:8]))
    return round((s - b).days / 365.2425, 2)


def expected_event(ev: EventSpec) -> dict[str, Any]:
    dc = ev.dose_check
    dose_check = None
    if dc is not None:
        dose_check = {
            "ctdivol_alert_mGy": fnum(dc.alert_ctdivol),
            "dlp_alert_mGycm": fnum(dc.alert_dlp),
            "ctdivol_notification_mGy": fnum(dc.notification_ctdivol),
            "dlp_notification_mGycm": fnum(dc.notification_dlp),
            "ctdivol_forward_estimate_mGy": fnum(dc.notification_ctdivol_forward or dc.alert_acc_ctdivol_forward),
            "dlp_forward_estimate_mGycm": fnum(dc.notification_dlp_forward or dc.alert_acc_dlp_forward),
            "reason": dc.notification_reason or dc.alert_reason,
            "person": dc.notification_person or dc.alert_person,
        }
    out: dict[str, Any] = {
        "irradiation_event_uid": ev.uid,
        "acquisition_protocol": ev.protocol,
        "target_region": None if ev.target_without_code_sequence else code_json(ev.target),
        "acquisition_type": ACQ_TYPE_NAMES[ev.acq_type[0]],
        "acquisition_type_code": code_json(ev.acq_type),
        "procedure_context": code_json(ev.context),
        "start_datetime": iso_datetime_any(ev.started),
        "exposure_time_s": fnum(ev.exposure_time),
        "scanning_length_mm": fnum(ev.length, UNIT_FACTORS[ev.length_unit[0]]),
        "nominal_single_collimation_mm": fnum(ev.single_coll),
        "nominal_total_collimation_mm": fnum(ev.total_coll),
        "pitch_factor": fnum(ev.pitch),
        "number_of_xray_sources": fnum(ev.n_sources),
        "sources": [{"id": s.id, "kvp_kV": fnum(s.kvp), "max_tube_current_mA": fnum(s.max_ma),
                     "tube_current_mA": fnum(s.ma), "exposure_time_per_rotation_s": fnum(s.rotation_s)}
                    for s in ev.sources],
        "ctdivol_mGy": fnum(ev.ctdivol, UNIT_FACTORS[ev.ctdivol_unit[0]]) if ev.has_ct_dose else None,
        "phantom": PHANTOM_NAMES.get(ev.phantom[0], "other") if ev.phantom and ev.has_ct_dose else None,
        "phantom_code": code_json(ev.phantom) if ev.has_ct_dose else None,
        "dlp_mGycm": fnum(ev.dlp, UNIT_FACTORS[ev.dlp_unit[0]]) if ev.has_ct_dose else None,
        "ssde_mGy": fnum(ev.ssde),
        "water_equivalent_diameter_mm": fnum(ev.wed),
        "effective_dose_mSv": fnum(ev.effective_dose),
        "dose_check": dose_check,
        "is_timing_run": ev.is_timing_run,
        "comment": ev.comment,
    }
    for path, value in ev.expected_overrides.items():
        target = out
        parts = path.split(".")
        for p in parts[:-1]:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            target[int(parts[-1])] = value
        else:
            target[parts[-1]] = value
    return out


def kind_of(sop_class: str) -> str:
    return {RDSR_SOP_CLASS: "rdsr", ENHANCED_SR_SOP_CLASS: "enhanced_sr",
            COMPREHENSIVE_SR_SOP_CLASS: "comprehensive_sr",
            SECONDARY_CAPTURE_SOP_CLASS: "philips_dose_info"}[sop_class]


def expected_header(spec: ReportSpec, modality: Any) -> dict[str, Any]:
    return {
        "schema": "dosereg.study/1",
        "error": None,
        "study_instance_uid": spec.study_uid,
        "accession_number": spec.accession or None,
        "study_date": iso_date(spec.study_date),
        "study_time": iso_time_any(spec.study_time),
        "study_description": spec.study_description,
        "requested_procedure_description": spec.requested_description,
        "procedure_codes": {"$any": [[], None]},
        "modality": modality,
        "patient": {
            "id": spec.patient_id,
            "name": spec.patient_name,
            "birth_date": iso_date(spec.birth_date),
            "sex": spec.sex or None,
            "age_years": ({"$approx": age_years(spec.birth_date, spec.study_date), "abs": 0.02}
                          if spec.birth_date else (float(spec.patient_age[:3]) if spec.patient_age else None)),
            "weight_kg": fnum(spec.weight),
            "height_m": fnum(spec.size),
        },
        "equipment": {
            "manufacturer": spec.manufacturer,
            "model": spec.model,
            "station_name": spec.station,
            "serial_number": spec.serial,
            "software_versions": spec.software,
            "institution_name": spec.institution,
        },
        "dose_objects": [{"sop_instance_uid": spec.sop_uid, "sop_class_uid": spec.sop_class,
                          "kind": kind_of(spec.sop_class)}],
    }


def expected_flags(spec: ReportSpec, record: dict[str, Any]) -> None:
    if spec.completeness_status is not None:
        record["completeness"] = {"status": spec.completeness_status}
    cls: dict[str, Any] = {}
    if spec.patient_study is not None:
        cls["patient_study"] = spec.patient_study
    if spec.rt_planning is not None:
        cls["rt_planning"] = spec.rt_planning
    if cls:
        record["classification"] = cls
    flags: dict[str, Any] = {}
    if spec.registry_code is not None:
        flags["registry_code"] = spec.registry_code
    if spec.nomenclature_code is not None or spec.registry_code == "excluded":
        flags["nomenclature_code"] = spec.nomenclature_code
    if flags:
        record["flags"] = flags


def expected_ct(spec: ReportSpec) -> dict[str, Any]:
    record = expected_header(spec, {"$any": ["SR", "CT"]})
    record["equipment"]["device_observer_uid"] = device_observer_uid(spec)
    record["report"] = {
        "procedure_reported": code_json(spec.procedure),
        "has_intent": code_json(spec.has_intent),
        "start_datetime": iso_datetime_any(spec.start),
        "end_datetime": iso_datetime_any(spec.end),
        "source_of_dose_information": code_json(spec.source_of_dose_info),
    }
    # docs/study-record.md: ordered by start time, then order of appearance; untimed events last
    timed = sorted((ev for ev in spec.events if ev.started), key=lambda ev: ev.started or "")
    untimed = [ev for ev in spec.events if not ev.started]
    events = [expected_event(ev) for ev in [*timed, *untimed]]
    record["events"] = events
    record["total_events"] = len(events)
    dlps = [e["dlp_mGycm"] for e in events if e["dlp_mGycm"] is not None]
    record["total_dlp_mGycm"] = sum(dlps) if dlps else {"$any": [None, 0]}
    record["reported_total_dlp_mGycm"] = float(stated_total_dlp(spec)) * UNIT_FACTORS[spec.dlp_total_unit[0]]
    expected_flags(spec, record)
    return record


# --------------------------------------------------------------------------------------------
# The sample reports
# --------------------------------------------------------------------------------------------


def ev_uid(n: int) -> str:
    return uid(5, n)


def topogram(n: int, **kw: Any) -> EventSpec:
    base: dict[str, Any] = dict(uid=ev_uid(n), protocol="Topogram", acq_type=CONSTANT_ANGLE, target=CHEST,
                exposure_time="3.9", length="512", single_coll="0.6", total_coll="0.6", n_sources="1",
                sources=[SourceSpec("A", "120", "35", "35")], ctdivol="0.13", phantom=C_BODY32, dlp="6.6",
                comment="Internal technical scan parameters: Body Region = Body")
    base.update(kw)
    return EventSpec(**base)


def spiral(n: int, **kw: Any) -> EventSpec:
    base: dict[str, Any] = dict(uid=ev_uid(n), protocol="ThoraxRoutine", acq_type=SPIRAL, target=CHEST, context=WITH_CONTRAST,
                exposure_time="4.71", length="348", single_coll="0.6", total_coll="38.4", pitch="1.2",
                n_sources="1", sources=[SourceSpec("A", "120", "366", "187", "0.5")], ctdivol="6.41",
                phantom=C_BODY32, dlp="244.3", comment="Internal technical scan parameters: CARE Dose4D")
    base.update(kw)
    return EventSpec(**base)


def patient_complete(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(registry_code="G9327", completeness_status="complete", patient_study=True)
    base.update(kw)
    return base


def siemens_single_source() -> ReportSpec:
    return ReportSpec(
        stem="ct_siemens_single_source",
        description="Siemens-like single-source chest CT: localizer, bolus-tracking PreMonitoring/Monitoring "
                    "timing runs (stationary) and a contrast spiral; Dose Check alert value stated on each event",
        study=1, sop=1,
        events=[
            topogram(1, dose_check=DoseCheckSpec(alert_ctdivol="1000")),
            EventSpec(uid=ev_uid(2), protocol="PreMonitoring", acq_type=STATIONARY, target=CHEST,
                      exposure_time="0.5", length="10", single_coll="10", total_coll="10", n_sources="1",
                      sources=[SourceSpec("A", "100", "40", "39", "0.5")], ctdivol="1.2", phantom=C_BODY32,
                      dlp="1.2", dose_check=DoseCheckSpec(alert_ctdivol="1000"), is_timing_run=True),
            EventSpec(uid=ev_uid(3), protocol="Monitoring", acq_type=STATIONARY, target=CHEST,
                      context=WITH_CONTRAST, exposure_time="4.5", length="10", single_coll="10", total_coll="10",
                      n_sources="1", sources=[SourceSpec("A", "100", "40", "39", "0.5")], ctdivol="10.83",
                      phantom=C_BODY32, dlp="10.83", dose_check=DoseCheckSpec(alert_ctdivol="1000"),
                      is_timing_run=True),
            spiral(4, dose_check=DoseCheckSpec(alert_ctdivol="1000")),
        ],
        **patient_complete(),
    )


def siemens_dual_source() -> ReportSpec:
    return ReportSpec(
        stem="ct_siemens_dual_source",
        description="Siemens Force-like dual-source scanner: two CT X-Ray Source Parameters (A and B) per spiral, "
                    "stated effective dose, SSDE and water-equivalent diameter",
        study=2, sop=2, series=2, patient_id="PID0002", patient_name="ROE^RICHARD", sex="M",
        birth_date="19480101", patient_age="076Y", accession="ACC0002",
        study_description="Abdomen^AbdPelvis_DE (Adult)", model="SOMATOM Force", station="CTAWP20002",
        serial="20002", software="syngo CT VB20A", effective_dose_total="9.8",
        events=[
            topogram(11, target=ABDOMEN, sources=[SourceSpec("A", "100", "35", "34")], ctdivol="0.08", dlp="4.1"),
            spiral(12, protocol="AbdPelvis_DE", target=ABDOMEN, n_sources="2", exposure_time="3.3",
                   length="402.5", single_coll="0.6", total_coll="57.6", pitch="0.6",
                   sources=[SourceSpec("A", "100", "420", "246", "0.5"),
                            SourceSpec("B", "150", "280", "164", "0.5")],
                   ctdivol="11.54", dlp="498.2", effective_dose="7.47", ssde="14.2", wed="285",
                   comment="Internal technical scan parameters: Dual Energy, Sn Filter (Tube B) = yes"),
            spiral(13, protocol="AbdPelvis_Delay", target=ABDOMEN, n_sources="2", exposure_time="2.1",
                   length="180", total_coll="57.6", pitch="0.55",
                   sources=[SourceSpec("A", "90", "410", "260", "0.25"),
                            SourceSpec("B", "150", "275", "162", "0.25")],
                   ctdivol="8.05", dlp="156.7", effective_dose="2.35", comment=None),
        ],
        **patient_complete(),
    )


def head_sequenced() -> ReportSpec:
    return ReportSpec(
        stem="ct_head_sequenced",
        description="Sequenced (axial) head scan reported on the 16 cm head phantom; target regions in SCT form "
                    "(head, brain)",
        study=3, sop=3, series=3, patient_id="PID0003", patient_name="MOE^MARY", birth_date="19900723",
        patient_age="033Y", accession="ACC0003", study_description="Head^HeadSeq (Adult)",
        model="SOMATOM Definition Edge", station="CTAWP30003", serial="30003",
        events=[
            topogram(21, target=HEAD_SCT, sources=[SourceSpec("A", "120", "35", "35")], ctdivol="0.09",
                     phantom=C_HEAD16, dlp="2.3", length="256"),
            EventSpec(uid=ev_uid(22), protocol="HeadSeq", acq_type=SEQUENCED, target=BRAIN_SCT,
                      exposure_time="12", length="144", single_coll="0.6", total_coll="19.2", n_sources="1",
                      sources=[SourceSpec("A", "120", "320", "320", "1")], ctdivol="52.37", phantom=C_HEAD16,
                      dlp="754.13"),
        ],
        **patient_complete(),
    )


def ge_enhanced_sr() -> ReportSpec:
    x = "X-ray"  # GE spells the concept meanings with a lower-case "ray"
    ge_id = ("113832", "DCM", f"Identification of the {x} Source")
    return ReportSpec(
        stem="ct_ge_enhanced_sr",
        description="GE-like TID 10011 tree in an Enhanced SR object with CONTINUOUS containers, no Has Intent, "
                    "a localizer whose 'collimation' is 560 mm, source ids '1' under a concept meaning spelled "
                    "'X-ray', no Content Template Sequence",
        sop_class=ENHANCED_SR_SOP_CLASS, study=4, sop=4, series=4, patient_id="PID0004",
        patient_name="POE^PAT", sex="M", birth_date="19571130", patient_age="066Y", accession="ACC0004",
        study_description="CT ABDOMEN PELVIS W CONTRAST", requested_description="CT ABDOMEN PELVIS W CONTRAST",
        manufacturer="GE MEDICAL SYSTEMS", model="Revolution CT", station="REVCT1", serial="GE40004",
        software="revo_ct_22mw.40", continuous=True, has_intent=None, template_on_root=False,
        source_of_dose_info=None, series_description="Dose Record",
        events=[
            EventSpec(uid=ev_uid(31), protocol=None, acq_type=CONSTANT_ANGLE, target=ABDOMEN, context=None,
                      exposure_time="5.6", length="560.0", single_coll="0.625", total_coll="560.0",
                      n_sources="1", source_id_concept=ge_id, sources=[SourceSpec("1", "120.0", "10.0", "10.0")],
                      has_ct_dose=False, phantom=None),
            EventSpec(uid=ev_uid(32), protocol="5.3 ABD PEL C+", acq_type=SPIRAL, target=ABDOMEN,
                      context=None, exposure_time="6.26", length="468.0", single_coll="0.625",
                      total_coll="80.0", pitch="0.992", n_sources="1", source_id_concept=ge_id,
                      sources=[SourceSpec("1", "120.0", "455.0", "301.5", "0.5")], ctdivol="9.94",
                      phantom=C_BODY32, dlp="519.36"),
        ],
        **patient_complete(),
    )


def incomplete() -> ReportSpec:
    return ReportSpec(
        stem="ct_incomplete",
        description="Incomplete report: no patient sex, and a spiral event whose CT Dose container has no Mean "
                    "CTDIvol",
        study=5, sop=5, series=5, patient_id="PID0005", patient_name="NOSEX^ALEX", sex="",
        birth_date="19801010", patient_age="043Y", accession="ACC0005",
        events=[
            topogram(41),
            spiral(42, ctdivol=None),
            spiral(43, protocol="ThoraxRoutine_Late", ctdivol="5.02", dlp="180.5"),
        ],
        registry_code="G9326", completeness_status="incomplete", patient_study=True,
        missing_contains=["patient.sex", "ctdivol_mGy"],
    )


def rt_sim() -> ReportSpec:
    return ReportSpec(
        stem="ct_rt_sim",
        description="Radiotherapy planning CT simulation (description 'RT Planning CT Sim')",
        study=6, sop=6, series=6, patient_id="PID0006", patient_name="RADIO^THERAPY", sex="M",
        birth_date="19550303", patient_age="069Y", accession="ACC0006", study_description="RT Planning CT Sim",
        model="SOMATOM Confidence", station="CTRTSIM01", serial="60006", software="syngo CT VA62A",
        events=[
            topogram(51, target=CHEST_ABDOMEN_PELVIS),
            spiral(52, protocol="RT_Thorax_Sim", target=CHEST, context=NO_CONTRAST, ctdivol="12.1", dlp="590.4"),
        ],
        **patient_complete(nomenclature_code="G9320", rt_planning=True),
    )


def qa_phantom() -> ReportSpec:
    return ReportSpec(
        stem="ct_qa_phantom",
        description="Physics QA study on a phantom (patient PHANTOM^QA, ID QA0001): excluded from the registry",
        study=7, sop=7, series=7, patient_id="QA0001", patient_name="PHANTOM^QA", sex="O", birth_date="",
        patient_age="", weight=None, size=None, accession="ACC0007", study_description="Daily QA",
        events=[
            EventSpec(uid=ev_uid(61), protocol="QA_Head_Axial", acq_type=SEQUENCED, target=HEAD_SCT,
                      exposure_time="1", length="10", single_coll="0.6", total_coll="19.2", n_sources="1",
                      sources=[SourceSpec("A", "120", "300", "300", "1")], ctdivol="45.1", phantom=C_HEAD16,
                      dlp="45.1"),
        ],
        registry_code="excluded", nomenclature_code=None, patient_study=False,
    )


def _cumulative_events() -> list[EventSpec]:
    return [topogram(71), spiral(72, dlp="244.3"), spiral(73, protocol="ThoraxRoutine_Delay", dlp="120.6",
                                                          exposure_time="2.4", length="180", ctdivol="6.1")]


def cumulative(part: int) -> ReportSpec:
    events = _cumulative_events()[: 1 + part]
    return ReportSpec(
        stem=f"ct_cumulative_{part}",
        description=f"Cumulative report {part} of 2 for one study: the second repeats the first's events and adds one",
        study=8, sop=80 + part, series=8, patient_id="PID0008", patient_name="CUMUL^CHRIS", sex="M",
        birth_date="19700214", patient_age="054Y", accession="ACC0008",
        end="20240305102212" if part == 1 else "20240305103045",
        events=events, **patient_complete(),
    )


def continuation(part: int) -> ReportSpec:
    all_events = [topogram(81), spiral(82, dlp="301.9", ctdivol="7.9"),
                  spiral(83, protocol="ThoraxRoutine_Repeat", dlp="99.4", ctdivol="5.5", length="160")]
    events = all_events[:2] if part == 1 else all_events[2:]
    return ReportSpec(
        stem=f"ct_continuation_{part}",
        description=f"Continuation report {part} of 2 for one study: the second holds only the new event "
                    "and its own total",
        study=9, sop=90 + part, series=9, patient_id="PID0009", patient_name="CONT^CASEY", sex="F",
        birth_date="19851225", patient_age="038Y", accession="ACC0009",
        start="20240305101610" if part == 1 else "20240305104000",
        end="20240305102212" if part == 1 else "20240305104130",
        events=events, **patient_complete(),
    )


def toshiba_dose_check() -> ReportSpec:
    toshiba_id = ("113832", "DCM", "Identification Number of the X-Ray Source")
    return ReportSpec(
        stem="ct_toshiba_dose_check",
        description="Toshiba-like report with Dose Check notification details (values, forward estimates, reason, "
                    "person) on one event and alert plus notification details on another; source id concept "
                    "meaning 'Identification Number of the X-Ray Source' (Toshiba's wording of 113832; the standard "
                    "has no separate concept)",
        study=10, sop=10, series=10, patient_id="PID0010", patient_name="TOSH^TERRY", sex="F",
        birth_date="19620808", patient_age="061Y", accession="ACC0010", study_description="CT Chest With Contrast",
        manufacturer="TOSHIBA", model="Aquilion ONE", station="AquilionOne", serial="TSB10010",
        software="V8.30ER004",
        events=[
            EventSpec(uid=ev_uid(91), protocol="Chest+C", acq_type=CONSTANT_ANGLE, target=CHEST, context=NO_CONTRAST,
                      exposure_time="3.2", length="0", single_coll="2", total_coll="2", n_sources="1",
                      source_id_concept=toshiba_id, sources=[SourceSpec("1", "120", "30", "30")],
                      has_ct_dose=False, phantom=None),
            EventSpec(uid=ev_uid(92), protocol="Chest+C", acq_type=SPIRAL, target=CHEST, context=WITH_CONTRAST,
                      exposure_time="6.63", length="330.5", single_coll="0.5", total_coll="40", pitch="0.813",
                      n_sources="1", source_id_concept=toshiba_id,
                      sources=[SourceSpec("1", "120", "95", "95", "0.5")], ctdivol="62.3", phantom=C_BODY32,
                      dlp="2134.9",
                      dose_check=DoseCheckSpec(notification_ctdivol="50", notification_dlp="1000",
                                               notification_ctdivol_forward="62.3",
                                               notification_dlp_forward="2134.9",
                                               notification_reason="Large patient, protocol approved by radiologist",
                                               notification_person="Tech^Terry")),
            EventSpec(uid=ev_uid(93), protocol="Chest+C Delay", acq_type=SPIRAL, target=CHEST,
                      context=WITH_CONTRAST, exposure_time="6.63", length="330.5", single_coll="0.5",
                      total_coll="40", pitch="0.813", n_sources="1", source_id_concept=toshiba_id,
                      sources=[SourceSpec("1", "120", "95", "95", "0.5")], ctdivol="62.3", phantom=C_BODY32,
                      dlp="2134.9",
                      dose_check=DoseCheckSpec(alert_ctdivol="1000", alert_dlp="4000",
                                               alert_acc_ctdivol_forward="1024.6", alert_acc_dlp_forward="4269.8",
                                               alert_reason="Repeat required for diagnosis",
                                               alert_person="Doctor^Dana",
                                               notification_ctdivol="50", notification_dlp="1000")),
        ],
        **patient_complete(),
    )


def pixelmed_like() -> ReportSpec:
    return ReportSpec(
        stem="ct_pixelmed_like",
        description="PixelMed-like conversion: CTDIw Phantom Type under HAS PROPERTIES instead of CONTAINS (also "
                    "below the accumulated DLP total), and Target Region CODE items without a Concept Code Sequence",
        study=11, sop=11, series=11, patient_id="PID0011", patient_name="PIXEL^PAT", sex="F",
        birth_date="19770505", patient_age="046Y", accession="ACC0011", study_description="CT HEAD WO",
        manufacturer="GE MEDICAL SYSTEMS", model="LightSpeed16", station="LS16", serial="GE110011",
        software="LightSpeedverrel", has_intent=C_DIAGNOSTIC, source_of_dose_info=("113868", "DCM",
                                                                                   "Derived From Human-Readable Reports"),
        dlp_total_phantom=C_HEAD16,
        events=[
            EventSpec(uid=ev_uid(101), protocol="HEAD ROUTINE", acq_type=SEQUENCED, target=HEAD_SCT,
                      target_without_code_sequence=True, context=None, exposure_time=None, length="140",
                      single_coll="0.625", total_coll="10", n_sources=None, sources=[], ctdivol="58.73",
                      phantom=C_HEAD16, phantom_relationship=HAS_PROPERTIES, dlp="822.2"),
            EventSpec(uid=ev_uid(102), protocol="HEAD ROUTINE", acq_type=SPIRAL, target=HEAD_SCT,
                      target_without_code_sequence=True, context=None, exposure_time=None, length="60.2",
                      single_coll="0.625", total_coll="10", pitch="0.5625", n_sources=None, sources=[],
                      ctdivol="60.41", phantom=C_HEAD16, phantom_relationship=HAS_PROPERTIES, dlp="363.67"),
        ],
        **patient_complete(),
    )


def datetime_offset() -> ReportSpec:
    return ReportSpec(
        stem="ct_datetime_offset",
        description="DATETIME values with a UTC offset (+0100) and fractional seconds, including per-event "
                    "DateTime Started, listed out of time order (events are ordered by start time)",
        study=12, sop=12, series=12, patient_id="PID0012", patient_name="TIME^ZONE", sex="M",
        birth_date="19881111", patient_age="035Y", accession="ACC0012",
        start="20240305101610.250+0100", end="20240305102212.5+0100",
        events=[
            spiral(112, started="20240305101905.125+0100"),
            topogram(111, started="20240305101610.250+0100"),
        ],
        **patient_complete(),
    )


def invalid_num() -> ReportSpec:
    return ReportSpec(
        stem="ct_invalid_num",
        description="Malformed NUM items: Mean CTDIvol 'abc' on one spiral, a multi-valued Maximum X-Ray Tube "
                    "Current on another; both become null and are reported, everything else is extracted",
        study=13, sop=13, series=13, patient_id="PID0013", patient_name="BAD^NUMBER", sex="F",
        birth_date="19730301", patient_age="051Y", accession="ACC0013",
        events=[
            topogram(121),
            spiral(122, ctdivol="abc"),
            spiral(123, protocol="ThoraxRoutine_Late", sources=[SourceSpec("A", "120", "300\\310", "187", "0.5")]),
        ],
        registry_code="G9326", completeness_status="incomplete", patient_study=True,
        invalid_contains=["ctdivol_mGy"],
    )


def unit_spellings() -> ReportSpec:
    return ReportSpec(
        stem="ct_unit_spellings",
        description="Unit spellings and convertible units: DLP in mGycm, mGy*cm and Gy.cm, CTDIvol in cGy, "
                    "scanning length in cm, total DLP in mGycm",
        study=14, sop=14, series=14, patient_id="PID0014", patient_name="UNIT^UMA", sex="F",
        birth_date="19690909", patient_age="054Y", accession="ACC0014",
        dlp_total="356.3", dlp_total_unit=("mGycm", "UCUM", "mGycm"),
        events=[
            topogram(131, dlp="6.6", dlp_unit=("mGycm", "UCUM", "mGycm")),
            spiral(132, dlp="244.3", dlp_unit=("mGy*cm", "UCUM", "mGy*cm")),
            spiral(133, protocol="ThoraxRoutine_Late", dlp="0.1054", dlp_unit=("Gy.cm", "UCUM", "Gy.cm"),
                   ctdivol="0.641", ctdivol_unit=("cGy", "UCUM", "cGy"), length="16.4",
                   length_unit=("cm", "UCUM", "cm")),
        ],
        **patient_complete(),
    )


def encoded(stem: str, transfer_syntax: str, n: int, label: str) -> ReportSpec:
    return ReportSpec(
        stem=stem,
        description=f"A complete Siemens-like report written in {label}",
        transfer_syntax=transfer_syntax, study=20 + n, sop=20 + n, series=20 + n, patient_id=f"PID002{n}",
        patient_name=f"ENCODING^CASE{n}", accession=f"ACC002{n}",
        events=[topogram(140 + 2 * n), spiral(141 + 2 * n)],
        **patient_complete(),
    )


def all_ct_specs() -> list[ReportSpec]:
    return [
        siemens_single_source(), siemens_dual_source(), head_sequenced(), ge_enhanced_sr(), incomplete(),
        rt_sim(), qa_phantom(), cumulative(1), cumulative(2), continuation(1), continuation(2),
        toshiba_dose_check(), pixelmed_like(), datetime_offset(), invalid_num(), unit_spellings(),
        encoded("ct_implicit_vr", ImplicitVRLittleEndian, 1, "Implicit VR Little Endian"),
        encoded("ct_big_endian", ExplicitVRBigEndian, 2, "Explicit VR Big Endian (retired)"),
        encoded("ct_deflated", DeflatedExplicitVRLittleEndian, 3, "Deflated Explicit VR Little Endian"),
    ]


# --------------------------------------------------------------------------------------------
# Objects to refuse
# --------------------------------------------------------------------------------------------

C_ACQ_PLANE = ("113764", "DCM", "Acquisition Plane")
C_SINGLE_PLANE = ("113622", "DCM", "Single Plane")
C_ACCUMULATED_XRAY = triple(D.AccumulatedXRayDoseData)  # 113702
C_EVENT_XRAY = triple(D.IrradiationEventXRayData)  # 113706
C_EVENT_TYPE = triple(D.IrradiationEventType)  # 113721
C_DAP_TOTAL = triple(D.DoseAreaProductTotal)  # 113722
C_DAP = ("122130", "DCM", "Dose Area Product")
C_FLUORO_DAP_TOTAL = triple(D.FluoroDoseAreaProductTotal)  # 113726
C_TOTAL_FLUORO_TIME = triple(D.TotalFluoroTime)  # 113730
C_FLUOROSCOPY = ("P5-06000", "SRT", "Fluoroscopy")  # = 44491008 SCT
C_STATIONARY_XRAY = ("113611", "DCM", "Stationary Acquisition")
C_AGD = triple(D.AverageGlandularDose)  # 111631
C_ACC_AGD = ("111637", "DCM", "Accumulated Average Glandular Dose")
C_LATERALITY = ("272741003", "SCT", "Laterality")
C_LEFT_BREAST = ("80248007", "SCT", "Left breast")
C_BREAST = ("T-04000", "SRT", "Breast")  # = 76752008 SCT
UNIT_GYM2 = ("Gy.m2", "UCUM", "Gy.m2")


def projection_content(spec: ReportSpec, kind: str) -> ContainerContentItem:
    """TID 10001 Projection X-Ray Radiation Dose: radiography, fluoroscopy or mammography."""
    proc = C_MAMMOGRAPHY if kind == "mammo" else C_PROJECTION_XRAY
    items: list[Dataset] = [
        with_children(code_item(C_PROCEDURE_REPORTED, proc, HAS_CONCEPT_MOD),
                      [code_item(C_HAS_INTENT, C_DIAGNOSTIC, HAS_CONCEPT_MOD)]),
        code_item(C_OBSERVER_TYPE, C_DEVICE, HAS_OBS_CONTEXT),
        uidref(C_DEVICE_OBSERVER_UID, device_observer_uid(spec), HAS_OBS_CONTEXT),
        text(C_DEVICE_OBSERVER_MANUFACTURER, spec.manufacturer, HAS_OBS_CONTEXT),
        with_children(code_item(C_SCOPE, C_STUDY, HAS_OBS_CONTEXT),
                      [uidref(C_STUDY_INSTANCE_UID, spec.study_uid, HAS_PROPERTIES)]),
    ]
    if kind == "mammo":
        acc = [with_children(num(C_ACC_AGD, "1.32", UNIT_MGY),
                             [code_item(C_LATERALITY, C_LEFT_BREAST, HAS_CONCEPT_MOD)])]
        event = [text(C_PROTOCOL, "L CC"), code_item(C_EVENT_TYPE, C_STATIONARY_XRAY),
                 uidref(C_EVENT_UID, ev_uid(900)), num(C_AGD, "1.32", UNIT_MGY),
                 code_item(C_TARGET_REGION, C_BREAST), num(C_KVP, "29", UNIT_KV)]
    elif kind == "fluoro":
        acc = [num(C_DAP_TOTAL, "1.6e-05", UNIT_GYM2), num(C_FLUORO_DAP_TOTAL, "1.6e-05", UNIT_GYM2),
               num(C_TOTAL_FLUORO_TIME, "28", UNIT_S)]
        event = [dt_item(C_DATETIME_STARTED, "20240305101154"), code_item(C_EVENT_TYPE, C_FLUOROSCOPY),
                 text(C_PROTOCOL, "FL - Ang"), uidref(C_EVENT_UID, ev_uid(901)),
                 num(C_DAP, "1e-06", UNIT_GYM2), num(C_KVP, "77", UNIT_KV)]
    else:
        acc = [num(C_DAP_TOTAL, "1.07E-05", UNIT_GYM2)]
        event = [dt_item(C_DATETIME_STARTED, "20240305101154"), code_item(C_EVENT_TYPE, C_STATIONARY_XRAY),
                 text(C_PROTOCOL, "THORAX AP"), uidref(C_EVENT_UID, ev_uid(902)),
                 num(C_DAP, "1.07E-05", UNIT_GYM2), num(C_KVP, "90", UNIT_KV), code_item(C_TARGET_REGION, CHEST)]
    items.append(with_children(container(C_ACCUMULATED_XRAY, acc),
                               [code_item(C_ACQ_PLANE, C_SINGLE_PLANE, HAS_CONCEPT_MOD), *acc]))
    items.append(with_children(container(C_EVENT_XRAY, event),
                               [code_item(C_ACQ_PLANE, C_SINGLE_PLANE, HAS_CONCEPT_MOD), *event]))
    items.append(code_item(C_SOURCE_OF_DOSE_INFO, C_AUTOMATED))
    return container(C_REPORT, items, rel=None, template_id="10001")


REFUSED_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "dx_projection_rdsr": ("projection", dict(manufacturer="Canon Inc.", model="CXDI", study_description="CR THORAX")),
    "rf_fluoro_rdsr": ("fluoro", dict(manufacturer="Siemens", model="AXIOM-Artis", study_description="Angio")),
    "mg_mammo_rdsr": ("mammo", dict(manufacturer="HOLOGIC, Inc.", model="Selenia Dimensions",
                                    study_description="Screening mammogram")),
}


def refused_bytes(stem: str, n: int) -> tuple[bytes, str]:
    kind, kw = REFUSED_SPECS[stem]
    spec = ReportSpec(stem=stem, description="", study=40 + n, sop=40 + n, series=40 + n,
                      patient_id=f"PID004{n}", accession=f"ACC004{n}", serial=f"X4000{n}", **kw)
    root = projection_content(spec, kind)
    ds = sr_dataset(spec, root, "10001")
    ds.Modality = "SR"
    what = {"projection": "a projection radiography", "fluoro": "a fluoroscopy",
            "mammo": "a mammography"}[kind]
    return file_bytes(ds, ExplicitVRLittleEndian), f"{what} RDSR (TID 10001), not CT: refused"


def not_dose_sr_bytes() -> bytes:
    """A Comprehensive SR that is not a dose report (root: Imaging Measurement Report, TID 1500)."""
    spec = ReportSpec(stem="sr_not_dose", description="", sop_class=COMPREHENSIVE_SR_SOP_CLASS, study=50, sop=50,
                      series=50, patient_id="PID0050", accession="ACC0050", study_description="CT CHEST",
                      serial="X50050")
    root = container(triple(D.ImagingMeasurementReport), [
        with_children(code_item(("121049", "DCM", "Language of Content Item and Descendants"),
                                ("en-US", "RFC5646", "English (United States)"), HAS_CONCEPT_MOD), []),
        code_item(C_OBSERVER_TYPE, C_DEVICE, HAS_OBS_CONTEXT),
        uidref(C_DEVICE_OBSERVER_UID, device_observer_uid(spec), HAS_OBS_CONTEXT),
        code_item(("121058", "DCM", "Procedure reported"), C_CT_SCT, HAS_CONCEPT_MOD),
        container(("126010", "DCM", "Imaging Measurements"), [
            num(("410668003", "SCT", "Length"), "12.5", UNIT_MM)]),
    ], rel=None, template_id="1500")
    ds = sr_dataset(spec, root, "1500")
    return file_bytes(ds, ExplicitVRLittleEndian)


# --------------------------------------------------------------------------------------------
# Philips "Dose Info" secondary capture
# --------------------------------------------------------------------------------------------


@dataclass
class PhilipsAcq:
    series: int
    description: str
    acq_type: str  # CONSTANT_ANGLE | SPIRAL | SEQUENCED
    kvp: str
    exposure_ms: str | None
    scan_length: str
    tube_current_ua: str
    single_coll: float
    total_coll: float
    pitch: float | None
    ctdivol: float
    dlp_text: str


PHILIPS_ACQS = [
    PhilipsAcq(1, "", "CONSTANT_ANGLE", "120", None, "600", "30000", 0.75, 3.0, None, 0.0, "0 "),
    PhilipsAcq(2, "CHEST ROUTINE", "SPIRAL", "120", "5820", "355", "183250.75", 1.5, 24.0, 0.9375,
               9.43216018676758, "335.8812"),
    PhilipsAcq(3, "CHEST HRCT", "SEQUENCED", "140", "3000", "120", "250000", 0.75, 12.0, None,
               18.25, "219.0"),
]


def philips_bytes() -> bytes:
    spec = ReportSpec(stem="ct_philips_dose_info", description="", sop_class=SECONDARY_CAPTURE_SOP_CLASS,
                      study=60, sop=60, series=60, patient_id="PID0060", patient_name="PHIL^IPS", sex="",
                      birth_date="19600606", patient_age="063Y", weight=None, size=None, accession="ACC0060",
                      study_description="CT Chest", manufacturer="Philips", model="Brilliance 64",
                      station="PHILIPS-CT64", serial="PH60060", software="3.2.1", institution="Dosereg General Hospital",
                      series_description="Dose Info")
    ds = header(spec, SECONDARY_CAPTURE_SOP_CLASS, "CT")
    del ds.ContentDate, ds.ContentTime
    ds.ImageType = ["DERIVED", "SECONDARY", "DOSE_INFO"]
    ds.ConversionType = "WSD"
    ds.AcquisitionDate = spec.study_date
    ds.AcquisitionTime = "102200"
    ds.ImageComments = "Dose Info"
    ds.SeriesNumber = "80160"
    items = []
    for a in PHILIPS_ACQS:
        it = Dataset()
        it.AcquisitionDateTime = ""
        it.SeriesDescription = a.description
        it.KVP = a.kvp
        if a.exposure_ms is not None:
            it.ExposureTime = a.exposure_ms
        it.RadiationMode = "CONTINUOUS"
        it.ScanLength = a.scan_length
        it.XRayTubeCurrentInuA = a.tube_current_ua
        it.AcquisitionType = a.acq_type
        it.SingleCollimationWidth = a.single_coll
        it.TotalCollimationWidth = a.total_coll
        if a.pitch is not None:
            it.SpiralPitchFactor = a.pitch
        it.CTDIvol = a.ctdivol
        it.SeriesNumber = str(a.series)
        it.add_new(0x00E10010, "LO", "ELSCINT1")
        it.add_new(0x00E11021, "UN", a.dlp_text.encode("ascii") + (b" " if len(a.dlp_text) % 2 else b""))
        items.append(it)
    ds.ExposureDoseSequence = items
    ds.TotalNumberOfExposures = len(items)
    total = sum(float(a.dlp_text) for a in PHILIPS_ACQS)
    ds.CommentsOnRadiationDose = "\r\n".join(
        f"Series #{a.series} {a.description} Average CTDIvol={a.ctdivol:.1f} DLP={float(a.dlp_text):.1f}"
        for a in PHILIPS_ACQS if a.description)
    ds.add_new(0x00E10010, "LO", "ELSCINT1")
    total_text = f"{total:.5f}"
    ds.add_new(0x00E11021, "UN", total_text.encode("ascii") + (b" " if len(total_text) % 2 else b""))
    # A tiny blank image: the real screen is 512x512; 16x16 keeps the sample small.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 16
    ds.Columns = 16
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(16 * 16 * 2)
    return file_bytes(ds, ExplicitVRLittleEndian)


def philips_expected() -> dict[str, Any]:
    events = []
    for a in PHILIPS_ACQS:
        acq = {"CONSTANT_ANGLE": "constant_angle", "SPIRAL": "spiral", "SEQUENCED": "sequenced"}[a.acq_type]
        events.append({
            "irradiation_event_uid": None,
            "acquisition_protocol": {"$any": [None, a.description]} if a.description else None,
            "acquisition_type": acq,
            "procedure_context": None,
            "start_datetime": None,
            "exposure_time_s": float(a.exposure_ms) / 1000 if a.exposure_ms else None,
            "scanning_length_mm": float(a.scan_length),
            "nominal_single_collimation_mm": a.single_coll,
            "nominal_total_collimation_mm": a.total_coll,
            "pitch_factor": a.pitch,
            "number_of_xray_sources": {"$any": [None, 1]},
            "sources": [{"id": None, "kvp_kV": float(a.kvp), "max_tube_current_mA": None,
                         "tube_current_mA": float(a.tube_current_ua) / 1000, "exposure_time_per_rotation_s": None}],
            "ctdivol_mGy": a.ctdivol,
            "phantom": None,
            "phantom_code": None,
            "dlp_mGycm": float(a.dlp_text),
            "ssde_mGy": None,
            "water_equivalent_diameter_mm": None,
            "effective_dose_mSv": None,
            "dose_check": None,
            "is_timing_run": False,
            "comment": None,
        })
    total = sum(float(a.dlp_text) for a in PHILIPS_ACQS)
    return {
        "schema": "dosereg.study/1",
        "error": None,
        "study_instance_uid": uid(1, 60),
        "accession_number": "ACC0060",
        "study_date": "2024-03-05",
        "study_time": "10:15:30",
        "study_description": "CT Chest",
        "modality": "CT",
        "patient": {"id": "PID0060", "name": "PHIL^IPS", "birth_date": "1960-06-06", "sex": None,
                    "age_years": {"$approx": age_years("19600606", "20240305"), "abs": 0.02},
                    "weight_kg": None, "height_m": None},
        "equipment": {"manufacturer": "Philips", "model": "Brilliance 64", "station_name": "PHILIPS-CT64",
                      "serial_number": "PH60060", "software_versions": "3.2.1",
                      "institution_name": "Dosereg General Hospital", "device_observer_uid": None},
        "dose_objects": [{"sop_instance_uid": uid(3, 60), "sop_class_uid": SECONDARY_CAPTURE_SOP_CLASS,
                          "kind": "philips_dose_info"}],
        "events": events,
        "total_events": len(events),
        "total_dlp_mGycm": total,
        "reported_total_dlp_mGycm": float(f"{total:.5f}"),
        # no patient sex (and no phantom stated on a Philips screen): incomplete
        "completeness": {"status": "incomplete"},
        "flags": {"registry_code": "G9326"},
    }


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def truncate_mid_sequence(data: bytes) -> bytes:
    """Cut an encoded RDSR inside its Content Sequence (about two thirds into the file)."""
    marker = b"\x40\x00\x30\xa7"  # (0040,A730) Content Sequence tag, little endian
    start = data.index(marker)
    return data[: start + (len(data) - start) * 2 // 3]


def _json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def build_all() -> dict[str, tuple[bytes, dict[str, Any]]]:
    """stem -> (file bytes, expected JSON document)."""
    out: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for spec in all_ct_specs():
        data = ct_report_bytes(spec)
        doc: dict[str, Any] = {"file": f"{spec.stem}.dcm", "generated_by": "sample_dicom/generate.py",
                               "description": spec.description, "record": expected_ct(spec)}
        checks = {}
        if spec.missing_contains:
            checks["missing_contains"] = spec.missing_contains
        if spec.invalid_contains:
            checks["invalid_contains"] = spec.invalid_contains
        if checks:
            doc["checks"] = checks
        out[spec.stem] = (data, doc)

    for n, stem in enumerate(REFUSED_SPECS, start=1):
        data, why = refused_bytes(stem, n)
        out[stem] = (data, {"file": f"{stem}.dcm", "generated_by": "sample_dicom/generate.py",
                            "description": why, "record": {"error": {"code": "not_ct_dose"}}})
    out["sr_not_dose"] = (not_dose_sr_bytes(), {
        "file": "sr_not_dose.dcm", "generated_by": "sample_dicom/generate.py",
        "description": "Comprehensive SR that is an imaging measurement report (TID 1500), not a dose report",
        "record": {"error": {"code": "not_dose_report"}}})
    out["ct_philips_dose_info"] = (philips_bytes(), {
        "file": "ct_philips_dose_info.dcm", "generated_by": "sample_dicom/generate.py",
        "description": "Philips-like 'Dose Info' secondary capture: Exposure Dose Sequence with CTDIvol, kVp, scan "
                       "length, collimation, pitch, tube current in uA, exposure time in ms, DLP as text in private "
                       "ELSCINT1 (00E1,1021) per item and in total",
        "record": philips_expected()})
    out["junk_not_dicom"] = (b"This is not a DICOM file.\n" * 8, {
        "file": "junk_not_dicom.dcm", "generated_by": "sample_dicom/generate.py",
        "description": "plain text with a .dcm name", "record": {"error": {"code": "not_dicom"}}})
    out["ct_truncated"] = (truncate_mid_sequence(out["ct_siemens_single_source"][0]), {
        "file": "ct_truncated.dcm", "generated_by": "sample_dicom/generate.py",
        "description": "ct_siemens_single_source.dcm cut in the middle of its Content Sequence",
        "record": {"error": {"code": "truncated"}}})
    return out


# Pairs of objects that belong to one study, with the merged result (docs/merging.md).
MERGES = [
    {"study_instance_uid": uid(1, 8), "files": ["ct_cumulative_1", "ct_cumulative_2"],
     "note": "cumulative: the second object repeats the first's events and adds one",
     "total_events": 3, "total_dlp_mGycm": 6.6 + 244.3 + 120.6, "reported_total_dlp_mGycm": 6.6 + 244.3 + 120.6},
    {"study_instance_uid": uid(1, 9), "files": ["ct_continuation_1", "ct_continuation_2"],
     "note": "continuation: the second object holds only the new event and its own total",
     "total_events": 3, "total_dlp_mGycm": 6.6 + 301.9 + 99.4, "reported_total_dlp_mGycm": 6.6 + 301.9 + 99.4},
]


def write_all(folder: Path = HERE) -> list[Path]:
    expected_dir = folder / "expected"
    expected_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem, (data, doc) in build_all().items():
        path = folder / f"{stem}.dcm"
        path.write_bytes(data)
        (expected_dir / f"{stem}.json").write_text(_json_dump(doc), encoding="utf-8")
        written.append(path)
    (expected_dir / "merges.json").write_text(_json_dump(MERGES), encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: this folder)")
    args = parser.parse_args(argv)
    written = write_all(args.out)
    print(f"wrote {len(written)} sample files and their expected/*.json under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
