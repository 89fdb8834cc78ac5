"""LoRA on slices of timm's fused ``attn.qkv`` Linear (kept as ``base_layer``, as peft does): the
current task adds ``B_s A_s x`` (scale 1) to the rows of each target slice s of (q, k, v); A is
frozen unless a method trains it, B starts at 0; ``merge()`` folds ``W += B A`` (float32)."""

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
    """(rank, dim) A as nn.Linear's default init (Kaiming-uniform, a = sqrt(5)): U(-b, b),
    b = 1 / sqrt(dim)."""
    bound = 1.0 / math.sqrt(dim)
    return torch.empty(rank, dim, dtype=dtype).uniform_(-bound, bound, generator=generator)


class LoRAQKV(nn.Module):
    """``base_layer(x)`` plus a rank-r update on the target slices of its output. Shapes:
    base_layer Linear(d -> 3w); lora_A (n_targets, r, d); lora_B (n_targets, w, r)."""

    def __init__(self, base_layer: nn.Linear, rank: int,
                 targets: Sequence[str] = ("k", "v")) -> None:
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

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if not self.active:  # no adapter: finished tasks live in the base weight
            return out
        n, w, r = self.lora_B.shape  # every target in one matmul: A as (n r, d), B as (3w, n r)
        stacked_B = self.lora_B.new_zeros(3 * w, n * r)
        for i, t in enumerate(self.targets):
            stacked_B[self.slice_rows(t), i * r:(i + 1) * r] = self.lora_B[i]
        z = F.linear(x, self.lora_A.reshape(-1, self.in_features))
        return out + F.linear(z, stacked_B)

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
    """Wrap ``block.attn.qkv`` of every block in :class:`LoRAQKV`; the wrappers in block order."""
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
    return [p for w in wrappers for p in ((w.lora_B, w.lora_A) if with_A else (w.lora_B,))]
