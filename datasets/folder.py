"""Image sets over ``ROOT/{train,val}/<class>/<image>`` and the task views the engine loads."""

import logging
import os
import stat
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, default_collate

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class DataError(RuntimeError):
    """Missing or malformed data. The message names the path and the fix."""


class BadImageError(DataError):
    """An image file that cannot be decoded."""


def list_class_dirs(split_dir: Path) -> list[str]:
    """A split's class folders (not hidden) in class-id order: by number when all are integers
    (the official code's ``int(folder)`` for CIFAR-100), else by name."""
    names = [e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")]
    if names and all(n.isascii() and n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def list_images(class_dir: Path) -> list[str]:
    """A class folder's image files (broken links included, so that validation reports them)."""
    return sorted(e.name for e in os.scandir(class_dir)
                  if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".")
                  and not e.is_dir())


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL image. High-bit-depth gray is scaled, not clipped as ``convert`` would
    (Pillow reduces 16-bit RGB itself): 16-bit (I;16*, and I, Pillow's mode for 16-bit files) by
    255/65535; float (F) from [0, 1] when its values lie there, else [0, 255] or [0, 65535]."""
    if not (img.mode.startswith("I;16") or img.mode in ("I", "F")):
        return img.convert("RGB")
    a = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
    peak = float(a.max()) if a.size else 0.0
    if img.mode == "F" and peak <= 1.0:
        a = a * 255.0
    elif img.mode != "F" or peak > 255.0:
        a = a / 257.0  # 65535 -> 255, and v * 257 (an 8-bit value v stored in 16 bits) -> v
    gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")  # uint8 (H, W): mode L


class ImageSet:
    """A split of a benchmark: ``targets[i]`` is the class id of sample i; ``load(i)`` its image."""
    split: str
    targets: list[int]

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Any:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"sample {index}"

    def key(self, index: int) -> str:
        """A stable identifier of sample ``index`` (its path under the split folder)."""
        return f"{self.targets[index]}/{index}"


class FolderImageSet(ImageSet):
    """``root/<class>/<image>``, class id = position in ``classes``. A header declaring over
    ``max_pixels`` pixels, or anything but a regular file, is a bad image (nothing decoded)."""

    def __init__(self, root: str | Path, classes: Sequence[str], split: str,
                 max_pixels: int = 40_000_000) -> None:
        self.root, self.split, self.max_pixels = Path(root), split, max_pixels
        files = [(os.path.join(name, f), cid) for cid, name in enumerate(classes)
                 for f in list_images(self.root / name)]
        self.paths: list[str] = [p for p, _ in files]
        self.targets = [cid for _, cid in files]

    def describe(self, index: int) -> str:
        return str(self.root / self.paths[index])

    def key(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int) -> Image.Image:
        path = self.root / self.paths[index]
        cannot = f"cannot read image {path} ({self.split} split):"
        try:  # O_NONBLOCK: a FIFO in the folder cannot hang the open
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise BadImageError(f"{cannot} {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                from models.backbone import file_kind
                raise BadImageError(f"{cannot} it is {file_kind(mode)}, not an image file")
            try:
                with Image.open(f) as img:
                    if img.width * img.height > self.max_pixels:
                        raise BadImageError(f"image {path} ({self.split} split) declares "
                                            f"{img.width} x {img.height} pixels, over dataset."
                                            f"max_image_pixels = {self.max_pixels}: not decoded")
                    return to_rgb(img)
            except BadImageError:
                raise
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
                # PIL names the open file object (its descriptor number): name the file
                reason = str(exc).replace(repr(f), repr(str(path)))
                raise BadImageError(f"{cannot} {type(exc).__name__}: {reason}") from None


class BadSample(NamedTuple):
    """Placeholder for an unreadable image when bad images are skipped."""
    path: str


class Batch(NamedTuple):
    """Images / labels (None if all were bad) and the paths of the unreadable images dropped."""
    images: Any
    labels: Any
    bad: list


def skipping_collate(samples: list) -> Batch:
    good = [s for s in samples if not isinstance(s, BadSample)]
    bad = [s.path for s in samples if isinstance(s, BadSample)]
    return Batch(*(default_collate(good) if good else (None, None)), bad)


class TaskDataset(Dataset):
    """The samples of ``classes``, labelled ``label_offset + position``; ``skip_bad``: an
    unreadable image yields a :class:`BadSample` (for :func:`skipping_collate`), not an error."""

    def __init__(self, images: ImageSet, classes: Sequence[int], label_offset: int,
                 transform: Optional[Callable] = None, skip_bad: bool = False) -> None:
        pos = {c: j for j, c in enumerate(classes)}
        self.images, self.transform, self.skip_bad = images, transform, skip_bad
        self.indices = [i for i, c in enumerate(images.targets) if c in pos]
        self.labels = [label_offset + pos[images.targets[i]] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        try:
            img = self.images.load(self.indices[i])
        except BadImageError:
            if not self.skip_bad:
                raise
            log.warning("skipping unreadable image %s", self.images.describe(self.indices[i]))
            return BadSample(self.images.describe(self.indices[i]))
        return (img if self.transform is None else self.transform(img)), self.labels[i]


class Repeated(Dataset):
    """A dataset repeated ``times`` times (item i is item i mod len): expand_times."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]
