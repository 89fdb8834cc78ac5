#!/usr/bin/env python
"""Run one SplitLoRA experiment from a YAML config.

    python main.py                                   # the demo (configs/demo.yaml), CPU, ~35 s
    python main.py --config configs/imagenet_r_10.yaml --set dataset.root=/data/imagenet-r
    python main.py --config FILE --set train.epochs=3 --set method.name=seq_lora --output DIR

Default run directory: runs/<name>/<method>[+KEY=VALUE per result-defining --set]/seed<seed>/."""
import argparse
import signal
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run one continual-learning experiment.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", default=str(Path(__file__).resolve().parent / "configs/demo.yaml"),
                   help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--output", help="run directory (default: see below)")
    p.add_argument("--seed", type=int, default=None, help="run seed (overrides the config's)")
    p.add_argument("--resume", action="store_true", help="continue after the last completed "
                   "task (the default when a checkpoint of the same config is there)")
    p.add_argument("--force", action="store_true", help="start from scratch even over another "
                   "run; its files are moved into <run dir>/replaced-<time>/")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    from splitlora.run.cli import run_cli
    return run_cli(p.parse_args(argv))


def _stop_on_sigterm(signum: int, frame) -> None:
    """SIGTERM stops a run as Ctrl-C does: finished tasks stay checkpointed, no temporary file.
    Once: a second SIGTERM (Slurm signals every process of a job it requeues) must not cut the
    clean stop short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sys.exit(main())
