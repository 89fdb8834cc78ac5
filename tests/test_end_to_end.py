"""main.py as a user runs it: tiny synthetic runs, results files, and clear config errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from splitlora.config import from_dict
from splitlora.experiment import Experiment
from tests.conftest import main_inprocess, run_main, tiny_overrides

SYNTH = ["dataset.name=synthetic", "dataset.num_tasks=3",
         "dataset.synthetic={num_classes: 6, train_per_class: 8, val_per_class: 5, image_size: 16}"]


def _sets(items: list[str]) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    proc = run_main(_sets(tiny_overrides() + SYNTH) + ["--output", "run"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def test_run_writes_well_formed_results(finished_run):
    cwd, proc = finished_run
    out = cwd / "run"
    assert f"results: {Path('run') / 'metrics.json'}" in proc.stdout
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
    m = json.loads((out / "metrics.json").read_text())
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
    assert "accuracy matrix" in proc.stdout and "final accuracy" in proc.stdout
    assert "forgetting" in proc.stdout
    log = (out / "log.txt").read_text()
    assert "task 0 epoch 1/2" in log and "task 3/3 done" in log


def test_rerun_of_complete_run_does_nothing(finished_run):
    cwd, _ = finished_run
    metrics = cwd / "run" / "metrics.json"
    before = metrics.read_bytes()
    proc = main_inprocess(_sets(tiny_overrides() + SYNTH) + ["--output", "run"], cwd)
    assert proc.returncode == 0
    assert "already holds the complete results" in proc.stdout
    assert metrics.read_bytes() == before


def test_different_config_in_same_directory_is_refused(finished_run):
    cwd, _ = finished_run
    out = cwd / "run"
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = main_inprocess(_sets(tiny_overrides() + SYNTH + ["method.name=seq_lora"]) +
                          ["--output", "run"], cwd)
    assert proc.returncode == 2
    assert "method.name" in proc.stderr and "--output" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_print_config_resolves_overrides(tmp_path):
    proc = run_main(["--set", "train.epochs=3", "--seed", "4", "--print-config"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "epochs: 3" in proc.stdout and "seed: 4" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_full_protocol_model_builds_and_trains_one_step_on_cpu(tmp_path):
    """ViT-B/16 at 224 px, the published configuration with random weights."""
    cfg = from_dict({"device": "cpu", "model": {"pretrained": False},
                     "dataset": {"name": "synthetic", "num_tasks": 2,
                                 "synthetic": {"num_classes": 4, "train_per_class": 2,
                                               "val_per_class": 1}},
                     "train": {"batch_size": 2, "num_workers": 0}})
    assert cfg.model.name == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert cfg.model.img_size == 224 and cfg.lora.rank == 10
    exp = Experiment(cfg, tmp_path, progress=False)
    exp.build()
    model = exp.model
    assert len(model.adapters) == 12 and model.adapters[0].lora_A.shape == (2, 10, 768)
    exp.learner.before_task(0, 2)
    images, labels = next(iter(exp.train_loader(0)))
    assert images.shape == (2, 3, 224, 224)
    lora, head = exp.learner.trainable(0)
    for p in lora + head:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lora + head, lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(images, 0) / 30.0, labels)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert all(a.lora_B.abs().max() > 0 for a in model.adapters)
