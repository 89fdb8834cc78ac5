"""SplitLoRA: continual learning by splitting the gradient space of LoRA adapters.

The mathematics (pure functions) is importable from the package root::

    from splitlora import split_point, free_basis, init_lora_A
"""
from .subspace import (free_basis, free_basis_from_spectrum, init_lora_A, interference,
                       kaiming_uniform_A, spectrum, split_criterion, split_point)

__all__ = [
    "free_basis", "free_basis_from_spectrum", "init_lora_A", "interference", "kaiming_uniform_A",
    "spectrum", "split_criterion", "split_point",
]
