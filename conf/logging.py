"""``[logging]`` (docs/configuration.md, "Logging"): a log file beside stderr, its level and rotation.

stderr keeps what ``-v``/``-vv`` ask for (warnings by default); the file, when set, gets
``level`` and above whatever the command line says, so a listener run by systemd keeps its
INFO lines without ``-v``. Rotation by size is built in (``rotate_bytes``, ``keep`` old
files); ``rotate_bytes = 0`` leaves rotation to logrotate (deploy/logrotate.d/dosereg): the
file is reopened when logrotate has moved it away.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class LoggingSettings:
    file: str = ""  # empty: stderr only; relative paths are relative to the working directory
    level: str = "INFO"  # of the file; DEBUG may contain patient identifiers
    rotate_bytes: int = 10485760  # rotate when the file reaches this size; 0: logrotate rotates it
    keep: int = 5  # rotated files kept (<file>.1 ... <file>.<keep>)


def parse_logging(data: Any, base: LoggingSettings, where: Path) -> LoggingSettings:
    """The ``[logging]`` table of ``where`` (unknown keys and wrong types name the key and the file)."""
    from .config import ConfigError, _section

    section: LoggingSettings = _section(LoggingSettings, data, base, "logging", where)
    if section.level.upper() not in LEVELS:
        raise ConfigError(f"{where}: logging.level must be one of {', '.join(LEVELS)}, not {section.level!r}")
    if section.rotate_bytes < 0 or section.keep < 0:
        key = "rotate_bytes" if section.rotate_bytes < 0 else "keep"
        raise ConfigError(f"{where}: logging.{key} must be 0 or more, not {getattr(section, key)!r}")
    return section


class _Private:
    """Opens (and, after a rotation, re-creates) the log file owner-only whatever the umask:
    DEBUG lines may name patients, and every file holding patient data is owner-only."""

    baseFilename: str
    mode: str
    encoding: str | None
    errors: str | None

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


class _RotatingFile(_Private, logging.handlers.RotatingFileHandler):
    pass


class _WatchedFile(_Private, logging.handlers.WatchedFileHandler):
    pass


def file_handler(settings: LoggingSettings, rotate: bool = True) -> logging.Handler | None:
    """The handler ``settings`` ask for (None: no file). OSError when the file cannot be opened.

    ``rotate=False``: a second process writing the same file (the listener's processing
    process) reopens it when the first has rotated it, and never rotates it itself.
    """
    if not settings.file:
        return None
    path = Path(settings.file)
    handler: logging.Handler
    if settings.rotate_bytes and rotate:
        handler = _RotatingFile(path, maxBytes=settings.rotate_bytes, backupCount=settings.keep, encoding="utf-8")
    else:
        handler = _WatchedFile(path, encoding="utf-8")
    handler.setLevel(settings.level.upper())
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


_active: tuple[int, LoggingSettings] | None = None


def add_file(settings: LoggingSettings, rotate: bool = True) -> logging.Handler | None:
    """Log to ``settings.file`` too, at its level; stderr keeps the level it had. OSError: cannot open it."""
    global _active
    handler = file_handler(settings, rotate)
    if handler is None:
        return None
    root = logging.getLogger()
    console = root.level
    for h in root.handlers:
        if h.level < console:
            h.setLevel(console)
    root.addHandler(handler)
    root.setLevel(min(console, handler.level))
    _active = (console, settings)
    return handler


def logging_setup() -> tuple[int, LoggingSettings | None]:
    """(stderr's level, the log file's settings) of this process: what a child process repeats."""
    if _active is not None:
        return _active
    return logging.getLogger("dosereg").getEffectiveLevel(), None


__all__ = ["FORMAT", "LEVELS", "LoggingSettings", "add_file", "file_handler", "logging_setup", "parse_logging"]
