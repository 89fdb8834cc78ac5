"""Decode once: a task's training images held in memory as uint8 pixels (each is read
``expand_times x (epochs + 1)`` times per task; a JPEG decode costs about as much as the rest of
the augmentation). Buffers are allocated before the workers start (shared, one copy) and a read
rebuilds exactly a fresh decode's pixels. Cost: ``3 * width * height`` bytes per image (5.24 GiB
per 10,000 images of 500 x 375), for the current task only, per torchrun process."""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .folder import BadImageError, FolderImageSet, ImageSet

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "on", "off")
CHUNK_IMAGES = 256  # images decoded (and their buffer allocated) at a time


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


class _TooLarge(Exception):
    """The decoded images would exceed the memory budget."""


class DecodedImages(ImageSet):
    """The images ``indices`` of ``base`` decoded once (other indices read ``base``): ``load(i)``
    is a new image equal to ``base.load(i)``, or raises its :class:`BadImageError` again."""

    def __init__(self, base: ImageSet, indices: Sequence[int], threads: int = 1,
                 max_bytes: Optional[int] = None) -> None:
        self.base, self.split, self.targets = base, base.split, base.targets
        self.chunks: list[torch.Tensor] = []  # 1-D uint8 buffers
        self.where: dict[int, tuple[int, int, int, int]] = {}  # index -> (chunk, offset, h, w)
        self.errors: dict[int, str] = {}  # index -> BadImageError message
        self.other: dict[int, Any] = {}  # index -> image that is not 8-bit RGB (kept as loaded)
        indices = list(indices)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for start in range(0, len(indices), CHUNK_IMAGES):
                part = indices[start:start + CHUNK_IMAGES]
                self._add_chunk(part, list(pool.map(self._decode, part)))
                done = start + len(part)
                projected = self.nbytes * len(indices) / done
                if max_bytes is not None and (self.nbytes > max_bytes or (
                        done < len(indices) and projected > 1.5 * max_bytes)):
                    raise _TooLarge(projected)

    def _decode(self, index: int) -> Any:
        try:
            img = self.base.load(index)
        except BadImageError as exc:
            return exc
        return np.asarray(img) if isinstance(img, Image.Image) and img.mode == "RGB" else img

    def _add_chunk(self, part: list[int], decoded: list[Any]) -> None:
        arrays = [(i, a) for i, a in zip(part, decoded) if isinstance(a, np.ndarray)]
        for i, a in zip(part, decoded):
            if isinstance(a, BadImageError):
                self.errors[i] = str(a)
            elif not isinstance(a, np.ndarray):
                self.other[i] = a
        buf = torch.empty(sum(a.size for _, a in arrays), dtype=torch.uint8)
        view, offset = buf.numpy(), 0
        for i, a in arrays:
            view[offset:offset + a.size] = a.reshape(-1)
            self.where[i] = (len(self.chunks), offset, a.shape[0], a.shape[1])
            offset += a.size
        self.chunks.append(buf)

    @property
    def nbytes(self) -> int:
        return sum(c.numel() for c in self.chunks)

    def describe(self, index: int) -> str:
        return self.base.describe(index)

    def load(self, index: int) -> Any:
        if index in self.where:
            c, o, h, w = self.where[index]
            return Image.fromarray(self.chunks[c].numpy()[o:o + h * w * 3].reshape(h, w, 3))
        if index in self.errors:
            raise BadImageError(self.errors[index])
        if index in self.other:
            img = self.other[index]
            return img.copy() if hasattr(img, "copy") else img
        return self.base.load(index)


class TaskImageCache:
    """The decoded training images of one task at a time. ``mode`` (``dataset.cache``): ``off``
    reads from disk, ``on`` decodes, ``auto`` decodes unless that would take over ``memory_share``
    of the available memory (split among ``processes``). Only folder image sets are cached."""

    def __init__(self, mode: "str | bool" = "auto", threads: int = 1, processes: int = 1,
                 memory_share: float = 0.5) -> None:
        if isinstance(mode, bool):
            mode = "on" if mode else "off"
        if mode not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {mode!r}; known: {', '.join(CACHE_MODES)}")
        self.mode, self.threads, self.processes = mode, threads, max(1, processes)
        self.memory_share = memory_share
        self._key: Optional[tuple] = None  # (id of the image set, classes) of self._images
        self._images: Optional[ImageSet] = None

    def for_classes(self, base: ImageSet, classes: Sequence[int]) -> ImageSet:
        """``base`` with the images of ``classes`` decoded in memory (or ``base`` itself)."""
        if self.mode == "off" or not isinstance(base, FolderImageSet):
            return base
        key = (id(base), tuple(sorted(classes)))
        if key == self._key:
            return self._images
        self._key = self._images = None  # the previous task's pixels go before this task's
        wanted = set(classes)
        indices = [i for i, c in enumerate(base.targets) if c in wanted]
        avail = available_memory() if self.mode == "auto" else None
        budget = None if avail is None else int(avail * self.memory_share / self.processes)
        t0 = time.perf_counter()
        try:
            images = DecodedImages(base, indices, self.threads, budget)
        except _TooLarge as exc:
            log.warning("dataset.cache=auto: the %d %s images of these classes would take about "
                        "%.1f GiB decoded, over the %.1f GiB budget; reading them from disk "
                        "(dataset.cache=true forces the cache)", len(indices), base.split,
                        float(exc.args[0]) / 2**30, budget / 2**30)
            images = base
        else:
            size = images.nbytes / 2**20
            log.info("decoded %d %s images once into memory: %s in %.1f s%s", len(indices),
                     base.split, f"{size / 1024:.2f} GiB" if size >= 1024 else f"{size:.1f} MiB",
                     time.perf_counter() - t0,
                     f" ({len(images.errors)} unreadable)" if images.errors else "")
        self._key, self._images = key, images
        return images
