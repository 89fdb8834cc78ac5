"""A generated image benchmark: each class mixes coloured, oriented gratings, varied per sample.
Class ``k`` of ``seed`` is the same images on every machine; different ``class_offset`` give
disjoint families (the demo backbone is pretrained on classes the demo never learns)."""

import math

import torch
from torch import Tensor

from .folder import ImageSet


def _generator(*keys: int) -> torch.Generator:
    value = 0
    for k in keys:
        value = (value * 1_000_003 + int(k)) % (2**62)
    return torch.Generator().manual_seed(value)


def class_images(class_id: int, seed: int, count: int, size: int, stream: int,
                 components: int = 3) -> Tensor:
    """(count, 3, size, size) uint8 images of the global synthetic class ``class_id`` (its
    prototype drawn from ``seed``); ``stream`` (0 = train, 1 = val, ...) keeps splits apart."""
    g = _generator(seed, class_id)
    freq = 1.5 + 3.5 * torch.rand(components, generator=g)
    theta = math.pi * torch.rand(components, generator=g)
    color = torch.nn.functional.normalize(torch.rand(components, 3, generator=g) * 2 - 1, dim=1)
    center = 0.2 + 0.6 * torch.rand(components, 2, generator=g)
    width = 0.2 + 0.3 * torch.rand(components, generator=g)
    base = 0.35 + 0.3 * torch.rand(3, generator=g)

    s = _generator(seed, class_id, 7919 + stream)
    n, k = count, components
    phase = 2 * math.pi * torch.rand(n, k, generator=s)
    th = theta + 0.15 * torch.randn(n, k, generator=s)
    ctr = center + 0.08 * torch.randn(n, k, 2, generator=s)
    amp = 0.6 + 0.4 * torch.rand(n, k, generator=s)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)
    xx, yy = xx[None, None], yy[None, None]  # (1, 1, H, W)
    proj = xx * torch.cos(th)[..., None, None] + yy * torch.sin(th)[..., None, None]
    wave = torch.sin(2 * math.pi * freq[None, :, None, None] * proj + phase[..., None, None])
    dist2 = (xx - ctr[..., 0, None, None]) ** 2 + (yy - ctr[..., 1, None, None]) ** 2
    env = torch.exp(-dist2 / (2 * width[None, :, None, None] ** 2))
    layer = (amp[..., None, None] * env * wave)  # (n, k, H, W)
    img = base[None, :, None, None] + 0.45 * torch.einsum("nkhw,kc->nchw", layer, color)
    img = img + 0.06 * torch.randn(img.shape, generator=s)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


class SyntheticImageSet(ImageSet):
    """``num_classes`` synthetic classes (ids class_offset..), ``per_class`` images each."""

    def __init__(self, num_classes: int, per_class: int, size: int, seed: int,
                 class_offset: int, split: str) -> None:
        stream = {"train": 0, "val": 1}.get(split, 2)
        self.split = split
        self.images = torch.cat([class_images(class_offset + c, seed, per_class, size, stream)
                                 for c in range(num_classes)])
        self.targets = [c for c in range(num_classes) for _ in range(per_class)]

    def load(self, index: int) -> Tensor:
        return self.images[index]
