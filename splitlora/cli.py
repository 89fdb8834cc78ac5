"""The command line of ``main.py``: resolve the config and run directory, run, report.

Expected failures (bad config, missing data, unreadable weights, numerical faults) end with
one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from .config import Config, ConfigError, config_warnings, dump_yaml, load_config, to_dict
from .errors import UserError, WriteError, user_message
from .fileio import check_output_dir, read_json

log = logging.getLogger("splitlora")


def default_output(cfg: Config) -> Path:
    return Path("runs") / cfg.name / f"seed{cfg.seed}"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "kwargs":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def read_previous_config(out: Path) -> Optional[dict]:
    import yaml
    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid YAML; is {out} a run directory? Use another "
                          "--output") from None
    return data if isinstance(data, dict) else None


def print_report(metrics: dict, out: Path) -> None:
    from .metrics import format_matrix
    print(f"\n{metrics['name']} ({metrics['method']}, seed {metrics['seed']}): "
          f"{metrics['tasks_done']}/{metrics['num_tasks']} tasks")
    print("accuracy matrix (%, row = after task t, column = task j):")
    print(format_matrix(metrics["acc_matrix"]))
    if metrics.get("final_acc") is not None:
        print(f"final accuracy          {metrics['final_acc']:6.2f}")
        print(f"average incremental acc {metrics['avg_inc_acc']:6.2f}")
        print(f"forgetting              {metrics['forgetting']:6.2f}")
    print(f"results: {out / 'metrics.json'}")


def inspect_run_dir(out: Path, cfg: Config, args: argparse.Namespace):
    """Decide what to do with an existing run directory, before anything is written.

    Returns (mode, checkpoint state, metrics): mode is 'fresh', 'resume' or 'complete'.
    """
    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: --resume continues the run "
                          f"in {out}, --force discards it and starts again; pass one of them")
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    previous = read_previous_config(out)
    ckpt_path = out / CHECKPOINT_NAME
    if previous is not None and not args.force:
        diff = config_diff(previous, to_dict(cfg))
        if diff:
            raise ConfigError(f"run directory {out} holds a run of a different config ("
                              + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
                              + "). Pass another --output, or --force to replace it.")
        metrics = read_json(out / "metrics.json")
        if metrics.get("complete") and not args.resume:
            return "complete", None, metrics
        if ckpt_path.is_file():
            return "resume", load_checkpoint(ckpt_path), None
    if args.resume:
        raise ConfigError(f"--resume: no checkpoint of this config in {out} (nothing to resume); "
                          "run without --resume to start it")
    return "fresh", None, None


def log_to_file(message: str) -> None:
    """Append ``message`` (an error) to the run's log.txt when this session attached it."""
    record = logging.LogRecord("splitlora", logging.ERROR, __file__, 0, message, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def checkpoint_note(out: Path, num_tasks: int) -> str:
    """What a failed write leaves behind: the last checkpoint (read back to prove it intact)."""
    from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
    path = out / CHECKPOINT_NAME
    if not path.is_file():
        return "no task had completed, so there is no checkpoint yet; fix this and run again"
    try:
        done = load_checkpoint(path).get("tasks_done")
    except CheckpointError:
        return f"the checkpoint {path} cannot be read either"
    return (f"the last checkpoint {path} (after task {done} of {num_tasks}) is intact: fix this "
            "(e.g. free disk space) and run the same command to continue from it")


def run_cli(args: argparse.Namespace) -> int:
    main_process = os.environ.get("RANK", "0") == "0"  # torchrun: only rank 0 reports and writes
    exp = None
    try:
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        out = Path(args.output) if args.output else default_output(cfg)
        check_output_dir(out)
        mode, ckpt, done = inspect_run_dir(out, cfg, args)
        if mode == "complete":
            if not main_process:
                return 0
            print(f"{out} already holds the complete results of this config "
                  "(pass --force to run again)")
            print_report(done, out)
            return 0
        from .checkpoint import CHECKPOINT_NAME
        from .experiment import Experiment, attach_log_file, setup_logging
        setup_logging(logging.INFO if main_process else logging.WARNING)
        for warning in config_warnings(cfg):
            log.warning(warning)
        exp = Experiment(cfg, out, progress=not args.no_progress)  # checks names and data
        exp.build()  # weights: errors here still leave the run directory untouched
        if ckpt is not None:
            exp.load_state_dict(ckpt, out / CHECKPOINT_NAME)
        elif args.force and main_process:  # a fresh start replaces the previous run's state
            for name in (CHECKPOINT_NAME, "metrics.json"):
                (out / name).unlink(missing_ok=True)
        exp.start()
        if main_process:
            attach_log_file(out / "log.txt")
        log.info("config %s -> run directory %s (%s%s)", args.config, out,
                 "resumed" if ckpt is not None else "new run",
                 f", {exp.dist.world_size} processes" if exp.dist.enabled else "")
        metrics = exp.run()
        if main_process:
            print_report(metrics, out)
        return 0
    except UserError as exc:
        message = user_message(exc)
        if isinstance(exc, WriteError) and exp is not None:
            message += "; " + checkpoint_note(exp.out, len(exp.tasks))
        if main_process:
            log_to_file(f"error: {message}")
        logging.getLogger().handlers.clear()
        if main_process:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        message = ("interrupted: the last completed task is checkpointed; run the same command to "
                   "continue")
        log_to_file(message)
        print(message, file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:
            from .distributed import shutdown
            shutdown()
