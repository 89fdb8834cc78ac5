"""The learners (splitlora/learner.py, splitlora/methods/): the registry and each method's
Params, the task lifecycle, what trains, the head init, and the property SplitLoRA promises
(old-subspace outputs unchanged while the new adapter trains) next to the baselines that
break it."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from splitlora import spectrum, threshold_split_point
from splitlora.learner import Learner, ParamError, Stream, derived_seed
from splitlora.methods import METHODS, get_method
from tests.helpers import (learn, make_learner, make_task, method_names, task_of, tiny_model,
                           train_config)

# ------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", method_names())
def test_every_method_has_params_whose_defaults_validate(name):
    cls = METHODS[name]
    assert issubclass(cls, Learner) and get_method(name) is cls
    assert dataclasses.is_dataclass(cls.Params)
    params = cls.Params()
    params.validate()  # the defaults are legal


def test_unknown_method_names_the_known_ones():
    with pytest.raises(KeyError, match="'ewc' is not a known method; known: " + ", ".join(
            sorted(METHODS))):
        get_method("ewc")


@pytest.mark.parametrize("name", method_names())
def test_each_method_refuses_an_out_of_range_choice(name):
    """Every string field with a fixed set of choices refuses another value, naming the key."""
    cls = METHODS[name]
    choices = [f.name for f in dataclasses.fields(cls.Params) if isinstance(f.default, str)]
    for key in choices:
        bad = cls.Params(**{key: "not-a-choice"})
        with pytest.raises(ParamError) as info:
            bad.validate()
        assert info.value.key == key and "must be one of" in str(info.value)


@pytest.mark.parametrize("name, key, value, words", [
    ("splitlora", "alpha", -1.0, ">= 0"), ("threshold", "energy", 0.0, "(0, 1]"),
    ("threshold", "energy", 1.5, "(0, 1]"), ("inflora", "lamb", 1.0, "(0, 1)"),
])
def test_numeric_params_are_range_checked(name, key, value, words):
    with pytest.raises(ParamError, match=f"{key} = {value!r} is invalid: must be") as info:
        METHODS[name].Params(**{key: value}).validate()
    assert words in info.value.requirement


def test_inflora_lame_must_lie_between_lamb_and_one():
    params = METHODS["inflora"].Params(lamb=0.95, lame=0.9)
    with pytest.raises(ParamError, match=r"lame = 0.9 is invalid: must be in \[lamb, 1\]"):
        params.validate()


def test_random_streams_are_stable_and_distinct():
    """Exact resume relies on (seed, task, stream) giving the same numbers on every machine."""
    assert derived_seed(0, 1, Stream.ADAPTERS) == derived_seed(0, 1, 1)
    assert [int(s) for s in Stream] == [0, 1, 2, 3]
    seeds = {derived_seed(seed, t, s) for seed in (0, 1) for t in range(4) for s in Stream}
    assert len(seeds) == 2 * 4 * len(Stream) and all(0 <= s < 2**63 for s in seeds)
    assert derived_seed(7, 3, 2) == 5789607256095039698  # pinned: never changes


# ------------------------------------------------------------------- SplitLoRA's promise

def _learn_task0(method: str, **params):
    model, learner = make_learner(method, **({"alpha": 1.0} if method == "splitlora" else {}),
                                  **params)
    learn(learner, task_of(0))
    return model, learner


def test_old_major_subspace_outputs_unchanged_while_new_adapter_trains():
    model, learner = _learn_task0("splitlora")
    dims = learner.split_dims[0]
    assert dims is not None and all(2 <= k < 32 for k in dims)
    majors = []
    for layer, adapter in enumerate(model.adapters):
        _, vecs = spectrum(learner.cov.covariance(layer))
        majors.append(vecs[:, : dims[layer]].float())
    task1 = task_of(1)
    learner.before_task(task1)
    for adapter, major in zip(model.adapters, majors):
        assert (adapter.lora_A @ major).abs().max() < 1e-5  # A's rows avoid the old subspace
    learner.train_task(task1)
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
    task1 = task_of(1)
    learner.before_task(task1)
    learner.train_task(task1)
    adapter = model.adapters[0]
    x = torch.randn(40, 32)
    with torch.no_grad():
        assert not torch.allclose(adapter(x), adapter.base_layer(x), atol=1e-4)


def test_after_task_merges_and_keeps_outputs():
    model, learner = _learn_task0("seq_lora")
    assert all(not a.active for a in model.adapters)
    task1 = task_of(1, last=True)
    learner.before_task(task1)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    learner.train_task(task1)
    with torch.no_grad():
        unmerged = model(x)
    learner.after_task(task1)
    with torch.no_grad():
        merged = model(x)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(before[:, 3:], merged[:, 3:], atol=1e-4)


def test_only_lora_B_and_current_head_train():
    model, learner = _learn_task0("splitlora")
    task1 = task_of(1)
    learner.before_task(task1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if "lora_B" not in n and "heads.heads.1" not in n}
    learner.train_task(task1)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed"
    assert not any(p.requires_grad for p in model.parameters())  # all frozen again after


def test_the_last_task_takes_no_covariance_pass():
    model, learner = make_learner("splitlora")

    def no_pass():
        raise AssertionError("the last task needs no split")
    task = make_task(0, lambda: task_of(0).batches(), last=True, data_pass=no_pass)
    learn(learner, task)
    assert learner.split_dims == [None] and learner.interference == [None]


def test_threshold_method_splits_by_energy_share():
    model, learner = _learn_task0("threshold", energy=0.9)
    for layer, k in enumerate(learner.split_dims[0]):
        vals, _ = spectrum(learner.cov.covariance(layer))
        assert k == threshold_split_point(vals, 0.9)
        assert learner.interference[0][layer] <= 0.1 + 1e-9
    learner.before_task(task_of(1))
    for layer, a in enumerate(model.adapters):
        _, vecs = spectrum(learner.cov.covariance(layer))
        major = vecs[:, : learner.split_dims[0][layer]].float()
        assert (a.lora_A @ major).abs().max() < 1e-5


def test_random_a_is_not_confined_and_scaled_like_splitlora():
    model, learner = _learn_task0("random_a")
    assert learner.split_dims == [None]
    split_model, split_learner = _learn_task0("splitlora")
    learner.before_task(task_of(1))
    split_learner.before_task(task_of(1))
    _, vecs = spectrum(split_learner.cov.covariance(0))
    major = vecs[:, : split_learner.split_dims[0][0]].float()
    a_random, a_split = model.adapters[0].lora_A[0], split_model.adapters[0].lora_A[0]
    assert (a_split @ major).abs().max() < 1e-5
    assert (a_random @ major).norm() > 0.05 * a_random.norm()  # rows leave any subspace
    # same norm rule: ||A_ref|| / (t + 1), A_ref being Kaiming (bound 1/sqrt(32)) of shape 2 x 32
    ratio = float(a_random.norm() / a_split.norm())
    assert 0.7 < ratio < 1.4


def test_a_norm_constant_drops_the_decay():
    norms = {}
    for a_norm in ("decay", "constant"):
        model, learner = _learn_task0("splitlora", a_norm=a_norm)
        learner.before_task(task_of(1))
        norms[a_norm] = float(model.adapters[0].lora_A[0].norm())
    assert norms["constant"] == pytest.approx(2 * norms["decay"], rel=1e-5)  # t = 1: / (t + 1)


def test_train_a_keeps_rows_in_the_free_span_after_many_steps():
    model, learner = _learn_task0("splitlora", train_a=True)
    task1 = task_of(1)
    learner.before_task(task1)
    a0 = [a.lora_A.detach().clone() for a in model.adapters]
    projectors = [(b @ b.T) for b in learner.bases]
    learner.train_cfg = train_config(epochs=8, milestones=[100])  # 8 epochs x 2 steps
    learner.train_task(task1)
    for a, start, p in zip(model.adapters, a0, projectors):
        assert (a.lora_A - start).abs().max() > 1e-4  # A did train
        assert (a.lora_A - a.lora_A @ p).abs().max() < 1e-5  # and stayed in the free span
        assert not a.lora_A.requires_grad  # frozen again after the task


def test_train_a_belongs_to_the_subspace_methods_only(tmp_path):
    """seq_lora has no ``train_a``: the key is refused (the old method.train_a is gone)."""
    from tests.helpers import main_inprocess
    proc = main_inprocess(["--set", "method.name=seq_lora", "--set", "method.seq_lora.train_a=true",
                           "--output", str(tmp_path / "r")], tmp_path)
    assert proc.returncode == 2 and "method.seq_lora" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_linear_probe_trains_only_the_head():
    model, learner = make_learner("linear_probe")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "heads" not in n}
    task = task_of(0)
    learner.before_task(task)
    head = {k: v.clone() for k, v in model.heads.heads[0].state_dict().items()}
    learner.train_task(task)
    learner.after_task(task)
    assert all(not a.active for a in model.adapters)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model.heads.heads[0].weight, head["weight"])


def test_joint_asks_for_a_single_task_and_the_continual_methods_do_not():
    assert METHODS["joint"].single_task
    assert not any(METHODS[n].single_task for n in ("splitlora", "seq_lora", "inflora"))


# ------------------------------------------------------------------- heads

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
    learner.before_task(task_of(1))
    assert all(torch.equal(model.heads.heads[1].state_dict()[k], v) for k, v in trained.items())
    assert float(trained["bias"].abs().max()) > 0  # it did train away from the zero bias


# ------------------------------------------------------------------- state

@pytest.mark.parametrize("name", method_names())
def test_a_learner_restored_from_its_state_continues_identically(name):
    """What a checkpoint keeps of the method (state_dict) plus the model's weights are enough
    to draw the same next adapter as the learner that never stopped."""
    single = METHODS[name].single_task
    model, learner = make_learner(name)
    learn(learner, task_of(0, last=single))
    state = learner.state_dict()
    model2, learner2 = make_learner(name, model=tiny_model())
    model2.heads.add_head(3)
    model2.load_state_dict(model.state_dict())
    learner2.load_state_dict(state)
    assert learner2.split_dims == learner.split_dims
    learner.before_task(task_of(1))
    learner2.before_task(task_of(1))
    for a, b in zip(model.adapters, model2.adapters):
        assert torch.equal(a.lora_A, b.lora_A)


def test_a_task_without_tokens_gives_a_valid_split():
    """A zero covariance (a task that contributes no tokens) still splits: the minimum of
    frozen directions, and the next A is finite and non-zero."""
    model, learner = make_learner("splitlora")
    empty = make_task(0, lambda: task_of(0).batches(), data_pass=lambda: [])
    learner.before_task(empty)
    learner.after_task(empty)
    assert learner.split_dims[0] == [2, 2]
    learner.before_task(task_of(1))
    for a in model.adapters:
        assert torch.isfinite(a.lora_A).all() and a.lora_A.abs().max() > 0
