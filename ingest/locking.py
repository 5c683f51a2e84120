"""Advisory locks: one listener per data directory, and an ``import``'s claims on its spool files.

* ``<data_dir>/listener.lock`` -- the listener holds it while it runs; ``import`` takes it
  only briefly, to process objects a crashed run left in the spool when no listener is
  there to do it.
* Claims -- an ``import`` processes the objects it took in itself (ledger state
  ``importing``). It holds an exclusive ``flock`` on each such spool file from before the
  file appears under its final name until it is done with it. The kernel drops the lock
  when the process dies, however it dies, so whoever finds an ``importing`` file it can
  lock knows at once that its claimant is gone and takes it over (no waiting, no pid that
  may have been reused). Claims are not inherited by forked children (the import's
  process pool): a child closes its copies at fork, so only the claimant holds them.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from dosereg.conf.fsutil import private_dir, private_file


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "listener.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        private_dir(self.path.parent)
        fd = private_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def acquire(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.try_acquire():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# -- claims on spool files ------------------------------------------------------------------
_claims: set[int] = set()
_claims_lock = threading.Lock()


def hold_claim(fd: int) -> None:
    """Lock the open spool file ``fd`` for this process; keep ``fd`` open until :func:`drop_claim`."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
    with _claims_lock:
        _claims.add(fd)


def drop_claim(fd: int) -> None:
    """Give the claim up (the object is processed, or left for the next run)."""
    with _claims_lock:
        _claims.discard(fd)  # before close: a fork meanwhile must not close a reused number
    os.close(fd)


def is_claimed(path: Path) -> bool:
    """True while a live process holds its claim on ``path`` (False also when ``path`` is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False


def _close_claims_in_child() -> None:
    """A forked child must not keep its parent's claims alive after the parent died."""
    for fd in list(_claims):
        try:
            os.close(fd)
        except OSError:
            pass
    _claims.clear()


os.register_at_fork(after_in_child=_close_claims_in_child)
