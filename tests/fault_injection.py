"""Test-only fault injection: the project's code never looks for faults.

A fault spec is one of

- ``pause:checkpoint_write[:n]`` -- the n-th (default 1) checkpoint write prints
  ``SPLITLORA-FAULT-PAUSE checkpoint_write`` to stderr and sleeps once its temporary file is
  complete, before the rename, so that a test can kill the process exactly there;
- ``enospc:<file name>[:n]`` -- the n-th atomic write of a file of that name fails as on a
  full disk (the temporary file was written, the rename never happens);
- ``nan_loss:<task>`` -- the first training loss of that task is NaN.

In this process: ``with injected(spec): ...`` patches the loaded modules and undoes it.
In a subprocess: :func:`subprocess_env` returns the environment that puts
``tests/fault_env/sitecustomize.py`` on the path, which patches the modules as they import.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

ENV = "SPLITLORA_FAULT"
WRITE_MODULES = ("splitlora.run.fileio", "splitlora.run.rundir")  # where the writes are made
ENGINE = "splitlora.engine"  # where the training loss is computed
SITE = Path(__file__).resolve().parent / "fault_env"


def _parse(spec: str) -> tuple[str, str, int]:
    kind, _, rest = spec.partition(":")
    arg, _, nth = rest.partition(":")
    if kind not in ("pause", "enospc", "nan_loss") or not arg:
        raise ValueError(f"bad fault spec {spec!r}")
    return kind, arg, int(nth) if nth.isdigit() else 1


def _write_wrapper(original: Callable, kind: str, arg: str, nth: int) -> Callable:
    """atomic_write_bytes with the fault added before the rename of the chosen file."""
    name = "checkpoint.pt" if kind == "pause" else arg
    visits = [0]

    def atomic_write_bytes(path, data, before_replace=None, *args, **kwargs):
        if Path(path).name == name:
            visits[0] += 1
            if visits[0] == nth:
                inner = before_replace

                def fault() -> None:
                    if inner is not None:
                        inner()
                    if kind == "pause":
                        print(f"SPLITLORA-FAULT-PAUSE {arg}", file=sys.stderr, flush=True)
                        time.sleep(3600)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                before_replace = fault
        return original(path, data, before_replace, *args, **kwargs)
    atomic_write_bytes.__wrapped__ = original  # type: ignore[attr-defined]
    return atomic_write_bytes


def _nan_wrapper(engine, original: Callable, task_to_poison: int) -> Callable:
    """engine.train_task whose first cross-entropy of ``task_to_poison`` is NaN."""
    def train_task(model, task, *args, **kwargs):
        if task != task_to_poison:
            return original(model, task, *args, **kwargs)
        real = engine.F
        fired = [False]

        class Poisoned:
            def __getattr__(self, attr):
                return getattr(real, attr)

            def cross_entropy(self, *a, **k):
                loss = real.cross_entropy(*a, **k)
                if not fired[0]:
                    fired[0] = True
                    return loss * float("nan")
                return loss
        engine.F = Poisoned()
        try:
            return original(model, task, *args, **kwargs)
        finally:
            engine.F = real
    train_task.__wrapped__ = original  # type: ignore[attr-defined]
    return train_task


def patch_module(module, spec: str) -> Callable[[], None]:
    """Apply ``spec`` to ``module`` if it is the module the fault lives in; returns an undo."""
    kind, arg, nth = _parse(spec)
    undo: list[tuple[object, str, object]] = []

    def swap(obj, attr: str, new) -> None:
        undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, new)
    name = module.__name__
    # every atomic write goes through fileio.atomic_write_bytes; the run directory calls its
    # own reference to it (bound at its import: already the wrapped one when the import hook
    # patched fileio first, so it is wrapped only once)
    if kind in ("pause", "enospc") and name in WRITE_MODULES and not hasattr(
            module.atomic_write_bytes, "__wrapped__"):
        swap(module, "atomic_write_bytes",
             _write_wrapper(module.atomic_write_bytes, kind, arg, nth))
    if kind == "nan_loss" and name == ENGINE:
        swap(module, "train_task", _nan_wrapper(module, module.train_task, int(arg)))

    def restore() -> None:
        for obj, attr, old in reversed(undo):
            setattr(obj, attr, old)
    return restore


@contextlib.contextmanager
def injected(spec: str) -> Iterator[None]:
    """The fault, in this process, for the duration of the block."""
    undos = []
    mods = WRITE_MODULES if not spec.startswith("nan_loss") else (ENGINE,)
    for name in mods:
        undos.append(patch_module(importlib.import_module(name), spec))
    try:
        yield
    finally:
        for undo in reversed(undos):
            undo()


def subprocess_env(spec: str) -> dict[str, str]:
    """Environment variables that inject ``spec`` into a child Python process."""
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {ENV: spec, "PYTHONPATH": path}


def install_import_hook(spec: str) -> None:
    """Patch the fault's module as soon as it is imported (used by sitecustomize.py)."""
    _parse(spec)  # a bad spec fails at start-up, not silently
    from importlib.abc import MetaPathFinder

    class Hook(MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in WRITE_MODULES + (ENGINE,):
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                found = finder.find_spec(fullname, path, target)
                if found is not None and found.loader is not None:
                    execute = found.loader.exec_module

                    def exec_module(module, _execute=execute):
                        _execute(module)
                        patch_module(module, spec)
                    found.loader.exec_module = exec_module
                    return found
            return None
    sys.meta_path.insert(0, Hook())
