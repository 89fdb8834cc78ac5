"""The command line of ``main.py``: resolve the config and run directory, run, report.

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

from .config import (RESUMABLE_KEYS, Config, ConfigError, config_warnings, dump_yaml, flatten,
                     load_config, to_dict)
from .run.errors import WriteError, is_user_error, user_message
from .run.fileio import check_output_dir, read_json
from .logs import attach_log_file, log_to_file, setup_logging

log = logging.getLogger("splitlora")


def _slug(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9._,=-]", "_", text)


def default_output(cfg: Config, base: Optional[Config] = None) -> Path:
    """``runs/<name>/<method>[+key=value...]/seed<seed>``.

    The method, the seed and every result-defining key set on the command line (keys whose
    value differs from ``base``, the config file's own values) name the directory, so that
    runs of different experiments never share one; keys that may change when a run is
    continued (``RESUMABLE_KEYS``) do not.
    """
    tag = cfg.method.name
    if base is not None:
        ours, theirs = flatten(to_dict(cfg)), flatten(to_dict(base))
        changed = sorted(k for k, v in ours.items() if k not in RESUMABLE_KEYS
                         and k not in ("seed", "method.name") and theirs.get(k) != v)
        extra = "+".join(f"{k}={_slug(ours[k])}" for k in changed)
        if len(extra) > 80:
            extra = "cfg-" + hashlib.sha256(extra.encode()).hexdigest()[:10]
        if extra:
            tag = f"{tag}+{extra}"
    return Path("runs") / cfg.name / tag / f"seed{cfg.seed}"


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def split_diff(diff: list[str]) -> tuple[list[str], list[str]]:
    """(changes of keys that may change on resume, changes of the run's identity)."""
    ok = [d for d in diff if d.split(":", 1)[0] in RESUMABLE_KEYS]
    return ok, [d for d in diff if d not in ok]


def read_previous_config(out: Path, force: bool = False) -> Optional[dict]:
    """The config of the run in ``out``; None when there is none. Run files without a
    readable config (a missing, empty or damaged config.yaml beside a checkpoint or metrics)
    are refused, unless ``force`` (they are then moved aside like any previous run)."""
    import yaml
    path = out / "config.yaml"
    data, problem = None, None
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            problem = f"{path} is not valid YAML"
        else:
            if not isinstance(data, dict):
                data, problem = None, f"{path} does not hold a config"
    elif any((out / name).is_file() for name in ("checkpoint.pt", "metrics.json")):
        problem = f"{out} holds run files but no config.yaml"
    if problem and not force:
        raise ConfigError(f"{problem}, so the run there cannot be identified; use another "
                          "--output, or --force to move its files aside and start a new run")
    return data


def print_report(metrics: dict, out: Path) -> None:
    from .metrics import format_matrix
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


def inspect_run_dir(out: Path, cfg: Config, args: argparse.Namespace):
    """Decide what to do with an existing run directory, before anything is written.

    Returns (mode, checkpoint state, metrics, changes): mode is 'fresh', 'resume' or
    'complete'; changes lists the keys that may change on resume and did.
    """
    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: --resume continues the run "
                          f"in {out}, --force moves its files aside and starts again; pass one of "
                          "them")
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    previous = read_previous_config(out, force=args.force)
    ckpt_path = out / CHECKPOINT_NAME
    changes: list[str] = []
    if previous is not None and not args.force:
        changes, identity = split_diff(config_diff(previous, to_dict(cfg)))
        if identity:
            raise ConfigError(f"run directory {out} holds a run of a different config ("
                              + "; ".join(identity[:8]) + (" ..." if len(identity) > 8 else "")
                              + "). Pass another --output, or --force to replace it. (Keys that "
                              f"may change when a run is continued: {', '.join(RESUMABLE_KEYS)}.)")
        metrics = read_json(out / "metrics.json")
        if metrics.get("complete"):  # with --resume too: nothing is left to run or write
            return "complete", None, metrics, changes
        if ckpt_path.is_file():
            return "resume", load_checkpoint(ckpt_path), None, changes
    if args.resume:
        raise ConfigError(f"--resume: no checkpoint of this config in {out} (nothing to resume); "
                          "run without --resume to start it")
    return "fresh", None, None, []


def _run(args: argparse.Namespace, cfg: Config, out: Path, main_process: bool,
         session: dict) -> int:
    """The run itself, with the run directory locked (by rank 0). ``session`` receives the
    experiment and whether the run directory was written to."""
    from .checkpoint import CHECKPOINT_NAME
    from .experiment import Experiment
    mode, ckpt, done, changes = inspect_run_dir(out, cfg, args)
    if mode == "complete":
        if main_process:
            print(f"{out} already holds the complete results of this config "
                  "(pass --force to run again)")
            print_report(done, out)
        return 0
    for warning in config_warnings(cfg):
        log.warning(warning)
    exp = session["exp"] = Experiment(cfg, out, progress=not args.no_progress)  # names, data
    from .learner import ignored_keys
    for key in ignored_keys(cfg, load_config(args.config)):
        log.warning("%s is set, but method %s does not read it: it has no effect on this run",
                    key, cfg.method.name)
    exp.build()  # weights: errors here still leave the run directory untouched
    if ckpt is not None:
        exp.load_state_dict(ckpt, out / CHECKPOINT_NAME)
    elif args.force and main_process:  # a fresh start: the previous run's files move aside
        set_aside_previous_run(out)
    exp.session_changes = changes
    session["started"] = True  # from here on the directory holds a run: the lock file stays
    exp.start()
    if main_process:
        attach_log_file(out / "log.txt")
    log.info("config %s -> run directory %s (%s%s)", args.config, out,
             "resumed" if ckpt is not None else "new run",
             f", {exp.dist.world_size} processes" if exp.dist.enabled else "")
    if changes:
        log.info("continuing with changed keys: %s", "; ".join(changes))
    metrics = exp.run()
    if main_process:
        print_report(metrics, out)
    return 0


RUN_FILES = ("checkpoint.pt", "metrics.json", "config.yaml", "env.json", "log.txt")


def set_aside_previous_run(out: Path) -> Optional[Path]:
    """``--force``: move the previous run's files into ``out/replaced-<UTC time>/`` (nothing is
    deleted: a forced run that then fails, e.g. on an unreadable image, loses nothing).
    Returns that folder, or None when there was nothing to move."""
    present = [name for name in RUN_FILES if (out / name).is_file()]
    if not present:
        return None
    import time
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = out / f"replaced-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = out / f"replaced-{stamp}-{n}"
    dest.mkdir()
    for name in present:
        os.replace(out / name, dest / name)
    log.warning("--force: the previous run's files (%s) were moved to %s; delete that folder "
                "when you no longer need them", ", ".join(present), dest)
    return dest


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
    lock = None
    session: dict = {"started": False, "exp": None}
    try:
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        if args.output is not None and not args.output.strip():
            raise ConfigError("--output is empty: give a run directory, or leave --output out "
                              "for the default runs/<name>/<method>/seed<seed>")
        out = Path(args.output) if args.output else default_output(cfg, load_config(args.config))
        session["out"] = out
        check_output_dir(out)
        from .runlock import RunLock
        setup_logging(logging.INFO if main_process else logging.WARNING)
        if main_process:
            lock = RunLock(out, shlex.join(sys.argv)).acquire()
        try:
            return _run(args, cfg, out, main_process, session)
        except Exception as exc:
            if is_user_error(exc) and lock is not None and not session["started"]:
                lock.discard()  # refused before anything was written
            raise
    except Exception as exc:
        if not is_user_error(exc):
            raise
        message = user_message(exc)
        exp = session["exp"]
        if isinstance(exc, WriteError) and exp is not None:
            message += "; " + checkpoint_note(exp.out, len(exp.tasks))
        if main_process:
            log_to_file(f"error: {message}")
        logging.getLogger().handlers.clear()
        if main_process:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from .checkpoint import CHECKPOINT_NAME
        run_dir = session.get("out")
        if run_dir is not None and (run_dir / CHECKPOINT_NAME).is_file():
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
        if lock is not None:
            lock.release()
        if "torch" in sys.modules:
            from .distributed import shutdown
            shutdown()
