"""``dosereg hold``: a pending batch's registry folder rewritten without the held studies.

The folder's ``submission.json`` holds every study as the batch de-identified it, so the
files are rebuilt from it (:meth:`.registry_files.RegistryFiles.add_deidentified`) without the
studies whose pseudonymous UID is held, into ``.rewrite-<batch_id>`` beside it; then the old
folder is moved aside, the new one renamed into place and the old one removed. A batch left
with no study to submit loses its registry folder. The files' hashes in export state follow.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from dosereg.conf.config import Config
from dosereg.conf.fsutil import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, fsync_dir

from .batches import BatchRow
from .deid import Pseudonymizer
from .registry_files import RegistryFiles, write_manifest
from .secret import SecretChangedError, secret_changed_message
from .state import ExportState


def rewrite_without(cfg: Config, state: ExportState, batch: BatchRow, held: Iterable[str]) -> Path | None:
    """Rewrite ``batch``'s registry folder without the studies ``held`` (original UIDs); the
    folder, or None when no study is left in it. Runs in the caller's open transaction."""
    if batch.registry_dir is None:
        return None
    pseudo = Pseudonymizer.from_config(cfg)
    if batch.secret_fingerprint is not None and batch.secret_fingerprint != pseudo.fingerprint:
        raise SecretChangedError(secret_changed_message(cfg, state.path))
    drop = {pseudo.uid(u) for u in held}
    folder = Path(batch.registry_dir)
    doc = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    header = {k: v for k, v in doc.items() if k != "studies"}
    new = folder.with_name(f".rewrite-{batch.batch_id}")
    shutil.rmtree(new, ignore_errors=True)
    os.mkdir(new, PRIVATE_DIR_MODE)
    files = RegistryFiles(new, header, pseudo)
    for study in doc["studies"]:
        if study.get("study_instance_uid") not in drop:
            files.add_deidentified(study)
    rows = files.close()
    state.db.execute("DELETE FROM batch_files WHERE batch_id = ? AND kind = 'registry'", (batch.batch_id,))
    aside = folder.with_name(f".held-{batch.batch_id}")
    if rows is None:
        shutil.rmtree(new, ignore_errors=True)
        os.rename(folder, aside)
        state.db.execute("UPDATE batches SET registry_dir = NULL, registry_studies = 0, registry_events = 0 "
                         "WHERE batch_id = ?", (batch.batch_id,))
        shutil.rmtree(aside, ignore_errors=True)
        return None
    hashes = write_manifest(new, header, rows, manifest.get("pseudonyms_changed_at"))
    for p in new.iterdir():
        os.chmod(p, PRIVATE_FILE_MODE)
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(new)
    os.rename(folder, aside)
    os.rename(new, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(aside, ignore_errors=True)
    state.db.executemany("INSERT OR REPLACE INTO batch_files VALUES (?, 'registry', ?, ?, ?)",
                         [(batch.batch_id, name, sha, size) for name, (sha, size) in hashes.items()])
    state.db.execute("UPDATE batches SET registry_studies = ?, registry_events = ? WHERE batch_id = ?",
                     (rows["studies.parquet"], rows["events.parquet"], batch.batch_id))
    return folder
