"""``ToTensor`` + ``Normalize`` of uint8 batches where they land (the GPU) by table look-up: the
256 x 3 possible inputs are normalised once on the CPU by torchvision's own transforms, so the
result is bitwise the float pipeline's on any device (whatever its division rounding)."""

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T


class Uint8Normalize:
    """Normalise a uint8 batch (B, C, H, W) into float32 with a per-device lookup table."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"uint8 normalisation expects 3 channels, got mean {self.mean}, "
                             f"std {self.std}")
        # (C, 256) float32 on the CPU: [c, v] = ToTensor + Normalize of a 1 x 256 image of every v
        row = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)
        out = T.Normalize(self.mean, self.std)(T.ToTensor()(Image.fromarray(row, mode="RGB")))
        self.table = out[:, 0, :].contiguous()
        self._on: dict[torch.device, Tensor] = {}

    def __call__(self, images: Tensor) -> Tensor:
        """(B, C, H, W) or (C, H, W) uint8 -> float32 of the same shape, on the same device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"Uint8Normalize expects a uint8 batch, got {images.dtype}")
        channels = images.shape[-3]
        if channels != self.table.shape[0]:
            raise ValueError(f"expected {self.table.shape[0]} channels, got shape "
                             f"{tuple(images.shape)}")
        if images.device not in self._on:
            self._on[images.device] = self.table.to(images.device).reshape(-1)
        offsets = torch.arange(channels, device=images.device, dtype=torch.int32) * 256
        index = images.to(torch.int32) + offsets.view(channels, 1, 1)
        return self._on[images.device].index_select(0, index.reshape(-1)).view(images.shape)

    def __repr__(self) -> str:
        return f"Uint8Normalize(mean={self.mean}, std={self.std})"
