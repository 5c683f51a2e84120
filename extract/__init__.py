"""DICOM dose object -> typed study record (TID 10011 / Philips dose screens), and merging.

Public API:

* :func:`extract_file` / :func:`extract_bytes` -- one object in, one :class:`StudyRecord`
  out. Never raises for bad input: an unusable object gives a record whose ``error`` is set
  (``code`` and a ``message`` naming the file, element and reason). What reading may cost is
  bounded by :class:`ExtractLimits` (nesting depth, inflated size), passed as ``limits=``.
* :func:`merge_study` -- several records of one study (in order received) -> one record,
  per docs/merging.md.
"""

from .dicom_bytes import ExtractLimits
from .merge import merge_study
from .model import (
    Code,
    DoseCheck,
    DoseObjectRef,
    Equipment,
    ErrorInfo,
    Event,
    ExamRecord,
    Patient,
    Problem,
    ReportInfo,
    Source,
    StudyRecord,
    error_record,
)
from .reader import extract_bytes, extract_file

__all__ = [
    "Code", "DoseCheck", "ExtractLimits", "DoseObjectRef", "Equipment", "ErrorInfo", "Event", "ExamRecord",
    "Patient", "Problem",
    "ReportInfo", "Source", "StudyRecord", "error_record", "extract_bytes", "extract_file", "merge_study",
]
