"""Where a batch's files wait, how they are put in place, and how an interrupted batch is repaired.

A batch is written under ``<out>/.staging-<batch_id>/`` (``registry/``, ``flags/``, ``reports/``),
every file owner-only. Once complete, its intent (the batch, its studies and every file's
SHA-256) is committed to export state, and only then are the files placed: the reports,
the billing flags, and the registry folder last (one rename, so a registry folder in place
is always whole). After that a second transaction records the batch as exported.

A crash can stop this at any instant. The next export first repairs each batch still
``writing`` (:func:`repair`):

* none of its billing or registry files placed: **discarded** (its reports removed, its
  staging removed); its studies go into the next batch, evaluated afresh;
* some placed: **completed** from the staging folder (each remaining file that verifies is
  placed) or, when everything was already in place, **adopted**; the studies are then
  recorded as received, so they are never submitted twice nor their flags written twice.
  A flags file in place counts as delivered (billing may have read it); a registry folder
  counts only when every file verifies against the intent's hashes (which are the
  manifest's), else it is moved aside as ``.unverified-<batch_id>`` and its studies are
  submitted again.

``DOSEREG_TEST_CRASH_AT=<point>`` makes the process exit at once (status 137, like
``kill -9``) at the named point: the crash tests use it; nothing else should.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dosereg.conf.fsutil import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, fsync_dir, private_dir

from .state import BatchFile, ExportState, Intent
from .writers import sha256_file

log = logging.getLogger("dosereg.export")

STAGING_PREFIX = ".staging-"
_STAGING_NAME = re.compile(r"^\.staging-\d{8}T\d{6}Z-\d{4,}$")
CRASH_ENV = "DOSEREG_TEST_CRASH_AT"
#: the named instants of an export a test may crash at, in order
CRASH_POINTS = ("after_staging", "after_intent", "after_reports", "after_flags", "after_rename",
                "before_state_commit", "after_state_commit", "repair_after_place", "repair_before_commit")


def crash_point(name: str) -> None:
    """Tests only: exit at once (no clean-up, like ``kill -9``) when ``DOSEREG_TEST_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(137)


def private_folder(path: Path) -> Path:
    """A 0700 folder (created so, or tightened when an older version made it wider)."""
    private_dir(path)
    if path.stat().st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


class Staging:
    """The files of one batch, written under ``<out>/.staging-<batch_id>/`` (0700)."""

    def __init__(self, out: Path, batch_id: str) -> None:
        self.out = out
        self.root = out / f"{STAGING_PREFIX}{batch_id}"
        private_folder(out)
        os.mkdir(self.root, PRIVATE_DIR_MODE)
        os.chmod(self.root, PRIVATE_DIR_MODE)
        self.registry = self.root / "registry"
        self.flags = self.root / "flags"
        self.reports = self.root / "reports"
        for d in (self.registry, self.flags, self.reports):
            os.mkdir(d, PRIVATE_DIR_MODE)

    def make_private(self) -> None:
        """Every staged file 0600 (Arrow and the report writer create theirs with the umask's mode)
        and flushed to disk, before the intent is recorded."""
        for folder in (self.registry, self.flags, self.reports):
            for p in folder.iterdir():
                os.chmod(p, PRIVATE_FILE_MODE)
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(folder)
        fsync_dir(self.root)

    def files(self, registry_hashes: dict[str, tuple[str, int]]) -> list[BatchFile]:
        """Every staged file with its SHA-256 (the registry files' from the manifest)."""
        out = []
        for kind, folder in (("registry", self.registry), ("flags", self.flags), ("report", self.reports)):
            for p in sorted(folder.iterdir(), key=lambda p: (p.suffix != ".html", p.name)):  # the page first
                known = registry_hashes.get(p.name) if kind == "registry" else None
                sha, size = known if known is not None else (sha256_file(p), p.stat().st_size)
                out.append(BatchFile(kind, p.name, sha, size))
        return out

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale_staging(out: Path, keep: Iterable[Path] = ()) -> None:
    """Staging folders left by an export that crashed before recording its intent (we hold the
    export lock, so none is being written); those of intents still to repair are kept."""
    if not out.is_dir():
        return
    kept = {p.resolve() for p in keep}
    for p in out.iterdir():
        if _STAGING_NAME.match(p.name) and p.is_dir() and p.resolve() not in kept:
            log.warning("removing %s left by an interrupted export", p)
            shutil.rmtree(p, ignore_errors=True)


# -- placing --------------------------------------------------------------------------------

@dataclass
class Placed:
    registry_dir: Path | None = None
    flags_paths: list[Path] | None = None
    report_paths: list[Path] | None = None


def place(staging: Staging, facility: str, batch_id: str, files: list[BatchFile]) -> Placed:
    """Rename the finished files into place: reports, flags, then the registry folder last."""
    out = staging.out
    placed = Placed(flags_paths=[], report_paths=[])
    reports = [f for f in files if f.kind == "report"]
    if reports:
        folder = private_folder(out / "reports")
        for f in reports:
            os.replace(staging.reports / f.name, folder / f.name)
            placed.report_paths.append(folder / f.name)  # type: ignore[union-attr]
        fsync_dir(folder)
    crash_point("after_reports")
    flags = [f for f in files if f.kind == "flags"]
    if flags:
        folder = private_folder(out / "flags")
        for i, f in enumerate(sorted(flags, key=lambda f: not f.name.endswith(".csv"))):
            os.replace(staging.flags / f.name, folder / f.name)
            placed.flags_paths.append(folder / f.name)  # type: ignore[union-attr]
            if i == 0:
                fsync_dir(folder)
                crash_point("mid_flags")
        fsync_dir(folder)
    crash_point("after_flags")
    if any(f.kind == "registry" for f in files):
        private_folder(out / "registry")
        parent = private_folder(out / "registry" / facility)
        target = parent / batch_id
        if target.exists():
            raise FileExistsError(f"{target}: a batch with this id already exists")
        os.rename(staging.registry, target)
        fsync_dir(parent)
        placed.registry_dir = target
    crash_point("after_rename")
    return placed


# -- repairing an interrupted batch ---------------------------------------------------------

def _verifies(path: Path, f: BatchFile) -> bool:
    try:
        return path.stat().st_size == f.bytes and sha256_file(path) == f.sha256
    except OSError:
        return False


def _paths(intent: Intent, f: BatchFile) -> tuple[Path, Path]:
    """(staged, final) path of one file of an intent."""
    sub = {"registry": "registry", "flags": "flags", "report": "reports"}[f.kind]
    staged = intent.staging_dir / sub / f.name
    if f.kind == "registry":
        return staged, intent.out_dir / "registry" / intent.facility_id / intent.batch_id / f.name
    return staged, intent.out_dir / sub / f.name


def _registry_dir(intent: Intent) -> Path:
    return intent.out_dir / "registry" / intent.facility_id / intent.batch_id


def repair(state: ExportState, intent: Intent, now: str) -> str:
    """Discard, complete or adopt one interrupted batch (module docstring); returns what was done.

    Runs in the caller's open transaction; the files are moved first, so a crash during the
    repair leaves the batch ``writing`` with more of its files in place, and the next repair
    goes on from there.
    """
    files = intent.files
    flags = [f for f in files if f.kind == "flags"]
    registry = [f for f in files if f.kind == "registry"]
    reg_dir = _registry_dir(intent)
    if not any(_paths(intent, f)[1].exists() for f in flags) and not (registry and reg_dir.exists()):
        for f in files:
            final = _paths(intent, f)[1]
            if f.kind == "report" and _verifies(final, f):
                final.unlink()
        shutil.rmtree(intent.staging_dir, ignore_errors=True)
        what = f"interrupted batch {intent.batch_id} discarded: none of its billing or registry files had been placed"
        state.discard(intent.batch_id, now, what + "; its studies go into the next batch")
        log.warning("export: %s", what)
        return what
    moved = _complete_files(intent, [f for f in files if f.kind != "registry"])
    if registry and not reg_dir.exists():
        staged = intent.staging_dir / "registry"
        if staged.is_dir() and all(_verifies(_paths(intent, f)[0], f) for f in registry):
            private_folder(reg_dir.parent)
            os.rename(staged, reg_dir)
            fsync_dir(reg_dir.parent)
            moved += len(registry)
    crash_point("repair_after_place")
    flags_delivered = any(_paths(intent, f)[1].exists() for f in flags)
    missing = [f.name for f in flags if not _verifies(_paths(intent, f)[1], f)]
    if missing:
        log.error("export: interrupted batch %s: flags file(s) %s missing or changed; the rest counts as "
                  "delivered to billing", intent.batch_id, ", ".join(missing))
    registry_ok = bool(registry) and reg_dir.is_dir() and all(_verifies(_paths(intent, f)[1], f) for f in registry)
    if registry and reg_dir.exists() and not registry_ok:
        aside = reg_dir.with_name(f".unverified-{intent.batch_id}")
        os.rename(reg_dir, aside)
        log.error("export: interrupted batch %s: its registry folder does not verify against the recorded "
                  "hashes; moved to %s, and its studies are submitted again", intent.batch_id, aside)
    how = "completed" if moved else "adopted"
    what = (f"interrupted batch {intent.batch_id} {how}: "
            + ("registry folder verified" if registry_ok else "no registry folder")
            + (", billing flags in place" if flags_delivered else ", no billing flags"))
    # billing rows are kept with the members and written at acknowledgement (no flags file is staged
    # since the lifecycle): recorded, they are delivered
    state.complete(intent.batch_id, reg_dir if registry_ok else None, now, registry=registry_ok or not registry,
                   flags=flags_delivered or not flags, comment=what)
    crash_point("repair_before_commit")
    shutil.rmtree(intent.staging_dir, ignore_errors=True)
    log.warning("export: %s", what)
    return what


def _complete_files(intent: Intent, files: list[BatchFile]) -> int:
    """Place the reports and flags still staged (those that verify); how many were moved."""
    moved = 0
    for f in files:
        staged, final = _paths(intent, f)
        if not final.exists() and _verifies(staged, f):
            private_folder(final.parent)
            os.replace(staged, final)
            fsync_dir(final.parent)
            moved += 1
    return moved
