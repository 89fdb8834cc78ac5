"""Benchmarks (datasets/benchmarks.py, tasks.py): data checks naming the problem and the tool
that prepares the data, class order and labels, the protocol's transforms, and main.py end to
end on the output of each dataset tool (fabricated raw data in the real formats, tiny model)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode

from datasets import BENCHMARKS, DataError, build_benchmark, class_order, split_tasks
from splitlora.run.fileio import ConfigError
from tests import helpers as fab
from tests.helpers import REPO, main_inprocess, make_config, sets, tiny_overrides


def _folder_root(root: Path, classes: list[str], per_split: int = 2, val_classes=None) -> Path:
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for c in names:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_split):
                fab.tiny_jpeg(root / split / c / f"{i}.jpg", hash((split, c, i)) % 1000)
    return root


def _dataset_cfg(**kw):
    return make_config({"dataset": kw}).dataset


def test_class_order_is_numpy_pcg64_permutation_and_labels_follow_tasks():
    order = class_order(10, seed=0)
    assert order == list(np.random.Generator(np.random.PCG64(0)).permutation(10))
    assert class_order(10, 0, shuffle=False) == list(range(10))
    tasks = split_tasks(order, 5)
    assert [len(t) for t in tasks] == [2] * 5 and sum(tasks, []) == order
    with pytest.raises(ValueError, match="divide"):
        split_tasks(order, 3)


def test_task_dataset_labels_are_task_offset_plus_position(tmp_path):
    root = _folder_root(tmp_path / "d", [f"c{i}" for i in range(4)])
    bench = build_benchmark(_dataset_cfg(name="folder", root=str(root), num_tasks=2), 16)
    tasks = bench.tasks(2, seed=0)
    ds = bench.task_dataset("val", tasks[1], label_offset=2)
    assert len(ds) == 4
    for i in range(len(ds)):
        cls = bench.val.targets[ds.indices[i]]
        assert ds.labels[i] == 2 + tasks[1].index(cls)
    img, label = ds[0]
    assert tuple(img.shape) == (3, 16, 16) and label in (2, 3)


@pytest.mark.parametrize("name, policy, crop, eval_ops", [
    ("cifar100", "cifar10", InterpolationMode.BICUBIC, ["Resize"]),
    ("imagenet_r", "imagenet", InterpolationMode.BILINEAR, ["Resize", "CenterCrop"]),
    ("domainnet", "imagenet", InterpolationMode.BILINEAR, ["Resize", "CenterCrop"]),
])
def test_transforms_follow_the_protocol(tmp_path, name, policy, crop, eval_ops):
    n = BENCHMARKS[name].num_classes
    root = _folder_root(tmp_path / name, [f"{i:03d}" for i in range(n)], per_split=1)
    bench = build_benchmark(_dataset_cfg(name=name, root=str(root), num_tasks=5), 224)
    aa, rrc = bench.train_transform.transforms[:2]
    assert type(aa).__name__ == "AutoAugment" and aa.policy.value == policy
    assert aa.interpolation == InterpolationMode.BILINEAR
    assert type(rrc).__name__ == "RandomResizedCrop" and rrc.size == (224, 224)
    assert rrc.interpolation == crop and rrc.antialias and rrc.scale == (0.08, 1.0)
    assert bench.normalize.mean == (0.5,) * 3 and bench.normalize.std == (0.5,) * 3


def _official_eval(name: str):
    """The official evaluation pipeline (utils/dataset_builder.py of the official code),
    written out with torchvision: CIFAR-100 Resize((224, 224)) bicubic; the others
    Resize((256, 256)) bilinear -- both sides, aspect ratio not kept -- then CenterCrop(224)."""
    from torchvision import transforms as T
    if name == "cifar100":
        ops = [T.Resize((224, 224), antialias=True, interpolation=InterpolationMode.BICUBIC)]
    else:
        ops = [T.Resize((256, 256), antialias=True, interpolation=InterpolationMode.BILINEAR),
               T.CenterCrop(224)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


@pytest.mark.parametrize("name", ["imagenet_r", "domainnet", "folder", "cifar100"])
def test_eval_transform_is_pixel_equal_to_the_official_one(tmp_path, name):
    from PIL import Image
    n = BENCHMARKS[name].num_classes or 8
    root = _folder_root(tmp_path / name, [f"{i:03d}" for i in range(n)], per_split=1)
    bench = build_benchmark(_dataset_cfg(name=name, root=str(root), num_tasks=4), 224)
    rng = np.random.default_rng(0)  # a non-square image with detail everywhere
    img = Image.fromarray(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8))
    ours = bench.normalize(bench.eval_transform(img))  # uint8, normalised on the device
    assert ours.shape == (3, 224, 224)
    assert torch.equal(ours, _official_eval(name)(img))
    if name != "cifar100":  # the aspect-keeping variant is another image (the old default)
        keep = build_benchmark(_dataset_cfg(name=name, root=str(root), num_tasks=4,
                                            eval_transform="shorter_side_crop"), 224)
        assert not torch.allclose(keep.normalize(keep.eval_transform(img)), ours, atol=0.1)


def test_eval_transform_choice_is_validated():
    with pytest.raises(ConfigError, match="dataset.eval_transform.*official"):
        _dataset_cfg(name="folder", eval_transform="center")


@pytest.mark.parametrize("case, words", [
    ("missing_root", ["does not exist", "split_cifar100.py"]),
    ("no_val", ["no val/", "split_cifar100.py"]),
    ("class_mismatch", ["different classes", "only in train"]),
    ("wrong_count", ["has 4 classes", "has 100"]),
    ("empty_class", ["empty class folder"]),
    ("not_divisible", ["does not divide"]),
])
def test_bad_data_root_names_the_problem_and_the_tool(tmp_path, case, words):
    root = tmp_path / "data"
    name, num_tasks = "cifar100", 4
    if case == "no_val":
        (root / "train" / "a").mkdir(parents=True)
    elif case == "class_mismatch":
        _folder_root(root, ["a", "b"], val_classes=["a", "c"])
        name = "folder"
    elif case == "wrong_count":
        _folder_root(root, ["a", "b", "c", "d"])
    elif case == "empty_class":
        _folder_root(root, ["a", "b"])
        (root / "val" / "b" / "0.jpg").unlink()
        (root / "val" / "b" / "1.jpg").unlink()
        name, num_tasks = "folder", 1
    elif case == "not_divisible":
        _folder_root(root, ["a", "b", "c"])
        name, num_tasks = "folder", 2
    with pytest.raises(DataError) as err:
        build_benchmark(_dataset_cfg(name=name, root=str(root), num_tasks=num_tasks), 16)
    for w in words:
        assert w in str(err.value)


def _fabricate_domainnet(root: Path) -> tuple[Path, Path, Path]:
    train, val = [], []
    for label in range(200):
        for domain in ("real", "sketch"):
            d = root / "domainnet" / domain / f"class_{label}"
            d.mkdir(parents=True)
            for j in range(2):
                name = f"{domain}_{label:03d}_{j:06d}.jpg"
                fab.tiny_jpeg(d / name, label * 10 + j)
                (train if j == 0 else val).append(f"{domain}/class_{label}/{name} {label}")
    return (root / "domainnet", fab.write_lines(root / "train.txt", train),
            fab.write_lines(root / "val.txt", val))


@pytest.mark.parametrize("bench_name, config", [
    ("cifar100", "cifar100_10.yaml"), ("imagenet_r", "imagenet_r_5.yaml"),
    ("domainnet", "domainnet_5.yaml")])
def test_main_trains_on_each_tools_output(tmp_path, bench_name, config):
    raw, dst = tmp_path / "raw", tmp_path / bench_name
    raw.mkdir()
    if bench_name == "cifar100":
        cifar = fab.make_cifar100(raw, num_classes=100, train_per_class=2, test_per_class=1)
        proc = fab.run_tool("split_cifar100.py", "--src", cifar.targz, "--dst", dst)
    elif bench_name == "imagenet_r":
        classes = {f"n{i:08d}": (f"class{i}", 3) for i in range(200)}
        folder, _ = fab.make_imagenet_r(raw, classes)
        proc = fab.run_tool("split_imagenet_r.py", "--src", folder, "--dst", dst)
    else:
        src, tr, va = _fabricate_domainnet(raw)
        proc = fab.run_tool("split_domainnet.py", "--src", src, "--dst", dst,
                           "--train-list", tr, "--val-list", va)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    proc = main_inprocess(["--config", str(REPO / "configs" / config), "--output", str(out),
                           *sets(tiny_overrides(epochs=1) + [f"dataset.root={dst}"])], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    expected_tasks = int(config.split("_")[-1].split(".")[0])
    assert m["complete"] and m["num_tasks"] == expected_tasks
    per_task_val = {"cifar100": 10, "imagenet_r": 40, "domainnet": 80}[bench_name]
    assert m["eval_counts"]["total"][-1] == [per_task_val] * expected_tasks
