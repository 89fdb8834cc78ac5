"""Image transforms of the protocol (docs/protocol.md). Each ends in ``output="float"`` (ToTensor
+ Normalize) or ``"uint8"``: a (C, H, W) uint8 tensor for :class:`normalize.Uint8Normalize`."""

from typing import Callable, Sequence

import torch
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
