"""One linear head per task: the current one trains alone, all of them are concatenated at
evaluation (class-incremental: argmax over every class seen so far)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class TaskHeads(nn.Module):
    """A growing list of Linear(d, classes_of_task) heads, default PyTorch init."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.heads = nn.ModuleList()

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def num_classes(self) -> int:
        return sum(h.out_features for h in self.heads)

    def add_head(self, num_classes: int) -> nn.Linear:
        ref = next(self.parameters(), None)
        head = nn.Linear(self.in_features, num_classes)
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
