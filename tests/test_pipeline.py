"""The data pipeline: decode-once cache, uint8 batches normalised on the device, worker counts,
multi-epoch loading. What must hold: the same seed and image give bitwise the same tensor as
the float pipeline of the workers, and a run's results do not depend on the cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from datasets import transforms as tf
from datasets.cache import DecodedImages, TaskImageCache
from datasets.folder import BadImageError, FolderImageSet
from datasets.normalize import Uint8Normalize
from splitlora import loading
from splitlora.config import ConfigError, load_config
from tests.conftest import main_inprocess, tiny_overrides

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _noise(rng: np.random.Generator, w: int, h: int, channels: int = 3) -> np.ndarray:
    small = rng.integers(0, 256, size=(max(1, h // 4), max(1, w // 4), channels), dtype=np.uint8)
    return np.asarray(Image.fromarray(small.squeeze(-1) if channels == 1 else small).resize((w, h)))


def _image_folder(root: Path) -> tuple[FolderImageSet, list[int]]:
    """One class of images of several formats and modes (JPEG, PNG, grey, palette, RGBA) and
    a corrupt file; returns the set and the indices of the readable images."""
    rng = np.random.default_rng(0)
    d = root / "c0"
    d.mkdir(parents=True)
    Image.fromarray(_noise(rng, 60, 45)).save(d / "a.jpg", quality=90)
    Image.fromarray(_noise(rng, 40, 40)).save(d / "b.png")
    Image.fromarray(_noise(rng, 30, 50, 1)).save(d / "c.png")  # mode L
    Image.fromarray(_noise(rng, 36, 28)).convert("P").save(d / "d.gif")  # palette
    Image.fromarray(np.dstack([_noise(rng, 24, 32), _noise(rng, 24, 32, 1)])).save(d / "e.png")
    (d / "f.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    images = FolderImageSet(root, ["c0"], "train")
    return images, [0, 1, 2, 3, 4]


def test_decoded_images_give_the_same_pixels_sizes_and_errors(tmp_path):
    base, good = _image_folder(tmp_path)
    cached = DecodedImages(base, range(len(base)), threads=2)
    for i in good:
        a, b = base.load(i), cached.load(i)
        assert b.mode == a.mode == "RGB" and b.size == a.size
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # the memory is exactly the RGB pixels of the readable images
    assert cached.nbytes == sum(3 * base.load(i).size[0] * base.load(i).size[1] for i in good)
    with pytest.raises(BadImageError) as from_disk:
        base.load(5)
    with pytest.raises(BadImageError) as from_cache:
        cached.load(5)
    assert str(from_cache.value) == str(from_disk.value) and "f.jpg" in str(from_cache.value)


@pytest.mark.parametrize("policy,interp,mean,std", [
    ("imagenet", "bilinear", MEAN, STD), ("cifar10", "bicubic", IMAGENET_MEAN, IMAGENET_STD)])
def test_new_path_is_bitwise_the_old_train_transform(tmp_path, policy, interp, mean, std):
    """Old: decode from disk, AutoAugment, crop, ToTensor, Normalize in the worker. New: the
    decoded cache, the same augmentation to uint8, normalised on the batch. Same seed, same
    tensor, bit for bit."""
    base, good = _image_folder(tmp_path)
    cached = DecodedImages(base, good)
    old = tf.train_transform(24, policy, interp, mean, std)
    new = tf.train_transform(24, policy, interp, mean, std, output="uint8")
    norm = Uint8Normalize(mean, std)
    for seed in range(8):
        for i in good:
            torch.manual_seed(seed)
            want = old(base.load(i))
            torch.manual_seed(seed)
            got = new(cached.load(i))
            assert got.dtype == torch.uint8
            assert torch.equal(norm(got[None])[0], want), (seed, i)


@pytest.mark.parametrize("mode", tf.EVAL_MODES)
def test_new_path_is_bitwise_the_old_eval_transform(tmp_path, mode):
    base, good = _image_folder(tmp_path)
    cached = DecodedImages(base, good)
    norm = Uint8Normalize(IMAGENET_MEAN, IMAGENET_STD)
    old = tf.eval_transform(24, mode, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    new = tf.eval_transform(24, mode, "bicubic", IMAGENET_MEAN, IMAGENET_STD, output="uint8")
    batch_old = torch.stack([old(base.load(i)) for i in good])
    batch_new = norm(torch.stack([new(cached.load(i)) for i in good]))
    assert torch.equal(batch_new, batch_old)


def test_tensor_transforms_of_the_synthetic_benchmark_are_bitwise_unchanged():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    norm = Uint8Normalize(MEAN, STD)
    for make in (tf.tensor_train_transform, tf.tensor_eval_transform):
        old, new = make(16, MEAN, STD), make(16, MEAN, STD, output="uint8")
        for i, img in enumerate(images):
            torch.manual_seed(i)
            want = old(img)
            torch.manual_seed(i)
            assert torch.equal(norm(new(img)[None])[0], want)


def test_normalization_is_the_affine_map_and_keeps_shape():
    norm = Uint8Normalize(IMAGENET_MEAN, IMAGENET_STD)
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    y = norm(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    ref = (x.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.double).view(3, 1, 1)) \
        / torch.tensor(IMAGENET_STD, dtype=torch.double).view(3, 1, 1)
    assert torch.allclose(y.double(), ref, atol=1e-6)
    with pytest.raises(TypeError):
        norm(x.float())


def test_task_cache_holds_one_task_and_falls_back_when_too_large(tmp_path, monkeypatch):
    base, _ = _image_folder(tmp_path)
    cache = TaskImageCache("on", threads=1)
    first = cache.for_classes(base, [0])
    assert isinstance(first, DecodedImages) and cache.for_classes(base, [0]) is first
    assert TaskImageCache("off").for_classes(base, [0]) is base
    import datasets.cache as cache_mod
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 2 * 1000)  # 1000-byte budget
    assert TaskImageCache("auto").for_classes(base, [0]) is base
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 2**40)
    assert isinstance(TaskImageCache("auto").for_classes(base, [0]), DecodedImages)


def test_auto_workers_use_the_cpus_of_this_process(monkeypatch):
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loading.resolve_workers("auto") == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 torchrun processes share the 16 CPUs
    assert loading.resolve_workers("auto") == 3
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loading.resolve_workers("auto") == 0 and loading.resolve_workers(5) == 5


def test_num_workers_and_cache_keys_are_validated():
    cfg = load_config(None)
    assert cfg.train.num_workers == "auto" and cfg.eval.num_workers == "auto"
    assert cfg.dataset.cache == "auto"
    assert load_config(None, ["train.num_workers=3"]).train.num_workers == 3
    assert load_config(None, ["dataset.cache=false"]).dataset.cache is False
    for bad, key in (("train.num_workers=many", "train.num_workers"),
                     ("eval.num_workers=-1", "eval.num_workers"),
                     ("train.num_workers=2.5", "train.num_workers"),
                     ("dataset.cache=maybe", "dataset.cache")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [bad])


class _Indexed(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.tensor(i), 0


def _epochs(stream) -> list[list[int]]:
    return [torch.cat([x for x, _ in stream]).tolist() for _ in range(stream.epochs)]


def test_epoch_stream_serves_whole_shuffled_epochs_whatever_the_workers():
    ds = _Indexed()
    stream = loading.EpochStream(ds, 4, 0, 3, torch.device("cpu"), seed=1)
    assert len(stream) == 3 and stream.sampler is None
    orders = _epochs(stream)
    assert all(sorted(o) == list(range(10)) for o in orders)  # each epoch: every sample once
    assert orders[0] != orders[1] != orders[2]
    assert sorted(_epochs(stream)[0]) == list(range(10))  # more epochs than planned still work
    # the order is the seed's, with or without a worker process
    assert _epochs(loading.EpochStream(ds, 4, 1, 3, torch.device("cpu"), seed=1)) == orders
    assert _epochs(loading.EpochStream(ds, 4, 0, 3, torch.device("cpu"), seed=2)) != orders


def test_epoch_stream_sets_the_distributed_epoch_and_skips_an_unfinished_epoch():
    ds = _Indexed()
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=7)
    stream = loading.EpochStream(ds, 2, 0, 3, torch.device("cpu"), sampler=sampler)
    ref = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=7)
    orders = []
    for e in range(3):
        ref.set_epoch(e)
        orders.append(list(ref))
    assert orders[0] != orders[1]
    it = iter(stream)
    assert next(it)[0].tolist() == orders[0][:2]  # leave epoch 0 after one batch
    assert torch.cat([x for x, _ in stream]).tolist() == orders[1]
    assert torch.cat([x for x, _ in stream]).tolist() == orders[2]
    ref.set_epoch(3)  # a fourth epoch: the epoch number runs on
    assert torch.cat([x for x, _ in stream]).tolist() == list(ref)


def _folder(root: Path, bad_train: bool = False) -> Path:
    rng = np.random.default_rng(1)
    for split, per in (("train", 6), ("val", 3)):
        for c in range(4):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for j in range(per):
                Image.fromarray(_noise(rng, 20 + 4 * c, 16 + 2 * j)).save(d / f"{j}.jpg")
    if bad_train:
        (root / "train" / "class2" / "1.jpg").write_bytes(b"\xff\xd8\xff broken")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_run_results_do_not_depend_on_the_cache(tmp_path, workers):
    """A folder run (one unreadable training image skipped) gives the same metrics with the
    decode cache on and off; with workers, training reads through one EpochStream."""
    data = _folder(tmp_path / "data", bad_train=True)
    metrics = {}
    for cache in ("true", "false"):
        sets = tiny_overrides(epochs=2) + [
            "dataset.name=folder", f"dataset.root={data}", "dataset.num_tasks=2",
            f"dataset.cache={cache}", f"train.num_workers={workers}", "train.expand_times=2",
            "dataset.skip_bad_images=true", "train.batch_size=4"]
        out = tmp_path / f"run_{cache}"
        proc = main_inprocess([x for s in sets for x in ("--set", s)] + ["--output", str(out)],
                              tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[cache] = json.loads((out / "metrics.json").read_text())
        env = json.loads((out / "env.json").read_text())
        assert env["data_loading"]["train_workers"] == workers
    assert metrics["true"]["bad_images"]["count"] == 1
    for m in metrics.values():
        m.pop("config_hash")
    assert metrics["true"] == metrics["false"]
