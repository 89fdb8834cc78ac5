"""The training and evaluation passes (splitlora/engine.py): the official learning-rate
schedule, non-finite losses, the compile fallback (compilation errors only), and the GPU paths
(AMP fp16 with the grad scaler, torch.compile) where a GPU is present."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from splitlora.engine import (CompiledForward, NumericalError, TrainConfig, evaluate,
                              make_scheduler, resolve_amp, train_task)
from tests.helpers import DEVICES, NEEDS_CUDA, learn, loader, make_learner, task_of, train_config


# ------------------------------------------------------------------- compile fallback

def _dynamo_errors():
    from torch._dynamo import exc
    return {"backend_compiler_failed": exc.BackendCompilerFailed(
                lambda *a: None, RuntimeError("inductor: no C++ compiler"), None),
            "unsupported": exc.Unsupported("graph break in a data-dependent branch")}


def test_compile_unavailable_on_the_platform_runs_eagerly(monkeypatch, caplog):
    lin = nn.Linear(3, 2)
    monkeypatch.setattr(torch, "compile",
                        lambda m: (_ for _ in ()).throw(RuntimeError("no compiler")))
    with caplog.at_level(logging.WARNING):
        fwd = CompiledForward(lin)
    x = torch.randn(4, 3)
    assert fwd.compiled is None and torch.equal(fwd(x), lin(x))
    assert any("torch.compile unavailable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("error", ["backend_compiler_failed", "unsupported"])
def test_a_compilation_error_falls_back_to_eager_for_good_with_a_warning(monkeypatch, caplog,
                                                                       error):
    lin = nn.Linear(3, 2)
    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise _dynamo_errors()[error]
    monkeypatch.setattr(torch, "compile", lambda m: broken)
    fwd = CompiledForward(lin)
    x = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(fwd(x), lin(x))
    assert fwd.compiled is None  # permanently eager: the compiled call is never tried again
    assert torch.equal(fwd(x), lin(x)) and len(calls) == 1
    warned = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warned) == 1 and "running eagerly" in warned[0]


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   ValueError("a bug in the model")],
                         ids=["cuda_oom", "value_error"])
def test_any_other_error_of_the_compiled_call_propagates(monkeypatch, error):
    """An out-of-memory error (or any bug) is not a compilation problem: running eagerly would
    hide it, or fail later with less memory left."""
    def broken(*a, **k):
        raise error
    monkeypatch.setattr(torch, "compile", lambda m: broken)
    fwd = CompiledForward(nn.Linear(3, 2))
    with pytest.raises(type(error), match=str(error).split(".")[0]):
        fwd(torch.randn(4, 3))
    assert fwd.compiled is broken  # not switched to eager


# ------------------------------------------------------------------- schedule

def test_schedule_is_the_official_timm_multistep_per_epoch():
    """The official code steps timm's MultiStepLRScheduler with step(epoch) from epoch 0 and
    timm compares milestones with t + 1: with milestones [5, 8], epochs 1-4 run at lr, 5-7
    at 0.1 lr and 8-10 at 0.01 lr (torch's MultiStepLR would give 1-5 / 6-8 / 9-10)."""
    defaults = TrainConfig()  # the protocol defaults
    assert (defaults.epochs, defaults.milestones, defaults.gamma) == (10, [5, 8], 0.1)
    assert (defaults.lr, defaults.head_lr) == (1e-3, 1e-2)
    _, learner = make_learner("seq_lora", train=train_config(epochs=10, milestones=[5, 8],
                                                             lr=1e-3, head_lr=1e-2))
    task = task_of(0, n=8)
    learner.before_task(task)
    stats = learner.train_task(task)
    # the lr each epoch of a real (tiny) run actually used, per optimizer group
    assert [s.lr for s in stats] == pytest.approx([1e-3] * 4 + [1e-4] * 3 + [1e-5] * 3)
    assert [s.head_lr for s in stats] == pytest.approx([1e-2] * 4 + [1e-3] * 3 + [1e-4] * 3)
    assert [s.steps for s in stats] == [1] * 10 and all(s.images == 8 for s in stats)


@pytest.mark.parametrize("epochs, milestones, decays", [(10, [5, 8], 2), (7, [5, 8], 1),
                                                        (4, [5, 8], 0)])
def test_milestones_beyond_the_epochs_never_apply(epochs, milestones, decays):
    """Milestone m applies from epoch m on: one beyond train.epochs never takes effect (the
    config warns about it: tests/runs/test_config.py)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, TrainConfig(epochs=epochs, milestones=milestones))
    sched.step(0)
    lrs = []
    for e in range(1, epochs + 1):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(e)
    assert len({round(lr, 12) for lr in lrs}) - 1 == decays


# ------------------------------------------------------------------- numerics and devices

def test_a_non_finite_loss_stops_training_without_a_grad_scaler():
    model, learner = make_learner("seq_lora")
    task = task_of(0)
    learner.before_task(task)
    lora, head = learner.trainable(0)
    x, y = next(iter(loader(0)))
    bad = [(x * float("nan"), y)]
    with pytest.raises(NumericalError, match="non-finite training loss .* task 0, epoch 1, step 0"):
        train_task(model, 0, bad, 0, lora, head, train_config(), torch.device("cpu"), None,
                   progress=False)


def test_amp_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_amp("auto", cpu) is None and resolve_amp("auto", cuda) is torch.float16
    assert resolve_amp("bf16", cpu) is torch.bfloat16 and resolve_amp("off", cuda) is None


@pytest.mark.parametrize("device", DEVICES)
def test_a_task_trains_and_evaluates_on_the_device(device):
    """On CUDA with ``train.amp: auto``: fp16 autocast with the grad scaler."""
    model, learner = make_learner("splitlora", device=device, alpha=1.0)
    if device == "cuda":
        assert learner.amp_dtype is torch.float16
    stats = learn(learner, task_of(0))
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in stats) and stats[-1].steps == 2
    assert learner.split_dims[0] is not None
    correct, total = evaluate(model, loader(0), torch.device(device), learner.amp_dtype,
                              progress=False)
    assert total == 16 and 0 <= correct <= 16


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_fp16_overflowing_steps_are_skipped_up_to_max_bad_steps(device):
    model, learner = make_learner("seq_lora", device=device,
                                  train=train_config(max_bad_steps=1, epochs=1))
    task = task_of(0)
    learner.before_task(task)
    lora, head = learner.trainable(0)
    x, y = next(iter(loader(0)))
    nan = (x * float("nan"), y)
    dev = torch.device(device)
    train_task(model, 0, [nan, (x, y)], 0, lora, head, learner.train_cfg, dev, torch.float16,
               progress=False)  # one bad step in a row: skipped
    with pytest.raises(NumericalError, match="2 steps in a row"):
        train_task(model, 0, [nan, nan], 0, lora, head, learner.train_cfg, dev, torch.float16,
                   progress=False)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_compiled_training_gives_the_eager_result(device, caplog):
    """``train.compile``: the compiled forward really compiles (no fallback) and trains to the
    eager weights (tolerance of kernel fusion)."""
    results = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model, learner = make_learner("seq_lora", device=device,
                                      train=train_config(compile=compile_, amp="off", tf32=False))
        with caplog.at_level(logging.WARNING):
            learn(learner, task_of(0))
        results.append(torch.cat([a.base_layer.weight.flatten() for a in model.adapters]))
    assert not [r for r in caplog.records if "torch.compile" in r.getMessage()]
    assert torch.allclose(results[0], results[1], atol=1e-4)
