"""What ``dosereg status`` reads: the listener's heartbeat, the spool, the disk (README "Monitoring").

The listener rewrites ``<data_dir>/listener.status.json`` every :data:`HEARTBEAT_EVERY_S`
seconds while it runs (pid, AE title, address, start time, last beat) and marks it stopped
at a clean shutdown. The listener is *up* when the beat is younger than
:data:`STALE_AFTER_S` and its process exists; a killed listener leaves a beat that ages.
The spool is *stuck* when an object has waited there longer than ``stuck_after_s``
(normally objects leave it within a second).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.conf.fsutil import parse_utc, utc_now, write_private

log = logging.getLogger("dosereg.ingest.health")

HEARTBEAT_NAME = "listener.status.json"
HEARTBEAT_EVERY_S = 5.0
STALE_AFTER_S = 30.0
STUCK_AFTER_S = 300.0
#: less free space than this on the data directory's file system needs attention
LOW_DISK_BYTES = 1 << 30


class Heartbeat:
    """A thread that rewrites the heartbeat file until :meth:`stop`."""

    def __init__(self, data_dir: Path, info: dict[str, Any], every_s: float = HEARTBEAT_EVERY_S) -> None:
        self.path = Path(data_dir) / HEARTBEAT_NAME
        self.info = {"pid": os.getpid(), "started_at": utc_now(), **info}
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, state: str) -> None:
        body = {**self.info, "state": state, "heartbeat_at": utc_now()}
        try:
            write_private(self.path, (json.dumps(body) + "\n").encode(), fsync=False)
        except OSError as exc:  # a full disk shows in the spool and in the disk figures too
            log.debug("cannot write %s: %s", self.path, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._write("running")

    def start(self) -> None:
        self._write("running")
        self._thread = threading.Thread(target=self._run, name="dosereg-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._write("stopped")


def _age_s(stamp: Any, now: float) -> float | None:
    when = parse_utc(stamp) if isinstance(stamp, str) else None
    return None if when is None else round(max(0.0, now - when.timestamp()), 3)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def listener_state(data_dir: Path, now: float) -> dict[str, Any]:
    try:
        beat = json.loads((data_dir / HEARTBEAT_NAME).read_text())
    except (OSError, ValueError):
        beat = {}
    if not isinstance(beat, dict):
        beat = {}
    age = _age_s(beat.get("heartbeat_at"), now)
    up = beat.get("state") == "running" and age is not None and age < STALE_AFTER_S and _alive(beat.get("pid"))
    return {
        "up": up, "state": beat.get("state"), "pid": beat.get("pid"), "ae_title": beat.get("ae_title"),
        "address": beat.get("address"), "started_at": beat.get("started_at"),
        "heartbeat_at": beat.get("heartbeat_at"), "heartbeat_age_s": age,
    }


def spool_state(data_dir: Path, now: float, stuck_after_s: float) -> dict[str, Any]:
    oldest: float | None = None
    depth = 0
    try:
        entries = list(os.scandir(data_dir / "spool"))
    except OSError:
        entries = []
    for e in entries:
        if e.name.startswith("."):
            continue  # a temporary file being written
        try:
            mtime = e.stat().st_mtime
        except FileNotFoundError:
            continue  # processed meanwhile
        depth += 1
        oldest = mtime if oldest is None else min(oldest, mtime)
    age = round(max(0.0, now - oldest), 3) if oldest is not None else None
    return {
        "depth": depth,
        "oldest_at": datetime.fromtimestamp(oldest, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if oldest is not None else None,
        "oldest_age_s": age,
        "stuck": age is not None and age > stuck_after_s,
        "stuck_after_s": stuck_after_s,
    }


def disk_state(data_dir: Path) -> dict[str, Any]:
    try:
        usage = shutil.disk_usage(data_dir)
    except OSError:
        return {"free_bytes": None, "total_bytes": None, "low": False}
    return {"free_bytes": usage.free, "total_bytes": usage.total, "low": usage.free < LOW_DISK_BYTES}


def health(cfg: Config, stuck_after_s: float = STUCK_AFTER_S, now: float | None = None) -> dict[str, Any]:
    """Listener, spool and disk of ``cfg``'s data directory, with the problems that need attention."""
    now = time.time() if now is None else now
    data_dir = cfg.data_dir
    listener = listener_state(data_dir, now)
    spool = spool_state(data_dir, now, stuck_after_s)
    disk = disk_state(data_dir)
    problems: list[str] = []
    if not listener["up"]:
        why = ("it stopped" if listener["state"] == "stopped" else
               "no heartbeat" if listener["heartbeat_at"] is None else
               f"its last heartbeat is {listener['heartbeat_age_s']:.0f} s old")
        problems.append(f"listener down ({why})")
    if spool["stuck"]:
        problems.append(f"spool stuck: {spool['depth']} object(s) waiting, the oldest for "
                        f"{spool['oldest_age_s']:.0f} s (more than {stuck_after_s:g} s)")
    if disk["low"]:
        problems.append(f"disk space low: {disk['free_bytes']} bytes free on the data directory's file system")
    return {"data_dir": str(data_dir), "listener": listener, "spool": spool, "disk": disk, "problems": problems}


__all__ = ["HEARTBEAT_NAME", "Heartbeat", "STALE_AFTER_S", "STUCK_AFTER_S", "health"]
