"""Benchmarks registered by name (image source, class count, transforms); ``build_benchmark``
checks the data and returns a :class:`Benchmark`, which serves task datasets. Class order and
task split: docs/protocol.md."""

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import transforms as tf
from .folder import (IMAGE_EXTENSIONS, DataError, FolderImageSet, ImageSet, TaskDataset,
                     list_class_dirs, list_images)
from .synthetic import SyntheticImageSet


def class_order(num_classes: int, seed: int, shuffle: bool = True) -> list[int]:
    """Sorted class ids 0..C-1, permuted by ``numpy.random.Generator(PCG64(seed))``."""
    ids = np.arange(num_classes)
    if shuffle:
        ids = np.random.Generator(np.random.PCG64(seed)).permutation(ids)
    return [int(i) for i in ids]


def split_tasks(order: list[int], num_tasks: int) -> list[list[int]]:
    """Cut the class order into ``num_tasks`` equal consecutive chunks; the class at position j
    of task t gets the global label ``t * classes_per_task + j``."""
    if num_tasks < 1 or len(order) % num_tasks:
        raise ValueError(f"{len(order)} classes cannot be split into {num_tasks} equal tasks "
                         "(dataset.num_tasks must divide the class count)")
    per = len(order) // num_tasks
    return [list(order[t * per:(t + 1) * per]) for t in range(num_tasks)]


@dataclass
class Benchmark:
    """Splits, class names (index = class id) and transforms to uint8 tensors, which
    ``normalize`` turns into float batches on the device (bitwise ToTensor + Normalize)."""
    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    train_transform: Callable
    eval_transform: Callable
    normalize: Callable  # uint8 batch -> float batch (Uint8Normalize)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tasks(self, num_tasks: int, seed: int, shuffle: bool = True) -> list[list[int]]:
        """Class ids of each task (PCG64(seed) permutation, equal chunks; docs/protocol.md)."""
        return split_tasks(class_order(self.num_classes, seed, shuffle), num_tasks)

    def identity(self, tasks: Sequence[Sequence[int]]) -> dict:
        """What a resumed run must find again: the class names of each task, the image
        count of every class in each split, and a SHA-256 of each split's sorted file list."""
        out: dict = {"benchmark": self.name,
                     "task_classes": [[self.classes[c] for c in t] for t in tasks],
                     "counts": {}, "files_sha256": {}}
        for split, images in (("train", self.train), ("val", self.val)):
            counts = Counter(images.targets)
            out["counts"][split] = {name: counts.get(c, 0) for c, name in enumerate(self.classes)}
            keys = sorted(images.key(i) for i in range(len(images)))
            out["files_sha256"][split] = hashlib.sha256("\n".join(keys).encode()).hexdigest()
        return out

    def task_dataset(self, split: str, classes: Sequence[int], label_offset: int,
                     transform: Optional[Callable] = None, skip_bad: bool = False,
                     images: Optional[ImageSet] = None) -> TaskDataset:
        """``classes`` of ``split``, read from ``images`` if given (e.g. a decoded cache)."""
        if images is None:
            images = self.train if split == "train" else self.val
        if transform is None:
            transform = self.train_transform if split == "train" else self.eval_transform
        return TaskDataset(images, classes, label_offset, transform, skip_bad)


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    num_classes: Optional[int]  # expected class count; None = any
    build: Callable[..., Benchmark]
    prepare_hint: str  # how to produce the data layout


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    if spec.name in BENCHMARKS:
        raise KeyError(f"benchmark {spec.name!r} registered twice")
    BENCHMARKS[spec.name] = spec
    return spec


def check_task_split(num_classes: int, num_tasks: int, where: str, classes: str) -> None:
    """``num_tasks`` must divide the ``classes`` (words), leaving >= 2 per task: with one class,
    the head has a single logit and the cross-entropy is 0 whatever the model does."""
    if num_classes % num_tasks:
        raise DataError(f"dataset.num_tasks = {num_tasks} does not divide {classes}")
    if num_classes // num_tasks < 2:
        raise DataError(f"dataset.num_tasks = {num_tasks} leaves {num_classes // num_tasks} class "
                        f"per task for the {num_classes} classes of {where}: a one-class task "
                        "has nothing to learn (cross-entropy over one logit is 0). Use at most "
                        f"{num_classes // 2} task{'s' if num_classes // 2 > 1 else ''}")


def _check_links(base: Path, split: str, classes: list[str], fix: str) -> None:
    """Refuse links into a moved source now, not at the first read (the dataset tools link)."""
    broken = []
    for sub, images_only in [("", False)] + [(f"{c}/", True) for c in classes]:
        broken += sorted((f"{split}/{sub}{e.name}", os.readlink(e.path))
                         for e in os.scandir(base / split / sub)
                         if (not images_only or e.name.lower().endswith(IMAGE_EXTENSIONS))
                         and e.is_symlink() and not os.path.exists(e.path))
    if broken:
        where, target = broken[0]
        raise DataError(f"dataset root {base}: {len(broken)} symbolic link(s) in {split}/ point to "
                        f"missing files, e.g. {where} -> {target}; the source they link to has "
                        f"moved or been deleted. Restore it, or prepare the dataset again.{fix}")


def check_folder_root(root: Optional[str], name: str, expected: Optional[int], num_tasks: int,
                      hint: str) -> list[str]:
    """Validate ``root/train/<class>/`` and ``root/val/<class>/``; return the sorted classes."""
    fix = f" {hint}" if hint else ""
    if not root:
        raise DataError(f"dataset.root is not set for benchmark '{name}': pass --set "
                        f"dataset.root=DIR (a folder with train/<class>/ and val/<class>/).{fix}")
    base = Path(root).expanduser()
    if not base.is_dir():
        if base.is_symlink():
            raise DataError(f"dataset root {base} is a symbolic link to {os.readlink(base)}, which "
                            f"does not exist (moved or deleted?).{fix}")
        raise DataError(f"dataset root {base} does not exist.{fix}")
    missing = [s for s in ("train", "val") if not (base / s).is_dir()]
    if missing:
        raise DataError(f"dataset root {base} has no {' or '.join(m + '/' for m in missing)} "
                        f"folder: expected {base}/train/<class>/ and {base}/val/<class>/.{fix}")
    for split in ("train", "val"):
        _check_links(base, split, [], fix)
    train_classes, val_classes = (list_class_dirs(base / s) for s in ("train", "val"))
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"dataset root {base}: train/ and val/ hold different classes "
                        f"(only in train: {only_t[:5]}{' ...' if len(only_t) > 5 else ''}; "
                        f"only in val: {only_v[:5]}{' ...' if len(only_v) > 5 else ''}).{fix}")
    if not train_classes:
        raise DataError(f"dataset root {base}: train/ holds no class folders.{fix}")
    if expected is not None and len(train_classes) != expected:
        raise DataError(f"dataset root {base} has {len(train_classes)} classes, benchmark "
                        f"'{name}' has {expected}.{fix}")
    check_task_split(len(train_classes), num_tasks, f"{base}",
                     f"the {len(train_classes)} classes of {base}; pick a divisor")
    for split in ("train", "val"):
        _check_links(base, split, train_classes, fix)
        empty = [c for c in train_classes if not list_images(base / split / c)]
        if empty:
            raise DataError(f"dataset root {base}: {len(empty)} empty class folder(s) in {split}/, "
                            f"e.g. {split}/{empty[0]}/ (no image files).{fix}")
    return train_classes


def _folder_benchmark(name: str, expected: Optional[int], policy: str, interp: str,
                      eval_mode: str, tool: str = "", options: str = "") -> None:
    """Register an image-folder benchmark: AutoAugment ``policy``, ``interp`` for crop and resize,
    the official ``eval_mode``; ``tool`` (with ``options``) prepares its folder."""
    hint = f"Prepare it with: {tool}{options}" if tool else ""

    def build(cfg, img_size: int, num_tasks: int, mean: Sequence[float], std: Sequence[float],
              name: str) -> Benchmark:
        classes = check_folder_root(cfg.root, name, expected, num_tasks, hint)
        root = Path(cfg.root).expanduser()
        mode = eval_mode if cfg.eval_transform == "official" else cfg.eval_transform
        return Benchmark(
            name, classes, FolderImageSet(root / "train", classes, "train", cfg.max_image_pixels),
            FolderImageSet(root / "val", classes, "val", cfg.max_image_pixels),
            tf.train_transform(img_size, policy, interp, mean, std, "uint8"),
            tf.eval_transform(img_size, mode, interp, mean, std, "uint8"), tf.Uint8Normalize(mean, std))
    register_benchmark(BenchmarkSpec(name, expected, build, tool or "any dataset in the "
                                     "ROOT/train/<class>/, ROOT/val/<class>/ layout"))


def _build_synthetic(cfg, img_size: int, num_tasks: int, mean: Sequence[float],
                     std: Sequence[float], name: str) -> Benchmark:
    s = cfg.synthetic
    if cfg.eval_transform != "official":
        raise DataError(f"dataset.eval_transform = {cfg.eval_transform!r} applies to image-folder "
                        "benchmarks; the synthetic benchmark has one evaluation transform "
                        "(leave it at 'official')")
    check_task_split(s.num_classes, num_tasks, "the synthetic benchmark",
                     f"dataset.synthetic.num_classes = {s.num_classes}")
    return Benchmark(
        name, [f"synthetic_{s.class_offset + c}" for c in range(s.num_classes)],
        *(SyntheticImageSet(s.num_classes, per, s.image_size, s.seed, s.class_offset, split)
          for split, per in (("train", s.train_per_class), ("val", s.val_per_class))),
        tf.tensor_train_transform(img_size, mean, std, "uint8"),
        tf.tensor_eval_transform(img_size, mean, std, "uint8"), tf.Uint8Normalize(mean, std))


_folder_benchmark("folder", None, "imagenet", "bilinear", "squash_crop")
_folder_benchmark("cifar100", 100, "cifar10", "bicubic", "resize",
                  "python tools/split_cifar100.py --src cifar-100-python.tar.gz --dst DIR")
_folder_benchmark("imagenet_r", 200, "imagenet", "bilinear", "squash_crop",
                  "python tools/split_imagenet_r.py --src imagenet-r.tar --dst DIR",
                  " [--train-list F --val-list F]")
_folder_benchmark("domainnet", 200, "imagenet", "bilinear", "squash_crop",
                  "python tools/split_domainnet.py --src DOMAINNET_ROOT --dst DIR "
                  "--train-list F --val-list F")
register_benchmark(BenchmarkSpec("synthetic", None, _build_synthetic, "generated in memory"))


def build_benchmark(cfg, img_size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                    std: Sequence[float] = (0.5, 0.5, 0.5)) -> Benchmark:
    """Check and build the benchmark named by ``cfg.name`` (a DatasetConfig)."""
    spec = BENCHMARKS.get(cfg.name)
    if spec is None:
        raise DataError(f"unknown benchmark dataset.name = {cfg.name!r}; known: "
                        f"{', '.join(sorted(BENCHMARKS))}")
    return spec.build(cfg, img_size=img_size, num_tasks=cfg.num_tasks, mean=mean, std=std,
                      name=cfg.name)
