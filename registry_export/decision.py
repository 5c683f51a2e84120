"""What a batch does for one study: pure functions of the study's evaluation and its recorded state.

* :func:`decide` -- given the evaluated study's registry code, content fingerprint and flags row
  key, and what export state recorded for it (:class:`.state.StudyState`): whether it goes to
  the registry (code ``G9327`` and content the registry does not have: never submitted, or
  changed since -- a re-submission), and whether billing gets a flags row (never flagged, or
  a flags row that differs in what billing acts on). docs/files.md, "Which study goes where".
* :func:`settled` -- whether a study needs no evaluation at all: it was evaluated with the same
  record (or the same source version) and rules in an export after which it had nothing to send.
"""

from __future__ import annotations

from dataclasses import dataclass

from .state import StudyState

REGISTRY_CODE = "G9327"  # the code of a study the registry receives (docs/registry-profile.md)


@dataclass(frozen=True)
class Decision:
    to_registry: bool
    to_flags: bool
    #: to the registry again, after a change (the registry has an earlier version of it)
    resubmission: bool
    #: a G9327 study the registry already has as it is
    already_submitted: bool

    @property
    def sends(self) -> bool:
        return self.to_registry or self.to_flags


def decide(code: str | None, fingerprint: str, flags_key: str, known: StudyState | None) -> Decision:
    """The decision for one evaluated study (module docstring); ``known`` None: never exported."""
    submitted = known.registry_fingerprint if known is not None else None
    to_registry = code == REGISTRY_CODE and submitted != fingerprint
    return Decision(
        to_registry=to_registry,
        to_flags=known is None or known.flags_key != flags_key,
        resubmission=to_registry and submitted is not None,
        already_submitted=code == REGISTRY_CODE and not to_registry,
    )


def settled(known: StudyState | None, rules_key: str, input_key: str | None = None,
            source_version: str | None = None) -> bool:
    """Whether the study was last evaluated with this record (``input_key``) or this version of
    it (``source_version``, with the same ``rules_key``), and had nothing to send after that."""
    if known is None:
        return False
    e = known.evaluated
    if source_version is not None and e.source_version == source_version and e.rules_key == rules_key:
        return True
    return input_key is not None and e.input_key == input_key
