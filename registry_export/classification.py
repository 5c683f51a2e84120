"""Classification of a study and its nomenclature flag (docs/registry-profile.md).

* :func:`non_patient_reasons` -- the configured non-patient rules (``classification.non_patient``,
  docs/classification.md): globs on the patient name / ID and the study description, regular
  expressions on the requested procedure, the station name and the acquisition protocols
  (protocol evidence only when every irradiation event of the study has it: one QA-named
  event inside a patient study, an RT check after the scan, leaves it a patient study).
  :func:`check_non_patient` compiles the expressions once, so that a bad one is an error at load.
* :func:`rt_planning_reasons` -- the RT-planning rules (``classification.rt_planning``): text
  regexes on the descriptions and protocols, station names, procedure codes, and a
  treatment-machine manufacturer with a cone-beam acquisition.
* :func:`nomenclature_flag` -- G9318 when the study description or a procedure code maps to
  the standardized nomenclature (RadLex Playbook, LOINC), else G9319 (G9320, RT planning, is
  decided by the caller from :func:`rt_planning_reasons`).

Each gives the reasons in words; patient names and IDs are never repeated in them (they end
up in reports and logs).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from dosereg.conf.config import ConfigError, NonPatientSettings, RtPlanningSettings
from dosereg.extract import StudyRecord

from .nomenclature import Nomenclature

__all__ = ["RtPlanningRules", "check_non_patient", "nomenclature_flag", "non_patient_reasons",
           "rt_planning_reasons", "rt_planning_rules"]


@dataclass(frozen=True)
class RtPlanningRules:
    """classification.rt_planning with its regular expressions compiled."""

    text: tuple[re.Pattern[str], ...]
    station_names: tuple[str, ...]
    procedure_codes: tuple[str, ...]
    manufacturers: tuple[str, ...]

    @cached_property
    def any_text(self) -> Callable[[str], Any] | None:
        """``search`` of one regex that finds a match when any ``text`` pattern does (most texts
        match none, so one search replaces several); None when the patterns cannot be joined."""
        if not self.text or any(p.groups for p in self.text):  # groups: back-references would shift
            return None
        try:
            return re.compile("|".join(f"(?:{p.pattern})" for p in self.text), re.IGNORECASE).search
        except re.error:
            return None

    @cached_property
    def may_match(self) -> Callable[[str], bool] | None:
        """``any_text(text) is not None``, remembered for the last 4096 texts: descriptions and
        protocol names repeat across a site's studies, and the joined case-insensitive search
        with look-arounds costs more than the rest of a study's classification."""
        search = self.any_text
        if search is None:
            return None

        @lru_cache(maxsize=4096)
        def may_match(text: str) -> bool:
            return search(text) is not None

        return may_match


def rt_planning_rules(settings: RtPlanningSettings, where: object) -> RtPlanningRules:
    """The configured RT-planning rules, their text patterns compiled (case-insensitive); a
    pattern that is no regular expression is a :class:`ConfigError` naming ``where`` (the file)."""
    patterns = []
    for i, text in enumerate(settings.text):
        try:
            patterns.append(re.compile(text, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(
                f"{where}: classification.rt_planning.text[{i}] {text!r} is not a valid regular expression: {exc}"
            ) from None
    return RtPlanningRules(tuple(patterns), settings.station_names, settings.procedure_codes, settings.manufacturers)


def _glob(value: str | None, patterns: Iterable[str]) -> str | None:
    """The first pattern (case-insensitive glob) that matches ``value``, or None."""
    if not value:
        return None
    v = value.strip().casefold()
    any_match, each = _globs(tuple(patterns))
    if any_match is None or not any_match(v):
        return None
    for pat, match in each:
        if match(v):
            return pat
    return None


@lru_cache(maxsize=64)
def _globs(patterns: tuple[str, ...]) -> tuple[Callable[[str], Any] | None, tuple[tuple[str, Callable[[str], Any]], ...]]:
    """(one regex matching when any pattern does, (pattern, its regex) each), as fnmatch.fnmatchcase
    compiles them."""
    regexes = [fnmatch.translate(p.casefold()) for p in patterns]
    if not regexes:
        return None, ()
    each = tuple((p, re.compile(r).match) for p, r in zip(patterns, regexes, strict=True))
    return re.compile("|".join(f"(?:{r})" for r in regexes)).match, each


#: The keys of classification.non_patient that hold regular expressions (the others are globs).
NON_PATIENT_REGEX_KEYS = ("acquisition_protocol", "requested_procedure", "station_name")
#: Scanners join words with "_" (``QA_Head_Axial``, ``MONTHLY_QC``), which ``\b`` counts as a
#: letter: the expressions read the text with these separators as spaces.
_SEPARATORS = str.maketrans("_", " ")


@lru_cache(maxsize=64)
def _regexes(patterns: tuple[str, ...]) -> tuple[Callable[[str], Any] | None, tuple[tuple[str, re.Pattern[str]], ...]]:
    """(``search`` of one regex finding a match when any pattern does, (pattern, compiled) each);
    re.error propagates (:func:`check_non_patient` turns it into a ConfigError)."""
    each = tuple((p, re.compile(p, re.IGNORECASE)) for p in patterns)
    if not each:
        return None, ()
    if any(c.groups for _, c in each):  # back-references would shift in a joined expression
        return None, each
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE).search, each


def check_non_patient(np: NonPatientSettings, where: object) -> None:
    """Compile the regular-expression keys of classification.non_patient; a pattern that is no
    regular expression is a :class:`ConfigError` naming the key, the pattern and ``where``."""
    for key in NON_PATIENT_REGEX_KEYS:
        for i, text in enumerate(getattr(np, key)):
            try:
                re.compile(text, re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(f"{where}: classification.non_patient.{key}[{i}] {text!r} is not a valid "
                                  f"regular expression: {exc}") from None


@lru_cache(maxsize=4096)  # protocols, stations and requested procedures repeat across studies
def _regex_hit(text: str, patterns: tuple[str, ...]) -> str | None:
    """The first pattern (regular expression, case-insensitive) found in ``text``, or None."""
    any_search, each = _regexes(patterns)
    text = text.translate(_SEPARATORS)
    if any_search is not None and any_search(text) is None:
        return None
    for pat, compiled in each:
        if compiled.search(text):
            return pat
    return None


def _quoted(pattern: str) -> str:
    """A regular expression as written in the configuration file (``'\\bqa\\b'``, not repr's
    doubled backslashes)."""
    return f"'{pattern}'"


def _protocol_reason(record: StudyRecord, patterns: tuple[str, ...]) -> str | None:
    """Why every irradiation event's protocol says non-patient, or None when one does not (or
    the study has no events)."""
    events = record.events or ()
    if not events or not patterns:
        return None
    hits: list[str] = []
    for ev in events:
        protocol = ev.acquisition_protocol
        pat = _regex_hit(protocol, patterns) if isinstance(protocol, str) and protocol else None
        if pat is None:
            return None
        if pat not in hits:
            hits.append(pat)
    shown = sorted({ev.acquisition_protocol or "" for ev in events})
    examples = ", ".join(repr(p) for p in shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    return (f"events[].acquisition_protocol of all {len(events)} event{'s' if len(events) > 1 else ''} "
            f"({examples}) match non-patient pattern{'s' if len(hits) > 1 else ''} "
            f"classification.non_patient.acquisition_protocol {', '.join(_quoted(h) for h in hits)}")


def non_patient_reasons(record: StudyRecord, np: NonPatientSettings) -> list[str]:
    """Why the study is not a patient study (empty: it is one). Each reason names the field
    that matched and the pattern (never the patient's name or ID itself)."""
    patient = record.patient
    reasons = []
    pat = _glob(getattr(patient, "name", None), np.patient_name)
    if pat:
        reasons.append(f"patient.name matches non-patient pattern {pat!r}")
    pat = _glob(getattr(patient, "id", None), np.patient_id)
    if pat:
        reasons.append(f"patient.id matches non-patient pattern {pat!r}")
    desc = record.study_description
    pat = _glob(desc, np.study_description)
    if pat:
        reasons.append(f"study_description {desc!r} matches non-patient pattern {pat!r}")
    requested = record.requested_procedure_description
    pat = _regex_hit(requested, np.requested_procedure) if requested and np.requested_procedure else None
    if pat:
        reasons.append(f"requested_procedure_description {requested!r} matches non-patient pattern "
                       f"classification.non_patient.requested_procedure {_quoted(pat)}")
    station = getattr(record.equipment, "station_name", None)
    pat = _regex_hit(station, np.station_name) if station and np.station_name else None
    if pat:
        reasons.append(f"equipment.station_name {station!r} matches non-patient pattern "
                       f"classification.non_patient.station_name {_quoted(pat)}")
    protocol = _protocol_reason(record, np.acquisition_protocol)
    if protocol:
        reasons.append(protocol)
    return reasons


def _texts(record: StudyRecord) -> list[tuple[str, str]]:
    """(path, text) of the elements the RT-planning text patterns read."""
    texts: list[tuple[str, str]] = []
    if record.study_description:
        texts.append(("study_description", record.study_description))
    if record.requested_procedure_description:
        texts.append(("requested_procedure_description", record.requested_procedure_description))
    for i, ev in enumerate(record.events or ()):
        if ev.acquisition_protocol:
            texts.append((f"events[{i}].acquisition_protocol", ev.acquisition_protocol))
    return texts


def rt_planning_reasons(record: StudyRecord, rt: RtPlanningRules) -> list[str]:
    """Why the study is an RT-planning scan (empty: it is not one)."""
    texts = _texts(record)
    may_match = rt.may_match
    patterns = rt.text if may_match is None or any(may_match(text) for _, text in texts) else ()
    reasons: list[str] = []
    for pattern in patterns:
        hits = [(where, text) for where, text in texts if pattern.search(text)]
        if hits:
            where, text = hits[0]
            more = f" (and {len(hits) - 1} more element{'s' if len(hits) > 2 else ''})" if len(hits) > 1 else ""
            reasons.append(
                f"{where} {text!r} matches RT-planning rule classification.rt_planning.text {pattern.pattern!r}{more}"
            )
    station, manufacturer = getattr(record.equipment, "station_name", None), getattr(record.equipment, "manufacturer", None)
    pat = _glob(station, rt.station_names)
    if pat:
        reasons.append(
            f"equipment.station_name {station!r} matches RT-planning rule classification.rt_planning.station_names {pat!r}"
        )
    for i, code in enumerate(record.procedure_codes or ()):
        pat = _glob(code.value, rt.procedure_codes)
        if pat:
            reasons.append(
                f"procedure_codes[{i}] {code.value!r} matches RT-planning rule "
                f"classification.rt_planning.procedure_codes {pat!r}"
            )
    pat = _glob(manufacturer, rt.manufacturers)
    if pat:
        cone = [i for i, ev in enumerate(record.events or ()) if ev.acquisition_type == "cone_beam"]
        if cone:
            reasons.append(
                f"equipment.manufacturer {manufacturer!r} matches RT-planning rule "
                f"classification.rt_planning.manufacturers {pat!r} with a cone-beam acquisition "
                f"(events[{cone[0]}]): image-guided radiation treatment delivery"
            )
    return reasons


def nomenclature_flag(record: StudyRecord, nom: Nomenclature) -> tuple[str, list[str]]:
    """("G9318", why) when the study description or a procedure code is standardized
    nomenclature (in the table, a LOINC code, a RadLex Playbook code), else ("G9319", why not)."""
    table = nom.path.name
    reasons: list[str] = []
    desc = record.study_description
    entry = nom.lookup(desc)
    if entry:
        reasons.append(f"study_description {desc!r} maps to RadLex Playbook {entry.playbook_id} ({table} line {entry.line})")
    codes = record.procedure_codes or ()
    for i, code in enumerate(codes):
        scheme = (code.scheme or "").strip().upper()
        value = code.value
        if scheme == "LN" and value:
            reasons.append(f"procedure_codes[{i}] {value!r} is a LOINC (LN) code")
        elif scheme and scheme in nom.playbook_schemes and value:
            reasons.append(f"procedure_codes[{i}] {value!r} is a RadLex Playbook code (scheme {scheme})")
        else:
            entry = nom.lookup(code.meaning)
            if entry:
                reasons.append(
                    f"procedure_codes[{i}] meaning {code.meaning!r} maps to RadLex Playbook "
                    f"{entry.playbook_id} ({table} line {entry.line})"
                )
    if reasons:
        return "G9318", reasons
    if desc:
        reasons.append(f"study_description {desc!r} is not in the nomenclature table {table}")
    else:
        reasons.append("no study_description")
    accepted = ", ".join(["LN", *nom.playbook_schemes])
    if codes:
        shown = ", ".join(f"{c.value!r} ({c.scheme or 'no scheme'})" for c in codes)
        reasons.append(f"procedure_codes {shown} are neither in a standard scheme ({accepted}) nor in {table}")
    else:
        reasons.append("no procedure_codes")
    return "G9319", reasons
