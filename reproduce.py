#!/usr/bin/env python
"""Reproduce the published table: every setting x seed, on this machine or a Slurm cluster.

    python reproduce.py --data-root /data                    # 5 settings, seed 0, every GPU
    python reproduce.py --data-root /data --seeds 0 1 2 --gpus 0,1
    python reproduce.py --data-root /data --only cifar100_10 --dry-run
    python reproduce.py --data-root /data --suite compare      # + InfLoRA, seq. LoRA, joint
    python reproduce.py --data-root /data --seeds 0 1 2 --launcher slurm --partition gpu \\
        --time 4:00:00 --mem 64G --cpus-per-run 16           # one Slurm job per run
    python reproduce.py --data-root /data --seeds 0 1 2 --summarize   # tables so far, states
    python reproduce.py --suite demo --cpu-jobs 2              # the demo, every method, CPU

Data: DIR/cifar100, DIR/imagenet-r, DIR/domainnet (tools/split_*.py). Each run is one main.py in
OUTPUT/runs/<setting>/[<method>/]seed<seed>/: a complete run is skipped, an interrupted one
resumes, so the same command continues a suite. Tables: OUTPUT/<table>.md and .csv, beside the
paper's figures. docs/runs.md tells the rest (signals, Slurm, states)."""
import argparse
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from splitlora.run.config import override_keys  # noqa: E402
from splitlora.run.fileio import ConfigError, UserError, check_output_dir  # noqa: E402
from splitlora.run import launch  # noqa: E402
from splitlora.run.launch import Run  # noqa: E402
from splitlora.run.results import collect_rows, load_published, write_summary  # noqa: E402

# Keys reproduce.py sets for each run, and what chooses them instead of --set.
SETTING = "the setting's, from its config file; choose settings with --suite / --only"
PER_RUN_KEYS = {
    "name": SETTING,
    "method.name": "each method of the suite in turn; choose methods with --suite / --methods",
    "seed": "each seed in turn; choose seeds with --seeds",
    "dataset.name": SETTING,
    "dataset.num_tasks": SETTING,
    "dataset.root": "the setting's data folder; give it with --data-root (or --<data>-root)",
}
DATA = ("cifar100", "imagenet-r", "domainnet")  # the data folders under --data-root


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run every published setting and tabulate the results.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--suite", default="main", help="main (the published table, default), "
                   "ablation (ImageNet-R: + threshold, random_a), compare (+ inflora, seq_lora, "
                   "joint) or demo (synthetic data, every method, CPU)")
    p.add_argument("--data-root", help="folder DIR of cifar100/, imagenet-r/, domainnet/")
    for name in DATA:
        p.add_argument(f"--{name}-root", help=f"override DIR/{name}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (default 0)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these settings")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="run only these methods")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"config override for all runs (repeatable; not {', '.join(PER_RUN_KEYS)})")
    p.add_argument("--output", default="results", help="results folder (default: results)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("--summarize", action="store_true", help="start nothing: write the tables "
                   "so far and list the runs missing, running or failed")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: this machine (default); slurm: one Slurm job per run (submitit)")
    p.add_argument("--gpus-per-run", type=int, help="GPUs per run (torchrun; default 1, demo 0)")
    local = p.add_argument_group("local launcher")
    local.add_argument("--gpus", help="comma-separated GPU indices, counted within "
                       "CUDA_VISIBLE_DEVICES (default: every visible GPU, else CPU); 'cpu': none")
    local.add_argument("--cpu-jobs", type=int, default=1,
                       help="concurrent runs on CPU (each gets cores / jobs threads)")
    slurm = p.add_argument_group("Slurm launcher")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time", default="24:00:00", help="time limit per job (minutes, H:M:S "
                       "or D-H:M:S; default 24:00:00); a job at its limit is requeued")
    slurm.add_argument("--mem", help="memory per job, e.g. 64G")
    slurm.add_argument("--cpus-per-run", type=int, help="CPUs per job (data-loading workers)")
    slurm.add_argument("--account", help="Slurm account")
    slurm.add_argument("--qos", help="Slurm quality of service")
    slurm.add_argument("--max-running", type=int, default=256, help="jobs at once (default 256)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --sbatch constraint=a100 (repeatable)")
    slurm.add_argument("--wait", action="store_true", help="wait for the jobs, write the tables")
    args = p.parse_args(argv)
    for flag in ("seeds", "only", "methods"):  # one writer per run directory: repeats run once
        values = getattr(args, flag)
        if values and len(set(values)) < len(values):
            unique = list(dict.fromkeys(values))
            print(f"note: --{flag} repeats "
                  + ", ".join(str(v) for v in unique if values.count(v) > 1)
                  + f"; each runs once ({' '.join(str(v) for v in unique)})", file=sys.stderr)
            setattr(args, flag, unique)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flags and ``--set`` of a key set per run (or of its section), before planning."""
    for text, key in zip(args.overrides, override_keys(args.overrides)):
        for controlled, instead in PER_RUN_KEYS.items():
            if key == controlled or controlled.startswith(key + "."):
                section = "" if key == controlled else (f"; set the other keys of {key!r} one "
                                                        f"by one (--set {key}.KEY=VALUE)")
                raise ConfigError(f"--set {text}: reproduce.py sets {controlled} for each run "
                                  f"itself ({instead}){section}")
    if not args.output.strip():
        raise ConfigError("--output is empty: give the results folder (default: results)")
    for flag, low in dict(cpu_jobs=1, gpus_per_run=0, max_running=1, cpus_per_run=1).items():
        if getattr(args, flag) is not None and getattr(args, flag) < low:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= {low}")
    try:
        launch.slurm_minutes(args.time)
    except ValueError:
        raise ConfigError(f"--time {args.time!r} is not a Slurm time (minutes, H:M:S or "
                          "D-H:M:S)") from None
    bad = [o for o in args.sbatch if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*=.*", o)]
    if bad:
        raise ConfigError(f"--sbatch {bad[0]!r}: expected KEY=VALUE, e.g. constraint=a100")
    check_output_dir(Path(args.output).expanduser())


def _chosen(names: Optional[list[str]], known: list[str], what: str, flag: str, suite: str) -> list:
    """``names`` (all of ``known`` when None), refusing any the suite lacks."""
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise ConfigError(f"unknown {what}(s) {', '.join(unknown)} in {flag} for suite {suite!r}; "
                          f"known: {', '.join(known)}")
    return names or list(known)


def build_plan(args: argparse.Namespace, published: dict, gpus: int) -> list[Run]:
    suites, settings = published["suites"], published["settings"]
    if args.suite not in suites:
        raise ConfigError(f"unknown --suite {args.suite!r}; known: {', '.join(suites)}")
    suite = suites[args.suite]
    names = _chosen(args.only, suite["settings"], "setting", "--only", args.suite)
    methods = _chosen(args.methods, suite["methods"], "method", "--methods", args.suite)
    absolute = lambda p: Path(p).expanduser().absolute()  # noqa: E731
    flags = {name: getattr(args, name.replace("-", "_") + "_root") for name in DATA}
    roots = {name: absolute(flag) if flag else absolute(args.data_root) / name
             for name, flag in flags.items() if flag or args.data_root}
    out = absolute(args.output)
    plan = []
    for name in names:
        s = settings[name]
        if s["data"] is not None and s["data"] not in roots:
            raise ConfigError(f"setting {name!r} needs --data-root (or --{s['data']}-root)")
        data_root = roots.get(s["data"])
        overrides = [f"dataset.root={data_root}"] if data_root else []
        for method in methods:
            # splitlora keeps the main table's directory, so suites share its finished runs
            run_dir = out / "runs" / name if method == "splitlora" else out / "runs" / name / method
            method_set = [] if method == "splitlora" else [f"method.name={method}"]
            for seed in args.seeds:
                plan.append(Run(name, method, seed, REPO / "configs" / s["config"],
                                run_dir / f"seed{seed}", overrides + method_set + args.overrides,
                                dict(s["paper"].get(method) or {}), data_root, gpus))
    return plan


def check_data(plan: list[Run]) -> list[str]:
    """Every distinct data root checked; one message per bad root, with the tool to run."""
    from datasets import BENCHMARKS, DataError, check_folder_root
    from splitlora.run.config import load_config
    problems, seen = [], set()
    for run in plan:
        if run.status == "done" or run.data_root is None:
            continue
        d = load_config(run.config, run.overrides + [f"seed={run.seed}"]).dataset
        key = (str(run.data_root), d.name, d.num_tasks)
        if key in seen:
            continue
        seen.add(key)
        spec = BENCHMARKS[d.name]
        try:
            check_folder_root(str(run.data_root), d.name, spec.num_classes, d.num_tasks, "")
        except DataError as exc:
            problems.append(f"  {run.setting}: {exc}\n      prepare it with: "
                            + spec.prepare_hint.replace("DIR", str(run.data_root)))
    return problems


def gpu_slots(spec: Optional[str], cpu_jobs: int, per_run: int, dry_run: bool) -> list[str]:
    """Groups of ``per_run`` GPU indices ('0,1'), or ``cpu_jobs`` x 'cpu' (a dry run may plan
    for another machine: missing GPUs are only noted)."""
    try:
        import torch
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup has no usable GPU
        count = 0
    entries = [] if spec is None or spec.strip() == "cpu" else [g.strip() for g in spec.split(",")]
    bad = [g for g in entries if not re.fullmatch(r"[0-9]+", g)]
    if bad:
        raise ConfigError(f"--gpus {spec!r}: {', '.join(map(repr, bad))} "
                          + ("is not a GPU index" if len(bad) == 1 else "are not GPU indices")
                          + "; give comma-separated integers >= 0 (e.g. --gpus 0,1) or --gpus cpu")
    ids = [str(int(g)) for g in entries] if spec is not None else [str(i) for i in range(count)]
    missing = [g for g in ids if int(g) >= count]
    if missing:
        have = ("no GPU is visible here (CUDA unavailable)" if count == 0 else
                f"this machine has {count} visible GPU(s), indices 0-{count - 1}")
        what = f"--gpus {','.join(ids)}: GPU {', '.join(missing)} not found; {have}"
        if not dry_run:
            below = f" or indices below {count}" if count else ""
            raise ConfigError(f"{what}; use --gpus cpu{below} (or --dry-run to plan for another "
                              "machine)")
        print(f"note: {what}; the plan is for another machine", file=sys.stderr)
    if not ids:
        return ["cpu"] * cpu_jobs
    if len(ids) < per_run:
        raise ConfigError(f"--gpus-per-run {per_run} but only {len(ids)} GPU(s): {','.join(ids)}")
    return [",".join(ids[i:i + per_run]) for i in range(0, len(ids) - per_run + 1, per_run)]


def print_plan(plan: list[Run], slots: list[str]) -> None:
    todo = [r for r in plan if r.status in launch.TO_RUN]
    width = max(len(r.setting) for r in plan), max(len(r.method) for r in plan)
    for run in plan:
        slot = slots[todo.index(run) % len(slots)] if run in todo else "-"
        gpu = slot not in ("cpu", "-", "slurm")
        env = f"CUDA_VISIBLE_DEVICES={launch.cuda_visible(slot)} " if gpu else ""
        print(f"{run.setting:<{width[0]}}  {run.method:<{width[1]}}  seed {run.seed}  "
              f"{'cuda:' + slot if gpu else slot:<7} {run.status:<8} {run.out_dir}  "
              f"{env}{shlex.join(run.command())}" + (f"  [{run.detail}]" if run.detail else ""))


def summarize(plan: list[Run], args: argparse.Namespace, published: dict) -> str:
    suite = published["suites"][args.suite]
    rows = collect_rows((r.setting, r.method, r.seed, r.out_dir, r.paper) for r in plan)
    return "\n" + write_summary(rows, Path(args.output), suite.get("title", args.suite),
                                suite["table"], suite.get("paper_columns", True))


def report_states(plan: list[Run]) -> int:
    """One line per run that is not done; returns the number of failed runs."""
    for run in plan:
        if run.status != "done":
            print(f"{run.status:<8} {run.name}  {run.out_dir}"
                  + (f"  ({run.detail})" if run.detail else ""))
    return sum(r.status == "failed" for r in plan)


def submit(plan: list[Run], args: argparse.Namespace, folder: Path, gpus: int) -> None:
    options = dict(job_name=f"splitlora-{args.suite}", time=launch.slurm_minutes(args.time),
                   array_parallelism=args.max_running, stderr_to_stdout=True, signal_delay_s=120,
                   ntasks_per_node=1, partition=args.partition, mem=args.mem, account=args.account,
                   qos=args.qos, cpus_per_task=args.cpus_per_run, gpus_per_node=gpus or None,
                   additional_parameters=dict(o.split("=", 1) for o in args.sbatch))
    try:
        ids = launch.submit_slurm(plan, folder, {k: v for k, v in options.items()
                                                 if v not in (None, {})})
    except ImportError:
        raise UserError("--launcher slurm needs the submitit package: pip install -r "
                        "requirements-extra.txt (or pip install submitit)") from None
    except Exception as exc:  # noqa: BLE001 - sbatch refused: its own message says why
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise UserError(f"Slurm refused the submission: {lines[-1]}") from None
    jobs = sorted({j.split("_")[0] for j in ids.values()})
    print(f"{len(ids)} run(s) submitted as Slurm job {', '.join(jobs) or '-'} (logs in {folder}); "
          "watch: squeue -u $USER; results so far: the same command with --summarize", flush=True)
    while args.wait and launch.slurm_queue(folder):
        time.sleep(2 if args.suite == "demo" else 30)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    out = Path(args.output).expanduser()
    slurm_dir = out.absolute() / "slurm"
    gpus = args.gpus_per_run if args.gpus_per_run is not None else int(args.suite != "demo")
    per_run = max(gpus, 1)
    received: list[int] = []
    try:
        check_args(args)
        published = load_published()
        suite = published["suites"].get(args.suite, {})
        plan = build_plan(args, published, per_run)
        launch.update_states(plan, launch.slurm_queue(slurm_dir), slurm_dir)
        if not args.summarize:
            slots = ["slurm"] if args.launcher == "slurm" else gpu_slots(
                args.gpus if args.gpus is not None or args.suite != "demo" else "cpu",
                args.cpu_jobs, per_run, args.dry_run)
            for run in plan:
                run.gpus = 1 if slots[0] == "cpu" else per_run
            problems = check_data(plan)
            if args.dry_run:
                print_plan(plan, slots)
                for p in problems:
                    print(f"warning: data not ready:\n{p}")
                return 0
            conflicts = [f"  {r.out_dir}" for r in plan if r.status == "conflict"]
            if conflicts:
                raise UserError("these run directories hold complete results of a different "
                                "config (use another --output):\n" + "\n".join(conflicts))
            for link in (r.out_dir for r in plan if r.out_dir.is_symlink()):
                raise UserError(f"the run directory {link} is a symbolic link (to "
                                f"{link.resolve()}); the suite writes only inside {out}: remove it")
            if problems:
                raise UserError("data roots missing or not in the expected layout; nothing was "
                                "started:\n" + "\n".join(problems))
            for run in plan:
                if run.status in ("running", "queued"):
                    print(f"note: {run.name} is {run.status} ({run.detail or 'its lock is held'})"
                          "; not started again", file=sys.stderr)
            if args.launcher == "slurm":
                submit(plan, args, slurm_dir, gpus)
                if not args.wait:
                    return 0
                launch.update_states(plan, {}, slurm_dir)
            else:
                print(f"{len(plan)} runs: {sum(r.status == 'done' for r in plan)} already done, "
                      f"{sum(r.status in launch.TO_RUN for r in plan)} to run on "
                      f"{', '.join('cpu' if s == 'cpu' else 'cuda:' + s for s in slots)}",
                      flush=True)
                with launch.SignalRelay() as relay:  # no signal cuts the tables' writes short
                    stopped_by = launch.run_local(plan, slots, relay)
                    received = relay.received
                    if stopped_by is not None:
                        print(f"interrupted by {signal.Signals(stopped_by).name}: "
                              f"{sum(r.status == 'interrupted' for r in plan)} run(s) stopped, "
                              "finished runs are kept; run the same command again to continue "
                              "(each resumes from its last completed task)", file=sys.stderr)
                        return 128 + stopped_by
                    launch.update_states(plan, {}, slurm_dir)  # a run held by another process
                    md = summarize(plan, args, published)  # may have finished meanwhile
        if args.summarize or args.launcher == "slurm":
            md = summarize(plan, args, published)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(md)
    print(f"written: {out / (suite['table'] + '.md')}, {out / (suite['table'] + '.csv')}")
    if received:
        print(f"received {signal.Signals(received[0]).name} after every run had finished; "
              "the results above are complete", file=sys.stderr)
        return 128 + received[0]
    if args.summarize:
        return 1 if report_states(plan) else 0
    unfinished = [r for r in plan if r.status != "done"]
    if unfinished:
        print(f"{len(unfinished)} run(s) did not finish:", file=sys.stderr)
        report_states(unfinished)
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
