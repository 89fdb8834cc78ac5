"""Training, evaluation and covariance passes (the protocol of docs/protocol.md).

The backbone stays in eval mode throughout, as in the official code (only LoRA and the
head train; a ViT without dropout behaves identically either way).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .config import TrainConfig
from .covariance import CovarianceAccumulator, collect_covariance
from .run.errors import NumericalError

log = logging.getLogger(__name__)


class NonFiniteLossError(NumericalError):
    """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------- precision

def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """autocast dtype for ``train.amp``: auto = fp16 on CUDA, off (None) on CPU."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- optimisation

def make_optimizer(lora_params: Sequence[nn.Parameter], head_params: Sequence[nn.Parameter],
                   cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: LoRA at ``cfg.lr``, the head at ``cfg.head_lr``; same decay."""
    groups = [{"params": list(lora_params), "lr": cfg.lr, "name": "lora"},
              {"params": list(head_params), "lr": cfg.head_lr, "name": "head"}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The official schedule: timm's ``MultiStepLRScheduler`` stepped once per epoch.

    The training loop calls ``step(0)`` before the first epoch and ``step(e)`` after epoch
    e, as the official code does. timm compares the milestones with ``t + 1``, so epoch e
    (1-based) runs at ``lr * gamma ** |{m in milestones : m <= e}|``: with milestones
    [5, 8], epochs 1-4 at lr, 5-7 at 0.1 lr, 8-10 at 0.01 lr.
    """
    from timm.scheduler import MultiStepLRScheduler
    return MultiStepLRScheduler(optimizer, decay_t=list(cfg.milestones), decay_rate=cfg.gamma,
                                t_in_epochs=True)


# --------------------------------------------------------------------------- data loading

def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                device: torch.device, seed: int = 0, drop_last: bool = False,
                sampler=None, collate_fn=None) -> DataLoader:
    """A DataLoader whose shuffling and worker seeds derive from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
                      drop_last=drop_last, generator=gen, collate_fn=collate_fn,
                      persistent_workers=False)


class SkipBadImages:
    """Iterate a loader built with ``skipping_collate``: yield (images, labels) and record the
    unreadable images it dropped in ``sink``."""

    def __init__(self, loader: DataLoader, sink: set) -> None:
        self.loader = loader
        self.sink = sink
        self.sampler = loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, bad in self.loader:
            self.sink.update(bad)
            if images is not None:
                yield images, labels


class CompiledForward:
    """``torch.compile(module)`` with a permanent fallback to eager mode when compilation is
    unavailable or fails (no compiler, unsupported platform, ...)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.compiled = None
        try:
            self.compiled = torch.compile(module)
        except Exception as exc:  # noqa: BLE001
            log.warning("torch.compile unavailable (%s: %s); running eagerly",
                        type(exc).__name__, str(exc)[:200])

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                log.warning("torch.compile failed (%s: %s); running eagerly",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                self.compiled = None
        return self.module(*args, **kwargs)


def _progress(iterable: Iterable, desc: str, total: Optional[int] = None, enabled: bool = True):
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=None if enabled else True)


# --------------------------------------------------------------------------- passes

@dataclass
class EpochStats:
    epoch: int
    lr: float  # LoRA group
    head_lr: Optional[float]  # head group (None when the head does not train)
    loss: float
    acc: float
    images: int
    seconds: float


def train_task(model: nn.Module, task: int, loader: DataLoader, label_offset: int,
               lora_params: Sequence[nn.Parameter], head_params: Sequence[nn.Parameter],
               cfg: TrainConfig, device: torch.device, amp_dtype: Optional[torch.dtype],
               progress: bool = True, step_hook=None) -> list[EpochStats]:
    """Train the current adapter and head on one task for ``cfg.epochs`` epochs.

    Labels from the loader are global; the loss sees task-local labels on the current
    head: cross-entropy(logits / temperature). ``step_hook()`` runs after every optimizer
    step (e.g. to keep a trainable A inside its subspace).
    """
    optimizer = make_optimizer(lora_params, head_params, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    model.eval()
    stats = []
    bad_streak = 0  # with fp16 + scaler an overflowing step is skipped, as GradScaler does
    forward = CompiledForward(model) if cfg.compile else model
    sampler = getattr(loader, "sampler", None)
    scheduler.step(0)
    for epoch in range(cfg.epochs):
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle every epoch
            sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = _progress(loader, f"task {task} epoch {epoch + 1}/{cfg.epochs}", enabled=progress)
        for step, (images, labels) in enumerate(bar):
            images = images.to(device, non_blocking=True)
            target = labels.to(device, non_blocking=True) - label_offset
            with autocast(device, amp_dtype):
                logits = forward(images, task)
            loss = F.cross_entropy(logits.float() / cfg.temperature, target)
            if not torch.isfinite(loss):
                bad_streak += 1
                if not use_scaler or bad_streak > cfg.max_bad_steps:
                    raise NonFiniteLossError(
                        f"non-finite training loss ({loss.item()}) at task {task}, epoch "
                        f"{epoch + 1}, step {step}" + (f" ({bad_streak} steps in a row)"
                                                       if use_scaler else ""))
                log.warning("non-finite loss at task %d epoch %d step %d: step skipped",
                            task, epoch + 1, step)
                optimizer.zero_grad(set_to_none=True)
                continue
            bad_streak = 0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if step_hook is not None:
                step_hook()
            n = images.shape[0]
            loss_sum += loss.detach() * n
            correct += (logits.detach().argmax(1) == target).sum()
            seen += n
        scheduler.step(epoch + 1)
        seconds = time.perf_counter() - t0
        s = EpochStats(epoch + 1, lrs.get("lora", lrs.get("head")), lrs.get("head"),
                       float(loss_sum) / max(seen, 1),
                       100.0 * float(correct) / max(seen, 1), seen, seconds)
        stats.append(s)
        log.info("task %d epoch %d/%d: lr %.2e head lr %.2e loss %.4f train acc %.2f%% "
                 "(%d images, %.1fs, %.0f img/s)", task, s.epoch, cfg.epochs, s.lr, s.head_lr,
                 s.loss, s.acc, s.images, s.seconds, s.images / max(s.seconds, 1e-9))
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             amp_dtype: Optional[torch.dtype], desc: str = "eval",
             progress: bool = True) -> tuple[int, int]:
    """(correct, total) of argmax over all heads' concatenated logits vs global labels."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    total = 0
    for images, labels in _progress(loader, desc, enabled=progress):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        correct += (logits.argmax(1) == labels).sum()
        total += labels.shape[0]
    return int(correct), total


@torch.no_grad()
def covariance_pass(model: nn.Module, modules: Sequence[nn.Module], loader: DataLoader,
                    acc: CovarianceAccumulator, device: torch.device,
                    amp_dtype: Optional[torch.dtype], desc: str = "covariance",
                    progress: bool = True) -> int:
    """One no-grad pass accumulating the inputs of ``modules`` into ``acc``; returns #images."""
    model.eval()
    images_seen = 0
    with collect_covariance(modules, acc):
        for images, _ in _progress(loader, desc, enabled=progress):
            images = images.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                model.features(images) if hasattr(model, "features") else model(images)
            images_seen += images.shape[0]
    return images_seen
