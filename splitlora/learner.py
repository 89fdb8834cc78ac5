"""The continual learner: the task lifecycle every method follows, and the hooks it offers.

    before_task(task)  new head; new adapters, A from ``init_A`` (B = 0)
    train_task(task)   train ``trainable()`` on the task's batches: cross-entropy(logits / T)
                       + ``extra_loss()``; ``after_step()`` after every optimizer step
    after_task(task)   merge B A into the frozen weights, then the method's bookkeeping
                       (e.g. a pass over the task's data: ``task.data_pass()``)
    evaluate(batches)  class-incremental accuracy (argmax over every head)
    state_dict()       what the checkpoint keeps of the method (``load_state_dict`` restores it)

The base class *is* sequential LoRA; a method subclasses it (docs/extending.md). Each task's
randomness derives from (seed, task, stream), so a resumed run continues exactly."""

import enum
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Optional

import torch
from torch import Tensor

from models import ContinualViT, kaiming_uniform_A, lora_parameters

from . import engine
from .engine import TrainConfig


class ParamError(ValueError):
    """A hyper-parameter outside its allowed range: ``key``, ``value`` and the requirement."""

    def __init__(self, key: str, value: Any, requirement: str) -> None:
        super().__init__(f"{key} = {value!r} is invalid: {requirement}")
        self.key, self.value, self.requirement = key, value, requirement


def require(ok: bool, key: str, value: Any, requirement: str) -> None:
    """Raise :class:`ParamError` unless ``ok`` (for ``Params.validate``)."""
    if not ok:
        raise ParamError(key, value, requirement)


@dataclass
class MethodParams:
    """Base of a method's hyper-parameters (section ``method.<name>``): allowed values go in
    ``CHOICES`` (checked here, listed in docs/config.md), ranges in ``validate``."""

    CHOICES: ClassVar[dict[str, tuple]] = {}

    def validate(self) -> None:
        for key, allowed in self.CHOICES.items():
            require(getattr(self, key) in allowed, key, getattr(self, key),
                    "must be one of " + ", ".join(str(a) for a in allowed))


def derived_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integers (stable across machines and Python versions)."""
    value = 0x5EED
    for k in keys:
        value = (value * 6364136223846793005 + int(k) + 1442695040888963407) % (2**63)
    return value


class Stream(enum.IntEnum):
    """The random streams of a task, ``derived_seed(seed, task, stream)``. Exact resume relies on
    every (task, stream) pair having its own stream: the values never change."""

    TASK = 0  # the global generators of the task: head init, single-process augmentations
    ADAPTERS = 1  # the draws of A
    COVARIANCE_DATA = 2  # order and worker seeds of a pass over the task's data (data_pass)
    TRAIN_DATA = 3  # order and worker seeds of the training batches


@dataclass(frozen=True)
class Task:
    """One task. ``batches()``: the training batches (one ``iter()`` per epoch; global labels:
    class j is ``label_offset + j``). ``data_pass(plain=False)``: one pass over the training data
    as trained on (x expand_times), or with ``plain`` in the evaluation transform, each once."""

    index: int
    num_classes: int
    label_offset: int
    last: bool
    batches: Callable[[], Iterable]
    data_pass: Callable[..., Iterable]


class Learner:
    """Sequential LoRA with per-task heads; methods override the hooks they need."""

    Params: ClassVar[type] = MethodParams
    single_task: ClassVar[bool] = False  # the run gives this method every class as one task

    def __init__(self, model: ContinualViT, device: torch.device, train: TrainConfig,
                 params: Any = None, *, seed: int = 0, num_tasks: int = 1,
                 head_init: str = "official", progress: bool = False) -> None:
        self.model, self.device, self.train_cfg, self.progress = model, device, train, progress
        self.params = params if params is not None else self.Params()
        self.seed, self.num_tasks, self.head_init = seed, num_tasks, head_init
        self.amp_dtype = engine.resolve_amp(train.amp, device)
        # per task and block: frozen directions, old-task spectrum left free (None: no split)
        self.split_dims: list[Optional[list[int]]] = []
        self.interference: list[Optional[list[float]]] = []

    @property
    def rank(self) -> int:
        return self.model.adapters[0].rank

    def generator(self, task: int, stream: Stream) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.seed, task, stream))

    def seed_task(self, task: int) -> None:
        """Seed the global RNGs for task ``task`` (head init, single-process transforms)."""
        torch.manual_seed(derived_seed(self.seed, task, Stream.TASK))

    def before_task(self, task: Task) -> None:
        """New head and adapters: per block, one ``init_A`` draw per target slice, B = 0."""
        self.seed_task(task.index)
        self.model.heads.add_head(task.num_classes, self.head_init).to(self.device)
        gen = self.generator(task.index, Stream.ADAPTERS)
        for layer, adapter in enumerate(self.model.adapters):
            a = torch.stack([self.init_A(task.index, layer, adapter.in_features, gen)
                             for _ in adapter.targets])
            adapter.set_adapter(a.to(self.device))

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        """(rank, dim) A of ``task`` at block ``layer``: Kaiming-uniform."""
        return kaiming_uniform_A(self.rank, dim, generator)

    def trains_A(self) -> bool:
        return False

    def trainable(self, task: int) -> tuple[list, list]:
        """(LoRA, head) parameters of ``task``: every B (A too if ``trains_A()``), its head."""
        return (lora_parameters(self.model.adapters, with_A=self.trains_A()),
                list(self.model.heads.heads[task].parameters()))

    def extra_loss(self, task: int, logits: Tensor, target: Tensor) -> Optional[Tensor]:
        """A term added to the training loss (None: none). ``target`` is task-local."""
        return None

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def train_task(self, task: Task, monitor=None) -> list[engine.EpochStats]:
        lora, head = self.trainable(task.index)
        self.model.requires_grad_(False)
        for p in lora + head:
            p.requires_grad_(True)
        net = self.model
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from torch.nn.parallel import DistributedDataParallel  # gradients all-reduced
            net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        try:
            return engine.train_task(
                net, task.index, task.batches(), task.label_offset, lora, head, self.train_cfg,
                self.device, self.amp_dtype, self.progress, step_hook=self.after_step,
                extra_loss=lambda logits, target: self.extra_loss(task.index, logits, target),
                monitor=monitor)
        finally:
            for p in lora + head:
                p.requires_grad_(False)

    def after_task(self, task: Task) -> None:
        """Merge the task's adapters into the frozen weights."""
        self.model.merge_adapters()
        self.record(None, None)

    def record(self, frozen_dims: Optional[list[int]], interference: Optional[list[float]]) -> None:
        """The task's split, per block (None where nothing is split): metrics.json reports it."""
        self.split_dims.append(frozen_dims)
        self.interference.append(interference)

    def evaluate(self, batches: Iterable, desc: str = "eval") -> tuple[int, int]:
        return engine.evaluate(self.model, batches, self.device, self.amp_dtype, desc,
                               self.progress)

    def state_dict(self) -> dict:
        return {"split_dims": self.split_dims, "interference": self.interference}

    def load_state_dict(self, state: dict) -> None:
        self.split_dims = list(state["split_dims"])
        self.interference = list(state["interference"])
