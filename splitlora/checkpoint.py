"""Per-task checkpoints: atomic writes, safe reads.

The file holds only tensors, numbers, strings, lists and dicts, so it is read with
``torch.load(weights_only=True)``: no pickled code from a file is ever executed. It is
written to a temporary file in the run directory, flushed to disk and renamed over the old
one, so a kill at any instant leaves either the old or the new checkpoint, never a broken one.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from models import load_error_reason

from .run.errors import UserError
from .run.fileio import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not belong to this run."""


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary checkpoint files left by a process killed while writing."""
    for tmp in run_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Atomically write ``state`` to ``run_dir/checkpoint.pt``."""
    path = run_dir / CHECKPOINT_NAME
    remove_stale_temporaries(run_dir)
    buf = io.BytesIO()
    torch.save(dict(state, format_version=FORMAT_VERSION), buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely; any damage is a :class:`CheckpointError` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({load_error_reason(exc)}). It is "
            "damaged or not a checkpoint of this project; it was left untouched. Move it away to "
            "restart the run from scratch, or point --output at another directory.") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format (expected version "
                              f"{FORMAT_VERSION}); move it away to restart from scratch")
    return state
