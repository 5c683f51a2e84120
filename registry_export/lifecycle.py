"""The batch lifecycle as data: review, transmission, acknowledgement (docs/lifecycle.md).

A batch written by ``dosereg export`` is reviewed by a physicist before anything is sent,
and billing learns of it only once every registry destination acknowledged it::

    pending_review --approve--> approved --send--> sending --> acknowledged
           |                                          \\--> failed --send--> sending ...
           \\--reject--> rejected

Batches written before the lifecycle existed are ``legacy``: listed, never sent, and their
studies offered again. This module is pure: which action is allowed in which state, and
what the state becomes. Export state (:mod:`.state`) records it; the commands apply it.
"""

from __future__ import annotations

from dataclasses import dataclass

PENDING_REVIEW = "pending_review"
APPROVED = "approved"
SENDING = "sending"
FAILED = "failed"
ACKNOWLEDGED = "acknowledged"
REJECTED = "rejected"
LEGACY = "legacy"

STATES = (PENDING_REVIEW, APPROVED, SENDING, FAILED, ACKNOWLEDGED, REJECTED, LEGACY)
# A study is in at most one unfinished batch; export offers it again only after its batch ends.
UNFINISHED = frozenset({PENDING_REVIEW, APPROVED, SENDING, FAILED})
FINISHED = frozenset({ACKNOWLEDGED, REJECTED, LEGACY})

# action -> (the states it may start from, the state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "approve": (frozenset({PENDING_REVIEW}), APPROVED),
    "reject": (frozenset({PENDING_REVIEW}), REJECTED),
    "hold": (frozenset({PENDING_REVIEW}), PENDING_REVIEW),
    "send": (frozenset({APPROVED, FAILED, SENDING}), SENDING),  # SENDING: an interrupted send resumes
    "acknowledge": (frozenset({SENDING, APPROVED}), ACKNOWLEDGED),  # APPROVED: nothing to send
    "fail": (frozenset({SENDING}), FAILED),
}

# What `dosereg studies` says of a study (its record's ``submission.state``).
SUBMISSION_STATES = ("eligible", PENDING_REVIEW, APPROVED, SENDING, FAILED, ACKNOWLEDGED, "held",
                     "not_eligible", "no_dose_report")


class TransitionError(ValueError):
    """An action the batch's state does not allow (the message says which states do)."""


@dataclass(frozen=True)
class Transition:
    action: str
    before: str
    after: str


def transition(state: str, action: str, batch_id: str = "") -> Transition:
    """The state ``action`` leads to from ``state``, or :class:`TransitionError` saying why not."""
    if action not in TRANSITIONS:
        raise TransitionError(f"unknown batch action {action!r}")
    allowed, after = TRANSITIONS[action]
    if state not in allowed:
        which = " or ".join(sorted(allowed))
        name = f"batch {batch_id}" if batch_id else "the batch"
        raise TransitionError(f"cannot {action} {name}: it is {state}, and {action} needs {which}")
    return Transition(action, state, after)


def after_export(review_required: bool) -> str:
    """The state of a batch just written: awaiting review, or approved at once by the site's choice."""
    return PENDING_REVIEW if review_required else APPROVED


def submission_state(batch_state: str | None, held: bool, registry_code: str | None,
                     no_dose_report: bool = False) -> str:
    """``submission.state`` of a study: from its latest batch (if any) and what it is eligible for.

    ``no_dose_report``: a CT exam the PACS or RIS knows of that no dose object arrived for
    (docs/reconcile.md): ``no_dose_report`` unless it is held or in an unfinished batch (its
    G9326 billing row, once acknowledged, is in ``billed_code``)."""
    if held:
        return "held"
    if batch_state in UNFINISHED:
        return batch_state
    if no_dose_report:
        return "no_dose_report"
    if batch_state == ACKNOWLEDGED:
        return batch_state
    return "eligible" if registry_code == "G9327" else "not_eligible"
