"""Logging of a run: the console at once, ``log.txt`` once the inputs are validated.

Records are buffered until :func:`attach_log_file`, so that log.txt receives the whole run
but nothing is written before the run directory is known to be good. Light module (no torch).
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from .run.errors import WriteError


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging now; records are also buffered until :func:`attach_log_file`, so that
    log.txt receives the whole run but nothing is written before the inputs are validated."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_splitlora", False):
            root.removeHandler(h)
            h.close()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    buffer._splitlora_buffer = True  # type: ignore[attr-defined]
    for h in (console, buffer):
        h._splitlora = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)


class _LogFile(logging.FileHandler):
    """log.txt. A failed write (a full disk) warns once on stderr, not a traceback per record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); "
                             "log records now go to the console only\n")


def attach_log_file(path: Path) -> None:
    """Send logging to ``path`` (appending), starting with the buffered records."""
    root = logging.getLogger()
    try:
        fh = _LogFile(path, mode="a")
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh._splitlora = True  # type: ignore[attr-defined]
    for h in list(root.handlers):
        if getattr(h, "_splitlora_buffer", False):
            h.setTarget(fh)
            h.flush()
            root.removeHandler(h)
            h.close()
    root.addHandler(fh)


def log_to_file(message: str) -> None:
    """Append ``message`` (an error) to the run's log.txt when this session attached it."""
    record = logging.LogRecord("splitlora", logging.ERROR, __file__, 0, message, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)
