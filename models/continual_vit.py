"""The continual model: a timm ViT with LoRA-wrapped qkv projections and per-task heads."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from .heads import TaskHeads
from .lora import LoRAQKV, inject_lora


class ContinualViT(nn.Module):
    """``backbone`` (features of shape (B, d)) + LoRA on every block's qkv + task heads."""

    def __init__(self, backbone: nn.Module, rank: int, targets: Sequence[str] = ("k", "v")) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.adapters: list[LoRAQKV] = inject_lora(backbone, rank, targets)
        self.heads = TaskHeads(backbone.num_features)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.blocks

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor, task: Optional[int] = None) -> Tensor:
        return self.heads(self.backbone(x), task)

    def merge_adapters(self) -> None:
        for a in self.adapters:
            a.merge()
