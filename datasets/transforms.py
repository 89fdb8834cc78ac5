"""Image transforms of the protocol (docs/protocol.md), parametrised by image size. Each ends
either in ``output="float"``: ToTensor + Normalize (float32, what the model reads), or in
``output="uint8"``: the same pixels as a uint8 (C, H, W) tensor, to be normalised on the device
by :class:`datasets.normalize.Uint8Normalize`, which gives bitwise the float result."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
_POLICY = {"imagenet": T.AutoAugmentPolicy.IMAGENET, "cifar10": T.AutoAugmentPolicy.CIFAR10}
OUTPUTS = ("float", "uint8")
EVAL_MODES = ("squash_crop", "shorter_side_crop", "resize")


def _tail(output: str, mean: Sequence[float], std: Sequence[float], pil: bool = True) -> list:
    """The last steps of a PIL (or, ``pil=False``, uint8-tensor) transform: ``float`` ends in
    ToTensor (or a dtype conversion) + Normalize, ``uint8`` in PILToTensor (or nothing)."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown transform output {output!r}; known: {', '.join(OUTPUTS)}")
    if output == "uint8":
        return [T.PILToTensor()] if pil else []
    return [T.ToTensor() if pil else T.ConvertImageDtype(torch.float32), T.Normalize(mean, std)]


def train_transform(img_size: int, policy: str, crop_interpolation: str,
                    mean: Sequence[float], std: Sequence[float], output: str = "float") -> Callable:
    """AutoAugment (bilinear) -> RandomResizedCrop (antialiased) -> tensor -> normalise."""
    return T.Compose([
        T.AutoAugment(_POLICY[policy], interpolation=InterpolationMode.BILINEAR),
        T.RandomResizedCrop(img_size, interpolation=_INTERP[crop_interpolation], antialias=True),
    ] + _tail(output, mean, std))


def eval_transform(img_size: int, mode: str, interpolation: str, mean: Sequence[float],
                   std: Sequence[float], output: str = "float") -> Callable:
    """The evaluation transform, antialiased, with the benchmark's ``interpolation``.
    ``squash_crop`` (official for ImageNet-R and DomainNet): both sides to
    ``img_size * 256 / 224`` (256 at 224 px; the aspect ratio is not kept), then a centre
    crop of ``img_size``. ``resize`` (official for CIFAR-100): both sides to ``img_size``.
    ``shorter_side_crop`` (not the official protocol; the usual ImageNet evaluation): the
    shorter side to ``img_size * 256 / 224``, aspect ratio kept, then the centre crop."""
    interp = _INTERP[interpolation]
    outer = round(img_size * 256 / 224)
    if mode == "resize":
        ops = [T.Resize((img_size, img_size), interpolation=interp, antialias=True)]
    elif mode == "squash_crop":
        ops = [T.Resize((outer, outer), interpolation=interp, antialias=True),
               T.CenterCrop(img_size)]
    elif mode == "shorter_side_crop":
        ops = [T.Resize(outer, interpolation=interp, antialias=True), T.CenterCrop(img_size)]
    else:
        raise ValueError(f"unknown eval transform mode {mode!r}; known: {', '.join(EVAL_MODES)}")
    return T.Compose(ops + _tail(output, mean, std))


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
