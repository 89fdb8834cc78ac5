"""Data-parallel runs: torchrun with 2 CPU processes (gloo) against one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.conftest import HANG_GUARD_S, REPO, tiny_overrides

# Training is made a no-op for the backbone (LoRA lr 1e-12) and the covariance pass uses the
# deterministic eval transform, so that both runs see the same features: what is compared is
# the distributed covariance machinery (unpadded shards, all-reduce of one pass at a time).
SETS = tiny_overrides(epochs=2) + [
    "train.lr=1e-12", "split.cov_pass=plain", "split.alpha=1.0", "train.batch_size=16",
    "train.expand_times=2", "dataset.name=synthetic", "dataset.num_tasks=3",
    "dataset.synthetic={num_classes: 6, train_per_class: 21, val_per_class: 7, image_size: 16}"]


def _run(launcher: list[str], out: str, cwd) -> subprocess.CompletedProcess:
    args = [x for s in SETS for x in ("--set", s)]
    return subprocess.run([*launcher, str(REPO / "main.py"), "--no-progress", *args, "--output", out],
                          cwd=cwd, capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def test_two_process_run_matches_single_process_covariance_and_split(tmp_path):
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"], "ddp", tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 processes" in ddp.stderr
    single = _run([sys.executable], "single", tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    # one complete set of outputs, written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        ".lock", "checkpoint.pt", "config.yaml", "env.json", "log.txt", "metrics.json"]
    assert (tmp_path / "ddp" / ".lock").read_text() == ""  # rank 0 held it and released it
    assert ddp.stdout.count("final accuracy") == 1
    m_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    m_one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert m_ddp["complete"] and m_ddp["tasks_done"] == 3
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2
    # every val sample counted exactly once (7 per class, odd: the shards are uneven)
    assert m_ddp["eval_counts"]["total"] == m_one["eval_counts"]["total"]
    assert m_ddp["eval_counts"]["total"][2] == [14, 14, 14]
    c_ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["learner"]["cov"]
    c_one = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["learner"]["cov"]
    assert torch.equal(c_ddp["counts"], c_one["counts"])
    assert c_one["counts"][0] == 2 * 42 * 17  # two splits, 42 images of 17 tokens each
    scale = float(c_one["sums"].abs().max())
    assert torch.allclose(c_ddp["sums"], c_one["sums"], rtol=1e-5, atol=1e-6 * scale)
    assert m_ddp["split_dims"] == m_one["split_dims"]
    assert any(k > 2 for dims in m_one["split_dims"][:-1] for k in dims)  # a non-trivial split
