"""What the workbench needs from the batch lifecycle (docs/lifecycle.md), as two protocols.

The web package does not reach into export state: it is handed a :class:`Batches` (the
review queue and its actions) and a :class:`Flags` (the billing flags written on
acknowledgement) when the app is made. Until the lifecycle provides them, the
:class:`Unavailable` stubs answer every call with :class:`NotAvailable`, which the pages show
as a message and the API as ``501 Not Implemented``.

To wire the lifecycle: implement both protocols over ``dosereg.registry_export``'s public
batch functions and pass them to :func:`dosereg.web.create_app` (``batches=``, ``flags=``);
:func:`dosereg.web.lifecycle_seams` is the one place that chooses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class NotAvailable(Exception):
    """This part of the lifecycle is not in this installation yet."""


class ActionRefused(ValueError):
    """The lifecycle refused an action (wrong state, unknown batch): shown to the user as is."""


class Batches(Protocol):
    """The review queue (``all``: ``dosereg batches``; ``review`` / ``approve`` / ``hold`` / ...)."""

    def all(self) -> list[dict[str, Any]]:
        """Every batch, as ``dosereg batches --json`` gives them (newest first)."""
        ...

    def review(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's studies, as ``dosereg review BATCH --json`` gives them."""
        ...

    def of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The batches a study was in (oldest first), each as in :meth:`all` (its state then:
        ``held`` for a held study), for the study page's batch history."""
        ...

    def approve(self, batch_id: str, by: str, comment: str | None) -> None:
        """``pending_review`` -> ``approved``, then the send starts (as ``dosereg send``)."""
        ...

    def hold(self, batch_id: str, study_uids: Sequence[str], by: str, reason: str) -> None: ...

    def release(self, study_uids: Sequence[str], by: str) -> None: ...

    def reject(self, batch_id: str, by: str, reason: str) -> None: ...


class Flags(Protocol):
    """The rows of the flags files (``flags/<batch_id>.csv``), for billing's pick-up."""

    def since(self, when: str | None) -> list[dict[str, Any]]:
        """The rows of every flags file written at or after ``when`` (ISO datetime; None: all),
        in writing order, each with its ``written_at``."""
        ...


_MESSAGE = "the batch lifecycle (review, approval, billing flags) is not available in this installation yet"


class Unavailable:
    """Both protocols, refusing everything with :class:`NotAvailable`."""

    message = _MESSAGE

    def all(self) -> list[dict[str, Any]]:
        raise NotAvailable(_MESSAGE)

    def review(self, batch_id: str) -> list[dict[str, Any]]:
        raise NotAvailable(_MESSAGE)

    def of_study(self, study_uid: str) -> list[dict[str, Any]]:
        raise NotAvailable(_MESSAGE)

    def approve(self, batch_id: str, by: str, comment: str | None) -> None:
        raise NotAvailable(_MESSAGE)

    def hold(self, batch_id: str, study_uids: Sequence[str], by: str, reason: str) -> None:
        raise NotAvailable(_MESSAGE)

    def release(self, study_uids: Sequence[str], by: str) -> None:
        raise NotAvailable(_MESSAGE)

    def reject(self, batch_id: str, by: str, reason: str) -> None:
        raise NotAvailable(_MESSAGE)

    def since(self, when: str | None) -> list[dict[str, Any]]:
        raise NotAvailable(_MESSAGE)
