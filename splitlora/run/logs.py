"""Logging of a run: the console at once, ``log.txt`` once the inputs are validated.

Records are buffered until :func:`attach_log_file`, so that log.txt receives the whole run but
nothing is written before the run directory is known to be good (no torch here).
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from .fileio import open_append_no_follow

_OURS = "_splitlora"  # attribute marking the handlers this module installed


def _mark(handler: logging.Handler) -> logging.Handler:
    setattr(handler, _OURS, True)
    return handler


def remove_handlers() -> None:
    """Close and remove every handler :func:`setup_logging` / :func:`attach_log_file` added."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _OURS, False):
            root.removeHandler(h)
            h.close()


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging now; records also buffered for :func:`attach_log_file`."""
    remove_handlers()
    root = logging.getLogger()
    console = _mark(logging.StreamHandler())
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    root.addHandler(_mark(logging.handlers.MemoryHandler(capacity=100_000,
                                                         flushLevel=logging.CRITICAL + 1)))
    root.setLevel(level)


class _LogFile(logging.StreamHandler):
    """log.txt. A failed write (a full disk) warns once on stderr, not a traceback per record."""

    failed = False

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"warning: cannot write log.txt ({sys.exc_info()[1]}); log records "
                             "now go to the console only\n")


def attach_log_file(path: Path) -> None:
    """Send logging to ``path`` (appended to, never through a link), the buffered records first."""
    root = logging.getLogger()
    fh = _mark(_LogFile(open_append_no_follow(path)))
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in list(root.handlers):
        if isinstance(h, logging.handlers.MemoryHandler) and getattr(h, _OURS, False):
            h.setTarget(fh)
            h.flush()
            root.removeHandler(h)
            h.close()
    root.addHandler(fh)


def log_to_file(message: str) -> None:
    """Append ``message`` (an error) to the run's log.txt when this session attached it."""
    record = logging.LogRecord("splitlora", logging.ERROR, __file__, 0, message, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, _LogFile):
            h.handle(record)


class RunLogger:
    """TensorBoard event files (``<run dir>/tensorboard/``) and a Weights & Biases run, when the
    config asks for them (``log.tensorboard``, ``log.wandb``); only the main process logs.

    Per step: ``train/loss``, ``lr/lora``, ``lr/head``; per epoch: ``train/acc``,
    ``train/images_per_s``; per task: ``acc/task_<j>`` (the row of the accuracy matrix),
    ``acc/seen_tasks``, ``acc/avg_incremental``, ``forgetting``, and per block
    ``split/frozen_dims/block_<l>``, ``split/interference/block_<l>`` (methods that split).
    The x axis of every scalar is the global training step, so a resumed run continues its
    TensorBoard run and W&B run (a stable id) where its last checkpoint left them.
    """

    def __init__(self, cfg, run_dir: Path) -> None:
        import importlib.util

        from .errors import ConfigError
        self.cfg, self.run_dir = cfg, Path(run_dir)
        for key, on, package in (("log.tensorboard", cfg.log.tensorboard, "tensorboard"),
                                 ("log.wandb", cfg.log.wandb != "off", "wandb")):
            if on and importlib.util.find_spec(package) is None:
                raise ConfigError(f"{key} needs the {package} package, which is not installed: "
                                  f"pip install -r requirements-extra.txt (or pip install {package})")
        self.tb = self.wandb = None
        self.step = 0
        self._pending: list = []  # (loss tensor, lrs) of this epoch's steps: one sync per epoch

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wandb is not None

    def start(self, step: int) -> None:
        """Open the writers; ``step`` = training steps already done (a resumed run's)."""
        self.step = step
        if self.cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step hides what a killed session logged after its last checkpoint
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step + 1)
        if self.cfg.log.wandb != "off":
            import hashlib

            import wandb

            from .config import to_dict
            c = self.cfg
            run_id = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
            self.wandb = wandb.init(project=c.log.wandb_project, name=f"{c.name}/{c.method.name}/"
                                    f"seed{c.seed}", id=run_id, resume="allow",
                                    dir=str(self.run_dir), mode=c.log.wandb,
                                    config=dict(to_dict(c), run_dir=str(self.run_dir.resolve())))

    def _scalars(self, values: dict, step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(dict(values, step=step), step=step)

    def train_step(self, loss, lrs: dict) -> None:
        if self.active:
            self._pending.append((loss, lrs))

    def epoch(self, stats) -> None:
        """Write the epoch's steps (one device sync for all their losses) and its figures."""
        if not self.active:
            return
        import torch
        losses = torch.stack([loss for loss, _ in self._pending]).tolist() if self._pending else []
        for loss, (_, lrs) in zip(losses, self._pending):
            self.step += 1
            self._scalars({"train/loss": loss, **{f"lr/{k}": v for k, v in lrs.items()}}, self.step)
        self._pending = []
        self._scalars({"train/acc": stats.acc,
                       "train/images_per_s": stats.images / max(stats.seconds, 1e-9)}, self.step)

    def task(self, t: int, metrics: dict, learner) -> None:
        if not self.active:
            return
        values = {f"acc/task_{j}": v for j, v in enumerate(metrics["acc_matrix"][t][: t + 1])}
        values.update({"acc/seen_tasks": metrics["acc_per_task"][t],
                       "acc/avg_incremental": metrics["avg_inc_acc"]})
        if metrics["forgetting"] is not None:
            values["forgetting"] = metrics["forgetting"]
        for key, per_task in (("frozen_dims", learner.split_dims),
                              ("interference", learner.interference)):
            for block, v in enumerate(per_task[t] or []):
                values[f"split/{key}/block_{block}"] = v
        self._scalars(values, self.step)
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None
