"""Image transforms of the protocol (DESIGN.md section 2), parametrised by image size."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
_POLICY = {"imagenet": T.AutoAugmentPolicy.IMAGENET, "cifar10": T.AutoAugmentPolicy.CIFAR10}


def train_transform(img_size: int, policy: str, crop_interpolation: str,
                    mean: Sequence[float], std: Sequence[float]) -> Callable:
    """AutoAugment (bilinear) -> RandomResizedCrop (antialiased) -> tensor -> normalise."""
    return T.Compose([
        T.AutoAugment(_POLICY[policy], interpolation=InterpolationMode.BILINEAR),
        T.RandomResizedCrop(img_size, interpolation=_INTERP[crop_interpolation], antialias=True),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(img_size: int, mode: str, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """``mode='resize'``: resize to img_size (bicubic, CIFAR); ``'center_crop'``: resize to
    img_size * 256 / 224 then centre crop img_size (bilinear)."""
    if mode == "resize":
        ops = [T.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC, antialias=True)]
    elif mode == "center_crop":
        ops = [T.Resize(round(img_size * 256 / 224), interpolation=InterpolationMode.BILINEAR,
                        antialias=True), T.CenterCrop(img_size)]
    else:
        raise ValueError(f"unknown eval transform mode {mode!r}")
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def tensor_train_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Light augmentation for uint8 image tensors (the synthetic benchmark)."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(0.7, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ConvertImageDtype(torch.float32),
        T.Normalize(mean, std),
    ])


def tensor_eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    return T.Compose([
        T.Resize((img_size, img_size), antialias=True),
        T.ConvertImageDtype(torch.float32),
        T.Normalize(mean, std),
    ])
