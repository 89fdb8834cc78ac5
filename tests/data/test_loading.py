"""How batches reach the model (datasets/loading.py): worker counts, whole shuffled epochs
through one multi-worker loader, batches with unreadable images dropped and recorded, uint8
batches normalised on the device; a run's results do not depend on the decode cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from datasets import BadSample, loading, skipping_collate
from datasets.transforms import Uint8Normalize
from tests.helpers import DEVICES, main_inprocess, noise_image, read_metrics, sets, tiny_overrides


def test_auto_workers_use_the_cpus_of_this_process(monkeypatch):
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loading.resolve_workers("auto") == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 torchrun processes share the 16 CPUs
    assert loading.resolve_workers("auto") == 3
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loading.resolve_workers("auto") == 0 and loading.resolve_workers(5) == 5


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
                Image.fromarray(noise_image(rng, 20 + 4 * c, 16 + 2 * j)).save(d / f"{j}.jpg")
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
        overrides = tiny_overrides(epochs=2) + [
            "dataset.name=folder", f"dataset.root={data}", "dataset.num_tasks=2",
            f"dataset.cache={cache}", f"train.num_workers={workers}", "train.expand_times=2",
            "dataset.skip_bad_images=true", "train.batch_size=4"]
        out = tmp_path / f"run_{cache}"
        proc = main_inprocess(sets(overrides) + ["--output", str(out)], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[cache] = read_metrics(out)
        env = json.loads((out / "env.json").read_text())
        assert env["data_loading"]["train_workers"] == workers
    assert metrics["true"]["bad_images"]["count"] == 1
    assert metrics["true"] == metrics["false"]


def test_skipping_collate_drops_and_reports_bad_samples():
    good = (torch.zeros(3, 2, 2), 1)
    batch = skipping_collate([good, BadSample("/x/a.jpg"), good])
    assert batch.images.shape == (2, 3, 2, 2) and batch.labels.tolist() == [1, 1]
    assert batch.bad == ["/x/a.jpg"]
    empty = skipping_collate([BadSample("/x/b.jpg")])
    assert empty.images is None and empty.bad == ["/x/b.jpg"]


def test_batches_with_bad_images_are_dropped_and_recorded():
    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return BadSample(f"/x/{i}.jpg") if i in (1, 3) else (torch.full((3, 2, 2), i), i)
    bad: set = set()
    got = [y.tolist() for _, y in loading.batches(Data(), 2, torch.device("cpu"), 0, shuffle=False,
                                                   bad_images=bad)]
    assert got == [[0], [2], [4]] and bad == {"/x/1.jpg", "/x/3.jpg"}


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_batches_are_normalised_on_the_device(device):
    norm = Uint8Normalize((0.5,) * 3, (0.5,) * 3)
    data = torch.utils.data.TensorDataset(torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8),
                                          torch.arange(4))
    (images, labels), = list(loading.batches(data, 4, torch.device(device), 0, shuffle=False,
                                             normalize=norm))
    assert images.device.type == device and images.dtype == torch.float32
    assert torch.equal(images.cpu(), norm(data.tensors[0])) and labels.device.type == "cpu"
    floats = torch.utils.data.TensorDataset(torch.zeros(2, 3, 2, 2), torch.arange(2))
    (same, _), = list(loading.batches(floats, 2, torch.device(device), 0, shuffle=False,
                                      normalize=norm))
    assert torch.equal(same.cpu(), torch.zeros(2, 3, 2, 2))  # floats pass as they are
