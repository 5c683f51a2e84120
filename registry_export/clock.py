"""Export's times, from the one UTC clock of the project (:func:`dosereg.conf.fsutil.utc_now`),
at the second: as batches, manifests and the audit log state them."""

from __future__ import annotations

from dataclasses import dataclass

from dosereg.conf.fsutil import utc_now


@dataclass(frozen=True)
class Stamps:
    iso: str  # 2026-12-02T12:44:50Z (created_at, exported_at, audit log)
    compact: str  # 20261202T124450Z (the first part of a batch id)


def now_stamps() -> Stamps:
    iso = utc_now()[:19] + "Z"  # utc_now: 2026-12-02T12:44:50.123456Z
    return Stamps(iso, iso.replace("-", "").replace(":", ""))
