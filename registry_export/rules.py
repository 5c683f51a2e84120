"""Registry rules: completeness, classification and billing flags (docs/registry-profile.md).

Pure functions of (study record, configured rules). The catalog stores extracted records
only; verdicts are computed whenever a record is read (``extract``, ``studies``,
``export``), so editing the registry profile or the nomenclature table takes effect on the
next read without re-importing anything. Nothing is cached between calls of
:func:`rules_from_config`.

* :func:`rules_from_config` -- reads the registry profile (``cfg.profile_path``, TOML,
  :mod:`.profile`) and the nomenclature table (``cfg.nomenclature_table``, CSV,
  :mod:`.nomenclature`) into :class:`Rules`; mistakes in either are
  :class:`dosereg.conf.config.ConfigError` naming the file and the key or line.
* :func:`evaluate` -- one typed record -> :class:`Evaluation` (completeness
  (:mod:`.completeness`), classification (:mod:`.classification`), flags, one timing-run
  verdict per event).
* :func:`study_dict` -- a record and its evaluation -> the contract's JSON study record
  (docs/study-record.md); :func:`evaluated_dict` = ``study_dict(record, evaluate(record, rules))``.
* :func:`without_implausible` -- a copy of a JSON study record with null at each implausible
  value, for the registry files.

Plausibility (docs/registry-profile.md): the profile's ranges are physical limits. A number
outside its range or not finite, and a date outside its bounds, is *implausible*: invalid
like any invalid element, and listed in ``completeness.implausible`` at every level, so that
:func:`without_implausible` can give the registry files null in its place while the record
keeps the stated value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config, NonPatientSettings, NotificationSettings
from dosereg.extract import Event, ExamRecord, StudyRecord

from .classification import (
    RtPlanningRules,
    check_non_patient,
    nomenclature_flag,
    non_patient_reasons,
    rt_planning_reasons,
    rt_planning_rules,
)
from .completeness import completeness_check, without_implausible
from .dosimetry import TIMING_RUN_MAX_CTDIVOL_MGY, is_timing_run
from .nomenclature import Nomenclature, NomenclatureEntry, load_nomenclature
from .profile import Condition, DateBound, ElementRule, Profile, load_profile
from .verdicts import Classification, Completeness, Evaluation, Flags, InvalidElement

__all__ = [
    "RULES_REVISION", "Classification", "Completeness", "Condition", "DateBound", "ElementRule", "Evaluation",
    "Flags", "InvalidElement", "Nomenclature", "NomenclatureEntry", "Profile", "RtPlanningRules", "Rules",
    "evaluate", "evaluated_dict", "load_nomenclature", "load_profile", "rules_from_config", "study_dict",
    "without_implausible",
]

#: The meaning of the evaluation code. Bump it (by one) whenever a change to the evaluation
#: code (this package's rules, profile, completeness, validity, event_checks, classification,
#: dosimetry modules, or the record model they read) changes any verdict, reason text, path or
#: timing-run verdict for some record and rules: :attr:`Rules.key` includes it, so export state
#: recorded under the old meaning is evaluated again. A change that keeps every verdict
#: (refactoring, comments, speed) keeps it.
RULES_REVISION = 2  # 2: non-patient rules on protocols, station, requested procedure; timing-run dose bound


@dataclass(frozen=True)
class Rules:
    """The configured rules: registry profile, classification, nomenclature, notification values."""

    profile: Profile
    non_patient: NonPatientSettings
    rt_planning: RtPlanningRules
    nomenclature: Nomenclature
    notification: NotificationSettings
    config_path: Path | None = None
    timing_run_max_ctdivol_mGy: float = TIMING_RUN_MAX_CTDIVOL_MGY

    @property
    def profile_name(self) -> str:
        return self.profile.name

    @property
    def profile_version(self) -> str:
        return self.profile.version

    @cached_property
    def completeness(self) -> Callable[[StudyRecord], Completeness]:
        """The profile compiled into its checks (:func:`.completeness.completeness_check`), once."""
        return completeness_check(self.profile)

    @cached_property
    def key(self) -> str:
        """What an evaluation depends on besides the record, as 32 hex digits: the loaded
        profile's content (not its file name or comments), the nomenclature table's entries,
        playbook schemes and file name (reasons quote it), the classification patterns, and
        :data:`RULES_REVISION`. Equal keys and equal records give equal evaluations."""
        p, nom, rt = self.profile, self.nomenclature, self.rt_planning
        material = (
            RULES_REVISION,
            (p.name, p.version, p.required, p.recommended, p.optional),
            (nom.path.name, tuple(sorted(nom.entries.items())), nom.playbook_schemes),
            self.non_patient,
            (tuple((t.pattern, t.flags) for t in rt.text), rt.station_names, rt.procedure_codes, rt.manufacturers),
            self.timing_run_max_ctdivol_mGy,
        )
        return hashlib.sha256(repr(material).encode("utf-8")).hexdigest()[:32]


def rules_from_config(cfg: Config) -> Rules:
    """Load the registry profile and the nomenclature table named by the configuration.

    Read afresh on every call (nothing cached), so a changed profile applies on the next
    read. Errors are :class:`ConfigError` naming the file and the key or line at fault.
    """
    check_non_patient(cfg.classification.non_patient, cfg.path)
    return Rules(
        profile=load_profile(Path(cfg.profile_path)),
        non_patient=cfg.classification.non_patient,
        rt_planning=rt_planning_rules(cfg.classification.rt_planning, cfg.path),
        nomenclature=load_nomenclature(Path(cfg.nomenclature_table)),
        notification=cfg.notification,
        config_path=cfg.path,
        timing_run_max_ctdivol_mGy=cfg.dose.timing_run_max_ctdivol_mgy,
    )


def evaluate(record: StudyRecord, rules: Rules) -> Evaluation:
    """Completeness, classification, flags and timing runs of one record (pure).

    * completeness: every required element of the profile (with its condition) present
      and valid; the extractor's ``problems`` on required elements count as invalid.
    * classification: ``patient_study`` false when a non-patient glob matches the
      patient name / ID or the study description; ``rt_planning`` when an RT-planning
      rule matches (text regexes, station names, procedure codes, treatment-machine
      manufacturer with a cone-beam acquisition). Non-patient studies are not tested
      for RT planning.
    * flags: ``excluded`` / null for non-patient studies; else G9327 when the record has
      a parsed dose object and is complete, G9326 with the reasons otherwise; G9320 for
      RT planning, G9318 when the description or a procedure code maps to the
      standardized nomenclature, else G9319.
    * timing runs: :func:`.dosimetry.is_timing_run` of each event.

    An error record (``record.error`` set) gets G9326 / G9319 with the error as reason;
    :func:`study_dict` prints null verdicts for it instead.
    """
    bound = rules.timing_run_max_ctdivol_mGy
    timing = tuple(is_timing_run(e, bound) for e in record.events or ())
    error = record.error
    if error:
        message = f"not a usable CT dose object: {error.code}: {error.message}"
        return Evaluation(
            Completeness("incomplete", warnings=(message,), reasons=(message,)),
            Classification(True, False, ()),
            Flags("G9326", (message,), "G9319", (message,)),
            timing,
        )
    completeness = rules.completeness(record)
    np_reasons = non_patient_reasons(record, rules.non_patient)
    rt_reasons = [] if np_reasons else rt_planning_reasons(record, rules.rt_planning)
    classification = Classification._of(
        patient_study=not np_reasons, rt_planning=bool(rt_reasons), reasons=tuple(np_reasons or rt_reasons))
    if np_reasons:
        flags = Flags("excluded", tuple(f"not a patient study: {r}" for r in np_reasons), None,
                      ("not a patient study",))
        return Evaluation(completeness, classification, flags, timing)
    registry_reasons: list[str] = []
    if not record.dose_objects and record.__class__ is not ExamRecord:  # an exam's reason is its completeness's
        registry_reasons.append("no parsed CT dose object")
    registry_reasons.extend(completeness.reasons)
    if registry_reasons:
        registry_code = "G9326"
    else:
        registry_code = "G9327"
        registry_reasons.append(f"complete against registry profile {rules.profile.name} {rules.profile.version}")
    if rt_reasons:
        nom_code, nom_reasons = "G9320", list(rt_reasons)
    else:
        nom_code, nom_reasons = nomenclature_flag(record, rules.nomenclature)
    flags = Flags._of(registry_code=registry_code, registry_reasons=tuple(registry_reasons),
                      nomenclature_code=nom_code, nomenclature_reasons=tuple(nom_reasons))
    return Evaluation._of(completeness=completeness, classification=classification, flags=flags, timing_runs=timing)


# The JSON event keeps ``is_timing_run`` where the record model once held it, after
# ``dose_check``: key order is part of the bytes export state fingerprints a submitted
# study by, so moving it would make every submitted study look changed.
_EVENT_FIELDS = tuple(f.name for f in fields(Event))
_AFTER_TIMING = _EVENT_FIELDS[_EVENT_FIELDS.index("dose_check") + 1:]


def study_dict(record: StudyRecord, evaluation: Evaluation, export: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's JSON study record (docs/study-record.md) of a record and its evaluation.

    ``record.to_dict()`` with ``export`` = the given mark (``{batch_id, exported_at}`` or
    None), ``completeness``, ``classification`` and ``flags`` from ``evaluation`` (all three
    null for an error record), and each event's ``is_timing_run`` from
    :attr:`Evaluation.timing_runs`.
    """
    return _fill(record.to_dict(), record, evaluation, export)


def _fill(d: dict[str, Any], record: StudyRecord, evaluation: Evaluation,
          export: dict[str, Any] | None) -> dict[str, Any]:
    """:func:`study_dict` on ``d = record.to_dict()`` (filled in place and returned)."""
    d["export"] = export
    if record.error:
        d["completeness"] = d["classification"] = d["flags"] = None
    else:
        d["completeness"] = evaluation.completeness.to_dict()
        d["classification"] = evaluation.classification.to_dict()
        d["flags"] = evaluation.flags.to_dict()
    for e, timing in zip(d.get("events") or (), evaluation.timing_runs, strict=False):
        e["is_timing_run"] = timing
        for name in _AFTER_TIMING:
            e[name] = e.pop(name)
    return d


def evaluated_dict(record: StudyRecord, rules: Rules, export: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's JSON study record with the verdicts filled in:
    ``study_dict(record, evaluate(record, rules), export)``."""
    return study_dict(record, evaluate(record, rules), export)

