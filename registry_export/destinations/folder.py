"""``kind = "folder"``: the batch folder copied into a drop folder (docs/destinations.md).

The files land in ``<path>/<facility_id>/<batch_id>/``: each manifest file is copied under a
temporary name (hashed while copied), fsynced and renamed into place, ``manifest.json``
last, the folder fsynced; then every file is read back and its SHA-256 compared with the
manifest's. A reader that waits for ``manifest.json`` therefore sees a complete batch. The
receipt is the SHA-256 of ``manifest.json``. Files are owner-only (they hold a limited data
set): the program that picks them up runs as the same user.
"""

from __future__ import annotations

import os
from pathlib import Path

from dosereg.conf.config import DestinationSettings
from dosereg.conf.fsutil import fsync_dir, private_dir, private_file, write_private

from ..writers import sha256_file
from .common import BLOCK, HashingReader, attempts, error_text, log
from .model import MANIFEST_NAME, Delivery, Failure, Manifest, Parcel


class _LocalFileChanged(Exception):
    """The batch folder's file is not what its manifest says: copying again cannot help."""


def _copy(source: Path, final: Path, sha256: str, size: int) -> None:
    """Copy ``source`` to ``final`` through a temporary name in the same folder (fsynced, then renamed)."""
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    with open(source, "rb") as src:
        reader = HashingReader(src)
        fd = private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            while True:
                block = reader.read(BLOCK)
                if not block:
                    break
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
    if reader.hexdigest() != sha256 or reader.count != size:
        tmp.unlink(missing_ok=True)
        raise _LocalFileChanged(f"{source.name}: the batch folder's file differs from its manifest "
                                f"({reader.count} bytes, SHA-256 {reader.hexdigest()[:12]}...)")
    os.replace(tmp, final)


def _in_place(path: Path, sha256: str, size: int) -> bool:
    try:
        return path.stat().st_size == size and sha256_file(path) == sha256
    except OSError:
        return False


class _Attempt:
    def __init__(self, parcel: Parcel, manifest: Manifest, target: Path) -> None:
        self.parcel, self.manifest, self.target = parcel, manifest, target
        self.failures: dict[str, Failure] = {}

    def run(self, todo: set[str]) -> set[str]:
        """Place what ``todo`` names; the keys read back equal to the manifest."""
        placed: list[tuple[str, str, int]] = []
        for f in self.manifest.files:
            if f.name not in todo:
                continue
            final = self.target / f.name
            try:
                if not _in_place(final, f.sha256, f.bytes):
                    _copy(self.parcel.registry_dir / f.name, final, f.sha256, f.bytes)
                placed.append((f.name, f.sha256, f.bytes))
            except _LocalFileChanged as exc:
                self.failures[f.name] = Failure(f.name, str(exc), retryable=False)
            except OSError as exc:
                self.failures[f.name] = Failure(f.name, f"cannot copy {f.name}: {error_text(exc)}")
        fsync_dir(self.target)
        done = {name for name, sha, size in placed if self._check(name, sha, size)}
        files_done = all(f.name in done or f.name not in todo for f in self.manifest.files)
        if MANIFEST_NAME in todo and files_done and not self.failures:
            final = self.target / MANIFEST_NAME
            if not _in_place(final, self.manifest.sha256, len(self.manifest.data)):
                write_private(final, self.manifest.data)  # temporary name, fsync, rename, fsync folder
            if self._check(MANIFEST_NAME, self.manifest.sha256, len(self.manifest.data)):
                done.add(MANIFEST_NAME)
        return done

    def _check(self, name: str, sha256: str, size: int) -> bool:
        if _in_place(self.target / name, sha256, size):
            self.failures.pop(name, None)
            return True
        self.failures[name] = Failure(name, f"{name} read back from the drop folder differs from the manifest")
        return False


def deliver_folder(dest: DestinationSettings, parcel: Parcel, manifest: Manifest, done: frozenset[str]) -> Delivery:
    """Place the batch in the drop folder; acknowledged when every file reads back as the manifest says."""
    todo = set(manifest.keys - done)
    acknowledged: set[str] = set()
    failures: dict[str, Failure] = {}
    last_error: str | None = None
    tried = 0
    target = Path(dest.path) / parcel.facility_id / parcel.batch_id
    if not todo:  # placed by an earlier call: nothing is copied again
        return Delivery(destination=dest.name, kind="folder", state="acknowledged", receipt=manifest.sha256,
                        acknowledged=frozenset())
    for tried in attempts(dest):  # noqa: B007 -- the count is reported
        attempt = _Attempt(parcel, manifest, target)
        try:
            private_dir(target)
            got = attempt.run(todo)
        except OSError as exc:
            last_error = f"drop folder {target}: {error_text(exc)}"
            failures = {k: Failure(k, last_error) for k in todo}
            continue
        acknowledged |= got
        todo -= got
        failures = attempt.failures
        if not todo or not any(f.retryable for f in failures.values()):
            break
        last_error = next(iter(failures.values())).reason if failures else last_error
    complete = not todo
    if failures and not complete:
        last_error = next(iter(failures.values())).reason
    log.info("destination %s (folder): batch %s %s, %d files placed", dest.name, parcel.batch_id,
             "acknowledged" if complete else "failed", len(acknowledged))
    return Delivery(
        destination=dest.name, kind="folder", state="acknowledged" if complete else "failed",
        receipt=manifest.sha256 if complete else None, acknowledged=frozenset(acknowledged),
        failures=() if complete else tuple(failures[k] for k in sorted(failures)),
        last_error=None if complete else last_error, attempts=tried,
    )


__all__ = ["deliver_folder"]
