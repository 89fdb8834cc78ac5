"""The command line of ``main.py``: resolve the config and the run directory, run, log, report.

Expected failures end as one ``error: ...`` line on stderr (exit 2), never a traceback. Log
records are buffered until the run directory is known to be good, then all go to log.txt."""
import argparse
import hashlib
import importlib.util
import json
import logging
import logging.handlers
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Optional

from .config import (RESUMABLE_KEYS, Config, config_warnings, dump_yaml, flatten, load_config,
                     to_dict)
from .fileio import ConfigError, UserError, WriteError, open_append_no_follow

log = logging.getLogger("splitlora")
_OURS = "_splitlora"  # attribute marking the handlers this module installed


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, _OURS, False)]


def remove_handlers() -> None:
    for h in _ours():
        logging.getLogger().removeHandler(h)
        h.close()


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging now; records also buffered for :func:`attach_log_file`."""
    remove_handlers()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    for h in (console, buffer):
        setattr(h, _OURS, True)
        logging.getLogger().addHandler(h)
    logging.getLogger().setLevel(level)


class _LogFile(logging.StreamHandler):
    """log.txt. A failed write (a full disk) warns once on stderr, not a traceback per record."""

    failed = False
    _splitlora = True  # one of this module's handlers (_OURS)

    def close(self) -> None:
        super().close()
        self.stream.close()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"warning: cannot write log.txt ({sys.exc_info()[1]}); console only\n")


def attach_log_file(path: Path) -> None:
    """Send logging to ``path`` (appended to, never through a link), the buffered records first."""
    fh = _LogFile(open_append_no_follow(path))
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in _ours():
        if isinstance(h, logging.handlers.MemoryHandler):
            h.setTarget(fh)
            logging.getLogger().removeHandler(h)
            h.close()  # flushes the buffered records to fh
    logging.getLogger().addHandler(fh)


def log_to_file(message: str) -> None:
    """Append ``message`` (an error) to the run's log.txt when this session attached it."""
    record = logging.LogRecord("splitlora", logging.ERROR, __file__, 0, message, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, _LogFile):
            h.handle(record)


class RunLogger:
    """TensorBoard and W&B logs as ``log.*`` asks (scalars: docs/runs.md). The x axis is the
    global step, so a resumed run continues both where its last checkpoint left them."""

    def __init__(self, cfg, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        for key, on, package in (("log.tensorboard", cfg.log.tensorboard, "tensorboard"),
                                 ("log.wandb", cfg.log.wandb != "off", "wandb")):
            if on and importlib.util.find_spec(package) is None:
                raise ConfigError(f"{key} needs the {package} package, not installed: pip install "
                                  f"-r requirements-extra.txt (or pip install {package})")
        self.tb, self.wandb, self.step = None, None, 0
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
            import wandb
            c, path = self.cfg, str(self.run_dir.resolve())
            try:
                self.wandb = wandb.init(
                    project=c.log.wandb_project, name=f"{c.name}/{c.method.name}/seed{c.seed}",
                    resume="allow", mode=c.log.wandb, id=hashlib.sha256(path.encode()).hexdigest()[:16],
                    dir=str(self.run_dir), config=dict(to_dict(c), run_dir=path))
            except Exception as exc:  # noqa: BLE001 - no API key, no network, ...
                raise ConfigError(f"log.wandb = {c.log.wandb}: W&B did not start ({type(exc).__name__}: "
                                  f"{(str(exc).splitlines() or [''])[0][:200]}); log in (wandb login) "
                                  "or use log.wandb=offline") from None

    def _scalars(self, values: dict, step: int) -> None:
        values = {k: v for k, v in values.items() if v is not None}  # e.g. forgetting of task 0
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
        values.update({"acc/seen_tasks": metrics["acc_per_task"][t], "acc/avg_incremental":
                       metrics["avg_inc_acc"], "forgetting": metrics["forgetting"]})
        splits = {"frozen_dims": learner.split_dims, "interference": learner.interference}
        values.update({f"split/{key}/block_{block}": v for key, rows in splits.items()
                       for block, v in enumerate(rows[t] or [])})
        self._scalars(values, self.step)
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None


def user_message(exc: BaseException) -> str:
    """The message of ``exc`` without a DataLoader worker's embedded traceback."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and head.replace(".", "").replace("_", "").isalnum() else last
    return text


def default_output(cfg: Config, base: Config) -> Path:
    """``runs/<name>/<method>[+key=value...]/seed<seed>``, naming every key that differs from
    ``base`` (the file's config) except ``RESUMABLE_KEYS``: other experiments never share it."""
    ours, theirs = flatten(to_dict(cfg)), flatten(to_dict(base))
    changed = sorted(k for k, v in ours.items() if k not in RESUMABLE_KEYS
                     and k not in ("seed", "method.name") and theirs.get(k) != v)
    slug = lambda v: re.sub(r"[^A-Za-z0-9._,=-]", "_", v if isinstance(v, str) else  # noqa: E731
                            json.dumps(v, separators=(",", ":")))
    extra = "+".join(f"{k}={slug(ours[k])}" for k in changed)
    if len(extra) > 80:
        extra = "cfg-" + hashlib.sha256(extra.encode()).hexdigest()[:10]
    tag = f"{cfg.method.name}+{extra}" if extra else cfg.method.name
    return Path("runs") / cfg.name / tag / f"seed{cfg.seed}"


def print_report(metrics: dict, out: Path) -> None:
    from splitlora.metrics import format_matrix
    print(f"\n{metrics['name']} ({metrics['method']}, seed {metrics['seed']}): "
          f"{metrics['tasks_done']}/{metrics['num_tasks']} tasks")
    print("accuracy matrix (%, row = after task t, column = task j):")
    print(format_matrix(metrics["acc_matrix"]))
    if metrics.get("final_acc") is not None:
        print(f"final accuracy          {metrics['final_acc']:6.2f}")
        print(f"average incremental acc {metrics['avg_inc_acc']:6.2f}")
        f = metrics["forgetting"]
        print("forgetting              " + ("   n/a (one task)" if f is None else f"{f:6.2f}"))
    print(f"results: {out / 'metrics.json'}")


def run_cli(args: argparse.Namespace) -> int:
    """``main.py``: one run, or one ``error:`` line (exit 2), or an interrupt (exit 130)."""
    from datasets import DataError
    from models import ModelError
    from splitlora.engine import NumericalError
    from .rundir import CHECKPOINT, RunDir
    main_process = os.environ.get("RANK", "0") == "0"  # torchrun: only rank 0 reports and writes
    run_dir: Optional[RunDir] = None
    exp = None  # the Experiment, once made
    try:
        overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        if args.output is not None and not args.output.strip():
            raise ConfigError("--output is empty: give a run directory, or leave it out (default)")
        out = Path(args.output) if args.output else default_output(cfg, load_config(args.config))
        setup_logging(logging.INFO if main_process else logging.WARNING)
        run_dir = RunDir(out, shlex.join(sys.argv))
        state = run_dir.open(cfg, args.resume, args.force, lock=main_process)
        if state.mode == "complete":
            if main_process:
                print(f"{out} already holds the complete results of this config (--force reruns)")
                print_report(state.metrics, out)
            return 0
        for warning in config_warnings(cfg, overrides):
            log.warning(warning)
        from .experiment import Experiment
        logger = RunLogger(cfg, out) if main_process else None  # checks the packages it needs
        exp = Experiment(cfg, run_dir, progress=not args.no_progress, logger=logger)  # data
        exp.build()  # weights: errors here still leave the run directory untouched
        if state.checkpoint is not None:
            exp.resume(state.checkpoint)
        if main_process:
            run_dir.begin(cfg, force=args.force)
            attach_log_file(out / "log.txt")
            if logger:
                logger.start(exp.steps_done)
        exp.start(state.changes)
        log.info("config %s -> run directory %s (%s%s)", args.config, out,
                 "resumed" if state.checkpoint is not None else "new run",
                 f", {exp.dist.world_size} processes" if exp.dist.enabled else "")
        if state.changes:
            log.info("continuing with changed keys: %s", "; ".join(state.changes))
        metrics = exp.run()
        if main_process:
            print_report(metrics, out)
        return 0
    except (UserError, DataError, ModelError, NumericalError) as exc:  # expected failures
        message = user_message(exc)
        if isinstance(exc, WriteError) and exp is not None:
            message += "; " + run_dir.failure_note(len(exp.tasks))
        if main_process:
            log_to_file(f"error: {message}")
            print(f"error: {message}", file=sys.stderr)
        remove_handlers()
        return 2
    except KeyboardInterrupt:
        message = ("interrupted" if run_dir is None else
                   "interrupted: the last completed task is checkpointed; run the same command "
                   "(without --force) to continue" if (run_dir.path / CHECKPOINT).is_file() else
                   "interrupted before the first task completed: nothing to continue from")
        log_to_file(message)
        print(message, file=sys.stderr)
        return 130
    finally:
        if exp is not None and exp.logger is not None:
            exp.logger.close()
        if run_dir is not None:
            run_dir.close()
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
