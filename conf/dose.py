"""``[dose]``: the dose review's own settings (docs/timing-runs.md, docs/dose-review.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DoseSettings:
    """* ``timing_run_max_ctdivol_mgy``: a timing run's CTDIvol is below this (mGy; default the lowest
      adult AAPM Dose Check notification value, adult body 50): a stationary exposure at or above it
      is never a timing run, whatever its shape or name.
    * ``patient_history_days``: the window of a patient's cumulative DLP and effective dose.
    """

    timing_run_max_ctdivol_mgy: float = 50.0
    patient_history_days: int = 365
