"""SplitLoRA: continual learning by splitting the gradient space of LoRA adapters.

The mathematics (pure functions) is importable from the package root::

    from splitlora import split_point, free_basis, init_lora_A

(Loaded lazily, so that reading and validating a config does not import torch.)
"""
from __future__ import annotations

import importlib
from typing import Any

_SUBSPACE = ("free_basis", "free_basis_from_spectrum", "init_lora_A", "interference",
             "kaiming_uniform_A", "spectrum", "split_criterion", "split_point", "threshold_split_point")

__all__ = list(_SUBSPACE)


def __getattr__(name: str) -> Any:
    if name in _SUBSPACE:
        return getattr(importlib.import_module(".subspace", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
