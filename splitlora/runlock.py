"""One writer per run directory: an exclusive lock held for the whole run.

The lock is ``flock`` on ``<run dir>/.lock`` (light module: no torch import). The kernel
releases it when the holding process exits, however it exits, so a lock left by a dead
process is simply taken over; the file also records who holds it (pid, host, start time)
so that a refused process can say whose run is in its way. ``flock`` is reliable on local
file systems; on network file systems that do not support it, two machines writing one run
directory are not detected.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import socket
from pathlib import Path
from typing import Optional

from .run.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirectoryBusy(UserError):
    """Another process holds the run directory."""


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (no details recorded)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('start_time')}" + (f" ({holder['command']})" if holder.get("command")
                                             else ""))


class RunLock:
    """Exclusive, non-blocking lock on a run directory (a context manager).

    ``acquire()`` creates the directory and the lock file when needed, and raises
    :class:`RunDirectoryBusy` naming the holder when another live process has it.
    :meth:`discard` removes what ``acquire()`` created (for a run refused before it wrote
    anything).
    """

    def __init__(self, run_dir: Path, command: Optional[str] = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command
        self.created_dirs: list[Path] = []  # made by acquire(), deepest first
        self.created_file = False
        self._fd: Optional[int] = None
        self.previous: dict = {}  # what a dead holder had recorded (taken over)

    def _read_holder(self) -> dict:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> "RunLock":
        import fcntl
        try:
            missing = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.created_dirs = missing
            self.created_file = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot use {self.run_dir} as the run directory: "
                            f"{exc.strerror or exc} ({type(exc).__name__}); pass another --output"
                            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryBusy(
                    f"run directory {self.run_dir} is in use by {_describe(self._read_holder())}"
                    "; wait for it to finish, or pass another --output") from None
            raise
        self._fd = fd
        self.previous = self._read_holder()
        if self.previous:
            log.info("took over the lock of %s left by %s (no longer running)", self.run_dir,
                     _describe(self.previous))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "start_time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        """Release the lock; the lock file is emptied (a later holder finds no stale record)."""
        if self._fd is None:
            return
        import fcntl
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def discard(self) -> None:
        """Release, then remove the lock file and the folders if ``acquire()`` created them
        (a folder only when nothing else is in it)."""
        self.release()
        if self.created_file:
            try:
                self.path.unlink()
            except OSError:
                pass
        for folder in self.created_dirs:
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
