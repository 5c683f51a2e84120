"""The pseudonym secret as export state knows it: recorded on first use, another one refused,
``dosereg secret change`` the deliberate way to change it (docs/files.md, De-identification).

Export state keeps the secret's fingerprint (:func:`.deid.secret_fingerprint`, never the
secret) in ``meta.secret_fingerprint``, and the time of the last change in
``meta.pseudonyms_changed_at``: every later batch's manifest carries it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dosereg.conf.config import Config

from .clock import now_stamps
from .deid import Pseudonymizer
from .state import ExportState, export_lock, state_path

log = logging.getLogger("dosereg.export")

SECRET_FINGERPRINT = "secret_fingerprint"  # export state's meta keys
SECRET_RECORDED_AT = "secret_recorded_at"
PSEUDONYMS_CHANGED_AT = "pseudonyms_changed_at"


class SecretChangedError(ValueError):
    """The pseudonym secret is not the one export state recorded: refuse (``dosereg secret change``)."""


def secret_changed_message(cfg: Config, path: Path) -> str:
    name = cfg.site.pseudonym_secret_env
    return (f"the pseudonym secret in environment variable {name} is not the one recorded in {path}: "
            f"with another secret every study submitted again would get a new pseudonym, so the registry "
            f"would count it twice; set the previous secret again, or run `dosereg secret change` to start "
            f"using this one on purpose")


def check_secret(state: ExportState, pseudo: Pseudonymizer, cfg: Config, now: str) -> str | None:
    """Refuse another secret than the recorded one (record it on first use, in the open
    transaction); the time pseudonyms last changed (``dosereg secret change``), or None."""
    recorded = state.meta(SECRET_FINGERPRINT)
    if recorded is None:
        if state.last_batch() is not None:
            log.warning("export: %s recorded no pseudonym secret fingerprint (made by an earlier dosereg): "
                        "recording this secret's; if earlier batches used another, run `dosereg secret change`",
                        state.path)
        state.set_meta(SECRET_FINGERPRINT, pseudo.fingerprint)
        state.set_meta(SECRET_RECORDED_AT, now)
        state.log(None, "secret_recorded", "fingerprint of the pseudonym secret recorded", at=now)
    elif recorded != pseudo.fingerprint:
        raise SecretChangedError(secret_changed_message(cfg, state.path))
    return state.meta(PSEUDONYMS_CHANGED_AT)


def check_recorded(state: ExportState, pseudo: Pseudonymizer, cfg: Config) -> None:
    """Refuse another secret than the recorded one, recording nothing (a preview)."""
    recorded = state.meta(SECRET_FINGERPRINT)
    if recorded is not None and recorded != pseudo.fingerprint:
        raise SecretChangedError(secret_changed_message(cfg, state.path))


def recorded_secret(cfg: Config) -> tuple[str, bool | None]:
    """(the configured secret's fingerprint, whether it is the recorded one: None when none is recorded)."""
    fp = Pseudonymizer.from_config(cfg).fingerprint
    path = state_path(cfg)
    if not path.exists():
        return fp, None
    state = ExportState(path, readonly=True)
    try:
        recorded = state.meta(SECRET_FINGERPRINT)
    finally:
        state.close()
    return fp, None if recorded is None else recorded == fp


def change_secret(cfg: Config, actor: str | None = None) -> str | None:
    """Record the configured secret as the site's (``dosereg secret change``, after confirmation).

    Returns the time pseudonyms changed (every later batch's manifest carries it as
    ``pseudonyms_changed_at``), or None when nothing changed (already the recorded secret, or
    the first secret recorded before any batch).
    """
    fp = Pseudonymizer.from_config(cfg).fingerprint
    with export_lock(cfg):
        state = ExportState(state_path(cfg))
        try:
            state.begin()
            now = now_stamps().iso
            recorded = state.meta(SECRET_FINGERPRINT)
            if recorded == fp:
                return None
            state.set_meta(SECRET_FINGERPRINT, fp)
            state.set_meta(SECRET_RECORDED_AT, now)
            changed = recorded is not None or state.last_batch() is not None
            if changed:
                state.set_meta(PSEUDONYMS_CHANGED_AT, now)
            state.log(None, "secret_change", "pseudonym secret changed: later batches carry new pseudonyms"
                      if changed else "pseudonym secret recorded (no batch before it)", at=now, actor=actor)
            state.commit()
            return now if changed else None
        finally:
            state.rollback()
            state.close()
