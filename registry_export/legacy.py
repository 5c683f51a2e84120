"""Readers of what earlier versions of dosereg stored, and nothing else.

Earlier versions stored a study's registry fingerprint as the first 32 hex digits of the
SHA-256 of the JSON text of its content, without a prefix; today's is
:func:`.fingerprint.content_fingerprint` (``p1:``...). A study submitted by an earlier version
is recognised here, so it is not submitted again merely because the hash changed form.

(Export state's own older layouts -- schema 1 to 3, including the ``:G9327`` mark on input
keys -- are migrated by :mod:`.state`.)
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from .fingerprint import FINGERPRINT_PREFIX, content, json_text
from .state import StudyState


def legacy_fingerprint(d: dict[str, Any]) -> str:
    """The registry fingerprint earlier versions stored for the evaluated study ``d``."""
    return hashlib.sha256(json_text(content(d)).encode("utf-8")).hexdigest()[:32]


def is_legacy(stored: str | None) -> bool:
    return stored is not None and not stored.startswith(FINGERPRINT_PREFIX)


def in_current_form(known: StudyState | None, d: dict[str, Any], fingerprint: str) -> StudyState | None:
    """``known`` with a legacy registry fingerprint put in today's form: ``fingerprint`` when it
    is this content's (the registry has this study as it is), else left as it is (it differs)."""
    if known is None or not is_legacy(known.registry_fingerprint):
        return known
    if known.registry_fingerprint == legacy_fingerprint(d):
        return replace(known, registry_fingerprint=fingerprint)
    return known
