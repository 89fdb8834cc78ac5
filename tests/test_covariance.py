"""Covariance collection through forward pre-hooks equals a direct computation."""
from __future__ import annotations

import torch

from models import ContinualViT
from splitlora.covariance import CovarianceAccumulator, collect_covariance
from tests.conftest import tiny_vit


def _norm1_outputs(model: ContinualViT, x: torch.Tensor) -> list[torch.Tensor]:
    """The qkv inputs of every block, captured independently of the accumulator."""
    outs: list[torch.Tensor] = []
    handles = [b.norm1.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
               for b in model.blocks]
    with torch.no_grad():
        model.features(x)
    for h in handles:
        h.remove()
    return outs


def test_hooks_equal_direct_second_moment_and_accumulate():
    model = ContinualViT(tiny_vit(), rank=2).eval()
    acc = CovarianceAccumulator(len(model.adapters), 32, torch.float64)
    x1, x2 = torch.randn(5, 3, 16, 16), torch.randn(3, 3, 16, 16)
    with collect_covariance(model.adapters, acc), torch.no_grad():
        model.features(x1)
    feats1 = _norm1_outputs(model, x1)
    with collect_covariance(model.adapters, acc), torch.no_grad():  # a later task: never reset
        model.features(x2)
    feats2 = _norm1_outputs(model, x2)
    for layer in range(2):
        tokens = torch.cat([feats1[layer].reshape(-1, 32), feats2[layer].reshape(-1, 32)]).double()
        assert acc.counts[layer] == tokens.shape[0] == (5 + 3) * 17  # CLS + 16 patches per image
        direct = tokens.T @ tokens / tokens.shape[0]
        assert torch.allclose(acc.covariance(layer), direct, atol=1e-6)
    # hooks are gone after the context
    assert all(len(a._forward_pre_hooks) == 0 for a in model.adapters)
    before = acc.sums.clone()
    with torch.no_grad():
        model.features(x1)
    assert torch.equal(acc.sums, before)


def test_hooks_removed_on_error():
    model = ContinualViT(tiny_vit(), rank=2)
    acc = CovarianceAccumulator(2, 32)
    try:
        with collect_covariance(model.adapters, acc):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(len(a._forward_pre_hooks) == 0 for a in model.adapters)


def test_one_accumulator_per_block_shared_by_k_and_v():
    model = ContinualViT(tiny_vit(), rank=2, targets=("k", "v"))
    acc = CovarianceAccumulator(len(model.adapters), 32)
    assert acc.sums.shape == (2, 32, 32)  # two blocks, not four (k, v) slices


def test_state_roundtrip_and_empty_covariance():
    acc = CovarianceAccumulator(1, 4)
    assert torch.equal(acc.covariance(0), torch.zeros(4, 4))
    acc.update(0, torch.randn(10, 4))
    other = CovarianceAccumulator(1, 4)
    other.load_state_dict(acc.state_dict())
    assert torch.equal(other.sums, acc.sums) and torch.equal(other.counts, acc.counts)
