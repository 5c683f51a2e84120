"""The workbench's :class:`~.seams.Batches` and :class:`~.seams.Flags` over the batch lifecycle of
``dosereg.registry_export`` (docs/lifecycle.md): the same functions ``dosereg batches``,
``review``, ``approve``, ``hold``, ``release``, ``reject`` and ``send`` call, so the browser and
the command line can never disagree.

Approving in the browser also starts the send, as ``dosereg send BATCH`` would (spec: the
physicist's approval is the go-ahead), in a thread of its own so that the page answers at
once; the batches page shows where it stands. A refusal of the lifecycle (a wrong state, an
unknown batch or study) is an :class:`~.seams.ActionRefused`, shown as it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from dosereg.conf.config import Config

from .seams import ActionRefused

log = logging.getLogger("dosereg.web")
T = TypeVar("T")


@contextmanager
def _refusals() -> Iterator[None]:
    """The lifecycle's ValueErrors (TransitionError, BatchNotFoundError, unknown studies) as refusals."""
    try:
        yield
    except ValueError as exc:
        raise ActionRefused(str(exc)) from None


class RegistryBatches:
    """:class:`~.seams.Batches` over ``dosereg.registry_export``'s batch functions."""

    def __init__(self, cfg: Config, start_send: Callable[[Config, str, str], None] | None = None) -> None:
        self.cfg = cfg
        self._start_send = start_send or send_in_background

    def all(self) -> list[dict[str, Any]]:
        from dosereg.registry_export import list_batches

        return list(reversed(list_batches(self.cfg)))  # newest first

    def review(self, batch_id: str) -> list[dict[str, Any]]:
        from dosereg.registry_export import review_batch

        with _refusals():
            return review_batch(self.cfg, batch_id)

    def of_study(self, study_uid: str) -> list[dict[str, Any]]:
        from dosereg.registry_export import study_batches

        return [{**b, "state": "held" if b.get("held") else b.get("state")}
                for b in study_batches(self.cfg, study_uid)]

    def approve(self, batch_id: str, by: str, comment: str | None) -> None:
        from dosereg.registry_export import approve

        with _refusals():
            outcome = approve(self.cfg, batch_id, by=by, comment=comment)
        if outcome.state == "approved" and self.cfg.registry.destinations:
            self._start_send(self.cfg, batch_id, by)

    def hold(self, batch_id: str, study_uids: Sequence[str], by: str, reason: str) -> None:
        from dosereg.registry_export import hold

        with _refusals():
            hold(self.cfg, batch_id, list(study_uids), by=by, reason=reason)

    def release(self, study_uids: Sequence[str], by: str) -> None:
        from dosereg.registry_export import release

        with _refusals():
            if not release(self.cfg, list(study_uids), by=by):
                raise ActionRefused("none of these studies is held")

    def reject(self, batch_id: str, by: str, reason: str) -> None:
        from dosereg.registry_export import reject

        with _refusals():
            reject(self.cfg, batch_id, by=by, reason=reason)


class RegistryFlags:
    """:class:`~.seams.Flags` over the flags files (``flags_since``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def since(self, when: str | None) -> list[dict[str, Any]]:
        from dosereg.registry_export import flags_since

        return flags_since(self.cfg, when)  # ValueError for a bad `since`: the API answers 400


def send_batch(cfg: Config, batch_id: str, by: str) -> bool:
    """``dosereg send BATCH`` in this process: True when every destination acknowledged it."""
    from dosereg.ingest import object_rows
    from dosereg.registry_export import send

    result = send(cfg, lambda: object_rows(cfg), batch_id=batch_id, by=by)
    log.info("web: send of batch %s after approval: %s", batch_id, result.summary())
    return bool(result.ok)


def send_in_background(cfg: Config, batch_id: str, by: str) -> None:
    """Start :func:`send_batch` in a daemon thread (failures are logged; the batch stays
    ``failed`` with its reason for the next ``dosereg send``)."""

    def run() -> None:
        try:
            send_batch(cfg, batch_id, by)
        except Exception as exc:  # noqa: BLE001 - a thread has no caller: logged, the state says the rest
            log.warning("web: send of batch %s after approval failed: %s", batch_id, exc)

    threading.Thread(target=run, name=f"dosereg-send-{batch_id}", daemon=True).start()
