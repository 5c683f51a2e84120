"""Registry rules, billing flags, de-identification, submission files and reports.

Rules are pure functions of (study record, configured rules): they are applied when a
record is read, so the catalog holds extracted records and a changed profile needs no
re-import.

Public API:

* :func:`rules_from_config` -> :class:`Rules` (profile, classification patterns, nomenclature)
* :func:`evaluate` (record, rules) -> :class:`Evaluation` (completeness, classification, flags,
  timing runs)
* :func:`evaluated_dict` (record, rules, export) -> the contract's JSON study record
* :func:`export_batch` (cfg, source, ``out_dir``: a preview that records nothing), where the
  source is a :class:`StudySource` (``records()``, optionally ``versions()``; a catalog as
  :class:`CatalogSource`) or a function giving the records; :func:`export_marks`,
  :func:`studies_table`, :func:`write_report`
* :func:`change_secret` (``dosereg secret change``); :class:`SecretChangedError` when the
  configured secret is not the one export state recorded
"""

from .export import export_batch, export_marks
from .report import write_report
from .rules import Evaluation, Rules, evaluate, evaluated_dict, rules_from_config
from .secret import SecretChangedError, change_secret
from .source import CatalogSource, StudySource, VersionedSource
from .table import studies_table

__all__ = [
    "Evaluation", "Rules", "evaluate", "evaluated_dict", "rules_from_config",
    "export_batch", "export_marks", "studies_table", "write_report", "change_secret", "SecretChangedError",
    "CatalogSource", "StudySource", "VersionedSource",
]
