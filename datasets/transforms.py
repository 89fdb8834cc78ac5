"""Image transforms of the protocol (docs/protocol.md). Each ends in ``output="float"`` (ToTensor
+ Normalize) or ``"uint8"``: a (C, H, W) uint8 tensor that :class:`Uint8Normalize` normalises
where it lands (the GPU) by table look-up: the 256 x 3 possible inputs are normalised once on the
CPU by torchvision's own transforms, so the result is bitwise the float pipeline's on any device
(whatever its division rounding)."""

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
_POLICY = {"imagenet": T.AutoAugmentPolicy.IMAGENET, "cifar10": T.AutoAugmentPolicy.CIFAR10}
OUTPUTS = ("float", "uint8")
EVAL_MODES = ("squash_crop", "shorter_side_crop", "resize")


def _tail(output: str, mean: Sequence[float], std: Sequence[float], pil: bool = True) -> list:
    if output not in OUTPUTS:
        raise ValueError(f"unknown transform output {output!r}; known: {', '.join(OUTPUTS)}")
    if output == "uint8":
        return [T.PILToTensor()] if pil else []
    return [T.ToTensor() if pil else T.ConvertImageDtype(torch.float32), T.Normalize(mean, std)]


def train_transform(img_size: int, policy: str, crop_interpolation: str,
                    mean: Sequence[float], std: Sequence[float], output: str = "float") -> Callable:
    return T.Compose([
        T.AutoAugment(_POLICY[policy], interpolation=InterpolationMode.BILINEAR),
        T.RandomResizedCrop(img_size, interpolation=_INTERP[crop_interpolation], antialias=True),
    ] + _tail(output, mean, std))


def eval_transform(img_size: int, mode: str, interpolation: str, mean: Sequence[float],
                   std: Sequence[float], output: str = "float") -> Callable:
    """Antialiased. ``squash_crop`` (official: ImageNet-R, DomainNet): both sides to ``outer``,
    then a centre crop; ``resize`` (official: CIFAR-100): both sides to ``img_size``;
    ``shorter_side_crop`` (usual ImageNet evaluation): the shorter side to ``outer``, crop."""
    outer = round(img_size * 256 / 224)
    sizes = {"squash_crop": (outer, outer), "shorter_side_crop": outer, "resize": (img_size,) * 2}
    if mode not in sizes:
        raise ValueError(f"unknown eval transform mode {mode!r}; known: {', '.join(EVAL_MODES)}")
    crop = [] if mode == "resize" else [T.CenterCrop(img_size)]
    return T.Compose([T.Resize(sizes[mode], interpolation=_INTERP[interpolation], antialias=True)]
                     + crop + _tail(output, mean, std))


def tensor_train_transform(img_size: int, mean: Sequence[float], std: Sequence[float],
                           output: str = "float") -> Callable:
    """Light augmentation for uint8 image tensors (the synthetic benchmark)."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(0.7, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
    ] + _tail(output, mean, std, pil=False))


def tensor_eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float],
                          output: str = "float") -> Callable:
    return T.Compose([T.Resize((img_size, img_size), antialias=True)]
                     + _tail(output, mean, std, pil=False))


class Uint8Normalize:
    """Normalise a uint8 batch (B, C, H, W) into float32 with a per-device lookup table."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        # (C, 256) float32 on the CPU: [c, v] = ToTensor + Normalize of a 1 x 256 image of every v
        row = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)
        out = T.Normalize(self.mean, self.std)(T.ToTensor()(Image.fromarray(row, mode="RGB")))
        self.table = out[:, 0, :].contiguous()
        self._on: dict[torch.device, Tensor] = {}

    def __call__(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) or (3, H, W) uint8 (RGB: ``folder.to_rgb``) -> float32 of the same shape,
        on the same device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"Uint8Normalize expects a uint8 batch, got {images.dtype}")
        channels = images.shape[-3]
        if images.device not in self._on:
            self._on[images.device] = self.table.to(images.device).reshape(-1)
        offsets = torch.arange(channels, device=images.device, dtype=torch.int32) * 256
        index = images.to(torch.int32) + offsets.view(channels, 1, 1)
        return self._on[images.device].index_select(0, index.reshape(-1)).view(images.shape)
