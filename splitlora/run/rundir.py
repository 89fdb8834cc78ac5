"""The run directory and every guarantee about it, in one place.

- **One writer**: ``flock`` on ``<run dir>/.lock`` from before the directory is read until the
  process exits, however it exits (a dead holder's lock is taken over; not detected across
  machines on a network file system without ``flock``).
- **Exact resume**: a run of another config is refused (absent keys at their defaults;
  ``RESUMABLE_KEYS`` may change); a checkpoint needs the same config, weights and data.
- **Nothing lost**: atomic writes; ``--force`` moves the previous files aside; a refused run
  leaves nothing behind; no file of the run is written through a link.
- **Untrusted files read safely**: ``torch.load(weights_only=True)``, no pickled code runs."""
import contextlib
import errno
import io
import json
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from models.backbone import file_kind

from .config import RESUMABLE_KEYS, Config, config_from_dict, dump_yaml, flatten, to_dict
from .fileio import (ConfigError, UserError, WriteError, atomic_write_bytes, atomic_write_text,
                     check_output_dir, read_json, read_regular_file)

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


def config_changes(previous: dict, cfg: Config) -> tuple[list[str], list[str]]:
    """(resumable changes, identity changes) from a stored config to ``cfg``, as ``key: old ->
    new``; absent keys count at their defaults, so a new schema key never strands a run."""
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
    was, now = ([c for t in d.get("task_classes", []) for c in t] for d in (old, new))
    added = [c for c in now if c not in set(was)]
    removed = [c for c in was if c not in set(now)]
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
    """Backbone weights across machines: the source and the file's hash (paths may differ)."""
    return info.get("source"), info.get("sha256"), info.get("tag") if not info.get("sha256") else None


def read_config(path: Path) -> Optional[dict]:
    """The config.yaml of a run directory as nested dicts (None when absent or unreadable)."""
    try:
        data = yaml.safe_load(read_regular_file(path, "config", 1 << 20, OSError))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def run_status(run_dir: Path, cfg: Config) -> str:
    """``done``, ``conflict`` (complete results of another config) or ``missing``."""
    if not read_json(run_dir / "metrics.json").get("complete"):
        return "missing"
    previous = read_config(run_dir / "config.yaml")
    return "done" if previous is not None and not config_changes(previous, cfg)[1] else "conflict"


@dataclass
class RunState:
    """What the run directory holds for this config, decided before anything is written."""

    mode: str  # fresh | resume | complete
    checkpoint: Optional[dict] = None  # resume: the state after the last completed task
    metrics: Optional[dict] = None  # complete: the results
    changes: list[str] = field(default_factory=list)  # resumable keys changed since


class RunDir:
    """A run directory held by this process: ``open()`` locks it and decides (:class:`RunState`),
    ``begin()`` starts writing, ``close()`` unlocks (undoing ``open()`` if it never began)."""

    def __init__(self, path: Path, command: Optional[str] = None) -> None:
        self.path, self.command, self.began = Path(path), command, False
        self._fd: Optional[int] = None
        self._created: list[Path] = []  # folders and the lock file made by open()

    def _holder(self) -> str:
        h = read_json(self.path / LOCK, 1 << 16)  # the record of who holds (or held) the lock
        return (f"pid {h.get('pid')} on host {h.get('host')}, started {h.get('start_time')}"
                + (f" ({h['command']})" if h.get("command") else "")) if h else ""

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
        if previous := self._holder():
            log.info("took over the lock of %s left by %s (no longer running)", self.path, previous)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "start_time": utc_now(),
                  "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    def close(self) -> None:
        """Release the lock; if the run never began, remove what ``open()`` created (if empty)."""
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

    def open(self, cfg: Config, resume: bool = False, force: bool = False,
             lock: bool = True) -> RunState:
        """Check the directory, lock it (``lock``: the process that writes) and decide."""
        if resume and force:
            raise ConfigError(f"--resume and --force contradict each other (continue the run in "
                              f"{self.path}, or set its files aside and start again); pass one")
        check_output_dir(self.path)
        for name, want in [(n, stat.S_ISREG) for n in RUN_FILES + (LOCK,)] + [
                (n, stat.S_ISDIR) for n in ("tensorboard", "wandb")]:  # what the run writes
            mode = os.lstat(self.path / name).st_mode if os.path.lexists(self.path / name) else None
            if mode is not None and not want(mode):
                raise WriteError(f"{self.path / name} is {file_kind(mode)}, not what this run writes "
                                 "there (no link is followed); move it away or pass another --output")
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
            raise ConfigError(f"{self.path} holds run files but its config.yaml {what}: the run "
                              "cannot be identified; use another --output, or --force")
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
            raise ConfigError(f"--resume: nothing to resume in {self.path}; run without --resume")
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
                                  + "; ".join(changes) + ". Restore it, or start a new run "
                                  "(another --output, or --force)")

    def begin(self, cfg: Config, force: bool = False) -> None:
        """Start writing: ``force`` moves the previous run's files into ``replaced-<UTC time>/``."""
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
            raise CheckpointError(f"checkpoint {path} cannot be read ({load_error_reason(exc)}): "
                                  "damaged or not this project's, left untouched; move it away "
                                  "to restart from scratch, or use another --output") from None
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
