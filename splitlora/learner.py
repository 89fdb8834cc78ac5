"""Continual learners with a task lifecycle, registered by name (``method.name``).

    before_task(t)   new head, new adapters (A initialised by the method, B = 0); methods
                     that design A from the task's data (InfLoRA) get a loader factory
    train_task(t)    train B (and the head) on task t
    after_task(t)    merge B A into the frozen weight; method-specific bookkeeping
                     (SplitLoRA: covariance pass, split, free bases for task t + 1)
    evaluate(t)      class-incremental accuracy on every task seen so far

Randomness of each task (head init, A draws, data order) derives from (seed, task), so a
run resumed after task t continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import enum
import logging
from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from models import ContinualViT, lora_parameters

from . import engine
from .config import Config, ConfigError, flatten, to_dict
from .covariance import CovarianceAccumulator
from .distributed import DistInfo
from .run.errors import NumericalError
from .subspace import (free_basis_from_spectrum, init_lora_A, interference, kaiming_uniform_A,
                       spectrum, split_point, threshold_split_point)

log = logging.getLogger(__name__)

METHODS: dict[str, type["Learner"]] = {}


METHOD_SPECIFIC_KEYS = ("split.alpha", "split.cov_pass", "split.cov_dtype", "split.cov_amp",
                        "method.threshold", "method.train_a", "method.a_norm",
                        "method.inflora_lamb", "method.inflora_lame")


def ignored_keys(cfg: Config, base: Config) -> list[str]:
    """Method-specific keys whose value differs from ``base`` (the config file's own values:
    keys set on the command line) that ``method.name`` never reads."""
    ours, theirs = flatten(to_dict(cfg)), flatten(to_dict(base))
    reads = get_method(cfg.method.name).reads
    return [k for k in METHOD_SPECIFIC_KEYS if k not in reads and ours[k] != theirs[k]]


def register_method(name: str):
    """Class decorator: make a learner selectable as ``method.name: <name>``."""
    def deco(cls: type[Learner]) -> type[Learner]:
        if name in METHODS:
            raise KeyError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def get_method(name: str) -> type["Learner"]:
    """The learner class registered as ``name`` (a :class:`ConfigError` listing the known ones
    otherwise)."""
    cls = METHODS.get(name)
    if cls is None:
        raise ConfigError(f"config key 'method.name' = {name!r} is not a known method; "
                          f"known: {', '.join(sorted(METHODS))}")
    return cls


def build_learner(cfg: Config, model: ContinualViT, device: torch.device,
                  dist_info: DistInfo = DistInfo()) -> "Learner":
    return get_method(cfg.method.name)(cfg, model, device, dist_info)


def derived_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integers (stable across machines and Python versions)."""
    value = 0x5EED
    for k in keys:
        value = (value * 6364136223846793005 + int(k) + 1442695040888963407) % (2**63)
    return value


class Stream(enum.IntEnum):
    """The random streams of a task: ``derived_seed(seed, task, stream)``. Exact resume relies on
    every (task, stream) pair being drawn from its own stream, so the values must stay distinct
    and never change (a change alters every run's numbers)."""

    TASK = 0  # the global generators of the task: head init, single-process augmentations
    ADAPTERS = 1  # the draws of A
    COVARIANCE_DATA = 2  # order and worker seeds of the covariance pass's loader
    TRAIN_DATA = 3  # order and worker seeds of the training loader


class Learner:
    """Base learner: sequential LoRA with per-task heads. Subclasses choose A and the split."""

    name: ClassVar[str] = "base"
    supports_train_a: ClassVar[bool] = False  # method.train_a is meaningful for this method
    single_task: ClassVar[bool] = False  # the experiment gives this method every class as one task
    # the method-specific keys (of METHOD_SPECIFIC_KEYS) this method reads; the others are
    # ignored by it, and setting them gives a warning
    reads: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: Config, model: ContinualViT, device: torch.device,
                 dist_info: DistInfo = DistInfo()) -> None:
        self.cfg = cfg
        self.model = model
        self.device = device
        self.dist = dist_info
        self.amp_dtype = engine.resolve_amp(cfg.train.amp, device)
        self.split_dims: list[Optional[list[int]]] = []
        self.interference: list[Optional[list[float]]] = []

    # ----------------------------------------------------------------- randomness
    def generator(self, task: int, stream: Stream) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.cfg.seed, task, stream))

    def seed_task(self, task: int) -> None:
        """Seed the global RNGs for task ``task`` (head init, single-process transforms)."""
        torch.manual_seed(derived_seed(self.cfg.seed, task, Stream.TASK))

    # ----------------------------------------------------------------- lifecycle
    def before_task(self, task: int, num_classes: int,
                    make_cov_loader: Optional[Callable[[], DataLoader]] = None,
                    progress: bool = True) -> None:
        """New head and adapters. ``make_cov_loader()`` gives the task's training data for a
        covariance pass (the same loader as after_task's), for methods that need it."""
        self.seed_task(task)
        self.model.heads.add_head(num_classes, self.cfg.model.head_init).to(self.device)
        gen = self.generator(task, Stream.ADAPTERS)
        for layer, adapter in enumerate(self.model.adapters):
            a = torch.stack([self.init_A(task, layer, adapter.in_features, gen)
                             for _ in adapter.targets])
            adapter.set_adapter(a.to(self.device))

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        """(rank, dim) A of ``task`` at block ``layer``: Kaiming-uniform (sequential LoRA)."""
        return kaiming_uniform_A(self.cfg.lora.rank, dim, generator)

    def trains_A(self) -> bool:
        """Whether A trains along with B (``method.train_a`` where the method supports it)."""
        return self.supports_train_a and self.cfg.method.train_a

    def trainable(self, task: int) -> tuple[list, list]:
        """(LoRA parameters, head parameters) trained on ``task``."""
        return (lora_parameters(self.model.adapters, with_A=self.trains_A()),
                list(self.model.heads.heads[task].parameters()))

    def train_task(self, task: int, loader: DataLoader, label_offset: int,
                   progress: bool = True) -> list[engine.EpochStats]:
        lora, head = self.trainable(task)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in lora + head:
            p.requires_grad_(True)
        net = self.model
        if self.dist.enabled:  # gradients all-reduced over the processes
            from torch.nn.parallel import DistributedDataParallel
            net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        try:
            return engine.train_task(net, task, loader, label_offset, lora, head,
                                     self.cfg.train, self.device, self.amp_dtype,
                                     progress and self.dist.is_main, step_hook=self.after_step)
        finally:
            for p in lora + head:
                p.requires_grad_(False)

    def after_step(self) -> None:
        """Called after every optimizer step (no-op by default)."""

    def after_task(self, task: int, make_cov_loader: Callable[[], DataLoader],
                   last: bool = False, progress: bool = True) -> None:
        """Merge the task's adapters into the frozen weights."""
        self.model.merge_adapters()
        self.split_dims.append(None)
        self.interference.append(None)

    def evaluate(self, loader: DataLoader, desc: str = "eval",
                 progress: bool = True) -> tuple[int, int]:
        return engine.evaluate(self.model, loader, self.device, self.amp_dtype, desc, progress)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"split_dims": self.split_dims, "interference": self.interference}

    def load_state_dict(self, state: dict) -> None:
        self.split_dims = list(state["split_dims"])
        self.interference = list(state["interference"])


@register_method("seq_lora")
class SequentialLoRA(Learner):
    """Baseline: every task gets a fresh Kaiming A and nothing is split."""


class SubspaceLoRA(Learner):
    """A of task t >= 1 is drawn inside the free subspace of the old tasks' features; the
    subclass decides how many leading directions are frozen (``frozen_dims``).

    With ``method.train_a`` A trains too: its gradient is projected onto the free subspace
    and, because Adam's per-coordinate scaling does not preserve a subspace, A is projected
    again after every optimizer step, so its rows never leave the free span.
    """

    supports_train_a = True
    reads = frozenset({"split.cov_pass", "split.cov_dtype", "split.cov_amp", "method.train_a",
                       "method.a_norm"})

    def __init__(self, cfg: Config, model: ContinualViT, device: torch.device,
                 dist_info: DistInfo = DistInfo()) -> None:
        super().__init__(cfg, model, device, dist_info)
        dim = model.adapters[0].in_features
        dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.split.cov_dtype]
        self.cov = CovarianceAccumulator(len(model.adapters), dim, dtype, device)
        self.bases: list[Optional[Tensor]] = [None] * len(model.adapters)
        self._projectors: list[Optional[Tensor]] = []

    def frozen_dims(self, eigvals: Tensor, task: int) -> int:
        """Leading directions of the spectrum (after task ``task``) kept for old tasks."""
        raise NotImplementedError

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        basis = self.bases[layer]
        if task == 0 or basis is None:
            return kaiming_uniform_A(self.cfg.lora.rank, dim, generator)
        return init_lora_A(basis, self.cfg.lora.rank, task, generator,
                           decay=self.cfg.method.a_norm == "decay")

    # ----------------------------------------------------------------- trainable A
    def train_task(self, task: int, loader: DataLoader, label_offset: int,
                   progress: bool = True) -> list[engine.EpochStats]:
        if not self.trains_A():
            return super().train_task(task, loader, label_offset, progress)
        self._projectors = [None if b is None else (b @ b.T).to(self.device) for b in self.bases]
        for a in self.model.adapters:  # a gradient hook needs a tensor that requires grad
            a.lora_A.requires_grad_(True)
        handles = [a.lora_A.register_hook(lambda g, p=p: g @ p)
                   for a, p in zip(self.model.adapters, self._projectors) if p is not None]
        try:
            return super().train_task(task, loader, label_offset, progress)
        finally:
            for h in handles:
                h.remove()
            self._projectors = []

    @torch.no_grad()
    def after_step(self) -> None:
        for a, p in zip(self.model.adapters, self._projectors):
            if p is not None:
                a.lora_A.copy_(a.lora_A @ p)

    # ----------------------------------------------------------------- split
    def after_task(self, task: int, make_cov_loader: Callable[[], DataLoader],
                   last: bool = False, progress: bool = True) -> None:
        self.model.merge_adapters()
        if last:  # no task follows: the split would never be used
            self.split_dims.append(None)
            self.interference.append(None)
            return
        cov_amp = self.amp_dtype if self.cfg.split.cov_amp else None
        this_task = CovarianceAccumulator(self.cov.num_layers, self.cov.dim, self.cov.sums.dtype,
                                          self.device)
        engine.covariance_pass(self.model, self.model.adapters, make_cov_loader(), this_task,
                               self.device, cov_amp, f"task {task} covariance", progress)
        this_task.all_reduce()  # the processes' shards of this task's data
        self.cov.add_(this_task)  # sums and token counts accumulate over tasks, never reset
        dims, interf = [], []
        for layer in range(self.cov.num_layers):
            try:
                vals, vecs = spectrum(self.cov.covariance(layer))
            except FloatingPointError:
                raise NumericalError(f"the feature covariance of block {layer} holds non-finite "
                                     f"values after task {task}; the run stops (the checkpoint of "
                                     "the previous task is kept). Check the data and train.amp."
                                     ) from None
            k = self.frozen_dims(vals, task)
            self.bases[layer] = free_basis_from_spectrum(vecs, k).to(torch.float32).cpu()
            dims.append(k)
            interf.append(interference(vals, k))
        self.split_dims.append(dims)
        self.interference.append(interf)
        log.info("task %d split (%d tokens so far): frozen dims per block %s of %d", task,
                 int(self.cov.counts[0]), dims, self.cov.dim)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["cov"] = self.cov.state_dict()
        state["bases"] = [None if b is None else b.detach().cpu() for b in self.bases]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cov.load_state_dict(state["cov"])
        self.bases = [None if b is None else b.cpu() for b in state["bases"]]


@register_method("splitlora")
class SplitLoRA(SubspaceLoRA):
    """The paper's adaptive split: ``max(i*, 1) + 1`` frozen directions (``split_point``)."""

    reads = SubspaceLoRA.reads | {"split.alpha"}

    def frozen_dims(self, eigvals: Tensor, task: int) -> int:
        return split_point(eigvals, task + 1, self.cfg.split.alpha)


@register_method("threshold")
class ThresholdLoRA(SubspaceLoRA):
    """Ablation: a fixed energy threshold per layer (``method.threshold`` of the spectrum in
    the frozen subspace, as GPM / InfLoRA-style methods choose it)."""

    reads = SubspaceLoRA.reads | {"method.threshold"}

    def frozen_dims(self, eigvals: Tensor, task: int) -> int:
        return threshold_split_point(eigvals, self.cfg.method.threshold)


@register_method("random_a")
class RandomA(Learner):
    """Ablation: A random and frozen in the whole space, scaled as SplitLoRA scales it
    (Kaiming at t = 0, then ``init_lora_A`` with the identity as basis: norm ||A_ref|| / (t+1))."""

    reads = frozenset({"method.a_norm"})

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        if task == 0:
            return kaiming_uniform_A(self.cfg.lora.rank, dim, generator)
        return init_lora_A(torch.eye(dim), self.cfg.lora.rank, task, generator,
                           decay=self.cfg.method.a_norm == "decay")


@register_method("joint")
class Joint(Learner):
    """Upper bound: every class in one task (the experiment reads ``single_task``), trained
    with the same LoRA placement and per-image budget (epochs x expand_times), one head."""

    single_task = True


@register_method("linear_probe")
class LinearProbe(Learner):
    """Lower bound: the backbone stays frozen, only each task's head trains (no adapters)."""

    def before_task(self, task: int, num_classes: int,
                    make_cov_loader: Optional[Callable[[], DataLoader]] = None,
                    progress: bool = True) -> None:
        self.seed_task(task)
        self.model.heads.add_head(num_classes, self.cfg.model.head_init).to(self.device)

    def trainable(self, task: int) -> tuple[list, list]:
        return [], list(self.model.heads.heads[task].parameters())


from . import learner_inflora  # noqa: E402,F401  (registers method "inflora")
