"""Registry rules, billing flags, de-identification, submission files and reports.

Rules are pure functions of (study record, configured rules): they are applied when a
record is read, so the catalog holds extracted records and a changed profile needs no
re-import.

Public API:

* :func:`rules_from_config` -> :class:`Rules` (profile, classification patterns, nomenclature)
* :func:`evaluate` (record, rules) -> :class:`Evaluation` (completeness, classification, flags,
  timing runs)
* :func:`evaluated_dict` (record, rules, export) -> the contract's JSON study record
* :func:`export_batch` (``out_dir``: a preview that records nothing), :func:`export_marks`,
  :func:`studies_table`, :func:`write_report`
* :func:`change_secret` (``dosereg secret change``); :class:`SecretChangedError` when the
  configured secret is not the one export state recorded
"""

from .export import SecretChangedError, change_secret, export_batch, export_marks, studies_table
from .report import write_report
from .rules import Evaluation, Rules, evaluate, evaluated_dict, rules_from_config

__all__ = [
    "Evaluation", "Rules", "evaluate", "evaluated_dict", "rules_from_config",
    "export_batch", "export_marks", "studies_table", "write_report", "change_secret", "SecretChangedError",
]
