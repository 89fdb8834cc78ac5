"""LoRA on slices of a fused qkv projection, wrapping timm's ``attn.qkv`` Linear (kept as
``base_layer``, as peft does): for each target slice s in (q, k, v) the current task adds
``B_s A_s x`` (scale 1) to the rows of s. A is frozen unless a method trains it, B starts at
zero; ``merge()`` folds ``W <- W + B A`` (float32) for good, so finished tasks cost nothing."""
from __future__ import annotations

import logging
import math
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SLICES = ("q", "k", "v")
log = logging.getLogger(__name__)


def kaiming_uniform_A(rank: int, dim: int, generator: Optional[torch.Generator] = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """(rank, dim) A drawn as PyTorch's default Linear init (Kaiming-uniform, a = sqrt(5)):
    U(-b, b) with b = sqrt(2 / (1 + 5)) * sqrt(3 / dim) = 1 / sqrt(dim)."""
    bound = 1.0 / math.sqrt(dim)
    return torch.empty(rank, dim, dtype=dtype).uniform_(-bound, bound, generator=generator)


class LoRAQKV(nn.Module):
    """``base_layer(x)`` plus a rank-r update on the target slices of its output. Shapes:
    base_layer Linear(d -> 3w); lora_A (n_targets, r, d); lora_B (n_targets, w, r)."""

    def __init__(self, base_layer: nn.Linear, rank: int, targets: Sequence[str] = ("k", "v")) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear) or base_layer.out_features % 3:
            raise TypeError(f"expected a fused qkv nn.Linear, got {base_layer}")
        if not targets or any(t not in SLICES for t in targets):
            raise ValueError(f"LoRA targets must be among {SLICES}, got {list(targets)}")
        self.base_layer, self.targets, self.rank = base_layer, tuple(targets), rank
        self.in_features, self.width = base_layer.in_features, base_layer.out_features // 3
        w, n = base_layer.weight, len(self.targets)
        self.lora_A = nn.Parameter(w.new_zeros(n, rank, self.in_features), requires_grad=False)
        self.lora_B = nn.Parameter(w.new_zeros(n, self.width, rank))
        self.active = False  # False: no adapter (before the first task, or just merged)

    def slice_rows(self, target: str) -> slice:
        i = SLICES.index(target)
        return slice(i * self.width, (i + 1) * self.width)

    def delta_weight(self) -> Tensor:
        """(3w, d) update of the fused weight implied by the current adapter."""
        dw = torch.zeros_like(self.base_layer.weight)
        for i, t in enumerate(self.targets):
            dw[self.slice_rows(t)] = self.lora_B[i] @ self.lora_A[i]
        return dw

    def _stacked_B(self) -> Tensor:
        """(3w, n r): each target's B at its slice rows and rank columns (one matmul for all)."""
        n, w, r = self.lora_B.shape
        out = self.lora_B.new_zeros(3 * w, n * r)
        for i, t in enumerate(self.targets):
            out[self.slice_rows(t), i * r:(i + 1) * r] = self.lora_B[i]
        return out

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if not self.active:  # no adapter: finished tasks live in the base weight
            return out
        z = F.linear(x, self.lora_A.reshape(-1, self.in_features))  # all targets: one matmul
        return out + F.linear(z, self._stacked_B())

    @torch.no_grad()
    def set_adapter(self, a: Tensor) -> None:
        """Start a new task's adapter: A given as (n_targets, r, d); B = 0."""
        if tuple(a.shape) != tuple(self.lora_A.shape):
            raise ValueError(f"A has shape {tuple(a.shape)}, expected {tuple(self.lora_A.shape)}")
        self.lora_A.copy_(a)
        self.lora_B.zero_()
        self.active = True

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + B A for every target slice, then deactivate the adapter (B reset to 0)."""
        if self.active:
            w = self.base_layer.weight
            for i, t in enumerate(self.targets):
                upd = self.lora_B[i].to(torch.float32) @ self.lora_A[i].to(torch.float32)
                w[self.slice_rows(t)] += upd.to(w.dtype)
            self.lora_B.zero_()
        self.active = False


def inject_lora(backbone: nn.Module, rank: int, targets: Sequence[str]) -> list[LoRAQKV]:
    """Replace ``block.attn.qkv`` of every block of a timm ViT by :class:`LoRAQKV`; returns the
    wrappers in block order."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(backbone).__name__} has no .blocks: not a timm Vision Transformer")
    wrappers = []
    for i, block in enumerate(blocks):
        qkv = getattr(getattr(block, "attn", None), "qkv", None)
        if not isinstance(qkv, nn.Linear):
            raise TypeError(f"block {i} has no fused attn.qkv Linear (found {type(qkv).__name__}); "
                            "only ViTs with a fused qkv projection are supported")
        wrappers.append(LoRAQKV(qkv, rank, targets))
        block.attn.qkv = wrappers[-1]
    width = min(wrappers[0].in_features, wrappers[0].width) if wrappers else 0
    if wrappers and rank >= width:
        log.warning("lora.rank = %d is not below the width %d of the qkv layers: the adapters are "
                    "not low-rank; use a rank below %d (the protocol: 10 for a 768-wide ViT-B)",
                    rank, width, width)
    return wrappers


def lora_parameters(wrappers: Iterable[LoRAQKV], with_A: bool = False) -> list[nn.Parameter]:
    """The LoRA parameters that train: every wrapper's B, and its A too when ``with_A``."""
    return [p for w in wrappers for p in ((w.lora_B, w.lora_A) if with_A else (w.lora_B,))]
