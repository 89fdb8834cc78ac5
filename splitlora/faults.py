"""Fault-injection points for the resilience tests (inactive unless $SPLITLORA_FAULT is set).

``SPLITLORA_FAULT=pause:<point>[:<n>]`` makes the process print ``SPLITLORA-FAULT-PAUSE <point>``
to stderr the n-th time (default 1) it reaches ``<point>`` and sleep, so a test can kill it
exactly there (point ``checkpoint_write``: the temporary checkpoint is written, not yet renamed).
``SPLITLORA_FAULT=nan_loss:<task>`` turns the first training loss of that task into NaN.
``SPLITLORA_FAULT=enospc:<file name>[:<n>]`` makes the n-th (default 1) atomic write of a file of
that name fail as on a full disk (after part of it was written to the temporary file).
"""
from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path


_visits: dict[str, int] = {}


def _spec() -> tuple[str, str]:
    kind, _, arg = os.environ.get("SPLITLORA_FAULT", "").partition(":")
    return kind, arg


def pause_point(name: str) -> None:
    """Stop here (sleep) when the environment asks for it."""
    kind, arg = _spec()
    if kind != "pause":
        return
    point, _, nth = arg.partition(":")
    if point != name:
        return
    _visits[name] = _visits.get(name, 0) + 1
    if _visits[name] == (int(nth) if nth.isdigit() else 1):
        print(f"SPLITLORA-FAULT-PAUSE {name}", file=sys.stderr, flush=True)
        time.sleep(3600)


def nan_loss_task() -> int:
    """Task whose first loss is poisoned (-1: none)."""
    kind, arg = _spec()
    return int(arg) if kind == "nan_loss" and arg.isdigit() else -1


def write_fault(path: Path) -> None:
    """Raise ENOSPC here when the environment asks for it (see the module docstring)."""
    kind, arg = _spec()
    if kind != "enospc":
        return
    name, _, nth = arg.partition(":")
    if Path(path).name != name:
        return
    key = f"enospc:{name}"
    _visits[key] = _visits.get(key, 0) + 1
    if _visits[key] == (int(nth) if nth.isdigit() else 1):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
