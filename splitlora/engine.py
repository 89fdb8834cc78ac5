"""The training and evaluation passes of a task (docs/protocol.md, points 6, 9-15, 24)."""

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation of each task (AdamW, multistep schedule per epoch)."""

    epochs: int = 10  # epochs per task
    # epoch e (1-based) runs at lr x gamma^(number of milestones <= e), as the official code
    # steps timm's multistep schedule; [5, 8]: epochs 1-4 at lr, 5-7 at 0.1 lr, 8-10 at 0.01 lr
    milestones: list[int] = field(default_factory=lambda: [5, 8])
    gamma: float = 0.1  # decay factor at each milestone
    lr: float = 1e-3  # AdamW lr of LoRA B
    head_lr: float = 1e-2  # AdamW lr of the current task's head
    weight_decay: float = 5e-5  # AdamW weight decay, both groups
    batch_size: int = 256  # training batch (the global batch under torchrun)
    expand_times: int = 10  # the task's training set is repeated this many times per epoch
    temperature: float = 30.0  # cross-entropy on logits / temperature
    amp: str = "auto"  # autocast: auto = fp16 with a grad scaler on CUDA, off on CPU
    # data-loading workers; auto = usable CPUs / torchrun processes of this machine - 1
    num_workers: Union[int, str] = "auto"
    tf32: bool = True  # allow TF32 matmuls on CUDA (the official code sets precision 'high')
    compile: bool = False  # torch.compile the training forward (eager if compilation fails)
    max_bad_steps: int = 20  # fp16: consecutive non-finite losses skipped before stopping


class NumericalError(FloatingPointError):
    """A non-finite loss or statistic: the run stops, its last checkpoint is kept."""


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def progress_bar(iterable: Iterable, desc: str, enabled: bool = True):
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True,
                disable=None if enabled else True)


def make_optimizer(lora_params: Sequence[nn.Parameter], head_params: Sequence[nn.Parameter],
                   cfg: TrainConfig) -> torch.optim.AdamW:
    groups = [{"params": list(lora_params), "lr": cfg.lr, "name": "lora"},
              {"params": list(head_params), "lr": cfg.head_lr, "name": "head"}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """timm's ``MultiStepLRScheduler``, stepped officially: step(0), then step(e) after epoch e."""
    from timm.scheduler import MultiStepLRScheduler
    return MultiStepLRScheduler(optimizer, decay_t=list(cfg.milestones), decay_rate=cfg.gamma,
                                t_in_epochs=True)


class CompiledForward:
    """``torch.compile(module)``, eager for good once compilation fails (other errors propagate)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        try:
            self.compiled = torch.compile(module)
        except RuntimeError as exc:  # e.g. a platform torch.compile does not support
            log.warning("torch.compile unavailable (%s); running eagerly", str(exc)[:200])
            self.compiled = None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            from torch._dynamo.exc import TorchDynamoException
            try:
                return self.compiled(*args, **kwargs)
            except TorchDynamoException as exc:  # compilation (backend, graph capture) failed
                log.warning("torch.compile failed (%s: %s); running eagerly", type(exc).__name__,
                            (str(exc).splitlines() or [""])[0][:200])
                self.compiled = None
        return self.module(*args, **kwargs)


@dataclass
class EpochStats:
    epoch: int
    lr: float  # LoRA group
    head_lr: Optional[float]  # head group (None when the head does not train)
    loss: float
    acc: float
    images: int
    steps: int  # optimizer steps taken
    seconds: float


def train_task(model: nn.Module, task: int, batches: Iterable, label_offset: int,
               lora_params: Sequence[nn.Parameter], head_params: Sequence[nn.Parameter],
               cfg: TrainConfig, device: torch.device, amp_dtype: Optional[torch.dtype],
               progress: bool = True, step_hook: Optional[Callable[[], None]] = None,
               extra_loss: Optional[Callable[[Tensor, Tensor], Optional[Tensor]]] = None,
               monitor=None) -> list[EpochStats]:
    """Train the adapter and head for ``cfg.epochs`` epochs on task-local labels ``y``:
    ``cross_entropy(logits / temperature, y) + extra_loss(logits, y)`` (None: no term)."""
    optimizer = make_optimizer(lora_params, head_params, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    model.eval()  # the backbone stays in eval mode, as in the official code (no dropout anyway)
    stats: list[EpochStats] = []
    bad_streak = 0  # with fp16 + scaler an overflowing step is skipped, as GradScaler does
    forward = CompiledForward(model) if cfg.compile else model
    scheduler.step(0)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = steps = 0
        bar = progress_bar(batches, f"task {task} epoch {epoch + 1}/{cfg.epochs}", progress)
        for step, (images, labels) in enumerate(bar):
            images = images.to(device, non_blocking=True)
            target = labels.to(device, non_blocking=True) - label_offset
            with autocast(device, amp_dtype):
                logits = forward(images, task)
            loss = F.cross_entropy(logits.float() / cfg.temperature, target)
            extra = extra_loss(logits, target) if extra_loss is not None else None
            if extra is not None:
                loss = loss + extra
            if not torch.isfinite(loss):
                bad_streak += 1
                if not use_scaler or bad_streak > cfg.max_bad_steps:
                    streak = f" ({bad_streak} steps in a row)" if use_scaler else ""
                    raise NumericalError(f"non-finite training loss ({loss.item()}) at task "
                                         f"{task}, epoch {epoch + 1}, step {step}{streak}")
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
            if monitor is not None:
                monitor.train_step(loss.detach(), lrs)
            steps, seen = steps + 1, seen + images.shape[0]
            loss_sum += loss.detach() * images.shape[0]
            correct += (logits.detach().argmax(1) == target).sum()
        scheduler.step(epoch + 1)
        s = EpochStats(epoch + 1, lrs.get("lora", lrs.get("head")), lrs.get("head"),
                       float(loss_sum) / max(seen, 1), 100.0 * float(correct) / max(seen, 1),
                       seen, steps, time.perf_counter() - t0)
        stats.append(s)
        log.info("task %d epoch %d/%d: lr %.2e head lr %.2e loss %.4f train acc %.2f%% "
                 "(%d images, %.1fs, %.0f img/s)", task, s.epoch, cfg.epochs, s.lr, s.head_lr,
                 s.loss, s.acc, s.images, s.seconds, s.images / max(s.seconds, 1e-9))
        if monitor is not None:
            monitor.epoch(s)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device,
             amp_dtype: Optional[torch.dtype], desc: str = "eval",
             progress: bool = True) -> tuple[int, int]:
    """(correct, total) of argmax over all heads' concatenated logits vs global labels."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    total = 0
    for images, labels in progress_bar(batches, desc, progress):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        correct += (logits.argmax(1) == labels).sum()
        total += labels.shape[0]
    return int(correct), total
