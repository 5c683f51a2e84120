"""The registry folder of one batch: ``studies.parquet``, ``events.parquet``, ``submission.json``
and ``manifest.json`` (docs/files.md).

:class:`RegistryFiles` is fed the evaluated studies to submit; each is de-identified
(:mod:`.deid`), its implausible values blanked, and given the registry values computed from
the record (phantom-normalised CTDIvol and DLP, body region, SSDE), then written to the three
data files at once. :func:`write_manifest` closes the folder with the SHA-256 of each file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.extract import Event

from . import dosimetry
from .deid import Pseudonymizer, deidentify_study
from .rules import without_implausible
from .writers import (
    EVENT_GROUPS,
    EVENT_SCHEMA,
    STUDY_GROUPS,
    STUDY_SCHEMA,
    ChunkedParquet,
    JsonStudies,
    event_row,
    sha256_file,
    study_row,
)

SUBMISSION_SCHEMA_ID = "dosereg.submission/1"
MANIFEST_SCHEMA_ID = "dosereg.manifest/1"
DATA_FILES = ("studies.parquet", "events.parquet", "submission.json")


def profile_info(rules: Any, cfg: Config) -> dict[str, str | None]:
    """The registry profile's name and version, as the rules loaded it."""
    profile = getattr(rules, "profile", None)
    name = getattr(profile, "name", None)
    version = getattr(profile, "version", None)
    return {
        "name": str(name) if name is not None else cfg.registry.profile,
        "version": str(version) if version is not None else None,
    }


def submission_header(cfg: Config, rules: Any, batch_id: str, created_at: str) -> dict[str, Any]:
    """The members of ``submission.json`` before its studies (``conf/submission.schema.json``)."""
    return {"schema": SUBMISSION_SCHEMA_ID, "facility_id": cfg.site.facility_id, "batch_id": batch_id,
            "created_at": created_at, "profile": profile_info(rules, cfg),
            "date_precision": cfg.registry.date_precision}


def add_registry_values(deid: dict[str, Any], events: list[Event], timing: list[bool]) -> None:
    """Phantom-normalised CTDIvol/DLP, body region and SSDE on each de-identified event."""
    summed: list[float] = []
    for out, ev, is_timing in zip(deid["events"], events, timing, strict=True):
        head = dosimetry.is_head_exam(ev)
        ctdi, dlp = dosimetry.normalised_dose(ev, head)
        out["body_region"] = "head" if head else "body"
        out["normalised_phantom"] = "head16" if head else "body32"  # dosimetry.standard_phantom
        out["normalised_ctdivol_mGy"] = ctdi
        out["normalised_dlp_mGycm"] = dlp
        out["ssde_estimate_mGy"] = dosimetry.ssde_mGy(ev, head)
        if dlp is not None and not is_timing:
            summed.append(dlp)
    # the exact sum (no float noise such as 2002.3900000000003), as the record's own totals
    deid["normalised_total_dlp_mGycm"] = math.fsum(summed) if summed else None


class RegistryFiles:
    """The three data files of one batch's registry folder, fed the evaluated studies to submit.

    Nothing is created before the first study; :meth:`close` says whether there was one.
    """

    def __init__(self, folder: Path, header: dict[str, Any], pseudo: Pseudonymizer) -> None:
        self.folder = folder
        self.header = header
        self.pseudo = pseudo
        self.studies = ChunkedParquet(folder / "studies.parquet", STUDY_SCHEMA, groups=STUDY_GROUPS, typed=study_row)
        self.events = ChunkedParquet(folder / "events.parquet", EVENT_SCHEMA, groups=EVENT_GROUPS, typed=event_row)
        self.submission: JsonStudies | None = None
        # what every row carries before the record's own fields
        self.prefix = {"facility_id": header["facility_id"], "batch_id": header["batch_id"],
                       "registry_profile": header["profile"], "date_precision": header["date_precision"]}

    def add(self, d: dict[str, Any], events: Sequence[Event] | None = None) -> None:
        """One evaluated study (``events``: its Event objects, rebuilt from ``d`` when not given)."""
        if self.submission is None:
            self.submission = JsonStudies(self.folder / "submission.json", self.header)
        if (d.get("completeness") or {}).get("implausible"):
            # implausible values never reach the registry (null in their place), nor do the
            # registry values computed from them: the events are rebuilt from the blanked copy
            d = without_implausible(d)
            events = None
        deid = deidentify_study(d, self.pseudo, self.header["date_precision"])
        if events is None or len(events) != len(deid["events"]):
            events = [Event.from_dict(e) for e in d.get("events") or ()]
        add_registry_values(deid, list(events), [e["is_timing_run"] for e in deid["events"]])
        self.add_deidentified({**self.prefix, **deid})

    def add_deidentified(self, deid: dict[str, Any]) -> None:
        """One study as :meth:`add` made it (de-identified, with the batch's fields first): what
        ``submission.json`` holds, so ``dosereg hold`` rewrites the files from it."""
        if self.submission is None:
            self.submission = JsonStudies(self.folder / "submission.json", self.header)
        self.submission.append(deid)
        self.studies.append_nested(deid)  # the schema's columns: "events" is left out
        pseudo_uid = deid["study_instance_uid"]
        for i, ev in enumerate(deid["events"]):
            self.events.append_nested({**ev, "study_instance_uid": pseudo_uid, "event_index": i})

    def close(self) -> dict[str, int] | None:
        """Finish the files: their row counts, or None when no study was added (and no file is left)."""
        self.studies.close()
        self.events.close()
        if self.submission is None:
            for name in DATA_FILES:
                (self.folder / name).unlink(missing_ok=True)
            return None
        self.submission.close()
        return {"studies.parquet": self.studies.rows, "events.parquet": self.events.rows,
                "submission.json": self.submission.rows}


def write_manifest(folder: Path, header: dict[str, Any], rows: dict[str, int],
                   pseudonyms_changed_at: str | None) -> dict[str, tuple[str, int]]:
    """``manifest.json``; (SHA-256, bytes) of each registry file, the manifest's own included."""
    files = []
    hashes: dict[str, tuple[str, int]] = {}
    for name, count in rows.items():
        p = folder / name
        sha, size = sha256_file(p), p.stat().st_size
        files.append({"name": name, "rows": count, "bytes": size, "sha256": sha})
        hashes[name] = (sha, size)
    manifest = {"schema": MANIFEST_SCHEMA_ID, "facility_id": header["facility_id"], "batch_id": header["batch_id"],
                "created_at": header["created_at"], "files": files,
                # set once `dosereg secret change` has been run: pseudonyms from before that time
                # and from this batch differ for the same study
                "pseudonyms_changed_at": pseudonyms_changed_at}
    data = (json.dumps(manifest, indent=1, allow_nan=False) + "\n").encode("utf-8")
    (folder / "manifest.json").write_bytes(data)
    hashes["manifest.json"] = (hashlib.sha256(data).hexdigest(), len(data))
    return hashes
