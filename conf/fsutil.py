"""Owner-only files and folders for patient data, whatever the process umask.

Everything under the data directory that holds patient data (the catalog and its WAL,
objects, spool, quarantine, reason files, flags, reports, export state) is created with
these helpers: folders 0700, files 0600. The umask can only remove permission bits, so
creating with these modes is never wider than owner-only; an explicit ``chmod`` afterwards
also undoes a umask that removed the owner's own bits. Every stage may import this module
(``dosereg.conf`` depends on nothing else in the project).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` whose newly created folders are 0700; an existing folder is left as it is.

    Missing parents are created 0700 too (owner-only is never the wrong default for a
    folder dosereg creates). Returns ``path`` as a :class:`Path`.
    """
    target = Path(path)
    missing: list[Path] = []
    p = target
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # created by another process meanwhile: theirs to set
        os.chmod(d, PRIVATE_DIR_MODE)
    if not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a folder")
    return target


def private_file(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open(path, flags)`` creating the file 0600; returns the file descriptor.

    The file is set to 0600 even when it already existed (a file dosereg writes is its
    own), so opening an older, wider file tightens it. ``O_CLOEXEC`` is always added.
    """
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if flags & (os.O_WRONLY | os.O_RDWR):
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: str | os.PathLike[str]) -> bool:
    """Create an empty 0600 file unless it exists (e.g. a database before SQLite opens it).

    SQLite creates its ``-wal`` and ``-shm`` files with the mode of the database file, so
    a catalog created here keeps all three owner-only. Returns True when it was created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return True


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a folder, so a rename or a new file in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` with ``data``: a 0600 temporary file, fsync, rename, fsync folder.

    Readers see the old content or the new one, never a part; on failure nothing is left
    behind and the old content (if any) is untouched. The folder must exist (see
    :func:`private_dir`).
    """
    final = Path(path)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    fd = private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(final.parent)
    return final


def is_private(path: str | os.PathLike[str]) -> bool:
    """True when neither group nor others have any permission on ``path``."""
    return os.stat(path).st_mode & 0o077 == 0


def sqlite_stamp(path: str | os.PathLike[str]) -> tuple[tuple[int, int] | None, ...]:
    """What changes whenever an SQLite database in WAL mode changes: (modification time in ns,
    size) of the database file and of its ``-wal`` file, None for one that does not exist."""
    stamp: list[tuple[int, int] | None] = []
    for p in (Path(path), Path(str(path) + "-wal")):
        try:
            st = p.stat()
            stamp.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


def parse_utc(text: str | None) -> datetime | None:
    """An ISO 8601 date or date and time (``Z`` or an offset; a naive one taken as UTC) as an
    aware datetime; None for no text or text that is not one."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def utc_now() -> str:
    """ISO 8601 UTC timestamp with microseconds (``2026-11-25T19:50:00.123456Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = [
    "PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "create_private", "fsync_dir", "is_private", "private_dir",
    "private_file", "utc_now", "write_private",
]
