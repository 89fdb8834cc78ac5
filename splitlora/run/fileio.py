"""Atomic file writes: a temporary file in the same folder, flushed, then renamed.

A process killed at any instant leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import WriteError


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or -1)
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_replace(path: Path, write: Callable[[Path], None],
                   before_replace: Optional[Callable[[], None]] = None,
                   suffix: str = ".tmp") -> None:
    """Make a new ``path`` through ``write(tmp)``, which creates the file (or link) ``tmp``
    beside it, then rename ``tmp`` over ``path``. On any failure ``tmp`` is removed and
    ``path`` is left as it was; errors propagate unchanged."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
    try:
        write(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _write_file(tmp: Path, data: bytes) -> None:
    """A new file holding ``data``, flushed to disk (its mode follows the umask)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes,
                       before_replace: Optional[Callable[[], None]] = None,
                       suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically and durably. A failure to write (full disk,
    permissions) is a :class:`WriteError` naming the file; the previous ``path``, if any, is
    left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_replace(path, lambda tmp: _write_file(tmp, data), before_replace, suffix)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_os_reason(exc)}") from None
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, suffix: str = ".tmp") -> None:
    atomic_write_bytes(path, text.encode(), suffix=suffix)


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _check_names(path: Path, what: str) -> None:
    too_long = [part for part in path.parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise WriteError(f"{what} {path}: the name {too_long[0][:40]}... is {len(too_long[0])} "
                         "characters long; file systems allow 255 bytes per name")


def _check_writable_from(path: Path, start: Path, what: str) -> None:
    """The nearest existing ancestor of ``start`` (itself included) must be a folder this
    process can create files in (tested by creating and removing a temporary file there:
    permission bits, read-only file systems and root all answer truthfully)."""
    probe = start
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
                         "path you can write to") from None


def check_output_dir(path: Path, what: str = "--output") -> None:
    """Refuse an output folder that cannot be created or written, before anything is written.
    ``path`` may exist (a folder) or not."""
    path = Path(path)
    _check_names(path, what)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{what} {path} is a file, not a folder; pass a folder for the results")
    _check_writable_from(path, path, what)


def check_output_file(path: Path, what: str) -> None:
    """Refuse a path that could not receive a tool's output file (``--json``, ``--out``)
    before the work starts. The file may exist (it is replaced) or not; missing folders in
    between are created when it is written."""
    path = Path(path)
    _check_names(path, what)
    if path.is_dir():
        raise WriteError(f"{what} {path} is a folder; pass the path of a file, e.g. "
                         f"{path / 'results.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise WriteError(f"{what} {path} exists and cannot be written (permission denied); pass "
                         "another file")
    _check_writable_from(path, path.parent, what)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when absent, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
