"""Data-parallel runs (splitlora/run/experiment.py): torchrun with 2 CPU processes (gloo)
against one process, 2 GPUs (NCCL) where there are two; shard sampling and the split of the
global batch."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from splitlora.run.experiment import DistInfo, per_rank_batch, shard_indices
from splitlora.run.fileio import ConfigError
from tests.helpers import (HANG_GUARD_S, NEEDS_CUDA, TWO_GPUS, main_inprocess, popen_main,
                           read_metrics, sets, synthetic, tiny_overrides)

# Training is made a no-op for the backbone (LoRA lr 1e-12) and the covariance pass uses the
# deterministic eval transform, so that both runs see the same features: what is compared is
# the distributed covariance machinery (unpadded shards, all-reduce of one pass at a time).
SETS = tiny_overrides(epochs=2) + [
    "train.lr=1e-12", "method.splitlora.cov_pass=plain", "method.splitlora.alpha=1.0",
    "train.batch_size=16", "train.expand_times=2"] + synthetic(3, 6, 21, 7)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[*NEEDS_CUDA, pytest.mark.skipif(
    not TWO_GPUS, reason="needs 2 CUDA GPUs")])])
def test_two_process_run_matches_single_process_covariance_and_split(tmp_path, device):
    """On 2 GPUs: NCCL, fp32 matmuls (TF32 off) so that the sums compare as on the CPU."""
    extra = [f"device={device}"] + (["train.tf32=false"] if device == "cuda" else [])
    ddp = popen_main(sets(SETS + extra) + ["--output", "ddp"], tmp_path, launcher=TORCHRUN)
    single = main_inprocess(sets(SETS + extra) + ["--output", "single"], tmp_path)
    ddp_out, ddp_err = ddp.communicate(timeout=HANG_GUARD_S)
    assert ddp.returncode == 0, ddp_err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    assert "2 processes" in ddp_err
    # one complete set of outputs, written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        ".lock", "checkpoint.pt", "config.yaml", "env.json", "log.txt", "metrics.json"]
    assert (tmp_path / "ddp" / ".lock").read_text() == ""  # rank 0 held it and released it
    assert ddp_out.count("final accuracy") == 1
    m_ddp, m_one = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
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


@pytest.mark.parametrize("n, world", [(10, 2), (7, 2), (5, 3), (2, 4)])
def test_shards_are_disjoint_unpadded_and_complete(n, world):
    shards = [list(shard_indices(range(n), DistInfo(r, world, r))) for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))
    assert [len(s) for s in shards] == [len(shard_indices(range(n), DistInfo(r, world, r)))
                                        for r in range(world)]


def test_global_batch_is_split_over_processes():
    assert per_rank_batch(256, DistInfo(0, 4, 0), "train.batch_size") == 64
    with pytest.raises(ConfigError, match="train.batch_size"):
        per_rank_batch(10, DistInfo(0, 4, 0), "train.batch_size")
