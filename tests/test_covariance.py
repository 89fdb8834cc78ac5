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


def test_k_and_v_are_split_by_one_covariance_of_their_shared_input():
    """The learner keeps one second moment per block (k and v read the same qkv input), equal
    to the direct computation, and draws both slices' A inside that block's free subspace."""
    from torch.utils.data import DataLoader, TensorDataset

    from splitlora.config import from_dict
    from splitlora.learner import build_learner
    cfg = from_dict({"lora": {"rank": 2, "targets": ["k", "v"]}, "device": "cpu",
                     "split": {"alpha": 1.0, "cov_dtype": "float64"}})
    model = ContinualViT(tiny_vit(), rank=2, targets=("k", "v"))
    learner = build_learner(cfg, model, torch.device("cpu"))
    learner.before_task(0, 3)
    x = torch.randn(6, 3, 16, 16)
    learner.after_task(0, lambda: DataLoader(TensorDataset(x, torch.zeros(6)), batch_size=4),
                       progress=False)
    assert learner.cov.num_layers == len(model.blocks) == 2
    for layer, feats in enumerate(_norm1_outputs(model, x)):  # B = 0: the model is unchanged
        tokens = feats.reshape(-1, 32).double()
        assert torch.allclose(learner.cov.covariance(layer), tokens.T @ tokens / tokens.shape[0],
                              atol=1e-6)
    learner.before_task(1, 3)
    for adapter, basis in zip(model.adapters, learner.bases):
        proj = (basis @ basis.T).float()
        for a in adapter.lora_A:  # the k slice and the v slice
            assert torch.allclose(a @ proj, a, atol=1e-6)


def test_state_roundtrip_and_empty_covariance():
    acc = CovarianceAccumulator(1, 4)
    assert torch.equal(acc.covariance(0), torch.zeros(4, 4))
    acc.update(0, torch.randn(10, 4))
    other = CovarianceAccumulator(1, 4)
    other.load_state_dict(acc.state_dict())
    assert torch.equal(other.sums, acc.sums) and torch.equal(other.counts, acc.counts)
