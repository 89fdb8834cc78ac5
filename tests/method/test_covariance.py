"""The feature covariance (splitlora/covariance.py): collection through forward pre-hooks
equals a direct computation, accumulates over tasks, leaves no hook behind; one second moment
per block serves k and v."""
from __future__ import annotations

import pytest
import torch

from models import ContinualViT
from splitlora.covariance import CovarianceAccumulator, collect_covariance, covariance_pass
from tests.helpers import make_learner, make_task, tiny_vit


def _norm1_outputs(model: ContinualViT, x: torch.Tensor) -> list[torch.Tensor]:
    """The qkv inputs of every block, captured independently of the accumulator."""
    outs: list[torch.Tensor] = []
    handles = [b.norm1.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
               for b in model.backbone.blocks]
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
    model, learner = make_learner("splitlora", alpha=1.0, cov_dtype="float64")
    assert model.adapters[0].targets == ("k", "v")
    x = torch.randn(6, 3, 16, 16)
    task = make_task(0, lambda: DataLoader(TensorDataset(x, torch.zeros(6)), batch_size=4))
    learner.before_task(task)
    learner.after_task(task)  # B = 0 (no training): the model is unchanged
    assert learner.cov.num_layers == len(model.backbone.blocks) == 2
    for layer, feats in enumerate(_norm1_outputs(model, x)):
        tokens = feats.reshape(-1, 32).double()
        assert torch.allclose(learner.cov.covariance(layer), tokens.T @ tokens / tokens.shape[0],
                              atol=1e-6)
    learner.before_task(make_task(1, lambda: []))
    for adapter, basis in zip(model.adapters, learner.bases):
        proj = (basis @ basis.T).float()
        for a in adapter.lora_A:  # the k slice and the v slice
            assert torch.allclose(a @ proj, a, atol=1e-6)


def test_covariance_pass_counts_images_and_leaves_no_hook():
    model = ContinualViT(tiny_vit(), rank=2)
    acc = CovarianceAccumulator(2, 32, torch.float64)
    batches = [(torch.randn(3, 3, 16, 16), torch.zeros(3)), (torch.randn(2, 3, 16, 16), torch.zeros(2))]
    assert covariance_pass(model, model.adapters, batches, acc, torch.device("cpu")) == 5
    assert acc.counts.tolist() == [5 * 17, 5 * 17]
    assert all(len(a._forward_pre_hooks) == 0 for a in model.adapters)
    with pytest.raises(ValueError, match="3 modules but the accumulator has 2 layers"):
        with collect_covariance(list(model.adapters) + [model.adapters[0]], acc):
            pass


def test_state_roundtrip_and_empty_covariance():
    acc = CovarianceAccumulator(1, 4)
    assert torch.equal(acc.covariance(0), torch.zeros(4, 4))
    acc.update(0, torch.randn(10, 4))
    other = CovarianceAccumulator(1, 4)
    other.load_state_dict(acc.state_dict())
    assert torch.equal(other.sums, acc.sums) and torch.equal(other.counts, acc.counts)
    with pytest.raises(ValueError, match="shape"):
        CovarianceAccumulator(2, 4).load_state_dict(acc.state_dict())
    total = CovarianceAccumulator(1, 4)
    total.add_(acc)
    total.add_(acc)
    assert torch.equal(total.counts, 2 * acc.counts) and torch.allclose(total.sums, 2 * acc.sums)
