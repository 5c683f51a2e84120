"""The per-study decision of an export (:mod:`dosereg.registry_export.decision`), as pure functions."""

from __future__ import annotations

import pytest

from dosereg.registry_export.decision import Decision, decide, settled
from dosereg.registry_export.legacy import in_current_form, legacy_fingerprint
from dosereg.registry_export.state import Evaluated, StudyState

FP, OTHER_FP = "p1:" + "a" * 32, "p1:" + "b" * 32
KEY, OTHER_KEY = "k" * 32, "j" * 32


def state(fp: str | None = FP, key: str | None = KEY, **evaluated: str | None) -> StudyState:
    return StudyState(fp, key, Evaluated(**evaluated))


@pytest.mark.parametrize("code, known, expected", [
    # never exported: G9327 to the registry and billing; other codes to billing only
    ("G9327", None, Decision(True, True, False, False)),
    ("G9326", None, Decision(False, True, False, False)),
    ("excluded", None, Decision(False, True, False, False)),
    # exported as it is: nothing to send, a G9327 counted as already submitted
    ("G9327", state(), Decision(False, False, False, True)),
    ("G9326", state(fp=None), Decision(False, False, False, False)),
    # the content changed since it was submitted: submitted again, billing unchanged
    ("G9327", state(fp=OTHER_FP), Decision(True, False, True, False)),
    # completed since (G9326 before, never submitted): first submission, and billing gets the new code
    ("G9327", state(fp=None, key=OTHER_KEY), Decision(True, True, False, False)),
    # no longer G9327: nothing to the registry; billing hears of the new code
    ("G9326", state(key=OTHER_KEY), Decision(False, True, False, False)),
])
def test_decide(code: str, known: StudyState | None, expected: Decision) -> None:
    decision = decide(code, FP, KEY, known)
    assert decision == expected
    assert decision.sends == (expected.to_registry or expected.to_flags)


def test_settled_by_input_key_or_by_source_version_with_the_same_rules() -> None:
    known = state(input_key="ik1", source_version="v1", rules_key="r1")
    assert settled(known, "r1", input_key="ik1")
    assert not settled(known, "r1", input_key="ik2")
    assert settled(known, "r1", source_version="v1")
    assert not settled(known, "r2", source_version="v1")  # other rules: evaluate again
    assert not settled(known, "r1", source_version="v2")
    assert settled(known, "r2", input_key="ik1", source_version="v2")  # the record says it is the same
    assert not settled(None, "r1", input_key="ik1")
    assert not settled(state(), "r1", input_key=None, source_version=None)  # never settled


def test_a_legacy_fingerprint_counts_as_submitted_when_it_is_this_content() -> None:
    d = {"study_instance_uid": "1.2.3", "events": [], "dose_objects": [{"sop_instance_uid": "1.2.3.4",
                                                                          "received_at": "2026-01-01"}]}
    old = state(fp=legacy_fingerprint(d))
    assert not old.registry_fingerprint.startswith("p1:")  # type: ignore[union-attr]
    current = in_current_form(old, d, FP)
    assert current == state(fp=FP)
    assert decide("G9327", FP, KEY, current) == Decision(False, False, False, True)
    # a legacy fingerprint of other content stays as it is: the study is submitted again
    changed = {**d, "study_description": "CT HEAD"}
    assert in_current_form(old, changed, FP) == old
    assert decide("G9327", FP, KEY, in_current_form(old, changed, FP)).resubmission
    # received_at is not content: a re-sent object is the same study
    resent = {**d, "dose_objects": [{"sop_instance_uid": "1.2.3.4", "received_at": "2026-02-02"}]}
    assert legacy_fingerprint(resent) == legacy_fingerprint(d)
    assert in_current_form(None, d, FP) is None and in_current_form(state(), d, OTHER_FP) == state()
