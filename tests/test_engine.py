"""Engine pieces: compile fallback, shard sampling, batch splitting, bad-image batches."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from datasets import BadSample, skipping_collate
from splitlora.config import ConfigError
from splitlora.distributed import DistInfo, ShardSampler, per_rank_batch
from splitlora.engine import CompiledForward


def test_compile_falls_back_to_eager_when_unavailable(monkeypatch):
    lin = nn.Linear(3, 2)
    monkeypatch.setattr(torch, "compile", lambda m: (_ for _ in ()).throw(RuntimeError("no compiler")))
    fwd = CompiledForward(lin)
    x = torch.randn(4, 3)
    assert fwd.compiled is None and torch.equal(fwd(x), lin(x))


def test_compile_falls_back_when_the_compiled_call_fails(monkeypatch):
    lin = nn.Linear(3, 2)

    def broken(*a, **k):
        raise RuntimeError("backend failed")
    monkeypatch.setattr(torch, "compile", lambda m: broken)
    fwd = CompiledForward(lin)
    x = torch.randn(4, 3)
    assert torch.equal(fwd(x), lin(x)) and fwd.compiled is None  # permanently eager


@pytest.mark.parametrize("n, world", [(10, 2), (7, 2), (5, 3), (2, 4)])
def test_shards_are_disjoint_unpadded_and_complete(n, world):
    shards = [list(ShardSampler(range(n), DistInfo(r, world, r))) for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))
    assert [len(s) for s in shards] == [len(ShardSampler(range(n), DistInfo(r, world, r)))
                                        for r in range(world)]


def test_global_batch_is_split_over_processes():
    assert per_rank_batch(256, DistInfo(0, 4, 0), "train.batch_size") == 64
    with pytest.raises(ConfigError, match="train.batch_size"):
        per_rank_batch(10, DistInfo(0, 4, 0), "train.batch_size")


def test_skipping_collate_drops_and_reports_bad_samples():
    good = (torch.zeros(3, 2, 2), 1)
    batch = skipping_collate([good, BadSample("/x/a.jpg"), good])
    assert batch.images.shape == (2, 3, 2, 2) and batch.labels.tolist() == [1, 1]
    assert batch.bad == ["/x/a.jpg"]
    empty = skipping_collate([BadSample("/x/b.jpg")])
    assert empty.images is None and empty.bad == ["/x/b.jpg"]
