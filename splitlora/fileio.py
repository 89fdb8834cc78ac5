"""Atomic file writes: a temporary file in the same folder, flushed, then renamed.

A process killed at any instant leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import WriteError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or -1)
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def atomic_write_bytes(path: Path, data: bytes,
                       before_replace: Optional[Callable[[], None]] = None) -> None:
    """Write ``data`` to ``path`` atomically. A failure to write (full disk, permissions) is a
    :class:`WriteError` naming the file; the previous ``path``, if any, is left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_os_reason(exc)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def check_output_dir(path: Path, what: str = "--output") -> None:
    """Refuse an output folder that cannot be created or written, before anything is written.

    ``path`` may exist (a folder) or not; its nearest existing ancestor must be a writable
    folder (tested by creating and removing a temporary file there: permission bits, read-only
    file systems and root all answer truthfully).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{what} {path} is a file, not a folder; pass a folder for the results")
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise WriteError(f"{what} {path}: {probe} is a symbolic link to a missing target")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(f"{what} {path} lies under {probe}, which is a file, not a folder; "
                         "pass another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".splitlora-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise WriteError(f"{what} {path}: cannot write in {probe} ({_os_reason(exc)}); pass a "
                         "folder you can write to") from None


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when absent, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
