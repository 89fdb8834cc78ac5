"""SplitLoRA: continual learning by splitting the gradient space of LoRA adapters.

The method lives here (``methods/splitlora.py`` reads in the order of the paper); the
machinery that runs experiments lives in ``splitlora.run`` and is never imported by it. The
mathematics is importable from the package root::

    from splitlora import split_point, free_basis, init_lora_A

(loaded lazily, so that importing the package does not import torch)."""
import importlib
from typing import Any

__all__ = ["free_basis", "free_basis_from_spectrum", "init_lora_A", "interference",
           "kaiming_uniform_A", "spectrum", "split_criterion", "split_point",
           "threshold_split_point"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".methods.splitlora", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
