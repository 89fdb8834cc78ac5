"""main.py as a user runs it (its entry point in this process; the real processes are in
test_resilience.py, test_distributed.py and test_demo.py): the results files of a run, every
registered method on a demo-sized run, the published suites' methods, a complete run left
alone, the resolved config, the full-size protocol model on a CPU, and the same run on a GPU
where there is one."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from splitlora.methods import METHODS
from splitlora.run.experiment import Experiment
from splitlora.run.rundir import RunDir
from tests.helpers import (DEMO, DEVICES, assert_one_error, main_inprocess, make_config,
                           method_names, published_suites, read_metrics, sets,
                           snapshot, synthetic, tiny_overrides)

SYNTH = synthetic(3, 6, 8, 5)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    proc = main_inprocess(sets(tiny_overrides() + SYNTH) + ["--output", "run"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def test_run_writes_well_formed_results(finished_run):
    cwd, proc = finished_run
    out = cwd / "run"
    assert f"results: {Path('run') / 'metrics.json'}" in proc.stdout
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoint.pt", "config.yaml", "env.json", "log.txt", "metrics.json"]
    m = read_metrics(out)
    assert m["complete"] is True and m["num_tasks"] == 3 and m["tasks_done"] == 3
    mat = m["acc_matrix"]
    assert len(mat) == 3 and all(len(r) == 3 for r in mat)
    for t in range(3):
        for j in range(3):
            assert (mat[t][j] is None) == (j > t)
            if j <= t:
                assert 0.0 <= mat[t][j] <= 100.0
    # final accuracy is the sample-weighted accuracy over all tasks after the last one
    correct, total = m["eval_counts"]["correct"][2], m["eval_counts"]["total"][2]
    assert total == [10, 10, 10]
    assert m["final_acc"] == pytest.approx(100.0 * sum(correct) / sum(total))
    assert m["avg_inc_acc"] == pytest.approx(sum(m["acc_per_task"]) / 3)
    expected_forgetting = sum(max(mat[t][j] for t in range(j, 3)) - mat[2][j] for j in range(2)) / 2
    assert m["forgetting"] == pytest.approx(expected_forgetting)
    assert len(m["split_dims"]) == 3 and m["split_dims"][2] is None
    assert all(len(d) == 2 and all(2 <= k <= 32 for k in d) for d in m["split_dims"][:2])
    assert sorted(c for task in m["task_classes"] for c in task) == list(range(6))
    assert "config_hash" not in m  # a run's identity is its config.yaml
    assert "accuracy matrix" in proc.stdout and "final accuracy" in proc.stdout
    assert "forgetting" in proc.stdout
    log = (out / "log.txt").read_text()
    assert "task 0 epoch 1/2" in log and "task 3/3 done" in log


def test_checkpoint_and_env_record_the_run(finished_run):
    cwd, _ = finished_run
    out = cwd / "run"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["format_version"] == 2 and state["tasks_done"] == 3
    assert state["config"]["method"] == {"name": "splitlora", "splitlora": {
        "cov_pass": "faithful", "cov_dtype": "float32", "cov_amp": False, "a_norm": "decay",
        "train_a": False, "alpha": 20.0}}
    assert state["steps_done"] == 3 * 2 * 1  # tasks x epochs x steps (16 images, batch 16)
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["world_size"] == 1 and env["end_time"]
    assert env["weights"] == {"source": "random init (model.pretrained: false)"}
    assert len(env["timing"]["task_seconds"]) == 3


def test_rerun_of_complete_run_does_nothing(finished_run):
    cwd, _ = finished_run
    before = snapshot(cwd / "run")
    proc = main_inprocess(sets(tiny_overrides() + SYNTH) + ["--output", "run"], cwd)
    assert proc.returncode == 0
    assert "already holds the complete results" in proc.stdout
    assert snapshot(cwd / "run") == before


def test_different_config_in_same_directory_is_refused(finished_run):
    cwd, _ = finished_run
    out = cwd / "run"
    before = snapshot(out)
    proc = main_inprocess(sets(tiny_overrides() + SYNTH + ["method.name=seq_lora"]) +
                          ["--output", "run"], cwd)
    assert_one_error(proc, "method.name", "--output")
    assert snapshot(out) == before


@pytest.mark.parametrize("method", method_names())
def test_every_registered_method_completes_a_demo_sized_run(tmp_path, method):
    """The demo's config (its tasks, epochs, schedule), on a tiny backbone without
    pretraining: every method the registry knows runs to the end."""
    proc = main_inprocess(["--config", DEMO, "--output", "run", *sets(tiny_overrides(epochs=2) + [
        f"method.name={method}", "dataset.synthetic={train_per_class: 8, val_per_class: 4}"])],
        tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = read_metrics(tmp_path / "run")
    tasks = 1 if METHODS[method].single_task else 5
    assert m["complete"] and m["method"] == method and m["num_tasks"] == tasks
    assert sum(m["eval_counts"]["total"][-1]) == 20 * 4  # every val image of every class
    assert len(m["split_dims"]) == tasks and m["split_dims"][-1] is None
    if tasks > 1:
        assert m["forgetting"] is not None and math.isfinite(m["forgetting"])


def test_the_published_suites_run_registered_methods_only():
    suites = published_suites()
    assert suites and all(set(s["methods"]) <= set(METHODS) for s in suites.values())


def test_print_config_resolves_overrides(tmp_path):
    proc = main_inprocess(["--set", "train.epochs=3", "--seed", "4", "--print-config",
                           "--set", "method.name=inflora"], tmp_path)
    assert proc.returncode == 0
    assert "epochs: 3" in proc.stdout and "seed: 4" in proc.stdout
    assert "inflora:\n    lamb: 0.98" in proc.stdout and "splitlora:" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_full_protocol_model_builds_and_trains_one_step_on_cpu(tmp_path):
    """ViT-B/16 at 224 px, the published configuration with random weights."""
    cfg = make_config({"device": "cpu", "model": {"pretrained": False},
                       "dataset": {"name": "synthetic", "num_tasks": 2,
                                   "synthetic": {"num_classes": 4, "train_per_class": 2,
                                                 "val_per_class": 1}},
                       "train": {"batch_size": 2, "num_workers": 0}})
    assert cfg.model.name == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert cfg.model.img_size == 224 and cfg.lora.rank == 10
    exp = Experiment(cfg, RunDir(tmp_path), progress=False)
    exp.build()
    model = exp.model
    assert len(model.adapters) == 12 and model.adapters[0].lora_A.shape == (2, 10, 768)
    task = exp.task(0)
    exp.learner.before_task(task)
    images, labels = next(iter(task.batches()))
    assert images.shape == (2, 3, 224, 224) and images.dtype == torch.float32
    lora, head = exp.learner.trainable(0)
    for p in lora + head:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lora + head, lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(images, 0) / 30.0, labels)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert all(a.lora_B.abs().max() > 0 for a in model.adapters)
    assert list(tmp_path.iterdir()) == []  # building writes nothing to the run directory


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_on_the_device(tmp_path, device):
    """On a GPU: AMP fp16 with the grad scaler (train.amp: auto), uint8 batches normalised on
    the device, fused attention; the figures are close to the CPU's."""
    proc = main_inprocess(sets(tiny_overrides() + SYNTH + [f"device={device}"]) + [
        "--output", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["device"].startswith(device) and "cache" in env["data_loading"]
    if device == "cuda":
        assert env["gpu"] and env["peak_gpu_mem_gib"] > 0
    m = read_metrics(tmp_path / "run")
    assert m["complete"] and all(math.isfinite(v) for v in m["acc_per_task"])
