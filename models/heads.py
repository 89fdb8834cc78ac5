"""One linear head per task: the current one trains alone, all of them are concatenated at
evaluation (class-incremental: argmax over every class seen so far).

Starting weights (``init``):

- ``official`` -- what the official code's head handling produces: task 0 timm's ViT head
  init (truncated normal, std 0.02, bias 0); task 1 a copy of task 0's trained head (the
  official code keeps its head when the next task has as many classes); tasks >= 2
  PyTorch's default ``nn.Linear`` init (the official code re-creates the head).
- ``fresh`` -- PyTorch's default ``nn.Linear`` init for every task (not the official code).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


HEAD_INITS = ("official", "fresh")


class TaskHeads(nn.Module):
    """A growing list of Linear(d, classes_of_task) heads."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.heads = nn.ModuleList()

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def num_classes(self) -> int:
        return sum(h.out_features for h in self.heads)

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
        if ref is not None:
            head = head.to(ref.device)
        self.heads.append(head)
        return head

    def forward(self, features: Tensor, task: Optional[int] = None) -> Tensor:
        """(B, d) -> (B, classes of ``task``) or, when task is None, (B, all classes so far)."""
        if not self.heads:
            raise RuntimeError("no task head yet: call add_head() first")
        if task is not None:
            return self.heads[task](features)
        return torch.cat([h(features) for h in self.heads], dim=-1)
