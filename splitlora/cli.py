"""The command line of ``main.py``: resolve the config and run directory, run, report.

Expected failures (bad config, missing data, unreadable weights, numerical faults) end with
one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from .config import Config, ConfigError, dump_yaml, load_config, to_dict
from .errors import UserError

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
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
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


def run_cli(args: argparse.Namespace) -> int:
    try:
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        out = Path(args.output) if args.output else default_output(cfg)
        previous = read_previous_config(out)
        if previous is not None and not args.force:
            diff = config_diff(previous, to_dict(cfg))
            if diff:
                raise ConfigError(f"run directory {out} holds a run of a different config ("
                                  + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
                                  + "). Pass another --output, or --force to replace it.")
            metrics_path = out / "metrics.json"
            if metrics_path.is_file():
                try:
                    done = json.loads(metrics_path.read_text())
                except (json.JSONDecodeError, OSError):
                    done = {}
                if done.get("complete"):
                    print(f"{out} already holds the complete results of this config "
                          "(pass --force to run again)")
                    print_report(done, out)
                    return 0
        from .experiment import Experiment, prepare_run_dir, setup_logging  # imports torch
        setup_logging(None)
        exp = Experiment(cfg, out, progress=not args.no_progress)  # checks the data first
        prepare_run_dir(cfg, out)
        setup_logging(out / "log.txt")
        log.info("config %s -> run directory %s", args.config, out)
        exp.build()
        metrics = exp.run()
        print_report(metrics, out)
        return 0
    except UserError as exc:
        logging.getLogger().handlers.clear()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
