"""Delivery of a registry batch to its configured destinations (docs/destinations.md).

Public API:

* :func:`deliver` (destination, parcel, done, stored) -> :class:`Delivery`: one destination,
  one batch, retried within the destination's bounds; never raises for a failure of the
  destination or of the network (the delivery is ``failed`` with its reasons);
* :func:`require_destinations` (config) -> the configured destinations, or
  :class:`NoDestinationError` naming ``registry.destinations``;
* :class:`Parcel` / :class:`ParcelObject`: what is delivered; :class:`Delivery` /
  :class:`Failure`: what came of it; :class:`ManifestError` (raised by :func:`deliver` when
  the batch folder's manifest is unusable: nothing was sent);
* :func:`deidentify` (pydicom dataset, pseudonymizer, precision) -> the PS3.15 Annex E
  de-identified copy sent by ``objects = "deidentified"``; :func:`commitment_result` reads a
  Storage Commitment N-EVENT-REPORT that arrives on another association.

The caller keeps, per destination and batch, the keys acknowledged so far (``done``) and
those stored but not acknowledged (``stored``), and bills only what is acknowledged.
"""

from __future__ import annotations

from dosereg.conf.config import Config, DestinationSettings

from .dicom import deliver_dicom
from .dicom_commit import CommitmentResult, commitment_result
from .dicom_deid import DeidentificationError, deidentify
from .folder import deliver_folder
from .https import deliver_https
from .model import Delivery, DeliveryState, Failure, ManifestError, Parcel, ParcelObject, read_manifest


class NoDestinationError(ValueError):
    """``send`` without any ``[[registry.destinations]]`` configured."""


def require_destinations(cfg: Config) -> tuple[DestinationSettings, ...]:
    """The configured destinations; :class:`NoDestinationError` (naming the key and the file) when none is."""
    if not cfg.registry.destinations:
        raise NoDestinationError(
            f"{cfg.path}: no registry.destinations configured: add a [[registry.destinations]] table "
            f"(kind dicom, https or folder; see docs/destinations.md) before sending"
        )
    return cfg.registry.destinations


def deliver(dest: DestinationSettings, parcel: Parcel, done: frozenset[str] = frozenset(),
            stored: frozenset[str] = frozenset()) -> Delivery:
    """Deliver ``parcel`` to ``dest``, skipping the keys in ``done`` (acknowledged by an earlier
    call: never sent twice) and asking only for the acknowledgement of those in ``stored``.

    Keys: ``dicom``, the original SOP Instance UIDs of ``parcel.objects``; ``https`` and
    ``folder``, the batch folder's file names (``manifest.json`` included). Raises
    :class:`ManifestError` when the batch folder's manifest is unusable (https and folder).
    """
    if dest.kind == "dicom":
        return deliver_dicom(dest, parcel, done, stored)
    manifest = read_manifest(parcel)
    if dest.kind == "https":
        return deliver_https(dest, parcel, manifest, done, stored)
    if dest.kind == "folder":
        return deliver_folder(dest, parcel, manifest, done)
    raise ValueError(f"destination {dest.name}: unknown kind {dest.kind!r}")


__all__ = [
    "CommitmentResult", "DeidentificationError", "Delivery", "DeliveryState", "Failure", "ManifestError",
    "NoDestinationError", "Parcel", "ParcelObject", "commitment_result", "deidentify", "deliver",
    "require_destinations",
]
