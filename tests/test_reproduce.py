"""reproduce.py as a user runs it: all five settings on fabricated data, on CPU."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from splitlora.config import load_config
from tests.conftest import HANG_GUARD_S, REPO, tiny_overrides

SETTINGS = ["imagenet_r_5", "imagenet_r_10", "imagenet_r_20", "cifar100_10", "domainnet_5"]


def _fabricate(root: Path) -> Path:
    """Folder-layout data with the real class counts, one tiny image per class and split."""
    spec = {"cifar100": [f"{i:02d}" for i in range(100)],
            "imagenet-r": [f"n{i:08d}" for i in range(200)],
            "domainnet": [f"{i:03d}" for i in range(200)]}
    for name, classes in spec.items():
        for split in ("train", "val"):
            for i, c in enumerate(classes):
                d = root / name / split / c
                d.mkdir(parents=True)
                Image.new("RGB", (8, 8), ((i * 7) % 256, (i * 13) % 256, 90)).save(d / "0.png")
    return root


def reproduce(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "reproduce.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def _tiny_sets() -> list[str]:
    out = []
    for item in tiny_overrides(epochs=1):
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    work = tmp_path_factory.mktemp("repro")
    data = _fabricate(work / "data")
    proc = reproduce("--data-root", "data", "--seeds", "0", "1", "--gpus", "cpu",  # relative paths
                     "--cpu-jobs", "2", "--output", "results", *_tiny_sets(), cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return work, data, proc


def test_summary_has_five_rows_with_paper_columns_and_aggregated_seeds(reproduced):
    work, _, proc = reproduced
    rows = list(csv.DictReader((work / "results" / "summary.csv").open()))
    assert [r["setting"] for r in rows] == SETTINGS
    paper = {"imagenet_r_5": ("81.92", ""), "imagenet_r_10": ("81.0", ""),
             "imagenet_r_20": ("78.82", "84.57"), "cifar100_10": ("90.33", "93.7"),
             "domainnet_5": ("84.31", "88.99")}
    for r in rows:
        assert (r["paper_final_acc"], r["paper_avg_inc_acc"]) == paper[r["setting"]]
        assert r["seeds"] == "0 1" and r["num_runs"] == "2"
        finals = [json.loads((work / "results" / "runs" / r["setting"] / f"seed{s}" /
                              "metrics.json").read_text())["final_acc"] for s in (0, 1)]
        assert float(r["final_acc_mean"]) == pytest.approx(sum(finals) / 2)
        assert float(r["diff_final_acc"]) == pytest.approx(sum(finals) / 2 - float(r["paper_final_acc"]))
        assert float(r["final_acc_std"]) == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)
        assert r["wall_minutes_mean"] != ""
    md = (work / "results" / "summary.md").read_text()
    assert md.count("\n| ") == 6  # header + five settings
    assert "| cifar100_10 | splitlora | 0 1 |" in md and "90.33" in md
    assert "| cifar100_10 |" in proc.stdout  # the table is printed at the end
    env = json.loads((work / "results" / "runs" / "cifar100_10" / "seed0" / "env.json").read_text())
    for key in ("python", "torch", "timm", "torchvision", "cuda", "gpu", "git_commit",
                "start_time", "end_time", "weights"):
        assert key in env
    assert env["end_time"] is not None and env["weights"]["source"].startswith("random")


def test_second_invocation_skips_finished_runs(reproduced):
    work, data, _ = reproduced
    metrics = work / "results" / "runs" / "imagenet_r_20" / "seed1" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    proc = reproduce("--data-root", str(data), "--seeds", "0", "1", "--gpus", "cpu",
                     "--output", str(work / "results"), *_tiny_sets(), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "10 already done, 0 to run" in proc.stdout
    assert "[start]" not in proc.stdout
    assert metrics.stat().st_mtime_ns == before


def test_dry_run_lists_the_plan_and_writes_nothing(reproduced, tmp_path):
    work, data, _ = reproduced
    out = tmp_path / "fresh"
    proc = reproduce("--data-root", str(data), "--seeds", "0", "2", "--gpus", "cpu",
                     "--output", str(out), "--dry-run", *_tiny_sets(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 10
    assert all("pending" in ln and "main.py" in ln and " cpu " in ln for ln in lines)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # against the finished results: seeds 0 done, seed 2 pending
    proc = reproduce("--data-root", str(data), "--seeds", "0", "2", "--gpus", "cpu", "--output",
                     str(work / "results"), "--dry-run", "--only", "cifar100_10", *_tiny_sets(),
                     cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2 and " done " in lines[0] and " pending " in lines[1]


def test_missing_data_roots_are_all_reported_before_anything_starts(tmp_path):
    data = tmp_path / "data"
    (data / "imagenet-r" / "train").mkdir(parents=True)  # present but incomplete
    proc = reproduce("--data-root", str(data), "--gpus", "cpu", "--output",
                     str(tmp_path / "results"), *_tiny_sets(), cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr
    assert "nothing was started" in err and "Traceback" not in err
    for tool in ("split_cifar100.py", "split_imagenet_r.py", "split_domainnet.py"):
        assert tool in err
    assert str(data / "cifar100") in err and str(data / "domainnet") in err
    assert "no val/" in err
    assert not (tmp_path / "results").exists()


def test_unknown_setting_is_refused(tmp_path):
    proc = reproduce("--data-root", str(tmp_path), "--only", "cifar10_10", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "cifar10_10" in proc.stderr and "cifar100_10" in proc.stderr


# The published protocol (docs/protocol.md), written out here key for key.
PROTOCOL = {
    "model.name": "vit_base_patch16_224.augreg2_in21k_ft_in1k", "model.img_size": 224,
    "model.pretrained": True, "lora.rank": 10, "lora.targets": ["k", "v"],
    "method.name": "splitlora", "split.alpha": 20.0, "split.cov_pass": "faithful",
    "train.lr": 1e-3, "train.head_lr": 1e-2, "train.weight_decay": 5e-5, "train.epochs": 10,
    "train.milestones": [5, 8], "train.gamma": 0.1, "train.expand_times": 10,
    "train.batch_size": 256, "eval.batch_size": 100, "train.temperature": 30.0,
    "train.amp": "auto", "dataset.shuffle_classes": True, "seed": 0,
    "model.head_init": "official", "dataset.eval_transform": "official", "method.a_norm": "decay",
}
SETTING_DATA = {"imagenet_r_5": ("imagenet_r", 5), "imagenet_r_10": ("imagenet_r", 10),
                "imagenet_r_20": ("imagenet_r", 20), "cifar100_10": ("cifar100", 10),
                "domainnet_5": ("domainnet", 5)}


@pytest.mark.parametrize("setting", SETTINGS)
def test_configs_equal_the_protocol_key_for_key(setting):
    cfg = load_config(REPO / "configs" / f"{setting}.yaml")
    for key, expected in PROTOCOL.items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == expected, f"{setting}: {key} = {node!r}, protocol {expected!r}"
    assert (cfg.dataset.name, cfg.dataset.num_tasks) == SETTING_DATA[setting]
    assert cfg.name == setting


def test_ablation_suite_reuses_splitlora_runs_and_tabulates_the_paper_ablation(reproduced):
    work, _, _ = reproduced
    proc = reproduce("--suite", "ablation", "--only", "imagenet_r_5", "--data-root", "data",
                     "--seeds", "0", "--gpus", "cpu", "--cpu-jobs", "2", "--output", "results",
                     *_tiny_sets(), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 runs: 1 already done, 2 to run" in proc.stdout  # splitlora came from the main suite
    rows = list(csv.DictReader((work / "results" / "ablation.csv").open()))
    assert [(r["method"], r["paper_final_acc"]) for r in rows] == [
        ("splitlora", "81.92"), ("threshold", "78.92"), ("random_a", "76.57")]
    for method in ("threshold", "random_a"):
        m = json.loads((work / "results" / "runs" / "imagenet_r_5" / method / "seed0" /
                        "metrics.json").read_text())
        assert m["method"] == method and m["complete"]
        assert (m["split_dims"][0] is None) == (method == "random_a")
    assert "Ablation" in (work / "results" / "ablation.md").read_text()


def test_ablation_dry_run_plans_three_settings_by_three_methods(tmp_path):
    proc = reproduce("--suite", "ablation", "--data-root", str(tmp_path), "--dry-run", "--gpus", "cpu",
                     cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if "seed 0" in ln]
    assert len(lines) == 9
    assert sum("method.name=threshold" in ln for ln in lines) == 3
    assert sum("random_a" in ln for ln in lines) == 3
