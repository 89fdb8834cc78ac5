"""log.tensorboard and log.wandb: what a run reports to TensorBoard and Weights & Biases."""
from __future__ import annotations

import importlib.util
import os
import time

import pytest

from tests.helpers import assert_one_error, main_inprocess, small_args, tiny_args

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (requirements-extra.txt)")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb is not installed (requirements-extra.txt)")


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run folder, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@needs_tensorboard
def test_tensorboard_holds_steps_epochs_tasks_and_splits(tmp_path):
    out = tmp_path / "run"
    proc = main_inprocess(tiny_args(["log.tensorboard=true"]) + ["--output", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scalars = _scalars(out / "tensorboard")
    steps = [s for s, _ in scalars["train/loss"]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 4  # one point per step
    for tag in ("lr/lora", "lr/head", "train/acc", "train/images_per_s", "acc/task_0",
                "acc/task_1", "acc/seen_tasks", "acc/avg_incremental", "forgetting",
                "split/frozen_dims/block_0", "split/interference/block_1"):
        assert tag in scalars, tag
    import json
    metrics = json.loads((out / "metrics.json").read_text())
    assert scalars["acc/seen_tasks"][-1][1] == pytest.approx(metrics["final_acc"])
    assert scalars["split/frozen_dims/block_0"][0][1] == metrics["split_dims"][0][0]


@needs_tensorboard
def test_a_resumed_run_continues_the_same_tensorboard_run(tmp_path):
    from tests.fault_injection import injected
    args = tiny_args(["log.tensorboard=true"], epochs=2)
    out = tmp_path / "run"
    with injected("enospc:metrics.json:1"):  # the run stops after task 0's checkpoint
        stopped = main_inprocess(args + ["--output", str(out)], cwd=tmp_path)
    assert stopped.returncode == 2
    first = _scalars(out / "tensorboard")["train/loss"]
    resumed = main_inprocess(args + ["--output", str(out)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in out.iterdir() if p.name == "tensorboard"] == ["tensorboard"]
    loss = _scalars(out / "tensorboard")["train/loss"]
    steps = [s for s, _ in loss]
    assert steps == list(range(1, len(steps) + 1))  # one run, no step twice, no gap
    assert loss[: len(first)] == first


@needs_wandb
def test_wandb_offline_writes_a_run_folder_with_the_logged_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    proc = main_inprocess(small_args(["log.wandb=offline"]) + ["--output", str(out)],
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    keys = (b"train/loss", b"acc/seen_tasks", b"split/frozen_dims/block_0", b"run_dir")
    deadline = time.time() + 120  # W&B's writer process may finish its file just after finish()
    while True:
        data = b"".join(p.read_bytes() for p in runs[0].rglob("*.wandb"))
        if all(k in data for k in keys) or time.time() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key in data, key


def test_a_log_package_that_is_missing_is_one_error_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    proc = main_inprocess(small_args(["log.wandb=offline"]) + ["--output", str(out)],
                          cwd=tmp_path)
    assert_one_error(proc, "log.wandb", "wandb", "requirements-extra.txt")
    assert not out.exists()


def test_only_the_main_process_logs(tmp_path, monkeypatch):
    """Under torchrun a process of rank > 0 writes nothing, TensorBoard included."""
    from splitlora.run import cli
    made = []
    monkeypatch.setattr(cli, "RunLogger", lambda *a, **k: made.append(a))
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "run"
    main_inprocess(small_args(["log.tensorboard=true"]) + ["--output", str(out)],
                   cwd=tmp_path)
    assert made == [] and not (out / "tensorboard").exists() and not os.path.exists(out / "log.txt")
