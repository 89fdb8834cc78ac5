"""Up-front check of a tool's output *file* (``--json``, ``--out``): refuse a path that could
not be written at the end, before any work starts. Light: no torch."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional


def output_file_problem(path: Path, flag: str) -> Optional[str]:
    """Why ``path`` cannot receive the tool's output file (None if it can).

    The file may exist (it is replaced) or not; its nearest existing ancestor must be a folder
    this process can create files in (tested by creating and removing a temporary file there,
    which answers truthfully for permission bits, read-only file systems and root). Folders
    missing in between are created when the file is written.
    """
    path = Path(path)
    if path.is_dir():
        return f"{flag} {path} is a folder; pass the path of a file, e.g. {path / 'results.json'}"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{flag} {path} exists and cannot be written (permission denied); pass another file"
    probe = path.parent
    while not probe.exists():
        if probe.is_symlink():
            return f"{flag} {path}: {probe} is a symbolic link to a missing target; pass another path"
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{flag} {path} lies under {probe}, which is a file, not a folder; pass another path"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".splitlora-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"{flag} {path}: cannot write in {probe} ({exc.strerror or exc}); pass a path you can write to"
    return None
