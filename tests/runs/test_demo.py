"""The demo as a newcomer runs it: ``python main.py``, then the seq_lora baseline and the
joint-training upper bound, real processes (started in the background when the session
begins; these tests run last). The demo backbone is pretrained once per test session, into
the session's ``SPLITLORA_CACHE`` (tests/conftest.py), and reused from there."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from splitlora.run.config import load_config
from splitlora.run.experiment import cache_dir, weights_path
from tests.helpers import DEMO, read_metrics


@pytest.fixture(scope="module")
def demo(demo_runs):
    """(working folder, {method: completed process}) of the demo's runs (started in the
    background at session start: tests/conftest.py)."""
    results = demo_runs.results()
    for name, proc in results.items():
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    return demo_runs.workdir, results


def test_the_demo_backbone_lands_in_the_cache_folder_not_the_working_directory(demo):
    cwd, runs = demo
    path = Path(os.environ["SPLITLORA_CACHE"]) / "demo_backbone_v1.safetensors"
    assert path.is_file() and weights_path(load_config(DEMO)) == path
    assert "pretraining the demo backbone" in runs["splitlora"].stderr  # the first run made it
    assert "final accuracy" in runs["splitlora"].stdout
    assert not (cwd / ".cache").exists()  # nothing beside the runs
    for name in ("seq_lora", "joint"):  # the cached backbone is loaded, not retrained
        assert "pretraining" not in runs[name].stderr


def test_demo_splitlora_forgets_less_than_sequential_lora(demo):
    cwd, _ = demo  # seq_lora: its own default directory
    split = read_metrics(cwd / "runs/demo/splitlora/seed0")
    seq = read_metrics(cwd / "runs/demo/seq_lora/seed0")
    assert (split["method"], seq["method"]) == ("splitlora", "seq_lora")
    assert split["num_tasks"] == seq["num_tasks"] == 5
    # CPU runs are deterministic: the same seed gives the same numbers on every run
    assert split["forgetting"] < seq["forgetting"]
    # SplitLoRA's adapters really were confined: frozen dimensions grow with the tasks
    dims = [sum(d) for d in split["split_dims"][:-1]]
    assert dims == sorted(dims) and dims[-1] > dims[0]


def test_demo_joint_training_reaches_splitloras_final_accuracy(demo):
    """The upper bound: all 20 classes as one task, one head, the same images x epochs x
    expand_times; nothing to forget (forgetting is null, not 0)."""
    cwd, runs = demo
    assert "n/a (one task)" in runs["joint"].stdout
    split = read_metrics(cwd / "runs/demo/splitlora/seed0")
    m = read_metrics(cwd / "runs/demo/joint/seed0")
    assert m["num_tasks"] == 1 and m["complete"] and m["forgetting"] is None
    assert sorted(m["task_classes"][0]) == list(range(20))
    assert m["eval_counts"]["total"][0] == [20 * 24]  # every val image, in one task
    assert m["final_acc"] >= split["final_acc"]


@pytest.mark.parametrize("env, expected", [
    ({"SPLITLORA_CACHE": "/c/s"}, "/c/s"),
    ({"XDG_CACHE_HOME": "/c/x"}, "/c/x/splitlora"),
    ({}, str(Path.home() / ".cache" / "splitlora")),
])
def test_cache_folder_resolution(monkeypatch, env, expected):
    for key in ("SPLITLORA_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cache_dir() == Path(expected)
    cfg = load_config(DEMO)
    assert weights_path(cfg) == Path(expected) / "demo_backbone_v1.safetensors"
    absolute = load_config(DEMO, ["model.pretrained_file=/w/b.safetensors"])
    assert weights_path(absolute) == Path("/w/b.safetensors")  # an absolute path is kept
    off = load_config(DEMO, ["demo_pretrain.enabled=false"])  # a user's file: as given
    assert weights_path(off) == Path("demo_backbone_v1.safetensors")
