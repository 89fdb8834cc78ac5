"""Benchmarks registered by name: where the images come from, how many classes, which
transforms. ``build_benchmark(dataset_cfg, ...)`` checks the data and returns a
:class:`Benchmark` that serves task datasets."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import transforms as tf
from .folder import (IMAGE_EXTENSIONS, DataError, FolderImageSet, ImageSet, TaskDataset,
                     list_class_dirs, list_images)
from .normalize import Uint8Normalize
from .synthetic import SyntheticImageSet
from .tasks import class_order, split_tasks


@dataclass
class Benchmark:
    """The two splits of a benchmark, its class names (index = class id) and transforms.

    ``train_transform`` / ``eval_transform`` give normalised float tensors. A benchmark may
    also give ``*_uint8`` variants that stop before ToTensor + Normalize, with ``normalize``
    doing that step on a whole uint8 batch on the device (bitwise the same result).
    """

    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    train_transform: Callable
    eval_transform: Callable
    train_transform_uint8: Optional[Callable] = None
    eval_transform_uint8: Optional[Callable] = None
    normalize: Optional[Callable] = None  # uint8 batch -> float batch (Uint8Normalize)

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

    def transform(self, kind: str, uint8: bool = False) -> Callable:
        """The ``kind`` ('train' or 'eval') transform; with ``uint8`` the variant whose
        normalisation is left to :attr:`normalize` (when the benchmark has one)."""
        if uint8 and self.normalize is not None:
            return self.train_transform_uint8 if kind == "train" else self.eval_transform_uint8
        return self.train_transform if kind == "train" else self.eval_transform

    def task_dataset(self, split: str, classes: Sequence[int], label_offset: int,
                     transform: Optional[Callable] = None, skip_bad: bool = False,
                     uint8: bool = False, images: Optional[ImageSet] = None) -> TaskDataset:
        """The samples of ``classes`` of ``split``, read from ``images`` when given (e.g. a
        decoded cache of the split's images), else from the split itself."""
        if images is None:
            images = self.train if split == "train" else self.val
        if transform is None:
            transform = self.transform("train" if split == "train" else "eval", uint8)
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


def check_classes_per_task(num_classes: int, num_tasks: int, where: str) -> None:
    """A task needs at least two classes: with one, its head has a single logit and the
    cross-entropy is 0 whatever the model does (nothing is learned, nothing can be forgotten)."""
    if num_classes // num_tasks < 2:
        raise DataError(f"dataset.num_tasks = {num_tasks} leaves {num_classes // num_tasks} class "
                        f"per task for the {num_classes} classes of {where}: a one-class task "
                        "has nothing to learn (cross-entropy over one logit is 0). Use at most "
                        f"{num_classes // 2} task{'s' if num_classes // 2 > 1 else ''}")


def broken_links(folder: Path, images_only: bool = False) -> list[tuple[str, str]]:
    """(name, target) of the symbolic links in ``folder`` (to image files only, if asked) whose
    target is missing."""
    out = []
    for e in os.scandir(folder):
        if images_only and not e.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if e.is_symlink() and not os.path.exists(e.path):
            out.append((e.name, os.readlink(e.path)))
    return sorted(out)


def _check_links(base: Path, split: str, classes: list[str], fix: str) -> None:
    """Class folders and images that are links into a source that has moved are refused here,
    not at the first read (the dataset tools link into the source by default)."""
    broken = [(f"{split}/{n}", t) for n, t in broken_links(base / split)]
    for c in classes:
        broken += [(f"{split}/{c}/{n}", t) for n, t in broken_links(base / split / c, True)]
    if broken:
        where, target = broken[0]
        raise DataError(f"dataset root {base}: {len(broken)} symbolic link(s) in {split}/ point to "
                        f"missing files, e.g. {where} -> {target}; the source they link to has "
                        "moved or been deleted. Restore it, or prepare the dataset again."
                        f"{fix}")


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
    train_classes = list_class_dirs(base / "train")
    val_classes = list_class_dirs(base / "val")
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
    if len(train_classes) % num_tasks:
        raise DataError(f"dataset.num_tasks = {num_tasks} does not divide the {len(train_classes)} "
                        f"classes of {base}; pick a divisor")
    check_classes_per_task(len(train_classes), num_tasks, f"{base}")
    for split in ("train", "val"):
        _check_links(base, split, train_classes, fix)
        empty = [c for c in train_classes if not list_images(base / split / c)]
        if empty:
            raise DataError(f"dataset root {base}: {len(empty)} empty class folder(s) in {split}/, "
                            f"e.g. {split}/{empty[0]}/ (no image files).{fix}")
    return train_classes


def _folder_builder(policy: str, interp: str, eval_mode: str, expected: Optional[int],
                    hint: str) -> Callable[..., Benchmark]:
    """An image-folder benchmark: AutoAugment ``policy``, ``interp`` for the crop and the
    evaluation resize, ``eval_mode`` the official evaluation transform (see
    :func:`transforms.eval_transform`; ``dataset.eval_transform`` may choose another)."""
    def build(cfg, img_size: int, num_tasks: int, mean: Sequence[float], std: Sequence[float],
              name: str) -> Benchmark:
        classes = check_folder_root(cfg.root, name, expected, num_tasks, hint)
        root = Path(cfg.root).expanduser()
        mode = eval_mode if cfg.eval_transform == "official" else cfg.eval_transform
        return Benchmark(
            name=name, classes=classes,
            train=FolderImageSet(root / "train", classes, "train", cfg.max_image_pixels),
            val=FolderImageSet(root / "val", classes, "val", cfg.max_image_pixels),
            train_transform=tf.train_transform(img_size, policy, interp, mean, std),
            eval_transform=tf.eval_transform(img_size, mode, interp, mean, std),
            train_transform_uint8=tf.train_transform(img_size, policy, interp, mean, std, "uint8"),
            eval_transform_uint8=tf.eval_transform(img_size, mode, interp, mean, std, "uint8"),
            normalize=Uint8Normalize(mean, std),
        )
    return build


def _build_synthetic(cfg, img_size: int, num_tasks: int, mean: Sequence[float],
                     std: Sequence[float], name: str) -> Benchmark:
    s = cfg.synthetic
    if cfg.eval_transform != "official":
        raise DataError(f"dataset.eval_transform = {cfg.eval_transform!r} applies to image-folder "
                        "benchmarks; the synthetic benchmark has one evaluation transform "
                        "(leave it at 'official')")
    if s.num_classes % num_tasks:
        raise DataError(f"dataset.num_tasks = {num_tasks} does not divide "
                        f"dataset.synthetic.num_classes = {s.num_classes}")
    check_classes_per_task(s.num_classes, num_tasks, "the synthetic benchmark")
    return Benchmark(
        name=name, classes=[f"synthetic_{s.class_offset + c}" for c in range(s.num_classes)],
        train=SyntheticImageSet(s.num_classes, s.train_per_class, s.image_size, s.seed,
                                s.class_offset, "train"),
        val=SyntheticImageSet(s.num_classes, s.val_per_class, s.image_size, s.seed,
                              s.class_offset, "val"),
        train_transform=tf.tensor_train_transform(img_size, mean, std),
        eval_transform=tf.tensor_eval_transform(img_size, mean, std),
        train_transform_uint8=tf.tensor_train_transform(img_size, mean, std, "uint8"),
        eval_transform_uint8=tf.tensor_eval_transform(img_size, mean, std, "uint8"),
        normalize=Uint8Normalize(mean, std),
    )


register_benchmark(BenchmarkSpec(
    "folder", None, _folder_builder("imagenet", "bilinear", "squash_crop", None, ""),
    "any dataset in the ROOT/train/<class>/, ROOT/val/<class>/ layout"))
register_benchmark(BenchmarkSpec(
    "cifar100", 100, _folder_builder("cifar10", "bicubic", "resize", 100,
                                     "Prepare it with: python tools/split_cifar100.py --src "
                                     "cifar-100-python.tar.gz --dst DIR"),
    "python tools/split_cifar100.py --src cifar-100-python.tar.gz --dst DIR"))
register_benchmark(BenchmarkSpec(
    "imagenet_r", 200, _folder_builder("imagenet", "bilinear", "squash_crop", 200,
                                       "Prepare it with: python tools/split_imagenet_r.py --src "
                                       "imagenet-r.tar --dst DIR [--train-list F --val-list F]"),
    "python tools/split_imagenet_r.py --src imagenet-r.tar --dst DIR"))
register_benchmark(BenchmarkSpec(
    "domainnet", 200, _folder_builder("imagenet", "bilinear", "squash_crop", 200,
                                      "Prepare it with: python tools/split_domainnet.py --src "
                                      "DOMAINNET_ROOT --dst DIR --train-list F --val-list F"),
    "python tools/split_domainnet.py --src DOMAINNET_ROOT --dst DIR --train-list F --val-list F"))
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
