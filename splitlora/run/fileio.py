"""Expected failures, and the files the project reads and writes, safely (no torch here).

Writes are atomic (a temporary file renamed over the target: the old file or the new one,
never a torn one) and follow no link; reads accept only regular files of bounded size."""
import contextlib
import errno
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional


class UserError(Exception):
    """A failure of the user's input or environment: one ``error:`` line, with how to fix it."""


class ConfigError(UserError, ValueError):
    """A bad configuration file, key or value."""


class WriteError(UserError, OSError):
    """A file or folder that cannot be written (full disk, no permission, a file in the way)."""


def os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or -1)
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def read_regular_file(path: Path, what: str, limit: int, error: type[Exception],
                      hint: str = "") -> bytes:
    """The bytes of a regular file (or a link to one) of at most ``limit`` bytes; else
    ``error(message)`` saying what the path is instead (missing, a directory, a FIFO, ...)."""
    suffix = f"; {hint}" if hint else ""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} " + ("is a symbolic link to a missing file" if
                                         os.path.islink(path) else "not found") + suffix) from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {os_reason(exc)}{suffix}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)",
                stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise error(f"{what} {path} is {kind}, not a file{suffix}")
    if st.st_size > limit:
        raise error(f"{what} {path} is {st.st_size} bytes, more than the {limit} allowed")
    try:  # O_NONBLOCK: a file swapped for a FIFO meanwhile cannot hang the open
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"{what} {path} is not a regular file")
            return f.read(limit + 1)[:limit]
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {os_reason(exc)}") from None


def read_json(path: Path, limit: int = 64 << 20) -> dict:
    """A JSON object from a regular file; {} when absent, unreadable, too big or no object."""
    try:
        data = json.loads(read_regular_file(Path(path), "file", limit, OSError))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def atomic_replace(path: Path, write: Callable[[Path], None],
                   before_replace: Optional[Callable[[], None]] = None,
                   suffix: str = ".tmp") -> None:
    """``write(tmp)`` creates ``tmp`` beside ``path``, then it is renamed over ``path``; on any
    failure ``tmp`` is removed, ``path`` left as it was and the error propagates."""
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


def atomic_write_bytes(path: Path, data: bytes,
                       before_replace: Optional[Callable[[], None]] = None,
                       suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically and durably, never through a link; else WriteError."""
    def write(tmp: Path) -> None:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_replace(path, write, before_replace, suffix)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {os_reason(exc)}") from None
    with contextlib.suppress(OSError):  # the rename made durable, where the file system allows
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str, suffix: str = ".tmp") -> None:
    atomic_write_bytes(path, text.encode(), suffix=suffix)


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def open_append_no_follow(path: Path):
    """``path`` opened for appending text, refusing a symbolic link (a :class:`WriteError`)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        reason = ("it is a symbolic link; the project writes only files of its own there"
                  if exc.errno == errno.ELOOP else os_reason(exc))
        raise WriteError(f"cannot write {path}: {reason}") from None
    return os.fdopen(fd, "a", encoding="utf-8")


def check_output_dir(path: Path, what: str = "--output") -> None:
    """Refuse an output folder that cannot be created or written: its nearest existing ancestor
    must take a temporary file (the one test true for permissions, read-only mounts, root)."""
    path = probe = Path(path)
    too_long = [part for part in path.parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise WriteError(f"{what} {path}: the name {too_long[0][:40]}... is {len(too_long[0])} "
                         "characters long; file systems allow 255 bytes per name")
    if path.exists() and not path.is_dir():
        raise WriteError(f"{what} {path} is a file, not a folder; pass a folder for the results")
    while not probe.exists():
        if probe.is_symlink():
            raise WriteError(f"{what} {path}: {probe} is a symbolic link to a missing target")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(f"{what} {path} lies under {probe}, which is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(prefix=".splitlora-write-test-", dir=probe):
            pass
    except OSError as exc:
        raise WriteError(f"{what} {path}: cannot write in {probe} ({os_reason(exc)})") from None
