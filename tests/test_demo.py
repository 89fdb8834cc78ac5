"""The demo as a newcomer runs it: `python main.py`, then the seq_lora baseline and the
joint-training upper bound."""
from __future__ import annotations

import json

import pytest

from tests.conftest import main_inprocess, run_main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    first = run_main([], cwd=cwd)  # pretrains the demo backbone into .cache/ on first use
    assert first.returncode == 0, first.stderr[-3000:]
    return cwd, first


def _metrics(cwd, rel: str) -> dict:
    return json.loads((cwd / rel / "metrics.json").read_text())


def test_demo_splitlora_forgets_less_than_sequential_lora(demo):
    cwd, first = demo
    assert (cwd / ".cache" / "demo_backbone_v1.safetensors").is_file()
    assert "final accuracy" in first.stdout
    base = main_inprocess(["--set", "method.name=seq_lora"], cwd)  # its own default directory
    assert base.returncode == 0, base.stderr[-3000:]
    assert "pretraining" not in base.stderr  # the cached backbone is loaded, not retrained
    split = _metrics(cwd, "runs/demo/splitlora/seed0")
    seq = _metrics(cwd, "runs/demo/seq_lora/seed0")
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
    cwd, _ = demo
    joint = main_inprocess(["--set", "method.name=joint"], cwd)
    assert joint.returncode == 0, joint.stderr[-3000:]
    assert "n/a (one task)" in joint.stdout
    split = _metrics(cwd, "runs/demo/splitlora/seed0")
    m = _metrics(cwd, "runs/demo/joint/seed0")
    assert m["num_tasks"] == 1 and m["complete"] and m["forgetting"] is None
    assert sorted(m["task_classes"][0]) == list(range(20))
    assert m["eval_counts"]["total"][0] == [20 * 24]  # every val image, in one task
    assert m["final_acc"] >= split["final_acc"]
