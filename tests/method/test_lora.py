"""The LoRA qkv wrapper (models/lora.py): identity at init, merge equivalence, the target
slices, fused and unfused attention (on the CPU, and on a GPU where there is one)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import ContinualViT, LoRAQKV, inject_lora
from tests.helpers import DEVICES, tiny_vit


def _set_fused(model: nn.Module, fused: bool) -> None:
    for block in model.blocks:
        block.attn.fused_attn = fused


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False])
def test_wrapped_equals_original_at_init(fused, device):
    base = tiny_vit()
    _set_fused(base, fused)
    ref = copy.deepcopy(base).eval().to(device)
    model = ContinualViT(base, rank=3).eval().to(device)
    x = torch.randn(4, 3, 16, 16, device=device)
    with torch.no_grad():
        expected = ref(x)
        assert torch.equal(model.features(x), expected)  # no adapter yet
        for a in model.adapters:  # a fresh adapter: random A, B = 0
            a.set_adapter(torch.randn_like(a.lora_A))
        assert torch.allclose(model.features(x), expected, atol=1e-6)
    assert isinstance(model.backbone.blocks[0].attn.qkv, LoRAQKV)
    kept = model.backbone.blocks[0].attn.qkv.base_layer  # the original Linear, kept as base layer
    assert isinstance(kept, nn.Linear) and torch.equal(kept.weight, ref.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False])
def test_merged_equals_unmerged_after_training_steps(fused, device):
    torch.manual_seed(1)
    model = ContinualViT(tiny_vit(), rank=3).to(device)
    _set_fused(model.backbone, fused)
    model.heads.add_head(5).to(device)
    for a in model.adapters:
        a.set_adapter(torch.randn_like(a.lora_A) * 0.2)
    params = [a.lora_B for a in model.adapters] + list(model.heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(5):
        x = torch.randn(8, 3, 16, 16, device=device)
        y = torch.randint(0, 5, (8,), device=device)
        loss = nn.functional.cross_entropy(model(x, 0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(a.lora_B.abs().max() > 0 for a in model.adapters)
    x = torch.randn(6, 3, 16, 16, device=device)
    with torch.no_grad():
        unmerged = model(x)
        model.merge_adapters()
        merged = model(x)
    assert all(not a.active and a.lora_B.abs().max() == 0 for a in model.adapters)
    assert torch.allclose(merged, unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets", [("k", "v"), ("q",), ("q", "v"), ("q", "k", "v")])
def test_update_lands_on_the_target_slices_only(targets):
    lin = nn.Linear(8, 24)
    wrap = LoRAQKV(copy.deepcopy(lin), rank=2, targets=targets)
    wrap.set_adapter(torch.randn_like(wrap.lora_A))
    with torch.no_grad():
        wrap.lora_B.normal_()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        delta = wrap(x) - lin(x)
        expected = torch.zeros_like(delta)
        for i, t in enumerate(targets):
            rows = wrap.slice_rows(t)
            expected[..., rows] = x @ (wrap.lora_B[i] @ wrap.lora_A[i]).T
    assert torch.allclose(delta, expected, atol=1e-5)
    for s in ("q", "k", "v"):
        if s not in targets:
            assert delta[..., wrap.slice_rows(s)].abs().max() == 0
    assert torch.allclose(wrap.delta_weight(), torch.cat(
        [(wrap.lora_B[targets.index(s)] @ wrap.lora_A[targets.index(s)]) if s in targets
         else torch.zeros(8, 8) for s in ("q", "k", "v")]), atol=1e-6)


def test_only_B_receives_gradients_by_default():
    wrap = LoRAQKV(nn.Linear(8, 24), rank=2)
    wrap.base_layer.requires_grad_(False)
    wrap.set_adapter(torch.randn_like(wrap.lora_A))
    wrap(torch.randn(4, 8)).sum().backward()
    assert wrap.lora_A.grad is None and wrap.base_layer.weight.grad is None
    assert wrap.lora_B.grad is not None


def test_inject_refuses_twice_and_non_vit():
    vit = tiny_vit()
    inject_lora(vit, 2, ("k", "v"))
    with pytest.raises(TypeError, match="no fused attn.qkv Linear .found LoRAQKV"):
        inject_lora(vit, 2, ("k", "v"))  # already wrapped: never a wrapper inside a wrapper
    with pytest.raises(TypeError, match="blocks"):
        inject_lora(nn.Linear(3, 3), 2, ("k",))
    with pytest.raises(ValueError, match="targets"):
        LoRAQKV(nn.Linear(4, 12), 2, ("x",))
    with pytest.raises(TypeError, match="fused qkv"):
        LoRAQKV(nn.Linear(4, 10), 2)  # not three equal slices


def test_merge_accumulates_tasks_in_the_base_weight():
    lin = nn.Linear(6, 18, bias=False)
    w0 = lin.weight.detach().clone()
    wrap = LoRAQKV(lin, rank=2)
    deltas = []
    for _ in range(3):
        wrap.set_adapter(torch.randn_like(wrap.lora_A))
        with torch.no_grad():
            wrap.lora_B.normal_()
        deltas.append(wrap.delta_weight().clone())
        wrap.merge()
    assert torch.allclose(wrap.base_layer.weight, w0 + sum(deltas), atol=1e-5)


class _SeparateDeltas(nn.Module):
    """Reference qkv: the pretrained Linear plus every old task's delta applied separately
    (the official code's dense per-forward form)."""

    def __init__(self, base: nn.Linear, deltas: list[torch.Tensor]) -> None:
        super().__init__()
        self.base = base
        self.deltas = deltas

    def forward(self, x):
        out = self.base(x)
        for d in self.deltas:
            out = out + nn.functional.linear(x, d)
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_merged_forward_equals_old_deltas_applied_separately(fused):
    torch.manual_seed(3)
    pretrained = tiny_vit()
    _set_fused(pretrained, fused)
    reference = copy.deepcopy(pretrained).eval()
    model = ContinualViT(pretrained, rank=4).eval()
    deltas: list[list[torch.Tensor]] = [[] for _ in model.adapters]
    for _ in range(5):  # five finished tasks, merged one after the other
        for i, a in enumerate(model.adapters):
            a.set_adapter(torch.randn_like(a.lora_A) * 0.1)
            with torch.no_grad():
                a.lora_B.normal_(0, 0.1)
            deltas[i].append(a.delta_weight().detach().clone())
            a.merge()
    for block, ds in zip(reference.blocks, deltas):
        block.attn.qkv = _SeparateDeltas(block.attn.qkv, ds)
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        merged, ref = model.features(x), reference(x)
    rel = (merged - ref).abs().max() / ref.abs().max()
    assert rel < 1e-5, float(rel)
    with torch.no_grad():  # and the deltas matter: without them the output differs
        for block in reference.blocks:
            block.attn.qkv.deltas = []
        assert (reference(x) - merged).abs().max() / ref.abs().max() > 1e-3


def test_set_adapter_refuses_a_wrong_shape_and_merge_without_adapter_is_a_no_op():
    wrap = LoRAQKV(nn.Linear(8, 24), rank=2)
    with pytest.raises(ValueError, match="expected .2, 2, 8."):
        wrap.set_adapter(torch.zeros(1, 2, 8))
    w = wrap.base_layer.weight.detach().clone()
    wrap.merge()
    assert torch.equal(wrap.base_layer.weight, w) and not wrap.active


def test_rank_not_below_the_layer_width_warns(caplog):
    import logging
    with caplog.at_level(logging.WARNING):
        ContinualViT(tiny_vit(), rank=31)  # qkv: 32 -> 3 x 32
    assert not [r for r in caplog.records if "lora.rank" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        ContinualViT(tiny_vit(), rank=32)
    warned = [r.getMessage() for r in caplog.records if "lora.rank" in r.getMessage()]
    assert len(warned) == 1 and "lora.rank = 32 is not below the width 32" in warned[0]
