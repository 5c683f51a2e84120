"""What a delivery takes (:class:`Parcel`) and gives back (:class:`Delivery`), and the batch's manifest.

A *key* is what one destination acknowledges one by one, so that a later call skips what is
already acknowledged (a re-run never sends twice): for ``dicom`` the original SOP Instance
UID of each dose object, for ``https`` and ``folder`` the name of each file of the batch
folder (the manifest's files and ``manifest.json`` itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..deid import Pseudonymizer

DeliveryState = Literal["acknowledged", "failed", "pending_commitment"]
MANIFEST_NAME = "manifest.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class ParcelObject:
    """One dose object of the batch, as the catalog stored it (original, identified)."""

    study_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path


@dataclass(frozen=True)
class Parcel:
    """One batch to deliver: its registry folder (files + ``manifest.json``) and its dose objects.

    ``pseudonymizer`` must be the batch's (the one that wrote its registry files), so that
    a de-identified object carries the same pseudonyms as the study's registry row.
    """

    facility_id: str
    batch_id: str
    registry_dir: Path
    objects: tuple[ParcelObject, ...]
    pseudonymizer: Pseudonymizer
    date_precision: str


@dataclass(frozen=True)
class Failure:
    """A key this call could not get acknowledged, and why (never a secret, never patient data
    beyond the key itself)."""

    key: str
    reason: str
    status: int | None = None  # the HTTP status, the DIMSE status or the commitment Failure Reason
    retryable: bool = True  # False: sending again cannot help (a refused object, a corrupt file)


@dataclass(frozen=True)
class Delivery:
    """The outcome of one :func:`deliver` call for one destination.

    ``acknowledged`` holds the keys acknowledged *by this call* (the caller adds them to what
    it passed as ``done``); ``state`` is ``acknowledged`` once every key of the parcel that
    this destination takes is in ``done`` or ``acknowledged``. ``stored`` holds keys that were
    transferred but not yet acknowledged (a DICOM object stored but not committed): pass them
    back as ``stored`` so a later call asks for the acknowledgement without sending again.
    """

    destination: str
    kind: str
    state: DeliveryState
    receipt: str | None  # https: the registry's receipt_id; folder: the manifest's SHA-256; dicom: see dicom.py
    acknowledged: frozenset[str]
    stored: frozenset[str] = frozenset()
    skipped: tuple[tuple[str, str], ...] = ()  # (key, why this destination does not take it)
    failures: tuple[Failure, ...] = ()
    last_error: str | None = None
    transaction_uid: str | None = None  # dicom with storage commitment: the last N-ACTION's
    attempts: int = 0


@dataclass(frozen=True)
class ManifestFile:
    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a batch folder: its files, and its own bytes and SHA-256 (the commit
    body and the folder receipt)."""

    files: tuple[ManifestFile, ...]
    data: bytes
    sha256: str
    keys: frozenset[str] = field(default_factory=frozenset)


class ManifestError(ValueError):
    """The batch folder's manifest is missing, unreadable or does not describe this batch."""


def _file(entry: object, i: int, where: Path) -> ManifestFile:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: files[{i}] is not an object")
    name, sha, size = entry.get("name"), entry.get("sha256"), entry.get("bytes")
    if (not isinstance(name, str) or not name or name in (".", "..", MANIFEST_NAME) or "/" in name
            or "\\" in name or "\0" in name):
        raise ManifestError(f"{where}: files[{i}].name {name!r} is not a plain file name")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ManifestError(f"{where}: files[{i}].sha256 is not a lower-case hex SHA-256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: files[{i}].bytes is not a size")
    return ManifestFile(name, sha, size)


def read_manifest(parcel: Parcel) -> Manifest:
    """The parcel's manifest, checked: plain unique file names, SHA-256 hex, the parcel's batch."""
    where = parcel.registry_dir / MANIFEST_NAME
    try:
        with open(where, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_MANIFEST_BYTES:  # (read(n) would allocate n bytes at once)
                raise ManifestError(f"{where}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            data = fh.read()
    except OSError as exc:
        raise ManifestError(f"{where}: cannot read the manifest: {exc.strerror}") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise ManifestError(f"{where}: the manifest is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ManifestError(f"{where}: the manifest has no files list")
    for key, expected in (("facility_id", parcel.facility_id), ("batch_id", parcel.batch_id)):
        if key in doc and doc[key] != expected:
            raise ManifestError(f"{where}: the manifest's {key} is {doc[key]!r}, not the parcel's {expected!r}")
    files = tuple(_file(e, i, where) for i, e in enumerate(doc["files"]))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: the manifest lists a file twice")
    return Manifest(files, data, hashlib.sha256(data).hexdigest(), frozenset([*names, MANIFEST_NAME]))


__all__ = [
    "MANIFEST_NAME", "Delivery", "DeliveryState", "Failure", "Manifest", "ManifestError", "ManifestFile",
    "Parcel", "ParcelObject", "read_manifest",
]
