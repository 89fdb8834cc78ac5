#!/usr/bin/env python
"""Reproduce the published table: every setting x seed, scheduled over the GPUs, summarised.

    python reproduce.py --data-root /data                    # 5 settings, seed 0, every GPU
    python reproduce.py --data-root /data --seeds 0 1 2 --gpus 0,1
    python reproduce.py --data-root /data --only cifar100_10 --dry-run
    python reproduce.py --data-root /data --set train.num_workers=16 --output results
    python reproduce.py --data-root /data --suite ablation     # ImageNet-R, 3 subspace choices
    python reproduce.py --suite demo --cpu-jobs 2              # the demo, 4 methods, CPU

Data is read from DIR/cifar100, DIR/imagenet-r and DIR/domainnet (the outputs of the
tools/split_*.py scripts), each overridable. Every run is an independent ``main.py``
process in OUTPUT/runs/<setting>/seed<seed>/; one run per GPU at a time (CPU when none), a
queue over the rest. A run whose metrics.json is complete is skipped, so an interrupted
reproduction continues where it stopped. OUTPUT/summary.md and summary.csv hold the table,
beside the paper's figures.
"""
from __future__ import annotations

import argparse
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from splitlora.config import ConfigError, config_hash, load_config  # noqa: E402
from splitlora.results import collect_rows, load_published, read_metrics, write_summary  # noqa: E402

DATA_TOOLS = {
    "cifar100": "python tools/split_cifar100.py --src cifar-100-python.tar.gz --dst {root}",
    "imagenet-r": "python tools/split_imagenet_r.py --src imagenet-r.tar --dst {root} "
                  "--train-list imagenet_r_train.txt --val-list imagenet_r_val.txt",
    "domainnet": "python tools/split_domainnet.py --src DOMAINNET_RAW --dst {root} "
                 "--train-list sdomain_train.txt --val-list sdomain_val.txt",
}


@dataclass
class Run:
    setting: str
    method: str
    seed: int
    config: Path
    data_root: Optional[Path]
    out_dir: Path
    overrides: list[str]
    paper: dict
    status: str = "pending"  # done | pending | conflict
    device: str = "cpu"
    detail: str = ""
    procs: int = 1  # processes (GPUs) of the run
    returncode: Optional[int] = None
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)

    def main_command(self) -> list[str]:
        launcher = [sys.executable]
        if self.procs > 1:  # one data-parallel process per GPU of the slot
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                         str(self.procs)]
        cmd = launcher + [str(REPO / "main.py"), "--config", str(self.config),
                          "--seed", str(self.seed), "--output", str(self.out_dir), "--no-progress"]
        for o in self.overrides:
            cmd += ["--set", o]
        return cmd


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run every published setting and tabulate the results.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--suite", default="main", help="main (the published table, default), ablation "
                   "(ImageNet-R: splitlora, threshold, random_a) or demo (the synthetic demo, "
                   "four methods, CPU, no data)")
    p.add_argument("--data-root", help="folder holding cifar100/, imagenet-r/, domainnet/ "
                   "(required except for --suite demo)")
    p.add_argument("--cifar100-root", help="override DIR/cifar100")
    p.add_argument("--imagenet-r-root", help="override DIR/imagenet-r")
    p.add_argument("--domainnet-root", help="override DIR/domainnet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--gpus", default=None,
                   help="comma-separated GPU ids (default: every visible GPU; 'cpu' for none)")
    p.add_argument("--gpus-per-run", type=int, default=1,
                   help="GPUs (torchrun data-parallel processes) given to each run")
    p.add_argument("--cpu-jobs", type=int, default=1,
                   help="concurrent runs when running on CPU (each gets cores / jobs threads)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these settings")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every run (repeatable)")
    p.add_argument("--output", default="results", help="results folder (default: results)")
    return p.parse_args(argv)


def data_roots(args: argparse.Namespace) -> dict[str, Path]:
    def absolute(p: str) -> Path:
        return Path(p).expanduser().absolute()
    base = absolute(args.data_root) if args.data_root else None
    roots = {}
    for name, flag in (("cifar100", args.cifar100_root), ("imagenet-r", args.imagenet_r_root),
                       ("domainnet", args.domainnet_root)):
        if flag:
            roots[name] = absolute(flag)
        elif base is not None:
            roots[name] = base / name
    return roots


def build_plan(args: argparse.Namespace, published: dict) -> list[Run]:
    suites, settings = published["suites"], published["settings"]
    if args.suite not in suites:
        raise ConfigError(f"unknown --suite {args.suite!r}; known: {', '.join(suites)}")
    suite = suites[args.suite]
    names = args.only or list(suite["settings"])
    unknown = [n for n in names if n not in suite["settings"]]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in --only for suite "
                          f"{args.suite!r}; known: {', '.join(suite['settings'])}")
    roots = data_roots(args)
    out = Path(args.output).expanduser().absolute()
    plan = []
    for name in names:
        s = settings[name]
        data_root, overrides = None, []
        if s["data"] is not None:
            if s["data"] not in roots:
                raise ConfigError(f"--data-root (or --{s['data']}-root) is required for setting "
                                  f"{name!r}")
            data_root = roots[s["data"]]
            overrides.append(f"dataset.root={data_root}")
        for method in suite["methods"]:
            # splitlora keeps the main table's directory, so suites share its finished runs
            run_dir = out / "runs" / name if method == "splitlora" else out / "runs" / name / method
            method_set = [] if method == "splitlora" else [f"method.name={method}"]
            for seed in args.seeds:
                plan.append(Run(name, method, seed, REPO / "configs" / s["config"], data_root,
                                run_dir / f"seed{seed}", overrides + method_set + args.overrides,
                                dict(s["paper"].get(method) or {})))
    return plan


def resolve_status(run: Run) -> None:
    """done: complete results of this exact config; conflict: results of another config."""
    cfg = load_config(run.config, run.overrides + [f"seed={run.seed}"])
    run.method = cfg.method.name
    metrics = read_metrics(run.out_dir)
    if metrics is None:
        run.status = "pending"
    elif metrics.get("config_hash") == config_hash(cfg):
        run.status = "done"
    else:
        run.status = "conflict"
        run.detail = "holds complete results of a different config"


def check_data(plan: list[Run]) -> list[str]:
    """Every distinct data root checked; one message per bad root, with the tool to run."""
    from datasets import BENCHMARKS, DataError, check_folder_root
    problems, seen = [], set()
    for run in plan:
        if run.status == "done" or run.data_root is None:
            continue
        cfg = load_config(run.config, run.overrides + [f"seed={run.seed}"])
        key = (str(run.data_root), cfg.dataset.name, cfg.dataset.num_tasks)
        if key in seen:
            continue
        seen.add(key)
        spec = BENCHMARKS[cfg.dataset.name]
        tool = next((t for d, t in DATA_TOOLS.items() if run.data_root.name == d), spec.prepare_hint)
        try:
            check_folder_root(str(run.data_root), cfg.dataset.name, spec.num_classes,
                              cfg.dataset.num_tasks, "")
        except DataError as exc:
            problems.append(f"  {run.setting}: {exc}\n      prepare it with: "
                            f"{tool.format(root=run.data_root) if '{root}' in tool else tool}")
    return problems


def gpu_slots(spec: Optional[str], cpu_jobs: int = 1, per_run: int = 1) -> list[str]:
    """Device slots: groups of ``per_run`` GPU ids ('0,1'), or ``cpu_jobs`` x 'cpu'."""
    ids: list[str] = []
    if spec is not None:
        ids = [g.strip() for g in spec.split(",") if g.strip() and g.strip() != "cpu"]
    else:
        try:
            import torch
            ids = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001
            ids = []
    if not ids:
        return ["cpu"] * max(1, cpu_jobs)
    if len(ids) < per_run:
        raise ConfigError(f"--gpus-per-run {per_run} but only {len(ids)} GPU(s): {','.join(ids)}")
    return [",".join(ids[i:i + per_run]) for i in range(0, len(ids) - per_run + 1, per_run)]


def print_plan(plan: list[Run], slots: list[str]) -> None:
    pending = 0
    for run in plan:
        if run.status == "pending":
            slot = slots[pending % len(slots)]
            run.device = "cpu" if slot == "cpu" else f"cuda:{slot}"
            pending += 1
        else:
            run.device = "-"
    width = max(len(r.setting) for r in plan)
    mwidth = max(len(r.method) for r in plan)
    for run in plan:
        env = "" if run.device in ("cpu", "-") else f"CUDA_VISIBLE_DEVICES={run.device[5:]} "
        print(f"{run.setting:<{width}}  {run.method:<{mwidth}}  seed {run.seed}  {run.device:<7} {run.status:<8} "
              f"{run.out_dir}  {env}{shlex.join(run.main_command())}"
              + (f"  [{run.detail}]" if run.detail else ""))


def execute(plan: list[Run], slots: list[str]) -> None:
    """Run the pending runs, one per slot at a time, in plan order."""
    todo: "queue.Queue[Run]" = queue.Queue()
    for run in plan:
        if run.status == "pending":
            todo.put(run)
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []

    def worker(slot: str) -> None:
        while True:
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            env = dict(os.environ)
            if slot != "cpu":
                env["CUDA_VISIBLE_DEVICES"] = slot
            elif len(slots) > 1:  # share the cores between concurrent CPU runs
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(slots)))
            run.device = "cpu" if slot == "cpu" else f"cuda:{slot}"
            run.out_dir.mkdir(parents=True, exist_ok=True)
            with lock:
                print(f"[start] {run.setting} {run.method} seed {run.seed} on {run.device} -> "
                      f"{run.out_dir}",
                      flush=True)
            t0 = time.time()
            with open(run.out_dir / "console.txt", "a") as console:
                proc = subprocess.Popen(run.main_command(), stdout=console, stderr=subprocess.STDOUT,
                                        env=env)
                with lock:
                    procs.append(proc)
                run.returncode = proc.wait()
            run.seconds = time.time() - t0
            run.status = "done" if run.returncode == 0 and read_metrics(run.out_dir) else "failed"
            with lock:
                print(f"[{run.status}] {run.setting} {run.method} seed {run.seed} in "
                      f"{run.seconds / 60:.1f} min"
                      + ("" if run.status == "done" else f" (exit {run.returncode}; see "
                         f"{run.out_dir / 'console.txt'})"), flush=True)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in slots]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        raise


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        published = load_published()
        plan = build_plan(args, published)
        for run in plan:
            resolve_status(run)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for flag in ("cpu_jobs", "gpus_per_run"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        slots = gpu_slots(args.gpus, args.cpu_jobs, args.gpus_per_run)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run in plan:
        run.procs = 1 if slots[0] == "cpu" else args.gpus_per_run
    conflicts = [r for r in plan if r.status == "conflict"]
    problems = check_data(plan)
    if args.dry_run:
        print_plan(plan, slots)
        for p in problems:
            print(f"warning: data not ready:\n{p}")
        return 0
    if conflicts:
        print("error: these run directories hold complete results of a different config "
              "(use another --output):\n" + "\n".join(f"  {r.out_dir}" for r in conflicts),
              file=sys.stderr)
        return 2
    if problems:
        print("error: data roots missing or not in the expected layout; nothing was started:\n"
              + "\n".join(problems), file=sys.stderr)
        return 2
    done = sum(r.status == "done" for r in plan)
    print(f"{len(plan)} runs: {done} already done, {len(plan) - done} to run on "
          f"{', '.join('cpu' if s == 'cpu' else 'cuda:' + s for s in slots)}", flush=True)
    try:
        execute(plan, slots)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command to continue",
              file=sys.stderr)
        return 130
    rows = collect_rows((r.setting, r.method, r.seed, r.out_dir, r.paper) for r in plan)
    table = published["suites"][args.suite]["table"]
    titles = {"main": "SplitLoRA reproduction", "ablation": "Ablation: choice of the subspace",
              "demo": "Demo-scale comparison (synthetic benchmark)"}
    md = write_summary(rows, Path(args.output), titles.get(args.suite, args.suite), table)
    print("\n" + md)
    print(f"written: {Path(args.output) / (table + '.md')}, {Path(args.output) / (table + '.csv')}")
    failed = [r for r in plan if r.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.setting}/{r.method}/seed{r.seed}"
                                                        for r in failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
