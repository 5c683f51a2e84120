"""The batch lifecycle's transitions (registry_export.lifecycle), as docs/lifecycle.md draws them."""

from __future__ import annotations

import pytest

from dosereg.registry_export.lifecycle import (
    ACKNOWLEDGED,
    APPROVED,
    FAILED,
    PENDING_REVIEW,
    REJECTED,
    SENDING,
    TransitionError,
    after_export,
    submission_state,
    transition,
)


@pytest.mark.parametrize(("state", "action", "after"), [
    (PENDING_REVIEW, "approve", APPROVED),
    (PENDING_REVIEW, "reject", REJECTED),
    (PENDING_REVIEW, "hold", PENDING_REVIEW),
    (APPROVED, "send", SENDING),
    (FAILED, "send", SENDING),
    (SENDING, "send", SENDING),
    (SENDING, "acknowledge", ACKNOWLEDGED),
    (APPROVED, "acknowledge", ACKNOWLEDGED),
    (SENDING, "fail", FAILED),
])
def test_allowed_transitions(state: str, action: str, after: str) -> None:
    assert transition(state, action).after == after


@pytest.mark.parametrize(("state", "action"), [
    (APPROVED, "approve"), (APPROVED, "hold"), (APPROVED, "reject"), (ACKNOWLEDGED, "send"),
    (REJECTED, "approve"), (PENDING_REVIEW, "send"), ("legacy", "send"), (ACKNOWLEDGED, "reject"),
])
def test_refused_transitions_say_which_state_is_needed(state: str, action: str) -> None:
    with pytest.raises(TransitionError) as info:
        transition(state, action, "B1")
    assert f"cannot {action} batch B1: it is {state}" in str(info.value)


def test_review_setting_decides_the_first_state() -> None:
    assert after_export(True) == PENDING_REVIEW
    assert after_export(False) == APPROVED


def test_submission_state_of_a_study() -> None:
    assert submission_state(None, False, "G9327") == "eligible"
    assert submission_state(None, False, "G9326") == "not_eligible"
    assert submission_state(REJECTED, False, "G9327") == "eligible"
    assert submission_state(PENDING_REVIEW, False, "G9327") == PENDING_REVIEW
    assert submission_state(PENDING_REVIEW, True, "G9327") == "held"
    assert submission_state(ACKNOWLEDGED, False, "G9326") == ACKNOWLEDGED
