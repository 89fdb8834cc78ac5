"""The continual model (a timm ViT with LoRA-wrapped qkv) and one Linear head per task (the
current one trains alone; all are concatenated at evaluation). Head ``init``: ``official`` as the
official code: timm's ViT head init for task 0 (truncated normal, std 0.02, bias 0), a copy of
task 0's trained head for task 1 if the class counts match, else PyTorch's default ``nn.Linear``
init; ``fresh``: PyTorch's default for every task."""

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .lora import LoRAQKV, inject_lora

HEAD_INITS = ("official", "fresh")


class TaskHeads(nn.Module):
    """A growing list of Linear(d, classes_of_task) heads."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features, self.heads = in_features, nn.ModuleList()

    def add_head(self, num_classes: int, init: str = "fresh") -> nn.Linear:
        """Append the next task's head, initialised by ``init`` (see the module docstring)."""
        if init not in HEAD_INITS:
            raise ValueError(f"unknown head init {init!r}; known: {', '.join(HEAD_INITS)}")
        ref = next(self.parameters(), None)
        head = nn.Linear(self.in_features, num_classes)  # PyTorch's default init
        task = len(self.heads)
        if init == "official" and task == 0:
            from timm.layers import trunc_normal_
            with torch.no_grad():
                trunc_normal_(head.weight, std=0.02)
                head.bias.zero_()
        elif init == "official" and task == 1 and self.heads[0].out_features == num_classes:
            head.load_state_dict(self.heads[0].state_dict())
        self.heads.append(head if ref is None else head.to(ref.device))
        return self.heads[-1]

    def forward(self, features: Tensor, task: Optional[int] = None) -> Tensor:
        """(B, d) -> (B, classes of ``task``) or, when task is None, (B, all classes so far)."""
        if not self.heads:
            raise RuntimeError("no task head yet: call add_head() first")
        if task is not None:
            return self.heads[task](features)
        return torch.cat([h(features) for h in self.heads], dim=-1)


class ContinualViT(nn.Module):
    """``backbone`` (features of shape (B, d)) + LoRA on every block's qkv + task heads."""

    def __init__(self, backbone: nn.Module, rank: int, targets: Sequence[str] = ("k", "v")) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.adapters: list[LoRAQKV] = inject_lora(backbone, rank, targets)
        self.heads = TaskHeads(backbone.num_features)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor, task: Optional[int] = None) -> Tensor:
        return self.heads(self.backbone(x), task)

    def merge_adapters(self) -> None:
        for a in self.adapters:
            a.merge()
