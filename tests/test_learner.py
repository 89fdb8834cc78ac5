"""The learners' task lifecycle and the property SplitLoRA promises."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from models import ContinualViT
from splitlora.config import from_dict
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
    assert {"splitlora", "threshold", "random_a", "seq_lora"} <= set(METHODS)
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


def test_schedule_is_the_official_timm_multistep_per_epoch():
    """The official code steps timm's MultiStepLRScheduler with step(epoch) from epoch 0 and
    timm compares milestones with t + 1: with milestones [5, 8], epochs 1-4 run at lr, 5-7
    at 0.1 lr and 8-10 at 0.01 lr (torch's MultiStepLR would give 1-5 / 6-8 / 9-10)."""
    defaults = from_dict({}).train  # the protocol defaults
    assert (defaults.epochs, defaults.milestones, defaults.gamma) == (10, [5, 8], 0.1)
    assert (defaults.lr, defaults.head_lr) == (1e-3, 1e-2)
    cfg = _cfg("seq_lora", epochs=10, milestones=[5, 8], lr=1e-3, head_lr=1e-2)
    model = ContinualViT(tiny_vit(), rank=2)
    learner = build_learner(cfg, model, torch.device("cpu"))
    learner.before_task(0, 3)
    stats = learner.train_task(0, _loader(0, n=8), 0, progress=False)
    # the lr each epoch of a real (tiny) run actually used, per optimizer group
    assert [s.lr for s in stats] == pytest.approx([1e-3] * 4 + [1e-4] * 3 + [1e-5] * 3)
    assert [s.head_lr for s in stats] == pytest.approx([1e-2] * 4 + [1e-3] * 3 + [1e-4] * 3)


def test_only_lora_B_and_current_head_train():
    model, learner = _learn_task0("splitlora")
    learner.before_task(1, 3)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if "lora_B" not in n and "heads.heads.1" not in n}
    learner.train_task(1, _loader(1, offset=3), 3, progress=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed"


def _learn_task0_cfg(method: str, **method_kw):
    cfg = _cfg(method)
    for k, v in method_kw.items():
        setattr(cfg.method, k, v)
    model = ContinualViT(tiny_vit(), rank=2)
    learner = build_learner(cfg, model, torch.device("cpu"))
    learner.before_task(0, 3)
    learner.train_task(0, _loader(0), 0, progress=False)
    learner.after_task(0, lambda: _loader(0), progress=False)
    return model, learner


def test_threshold_method_splits_by_energy_share():
    from splitlora.subspace import threshold_split_point
    model, learner = _learn_task0_cfg("threshold", threshold=0.9)
    for layer, k in enumerate(learner.split_dims[0]):
        vals, _ = spectrum(learner.cov.covariance(layer))
        assert k == threshold_split_point(vals, 0.9)
        assert learner.interference[0][layer] <= 0.1 + 1e-9
    learner.before_task(1, 3)
    for layer, a in enumerate(model.adapters):
        _, vecs = spectrum(learner.cov.covariance(layer))
        major = vecs[:, : learner.split_dims[0][layer]].float()
        assert (a.lora_A @ major).abs().max() < 1e-5


def test_random_a_is_not_confined_and_scaled_like_splitlora():
    model, learner = _learn_task0_cfg("random_a")
    assert learner.split_dims == [None]
    split_model, split_learner = _learn_task0_cfg("splitlora")
    learner.before_task(1, 3)
    split_learner.before_task(1, 3)
    _, vecs = spectrum(split_learner.cov.covariance(0))
    major = vecs[:, : split_learner.split_dims[0][0]].float()
    a_random, a_split = model.adapters[0].lora_A[0], split_model.adapters[0].lora_A[0]
    assert (a_split @ major).abs().max() < 1e-5
    assert (a_random @ major).norm() > 0.05 * a_random.norm()  # rows leave any subspace
    # same norm rule: ||A_ref|| / (t + 1), A_ref being Kaiming (bound 1/sqrt(32)) of shape 2 x 32
    ratio = float(a_random.norm() / a_split.norm())
    assert 0.7 < ratio < 1.4


def test_train_a_keeps_rows_in_the_free_span_after_many_steps():
    model, learner = _learn_task0_cfg("splitlora", train_a=True)
    learner.before_task(1, 3)
    a0 = [a.lora_A.detach().clone() for a in model.adapters]
    projectors = [(b @ b.T) for b in learner.bases]
    cfg_steps = _cfg("splitlora", epochs=8, milestones=[100])
    learner.cfg.train = cfg_steps.train  # 8 epochs x 2 steps = 16 AdamW steps
    learner.train_task(1, _loader(1, offset=3), 3, progress=False)
    for a, start, p in zip(model.adapters, a0, projectors):
        assert (a.lora_A - start).abs().max() > 1e-4  # A did train
        assert (a.lora_A - a.lora_A @ p).abs().max() < 1e-5  # and stayed in the free span
        assert not a.lora_A.requires_grad  # frozen again after the task


def test_train_a_is_refused_for_methods_without_subspace(tmp_path):
    from tests.conftest import main_inprocess
    proc = main_inprocess(["--set", "method.name=seq_lora", "--set", "method.train_a=true",
                           "--output", str(tmp_path / "r")], tmp_path)
    assert proc.returncode == 2 and "method.train_a" in proc.stderr


def test_head_init_follows_the_official_code():
    """Task 0: timm's head init (trunc-normal std 0.02, bias 0); task 1: a copy of task 0's
    trained head; tasks >= 2: nn.Linear's default (uniform within 1/sqrt(d), bias too)."""
    from models import TaskHeads
    d = 768
    bound = 1 / d ** 0.5
    torch.manual_seed(0)
    heads = TaskHeads(d)
    w0 = heads.add_head(20, "official").requires_grad_(False)
    assert torch.equal(w0.bias, torch.zeros(20))
    assert abs(float(w0.weight.std()) - 0.02) < 1e-3
    # a normal law puts ~7% of its mass beyond 1/sqrt(d) = 1.8 std; a uniform one puts none
    assert 0.04 < float((w0.weight.abs() > bound).float().mean()) < 0.11
    with torch.no_grad():
        w0.weight.add_(1.0)  # stands for training
    w1 = heads.add_head(20, "official")
    assert torch.equal(w1.weight, w0.weight) and torch.equal(w1.bias, w0.bias)
    w2 = heads.add_head(20, "official").requires_grad_(False)
    for p in (w2.weight, w2.bias):
        assert float(p.abs().max()) <= bound and float(p.std()) > 0.5 * bound / 3 ** 0.5
    fresh = TaskHeads(d)
    f0, f1 = (fresh.add_head(20, "fresh").requires_grad_(False) for _ in range(2))
    assert float(f0.bias.abs().max()) > 0 and float(f0.weight.abs().max()) <= bound
    assert not torch.equal(f0.weight, f1.weight)


def test_second_task_starts_from_the_first_tasks_trained_head():
    model, learner = _learn_task0("splitlora")
    trained = {k: v.clone() for k, v in model.heads.heads[0].state_dict().items()}
    learner.before_task(1, 3)
    assert all(torch.equal(model.heads.heads[1].state_dict()[k], v) for k, v in trained.items())
    assert float(trained["bias"].abs().max()) > 0  # it did train away from the zero bias


def test_linear_probe_trains_only_the_head():
    model = ContinualViT(tiny_vit(), rank=2)
    learner = build_learner(_cfg("linear_probe"), model, torch.device("cpu"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "heads" not in n}
    learner.before_task(0, 3)
    head = {k: v.clone() for k, v in model.heads.heads[0].state_dict().items()}
    learner.train_task(0, _loader(0), 0, progress=False)
    learner.after_task(0, lambda: _loader(0), progress=False)
    assert all(not a.active for a in model.adapters)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model.heads.heads[0].weight, head["weight"])


def test_joint_method_gets_every_class_as_one_task(tmp_path):
    from splitlora.experiment import Experiment
    from splitlora.metrics import AccuracyTracker
    data = {"device": "cpu", "dataset": {"name": "synthetic", "num_tasks": 5, "synthetic": {
        "num_classes": 10, "train_per_class": 2, "val_per_class": 1, "image_size": 8}}}
    split = Experiment(from_dict(data), tmp_path / "a", progress=False)
    joint = Experiment(from_dict({**data, "method": {"name": "joint"}}), tmp_path / "b",
                       progress=False)
    assert len(split.tasks) == 5 and len(joint.tasks) == 1
    assert sorted(joint.tasks[0]) == sorted(c for t in split.tasks for c in t)
    one = AccuracyTracker(1)
    one.update(0, 0, 9, 10)
    assert one.summary()["forgetting"] is None  # one task: nothing to forget (not 0)
    two = AccuracyTracker(2)
    for t, j, c in ((0, 0, 10), (1, 0, 7), (1, 1, 9)):
        two.update(t, j, c, 10)
    assert two.summary()["forgetting"] == pytest.approx(30.0)
