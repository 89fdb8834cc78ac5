"""The command line of ``main.py``: resolve the config and the run directory, run, report.

Expected failures (bad config, missing data, unreadable weights, numerical faults) end with
one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Optional

from .config import (RESUMABLE_KEYS, Config, config_warnings, dump_yaml, flatten, load_config,
                     to_dict)
from .errors import ConfigError, UserError, WriteError, user_message
from .logs import RunLogger, attach_log_file, log_to_file, remove_handlers, setup_logging

log = logging.getLogger("splitlora")


def user_errors() -> tuple[type[BaseException], ...]:
    """The failures reported as one ``error:`` line: this package's and the lower packages'."""
    from datasets import DataError
    from models import ModelError
    from splitlora.engine import NumericalError
    return UserError, DataError, ModelError, NumericalError


def default_output(cfg: Config, base: Optional[Config] = None) -> Path:
    """``runs/<name>/<method>[+key=value...]/seed<seed>``: the method, the seed and every
    result-defining key set on the command line (keys whose value differs from ``base``, the
    config file's own values) name the directory, so that runs of different experiments never
    share one; keys that may change when a run is continued (``RESUMABLE_KEYS``) do not."""
    tag = cfg.method.name
    if base is not None:
        ours, theirs = flatten(to_dict(cfg)), flatten(to_dict(base))
        changed = sorted(k for k, v in ours.items() if k not in RESUMABLE_KEYS
                         and k not in ("seed", "method.name") and theirs.get(k) != v)
        slug = lambda v: re.sub(r"[^A-Za-z0-9._,=-]", "_", v if isinstance(v, str) else  # noqa: E731
                                json.dumps(v, separators=(",", ":")))
        extra = "+".join(f"{k}={slug(ours[k])}" for k in changed)
        if len(extra) > 80:
            extra = "cfg-" + hashlib.sha256(extra.encode()).hexdigest()[:10]
        if extra:
            tag = f"{tag}+{extra}"
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
        forgetting = metrics["forgetting"]
        print("forgetting              " + ("   n/a (one task)" if forgetting is None
                                            else f"{forgetting:6.2f}"))
    print(f"results: {out / 'metrics.json'}")


def run_cli(args: argparse.Namespace) -> int:
    """``main.py``: one run, or one ``error:`` line (exit 2), or an interrupt (exit 130)."""
    from .rundir import RunDir
    main_process = os.environ.get("RANK", "0") == "0"  # torchrun: only rank 0 reports and writes
    run_dir: Optional[RunDir] = None
    exp = None
    try:
        overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        if args.output is not None and not args.output.strip():
            raise ConfigError("--output is empty: give a run directory, or leave --output out "
                              "for the default runs/<name>/<method>/seed<seed>")
        out = Path(args.output) if args.output else default_output(cfg, load_config(args.config))
        setup_logging(logging.INFO if main_process else logging.WARNING)
        run_dir = RunDir(out, shlex.join(sys.argv))
        state = run_dir.open(cfg, args.resume, args.force, lock=main_process)
        if state.mode == "complete":
            if main_process:
                print(f"{out} already holds the complete results of this config "
                      "(pass --force to run again)")
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
    except user_errors() as exc:
        message = user_message(exc)
        if isinstance(exc, WriteError) and exp is not None:
            message += "; " + run_dir.failure_note(len(exp.tasks))
        if main_process:
            log_to_file(f"error: {message}")
        remove_handlers()
        if main_process:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if run_dir is not None and run_dir.has_checkpoint():
            message = ("interrupted: the last completed task is checkpointed; run the same "
                       "command (without --force) to continue")
        elif run_dir is not None:
            message = "interrupted before the first task completed: nothing to continue from"
        else:
            message = "interrupted"
        log_to_file(message)
        print(message, file=sys.stderr)
        return 130
    finally:
        if exp is not None and exp.logger is not None:
            exp.logger.close()
        if run_dir is not None:
            run_dir.close()
        if "torch.distributed" in sys.modules:
            from .distributed import shutdown
            shutdown()
