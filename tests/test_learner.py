"""The learners' task lifecycle and the property SplitLoRA promises."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from models import ContinualViT
from splitlora.config import from_dict
from splitlora.engine import lr_factors
from splitlora.learner import METHODS, build_learner
from splitlora.subspace import spectrum
from tests.conftest import tiny_vit


def _cfg(method: str, **train):
    t = {"epochs": 2, "milestones": [1], "batch_size": 8, "expand_times": 1, "lr": 1e-2,
         "num_workers": 0}
    t.update(train)
    return from_dict({"method": {"name": method}, "lora": {"rank": 2}, "device": "cpu",
                      "split": {"alpha": 1.0}, "train": t})


def _loader(seed: int, n: int = 16, offset: int = 0, classes: int = 3) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) + offset
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _learn_task0(method: str):
    model = ContinualViT(tiny_vit(), rank=2)
    learner = build_learner(_cfg(method), model, torch.device("cpu"))
    learner.before_task(0, 3)
    learner.train_task(0, _loader(0), 0, progress=False)
    learner.after_task(0, lambda: _loader(0), progress=False)
    return model, learner


def test_methods_registered_by_name():
    assert {"splitlora", "seq_lora"} <= set(METHODS)
    from splitlora.config import ConfigError
    cfg = _cfg("splitlora")
    cfg.method.name = "nope"
    with pytest.raises(ConfigError, match="method.name"):
        build_learner(cfg, ContinualViT(tiny_vit(), rank=2), torch.device("cpu"))


def test_old_major_subspace_outputs_unchanged_while_new_adapter_trains():
    model, learner = _learn_task0("splitlora")
    dims = learner.split_dims[0]
    assert dims is not None and all(2 <= k < 32 for k in dims)
    majors = []
    for layer, adapter in enumerate(model.adapters):
        _, vecs = spectrum(learner.cov.covariance(layer))
        majors.append(vecs[:, : dims[layer]].float())
    learner.before_task(1, 3)
    for adapter, major in zip(model.adapters, majors):
        assert (adapter.lora_A @ major).abs().max() < 1e-5  # A's rows avoid the old subspace
    learner.train_task(1, _loader(1, offset=3), 3, progress=False)
    for layer, (adapter, major) in enumerate(zip(model.adapters, majors)):
        assert adapter.active and adapter.lora_B.abs().max() > 0  # the new adapter did train
        x = (major @ torch.randn(major.shape[1], 40)).T  # inputs in the old major subspace
        with torch.no_grad():
            assert torch.allclose(adapter(x), adapter.base_layer(x), atol=1e-5)
            free_x = torch.randn(40, 32)
            assert not torch.allclose(adapter(free_x), adapter.base_layer(free_x), atol=1e-3)


def test_seq_lora_changes_old_subspace_outputs():
    """The same check fails for plain sequential LoRA (so the test above can fail)."""
    model, learner = _learn_task0("seq_lora")
    assert learner.split_dims == [None]
    learner.before_task(1, 3)
    learner.train_task(1, _loader(1, offset=3), 3, progress=False)
    adapter = model.adapters[0]
    x = torch.randn(40, 32)
    with torch.no_grad():
        assert not torch.allclose(adapter(x), adapter.base_layer(x), atol=1e-4)


def test_after_task_merges_and_keeps_outputs():
    model, learner = _learn_task0("seq_lora")
    assert all(not a.active for a in model.adapters)
    learner.before_task(1, 3)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    learner.train_task(1, _loader(1, offset=3), 3, progress=False)
    with torch.no_grad():
        unmerged = model(x)
    learner.after_task(1, lambda: _loader(1), last=True, progress=False)
    with torch.no_grad():
        merged = model(x)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(before[:, 3:], merged[:, 3:], atol=1e-4)


def test_multistep_schedule_matches_protocol():
    cfg = from_dict({})  # the protocol defaults
    factors = lr_factors(cfg.train)
    assert factors == pytest.approx([1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    # the lr actually used in each epoch of a real (tiny) training run
    cfg = _cfg("seq_lora", epochs=10, milestones=[5, 8], lr=1e-3, head_lr=1e-2)
    model = ContinualViT(tiny_vit(), rank=2)
    learner = build_learner(cfg, model, torch.device("cpu"))
    learner.before_task(0, 3)
    stats = learner.train_task(0, _loader(0, n=8), 0, progress=False)
    assert [s.lr for s in stats] == pytest.approx([1e-3] * 5 + [1e-4] * 3 + [1e-5] * 2)


def test_only_lora_B_and_current_head_train():
    model, learner = _learn_task0("splitlora")
    learner.before_task(1, 3)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if "lora_B" not in n and "heads.heads.1" not in n}
    learner.train_task(1, _loader(1, offset=3), 3, progress=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed"
