"""The run directory and every guarantee about it, in one place.

- **One writer**: ``flock`` on ``<run dir>/.lock`` from before the directory is read until the
  process exits, however it exits (a dead holder's lock is taken over); the file names the
  holder for the message a refused process prints. On a network file system without
  ``flock``, two machines writing one run directory are not detected.
- **Exact resume, same config and data**: a directory holding a run of another config is
  refused (keys absent from its config.yaml count at their defaults; ``RESUMABLE_KEYS`` may
  change); a checkpoint is accepted only with the same config, backbone weights and data.
- **Nothing lost**: atomic writes; ``--force`` moves the previous files aside; a run refused
  before it wrote anything leaves nothing behind; no file of the run is written through a link.
- **Untrusted files read safely**: ``torch.load(weights_only=True)``, no pickled code runs.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .config import RESUMABLE_KEYS, Config, config_from_dict, dump_yaml, flatten, to_dict
from .fileio import (ConfigError, UserError, WriteError, atomic_write_bytes, atomic_write_text,
                     check_output_dir, read_json, read_regular_file, write_json_atomic)

log = logging.getLogger(__name__)

LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"
RUN_FILES = (CHECKPOINT, "metrics.json", "config.yaml", "env.json", "log.txt")
FORMAT_VERSION = 2


class RunDirectoryBusy(UserError):
    """Another process holds the run directory."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not belong to this run."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- identity

def config_changes(previous: dict, cfg: Config) -> tuple[list[str], list[str]]:
    """(changes of keys that may change on resume, changes of the run's identity) from a
    stored config to ``cfg``, as ``key: old -> new``. Keys absent from the stored config are
    taken at their defaults, so a key added to the schema never strands an existing run."""
    try:
        old = flatten(to_dict(config_from_dict(previous)))
    except ConfigError as exc:
        return [], [f"the stored config does not fit this version ({exc})"]
    new = flatten(to_dict(cfg))
    diff = [(k, f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}")
            for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")]
    return ([d for k, d in diff if k in RESUMABLE_KEYS],
            [d for k, d in diff if k not in RESUMABLE_KEYS])


def data_changes(old: dict, new: dict, limit: int = 6) -> list[str]:
    """What differs between two ``Benchmark.identity`` records, one line per kind."""
    def few(items: list[str]) -> str:
        return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")
    changes: list[str] = []
    if old.get("benchmark") != new.get("benchmark"):
        changes.append(f"benchmark {old.get('benchmark')!r} -> {new.get('benchmark')!r}")
    old_classes = [c for t in old.get("task_classes", []) for c in t]
    new_classes = [c for t in new.get("task_classes", []) for c in t]
    added = [c for c in new_classes if c not in set(old_classes)]
    removed = [c for c in old_classes if c not in set(new_classes)]
    changes += [f"classes {word}: {few(items)}" for word, items in
                (("added", added), ("removed", removed)) if items]
    if not added and not removed and old.get("task_classes") != new.get("task_classes"):
        changes.append("the classes are assigned to tasks in another order")
    for split in ("train", "val"):
        a, b = old.get("counts", {}).get(split, {}), new.get("counts", {}).get(split, {})
        diff = [f"{c}: {a[c]} -> {b[c]}" for c in a if c in b and a[c] != b[c]]
        if diff:
            changes.append(f"{split} image counts changed ({len(diff)} classes): {few(diff)}")
        elif not added and not removed and (old.get("files_sha256", {}).get(split)
                                            != new.get("files_sha256", {}).get(split)):
            changes.append(f"{split} file names changed (same counts)")
    return changes


def weights_fingerprint(info: dict) -> tuple:
    """What identifies backbone weights across machines: the source and the file's hash (the
    path of a hub cache or a copied file may differ)."""
    return info.get("source"), info.get("sha256"), info.get("tag") if not info.get("sha256") else None


def read_config(path: Path) -> Optional[dict]:
    """The config.yaml of a run directory as nested dicts (None when absent or unreadable)."""
    try:
        data = yaml.safe_load(read_regular_file(path, "config", 1 << 20, OSError))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def run_status(run_dir: Path, cfg: Config) -> str:
    """``done`` (complete results of this config), ``conflict`` (complete results of another
    config) or ``missing``, from the run directory's files alone."""
    if not read_json(run_dir / "metrics.json").get("complete"):
        return "missing"
    previous = read_config(run_dir / "config.yaml")
    return "done" if previous is not None and not config_changes(previous, cfg)[1] else "conflict"


# --------------------------------------------------------------------------- the directory

@dataclass
class RunState:
    """What the run directory holds for this config, decided before anything is written."""

    mode: str  # fresh | resume | complete
    checkpoint: Optional[dict] = None  # resume: the state after the last completed task
    metrics: Optional[dict] = None  # complete: the results
    changes: list[str] = field(default_factory=list)  # resumable keys changed since


class RunDir:
    """A run directory held by this process. ``open()`` checks the path, takes the lock and
    decides what the directory holds for ``cfg`` (:class:`RunState`), refusing what cannot be
    continued; ``begin()`` starts writing (``--force`` sets the previous run aside, config.yaml
    is written); ``close()`` releases the lock and, when the run never began, removes what
    ``open()`` created."""

    def __init__(self, path: Path, command: Optional[str] = None) -> None:
        self.path, self.command, self.began = Path(path), command, False
        self._fd: Optional[int] = None
        self._created: list[Path] = []  # folders and the lock file made by open()

    # ----------------------------------------------------------------- lock
    def _holder(self) -> str:
        """Who holds (or held) the lock, from the record in its file ("" without one)."""
        holder = read_json(self.path / LOCK, 1 << 16)
        if not holder:
            return ""
        return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
                f"{holder.get('start_time')}" + (f" ({holder['command']})"
                                                 if holder.get("command") else ""))

    def _lock(self) -> None:
        import fcntl
        lock = self.path / LOCK
        try:
            missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
            existed = os.path.lexists(lock)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            reason = ("it holds a symbolic link named .lock" if exc.errno == errno.ELOOP
                      else f"{exc.strerror or exc} ({type(exc).__name__})")
            raise UserError(f"cannot use {self.path} as the run directory: {reason}; pass "
                            "another --output") from None
        self._created = ([] if existed else [lock]) + missing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._created = []
                holder = self._holder() or "another process (no details recorded)"
                raise RunDirectoryBusy(f"run directory {self.path} is in use by {holder}; wait "
                                       "for it to finish, or pass another --output") from None
            raise
        self._fd = fd
        previous = self._holder()
        if previous:
            log.info("took over the lock of %s left by %s (no longer running)", self.path,
                     previous)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "start_time": utc_now(),
                  "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    def close(self) -> None:
        """Release the lock (its file emptied); if the run never began, remove the lock file
        and the folders ``open()`` created (a folder only when empty)."""
        if self._fd is not None:
            import fcntl
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if not self.began:
            for p in self._created:
                try:
                    p.rmdir() if p.is_dir() else p.unlink()
                except OSError:
                    break
        self._created = []

    # ----------------------------------------------------------------- deciding
    def open(self, cfg: Config, resume: bool = False, force: bool = False,
             lock: bool = True) -> RunState:
        """Check the directory, lock it (``lock``: the process that writes) and decide."""
        if resume and force:
            raise ConfigError("--resume and --force contradict each other: --resume continues "
                              f"the run in {self.path}, --force moves its files aside and starts "
                              "again; pass one of them")
        check_output_dir(self.path)
        links = [n for n in RUN_FILES + (LOCK,) if (self.path / n).is_symlink()]
        if links:
            raise WriteError(f"{self.path / links[0]} is a symbolic link; a run directory holds "
                             "only the run's own files (a write there could land outside it). "
                             "Move it away or pass another --output")
        if lock:
            self._lock()
        try:
            return self._decide(cfg, resume, force)
        except BaseException:
            self.close()
            raise

    def _decide(self, cfg: Config, resume: bool, force: bool) -> RunState:
        previous = read_config(self.path / "config.yaml")
        present = {n for n in RUN_FILES if (self.path / n).exists()}
        if previous is None and not force and {"config.yaml", CHECKPOINT, "metrics.json"} & present:
            what = "is not valid YAML" if "config.yaml" in present else "is missing"
            raise ConfigError(f"{self.path} holds run files but its config.yaml {what}, so the "
                              "run there cannot be identified; use another --output, or "
                              "--force to move its files aside and start a new run")
        if previous is not None and not force:
            changes, identity = config_changes(previous, cfg)
            if identity:
                raise ConfigError(
                    f"run directory {self.path} holds a run of a different config ("
                    + "; ".join(identity[:8]) + (" ..." if len(identity) > 8 else "") + "). Pass "
                    "another --output, or --force to replace it. (Keys that may change when a "
                    f"run is continued: {', '.join(RESUMABLE_KEYS)}.)")
            metrics = read_json(self.path / "metrics.json")
            if metrics.get("complete"):
                return RunState("complete", metrics=metrics, changes=changes)
            if (self.path / CHECKPOINT).is_file():
                return RunState("resume", self.load_checkpoint(), changes=changes)
        if resume:
            raise ConfigError(f"--resume: no checkpoint of this config in {self.path} (nothing "
                              "to resume); run without --resume to start it")
        return RunState("fresh")

    def verify(self, state: dict, cfg: Config, weights: dict, data: dict) -> None:
        """Refuse a checkpoint of another config, other backbone weights or other data."""
        source = self.path / CHECKPOINT
        identity = config_changes(state.get("config") or {}, cfg)[1]
        if identity:
            raise CheckpointError(f"checkpoint {source} belongs to another config ("
                                  + "; ".join(identity[:4]) + "); move it away or use another "
                                  "--output")
        if weights_fingerprint(state.get("weights") or {}) != weights_fingerprint(weights):
            raise CheckpointError(f"checkpoint {source} was made from other backbone weights "
                                  f"({state.get('weights')}); this run loads {weights}")
        changes = data_changes(state.get("data") or {}, data)
        if changes:
            raise CheckpointError(f"the data changed since the checkpoint {source} was written: "
                                  + "; ".join(changes) + ". Restore the data the run started "
                                  "with, or start a new run (another --output, or --force to "
                                  "replace this one)")

    # ----------------------------------------------------------------- writing
    def begin(self, cfg: Config, force: bool = False) -> None:
        """The run starts writing: ``force`` moves the previous run's files into
        ``replaced-<UTC time>/`` (nothing is deleted); the resolved config is written."""
        self.began = True
        present = [n for n in RUN_FILES if force and os.path.lexists(self.path / n)]
        if present:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            dest, n = self.path / f"replaced-{stamp}", 1
            while dest.exists():
                n += 1
                dest = self.path / f"replaced-{stamp}-{n}"
            dest.mkdir()
            for name in present:
                os.replace(self.path / name, dest / name)
            log.warning("--force: the previous run's files (%s) were moved to %s; delete that "
                        "folder when you no longer need them", ", ".join(present), dest)
        atomic_write_text(self.path / "config.yaml", dump_yaml(cfg))

    def write_json(self, name: str, data: dict) -> None:
        write_json_atomic(self.path / name, data)

    def save_checkpoint(self, state: dict) -> None:
        """Atomically write ``state`` (tensors, numbers, strings, lists, dicts only)."""
        import torch
        for tmp in self.path.glob(f".{CHECKPOINT}.*.tmp"):  # left by a process killed mid-write
            with contextlib.suppress(OSError):
                tmp.unlink()
        buf = io.BytesIO()
        torch.save(dict(state, format_version=FORMAT_VERSION), buf)
        atomic_write_bytes(self.path / CHECKPOINT, buf.getvalue())

    def load_checkpoint(self) -> dict:
        """The checkpoint, read without executing pickled code; any damage is one error."""
        import torch

        from models import load_error_reason
        path = self.path / CHECKPOINT
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, ...
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({load_error_reason(exc)}). It is damaged or "
                "not a checkpoint of this project; it was left untouched. Move it away to restart "
                "the run from scratch, or point --output at another directory.") from None
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has an unknown format (expected version "
                                  f"{FORMAT_VERSION}); move it away to restart from scratch")
        return state

    def failure_note(self, num_tasks: int) -> str:
        """What a failed write leaves behind: the last checkpoint (read back to prove it)."""
        path = self.path / CHECKPOINT
        if not path.is_file():
            return "no task had completed, so there is no checkpoint yet; fix this and run again"
        try:
            done = self.load_checkpoint().get("tasks_done")
        except CheckpointError:
            return f"the checkpoint {path} cannot be read either"
        return (f"the last checkpoint {path} (after task {done} of {num_tasks}) is intact: fix "
                "this (e.g. free disk space) and run the same command to continue from it")
