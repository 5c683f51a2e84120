"""Effective-dose estimates from DLP (docs/dose-review.md): AAPM Report 96 k-factors.

E ~ k x DLP, with the adult k-factor (mSv per mGy.cm) of the scanned region (AAPM Report 96,
2008, Table 4 (adult); the values the domain's literature cites): head 0.0021, head and neck
0.0031, neck 0.0059, chest 0.014, abdomen and pelvis 0.015, trunk 0.015. The factors assume
DLP on the 16 cm phantom for the head and the 32 cm phantom otherwise, so DLP is normalised
first (:func:`.dosimetry.normalised_dose`). An estimate for a reference adult, never a patient's
dose: the report labels it so.
"""

from __future__ import annotations

import re
from functools import lru_cache

from dosereg.extract import Event

from . import dosimetry

__all__ = ["K_FACTORS", "effective_dose_mSv", "k_factor"]

#: AAPM Report 96 adult k-factors, mSv / (mGy.cm)
K_FACTORS = {"head": 0.0021, "head and neck": 0.0031, "neck": 0.0059, "chest": 0.014,
             "abdomen and pelvis": 0.015, "trunk": 0.015}

_HEAD_AND_NECK = re.compile(r"head.{0,5}neck", re.IGNORECASE)
_NECK = re.compile(r"\b(neck|cervical|c-spine|thyroid|larynx|pharynx)\b", re.IGNORECASE)
_CHEST = re.compile(r"\b(chest|thorax|thoracic|lungs?|heart|cardiac|coronary|mediastinum)\b", re.IGNORECASE)
_ABDOMEN = re.compile(r"\b(abdomen|abdominal|pelvis|pelvic|liver|kidneys?|renal|colon|bladder|pancreas|"
                      r"lumbar|abd|pel)\b", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _region_of_text(text: str) -> str | None:
    if _HEAD_AND_NECK.search(text):
        return "head and neck"
    chest, abdomen = _CHEST.search(text), _ABDOMEN.search(text)
    if chest and abdomen:
        return "trunk"
    if chest:
        return "chest"
    if abdomen:
        return "abdomen and pelvis"
    if _NECK.search(text):
        return "neck"
    return None


def k_factor(event: Event, head: bool | None = None) -> tuple[str, float]:
    """(region, k) for the event: a head exam (:func:`.dosimetry.is_head_exam`) is ``head``
    unless its target region says head and neck; a body exam takes its target region's
    meaning (neck, chest, abdomen and pelvis, both: trunk), else trunk."""
    if head is None:
        head = dosimetry.is_head_exam(event)
    meaning = event.target_region.meaning if event.target_region is not None else None
    region = _region_of_text(meaning) if isinstance(meaning, str) and meaning else None
    if head:
        region = "head and neck" if region == "head and neck" else "head"
    else:
        region = region or "trunk"
    return region, K_FACTORS[region]


def effective_dose_mSv(event: Event, head: bool | None = None) -> float | None:
    """k x DLP on the standard phantom (mSv), or None when DLP cannot be normalised."""
    if head is None:
        head = dosimetry.is_head_exam(event)
    _, dlp = dosimetry.normalised_dose(event, head)
    if dlp is None or not dlp == dlp:
        return None
    return k_factor(event, head)[1] * dlp
