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
  :class:`CatalogSource`) or a function giving the records; :func:`export_marks`, :func:`last_export`,
  :func:`studies_table` and its :class:`StudyFilter`, :func:`write_report`, :func:`scanner_label` (a scanner as the report names it)
* the batch lifecycle (docs/lifecycle.md): :func:`list_batches`, :func:`review_batch`,
  :func:`approve`, :func:`hold`, :func:`release`, :func:`reject` (each with ``by``, recorded in
  the audit log) and :func:`send` (cfg, catalog object rows, batch) -> :class:`SendResult`;
  :func:`submission_lookup` (cfg) -> the ``submission`` of each study record; :func:`read_submissions`
  (cfg) -> :class:`Submissions` (``of(study_uid, registry_code, no_dose_report)``: every study's
  standing, read once), :func:`export_state_stamp` (cfg: changes whenever export state does),
  :func:`no_dose_report` (record), :data:`SUBMISSION_STATES`; :func:`study_batches`
  (a study's batch history), :func:`flags_since` (billing's pick-up of the flags files' rows)
* :class:`PatientHistory` (``PatientHistory.of(records, rules, window_days).cumulative(patient_id,
  study_date)``): a patient's cumulative DLP and effective-dose estimate over a window
* dose alerts (docs/alerts.md): :func:`alerts_for` (record, evaluation, rules, settings, levels,
  history, received_at) -> :class:`Alert` values; :func:`alert_worker_main` (the process ``dosereg
  listen`` spawns), :func:`deliver_once` (cfg, catalog) -> :class:`AlertPass`,
  :func:`alert_listing` (cfg, since) -> the recorded alerts with their deliveries,
  :func:`alert_problems` (cfg) -> what ``dosereg status`` reports (deliveries given up)
* :func:`change_secret` (``dosereg secret change``), :func:`recorded_secret`; :class:`SecretChangedError` when the
  configured secret is not the one export state recorded; :class:`ExportBusyError` when
  another export holds the export state
"""

from .alert_worker import PassResult as AlertPass
from .alert_worker import alert_listing, alert_problems, deliver_once
from .alert_worker import worker_main as alert_worker_main
from .alerts import Alert, alerts_for
from .export import export_batch, export_marks, last_export
from .patient_history import PatientHistory
from .report import scanner_label, write_report
from .review import (
    BatchNotFoundError,
    Outcome,
    approve,
    flags_since,
    hold,
    list_batches,
    reject,
    release,
    review_batch,
    study_batches,
)
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
from .secret import SecretChangedError, change_secret, recorded_secret
from .send import SendResult, send
from .source import CatalogSource, StudySource, VersionedSource
from .state import ExportBusyError
from .submission import (
    SUBMISSION_STATES,
    Submissions,
    export_state_stamp,
    no_dose_report,
    read_submissions,
    submission_lookup,
)
from .table import StudyFilter, studies_table

__all__ = [
    "Evaluation", "Rules", "evaluate", "evaluated_dict", "study_dict", "rules_from_config", "load_profile",
    "load_nomenclature", "without_implausible",
    "export_batch", "export_marks", "last_export", "studies_table", "StudyFilter", "write_report", "scanner_label", "change_secret", "recorded_secret",
    "SecretChangedError", "ExportBusyError",
    "CatalogSource", "StudySource", "VersionedSource", "PatientHistory",
    "list_batches", "review_batch", "approve", "hold", "release", "reject", "send", "SendResult", "Outcome",
    "BatchNotFoundError", "submission_lookup", "study_batches", "flags_since",
    "SUBMISSION_STATES", "Submissions", "read_submissions", "export_state_stamp", "no_dose_report",
    "Alert", "AlertPass", "alert_listing", "alert_worker_main", "alert_problems", "alerts_for", "deliver_once",
]
