"""Streaming feature second moments of the adapted layers' inputs.

One accumulator per adapted block (k and v share the qkv input, so one serves both). The
sums and token counts accumulate across tasks and are never reset: after task t the
covariance covers tasks 0..t, weighted by token count (docs/protocol.md).

Collection uses forward pre-hooks that exist only inside :func:`collect_covariance`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


class CovarianceAccumulator:
    """Sums of x x^T and token counts for L layers of input width d.

    State: ``sums`` (L, d, d) and ``counts`` (L,) on ``device`` in ``dtype``.
    """

    def __init__(self, num_layers: int, dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(num_layers, dim, dim, dtype=dtype, device=device)
        self.counts = torch.zeros(num_layers, dtype=torch.float64, device=device)

    @property
    def num_layers(self) -> int:
        return self.sums.shape[0]

    @property
    def dim(self) -> int:
        return self.sums.shape[1]

    @torch.no_grad()
    def update(self, layer: int, x: Tensor) -> None:
        """Add the tokens of ``x`` (..., d): sums[layer] += X^T X, counts[layer] += #tokens."""
        flat = x.detach().reshape(-1, x.shape[-1]).to(self.sums.dtype)
        self.sums[layer].addmm_(flat.T, flat)
        self.counts[layer] += flat.shape[0]

    def covariance(self, layer: int) -> Tensor:
        """(d, d) uncentred second moment sums / count (zeros before any token)."""
        count = float(self.counts[layer])
        if count == 0:
            return torch.zeros_like(self.sums[layer])
        return self.sums[layer] / count

    def add_(self, other: "CovarianceAccumulator") -> None:
        """Add another accumulator's sums and counts (e.g. one task's pass) to this one."""
        self.sums += other.sums
        self.counts += other.counts

    def all_reduce(self) -> None:
        """Sum the state over a torch.distributed process group (no-op when not running).

        Reduce only what this process collected since the last reduction (one pass), never
        a running total that already holds reduced sums."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sums)
            torch.distributed.all_reduce(self.counts)

    def state_dict(self) -> dict[str, Tensor]:
        return {"sums": self.sums.detach().cpu().clone(), "counts": self.counts.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if tuple(state["sums"].shape) != tuple(self.sums.shape):
            raise ValueError(f"covariance state has shape {tuple(state['sums'].shape)}, "
                             f"expected {tuple(self.sums.shape)}")
        self.sums.copy_(state["sums"])
        self.counts.copy_(state["counts"])


@contextlib.contextmanager
def collect_covariance(modules: Sequence[nn.Module],
                       acc: CovarianceAccumulator) -> Iterator[CovarianceAccumulator]:
    """Accumulate the input of ``modules[i]`` into layer i of ``acc`` while inside the block.

    Hooks are forward pre-hooks, removed on exit (also on error).
    """
    if len(modules) != acc.num_layers:
        raise ValueError(f"{len(modules)} modules but the accumulator has {acc.num_layers} layers")
    handles = []

    def make_hook(layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            acc.update(layer, args[0])
        return hook

    try:
        for i, module in enumerate(modules):
            handles.append(module.register_forward_pre_hook(make_hook(i)))
        yield acc
    finally:
        for h in handles:
            h.remove()
