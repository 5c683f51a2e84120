"""Registry rules, billing flags, de-identification, submission files and reports.

Rules are pure functions of (study record, configured rules): they are applied when a
record is read, so the catalog holds extracted records and a changed profile needs no
re-import (docs/registry-profile.md).

Public API:

* :func:`rules_from_config` -> :class:`Rules` (profile, classification patterns, nomenclature;
  :attr:`Rules.key`, what an evaluation depends on besides the record);
  :func:`load_profile`, :func:`load_nomenclature` read one file each
* :func:`evaluate` (record, rules) -> :class:`Evaluation` (completeness, classification, flags,
  timing runs)
* :func:`study_dict` (record, evaluation, export) -> the contract's JSON study record
  (docs/study-record.md); :func:`evaluated_dict` (record, rules, export) evaluates and gives it
* :func:`without_implausible` -- a JSON study record with null at each implausible value
* :func:`export_batch` (cfg, source, ``out_dir``: a preview that records nothing), where the
  source is a :class:`StudySource` (``records()``, optionally ``versions()``; a catalog as
  :class:`CatalogSource`) or a function giving the records; :func:`export_marks`,
  :func:`studies_table`, :func:`write_report`
* :class:`PatientHistory` (``PatientHistory.of(records, rules, window_days).cumulative(patient_id,
  study_date)``): a patient's cumulative DLP and effective-dose estimate over a window
* :func:`change_secret` (``dosereg secret change``); :class:`SecretChangedError` when the
  configured secret is not the one export state recorded
"""

from .export import export_batch, export_marks
from .patient_history import PatientHistory
from .report import write_report
from .rules import (
    Evaluation,
    Rules,
    evaluate,
    evaluated_dict,
    load_nomenclature,
    load_profile,
    rules_from_config,
    study_dict,
    without_implausible,
)
from .secret import SecretChangedError, change_secret
from .source import CatalogSource, StudySource, VersionedSource
from .table import studies_table

__all__ = [
    "Evaluation", "Rules", "evaluate", "evaluated_dict", "study_dict", "rules_from_config", "load_profile",
    "load_nomenclature", "without_implausible",
    "export_batch", "export_marks", "studies_table", "write_report", "change_secret", "SecretChangedError",
    "CatalogSource", "StudySource", "VersionedSource", "PatientHistory",
]
