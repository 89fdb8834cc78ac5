#!/usr/bin/env python
"""Reproduce the published table: every setting x seed, scheduled over the GPUs, summarised.

    python reproduce.py --data-root /data                    # 5 settings, seed 0, every GPU
    python reproduce.py --data-root /data --seeds 0 1 2 --gpus 0,1
    python reproduce.py --data-root /data --only cifar100_10 --dry-run
    python reproduce.py --data-root /data --set train.num_workers=16 --output results
    python reproduce.py --data-root /data --suite ablation     # ImageNet-R, 3 subspace choices
    python reproduce.py --data-root /data --suite compare      # + InfLoRA, seq. LoRA, joint
    python reproduce.py --suite demo --cpu-jobs 2              # the demo, every method, CPU

Data is read from DIR/cifar100, DIR/imagenet-r and DIR/domainnet (the outputs of the
tools/split_*.py scripts), each overridable. Every run is an independent ``main.py``
process in OUTPUT/runs/<setting>/seed<seed>/ (other methods than splitlora in
OUTPUT/runs/<setting>/<method>/seed<seed>/); one run per GPU at a time (CPU when none), a
queue over the rest. --set applies to every run; the keys reproduce.py sets per run (name,
method.name, seed, dataset.name, dataset.num_tasks, dataset.root) are refused: choose them
with --suite, --only, --seeds and --data-root. A run whose metrics.json is complete is
skipped, so an interrupted reproduction continues where it stopped. Ctrl-C, SIGTERM or
SIGHUP stop the running runs (each keeps its completed tasks) and wait for them; running the
same command again resumes them. OUTPUT/<table>.md and .csv (summary, ablation, compare,
demo) hold the table, beside the paper's figures where it has some.
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from splitlora.config import ConfigError, config_hash, load_config, parse_override  # noqa: E402
from splitlora.run.errors import WriteError  # noqa: E402
from splitlora.run.fileio import check_output_dir  # noqa: E402
from splitlora.results import collect_rows, load_published, read_metrics, write_summary  # noqa: E402

# Signals that stop a reproduction, and what each run is sent in turn (a run stops after
# abandoning its current task; the tasks it finished stay checkpointed).
STOP_SIGNALS = {"SIGINT": "SIGINT", "SIGTERM": "SIGTERM", "SIGHUP": "SIGTERM"}

DATA_TOOLS = {
    "cifar100": "python tools/split_cifar100.py --src cifar-100-python.tar.gz --dst {root}",
    "imagenet-r": "python tools/split_imagenet_r.py --src imagenet-r.tar --dst {root} "
                  "--train-list imagenet_r_train.txt --val-list imagenet_r_val.txt",
    "domainnet": "python tools/split_domainnet.py --src DOMAINNET_RAW --dst {root} "
                 "--train-list sdomain_train.txt --val-list sdomain_val.txt",
}

# Config keys that reproduce.py sets for each run itself (through the setting's config file,
# the suite's methods, the seeds and the data roots), and what chooses them instead of --set.
PER_RUN_KEYS = {
    "name": "the setting's name, from its config file; choose settings with --suite / --only",
    "method.name": "each method of the suite in turn; choose methods with --suite and settings "
                   "with --only",
    "seed": "each seed in turn; choose seeds with --seeds",
    "dataset.name": "the setting's benchmark, from its config file; choose settings with --suite "
                    "/ --only",
    "dataset.num_tasks": "the setting's number of tasks, from its config file; choose settings "
                         "with --suite / --only",
    "dataset.root": "the setting's data folder; give it with --data-root (or --cifar100-root / "
                    "--imagenet-r-root / --domainnet-root)",
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
                   "(ImageNet-R: splitlora, threshold, random_a), compare (every setting: "
                   "splitlora, inflora, seq_lora, joint) or demo (the synthetic demo, every "
                   "method, CPU, no data)")
    p.add_argument("--data-root", help="folder holding cifar100/, imagenet-r/, domainnet/ "
                   "(required except for --suite demo)")
    p.add_argument("--cifar100-root", help="override DIR/cifar100")
    p.add_argument("--imagenet-r-root", help="override DIR/imagenet-r")
    p.add_argument("--domainnet-root", help="override DIR/domainnet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="run seeds (default 0); a repeated seed runs once")
    p.add_argument("--gpus", default=None,
                   help="comma-separated GPU indices as this process sees them, i.e. counted "
                   "within CUDA_VISIBLE_DEVICES when it is set (default: every visible GPU, CPU "
                   "when there is none; 'cpu' for none)")
    p.add_argument("--gpus-per-run", type=int, default=1,
                   help="GPUs (torchrun data-parallel processes) given to each run")
    p.add_argument("--cpu-jobs", type=int, default=1,
                   help="concurrent runs when running on CPU (each gets cores / jobs threads)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these settings")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every run (repeatable); not for the keys "
                   "reproduce.py sets per run: " + ", ".join(PER_RUN_KEYS))
    p.add_argument("--output", default="results", help="results folder (default: results)")
    args = p.parse_args(argv)
    for flag in ("seeds", "only"):  # one run directory has one writer: repeats run once
        values = getattr(args, flag)
        if values and len(set(values)) < len(values):
            unique = list(dict.fromkeys(values))
            print(f"note: --{flag} repeats "
                  + ", ".join(str(v) for v in unique if values.count(v) > 1)
                  + f"; each runs once ({' '.join(str(v) for v in unique)})", file=sys.stderr)
            setattr(args, flag, unique)
    return args


def check_overrides(overrides: list[str]) -> None:
    """Refuse a ``--set`` of a key that reproduce.py sets for each run (or of a section holding
    one): it would silently make every run the same, or be overridden per run."""
    for text in overrides:
        parts, _ = parse_override(text)
        key = ".".join(parts)
        for controlled, instead in PER_RUN_KEYS.items():
            if key == controlled:
                raise ConfigError(f"--set {text}: reproduce.py sets {key} for each run itself "
                                  f"({instead})")
            if controlled.startswith(key + "."):
                raise ConfigError(f"--set {text}: the section {key!r} holds {controlled}, which "
                                  f"reproduce.py sets for each run itself ({instead}); set the "
                                  f"section's other keys one by one (--set {key}.KEY=VALUE)")


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
    dirs = [r.out_dir for r in plan]
    if len(set(dirs)) != len(dirs):  # one writer per run directory
        raise ConfigError("two runs of the plan share a run directory: "
                          + ", ".join(sorted({str(d) for d in dirs if dirs.count(d) > 1})))
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
    problems, seen = [], set()
    for run in plan:
        if run.status == "done" or run.data_root is None:
            continue
        from datasets import BENCHMARKS, DataError, check_folder_root  # torch: only when needed
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


def parse_gpus(spec: str) -> list[str]:
    """``--gpus`` -> GPU indices ('cpu' -> none); ConfigError on anything but 'cpu' or
    comma-separated non-negative integers."""
    entries = [g.strip() for g in spec.split(",")]
    if entries == ["cpu"]:
        return []
    bad = [g for g in entries if not re.fullmatch(r"[0-9]+", g)]
    if bad:
        raise ConfigError(f"--gpus {spec!r}: " + ", ".join(repr(b) for b in bad)
                          + (" is not a GPU index" if len(bad) == 1 else " are not GPU indices")
                          + "; give comma-separated non-negative integers (e.g. --gpus 0,1) or "
                          "--gpus cpu")
    return [str(int(g)) for g in entries]


def visible_gpu_count() -> int:
    """GPUs this process can use (0 without CUDA)."""
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup has no usable GPU
        return 0


def check_gpus(ids: list[str], dry_run: bool) -> Optional[str]:
    """Refuse GPU indices this machine does not have (ConfigError); under ``dry_run``, where
    planning for another machine is legitimate, return a note instead (None when all exist)."""
    count = visible_gpu_count()
    missing = [g for g in ids if int(g) >= count]
    if not missing:
        return None
    have = ("no GPU is visible here (CUDA unavailable)" if count == 0 else
            f"this machine has {count} visible GPU(s), indices 0-{count - 1}")
    what = f"--gpus {','.join(ids)}: GPU " + ", ".join(missing) + f" not found; {have}"
    if dry_run:
        return f"note: {what}; the plan is for another machine"
    raise ConfigError(f"{what}; use --gpus cpu"
                      + ("" if count == 0 else f" or indices below {count}")
                      + " (or --dry-run to plan for another machine)")


def cuda_visible(slot: str) -> str:
    """CUDA_VISIBLE_DEVICES for a run on ``slot`` (indices as this process sees them): mapped
    through this process's own CUDA_VISIBLE_DEVICES when it is set, which a child would
    otherwise read as physical indices."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None:
        return slot
    entries = [e.strip() for e in parent.split(",")]
    return ",".join(entries[int(i)] if int(i) < len(entries) else i for i in slot.split(","))


def gpu_slots(spec: Optional[str], cpu_jobs: int = 1, per_run: int = 1,
              dry_run: bool = False) -> tuple[list[str], Optional[str]]:
    """Device slots: groups of ``per_run`` GPU indices ('0,1'), or ``cpu_jobs`` x 'cpu'; and a
    note for a dry run that names GPUs this machine lacks."""
    note = None
    if spec is not None:
        ids = parse_gpus(spec)
        note = check_gpus(ids, dry_run)
    else:  # every visible GPU; CPU when there is none
        ids = [str(i) for i in range(visible_gpu_count())]
    if not ids:
        return ["cpu"] * max(1, cpu_jobs), note
    if len(ids) < per_run:
        raise ConfigError(f"--gpus-per-run {per_run} but only {len(ids)} GPU(s): {','.join(ids)}")
    return [",".join(ids[i:i + per_run]) for i in range(0, len(ids) - per_run + 1, per_run)], note


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
        env = ("" if run.device in ("cpu", "-") else
               f"CUDA_VISIBLE_DEVICES={cuda_visible(run.device[5:])} ")
        print(f"{run.setting:<{width}}  {run.method:<{mwidth}}  seed {run.seed}  {run.device:<7} {run.status:<8} "
              f"{run.out_dir}  {env}{shlex.join(run.main_command())}"
              + (f"  [{run.detail}]" if run.detail else ""))


class SignalRelay:
    """While active, the stop signals (SIGINT, SIGTERM, SIGHUP) are recorded instead of
    stopping this process at once, so that the scheduler can pass them on to the runs it
    started and wait for them (and no file of its own is left half-written). A signal this
    process was started ignoring (nohup, a background job) stays ignored."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "SignalRelay":
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None or signal.getsignal(sig) is signal.SIG_IGN:  # e.g. under nohup
                continue
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: signals keep their handlers
                pass
        return self

    def _record(self, signum: int, frame) -> None:
        self.received.append(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def forwarded(signum: int) -> int:
    """The signal a run is sent when the scheduler receives ``signum``."""
    return int(getattr(signal, STOP_SIGNALS[signal.Signals(signum).name]))


def execute(plan: list[Run], slots: list[str], relay: SignalRelay) -> Optional[int]:
    """Run the pending runs, one per slot at a time, in plan order.

    On a stop signal no new run starts; the running ones are sent the signal (SIGHUP is sent
    as SIGTERM) and waited for; a second signal kills them. Returns the stop signal, or None.
    Runs are started in their own session, so a Ctrl-C in the terminal reaches them only
    through this relay, once.
    """
    todo: "queue.Queue[Run]" = queue.Queue()
    for run in plan:
        if run.status == "pending":
            todo.put(run)
    lock = threading.Lock()
    stop = threading.Event()
    procs: list[subprocess.Popen] = []

    def worker(slot: str) -> None:
        while not stop.is_set():
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            env = dict(os.environ)
            if slot != "cpu":
                env["CUDA_VISIBLE_DEVICES"] = cuda_visible(slot)
            elif len(slots) > 1:  # share the cores between concurrent CPU runs
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(slots)))
            run.device = "cpu" if slot == "cpu" else f"cuda:{slot}"
            with lock:  # a run is either started before a stop signal is relayed, or never
                if stop.is_set():
                    return
                run.out_dir.mkdir(parents=True, exist_ok=True)
                print(f"[start] {run.setting} {run.method} seed {run.seed} on {run.device} -> "
                      f"{run.out_dir}", flush=True)
                t0 = time.time()
                console = open(run.out_dir / "console.txt", "a")
                proc = subprocess.Popen(run.main_command(), stdout=console,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
                procs.append(proc)
            with console:
                run.returncode = proc.wait()
            run.seconds = time.time() - t0
            finished = run.returncode == 0 and read_metrics(run.out_dir)
            run.status = "done" if finished else "interrupted" if stop.is_set() else "failed"
            with lock:
                print(f"[{run.status}] {run.setting} {run.method} seed {run.seed} in "
                      f"{run.seconds / 60:.1f} min"
                      + ("" if run.status == "done" else
                         " (resumes from its last completed task)" if run.status == "interrupted"
                         else f" (exit {run.returncode}; see {run.out_dir / 'console.txt'})"),
                      flush=True)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in slots]
    for t in threads:
        t.start()
    stopped_by: Optional[int] = None
    killed = False
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.1)
        if relay.received and stopped_by is None:
            stopped_by = relay.received[0]
            with lock:
                stop.set()
                live = [p for p in procs if p.poll() is None]
                for p in live:
                    p.send_signal(forwarded(stopped_by))
            print(f"received {signal.Signals(stopped_by).name}: no new run starts; waiting for "
                  f"{len(live)} running run(s) to stop (a second signal kills them)",
                  file=sys.stderr, flush=True)
        elif len(relay.received) > 1 and not killed:
            killed = True
            with lock:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            print("second signal: runs killed; their completed tasks stay checkpointed",
                  file=sys.stderr, flush=True)
    return stopped_by


def unavailable_methods(plan: list[Run]) -> list[str]:
    """Methods of pending runs that this checkout does not register."""
    from splitlora.learner import METHODS
    return sorted({r.method for r in plan if r.status == "pending" and r.method not in METHODS})


SUITE_TITLES = {"main": "SplitLoRA reproduction", "ablation": "Ablation: choice of the subspace",
                "compare": "Same-protocol comparison: SplitLoRA, InfLoRA, sequential LoRA, "
                           "joint training",
                "demo": "Demo-scale comparison (synthetic benchmark)"}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        check_overrides(args.overrides)
        if not args.output.strip():
            raise ConfigError("--output is empty: give the results folder (default: results)")
        check_output_dir(Path(args.output).expanduser())
        published = load_published()
        plan = build_plan(args, published)
        for run in plan:
            resolve_status(run)
    except (ConfigError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for flag in ("cpu_jobs", "gpus_per_run"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.suite == "demo" and args.gpus is None:
        args.gpus = "cpu"  # configs/demo.yaml runs on the CPU: --cpu-jobs runs at once
    try:
        slots, gpu_note = gpu_slots(args.gpus, args.cpu_jobs, args.gpus_per_run, args.dry_run)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if gpu_note:
        print(gpu_note, file=sys.stderr)
    for run in plan:
        run.procs = 1 if slots[0] == "cpu" else args.gpus_per_run
    conflicts = [r for r in plan if r.status == "conflict"]
    problems = check_data(plan)
    missing = unavailable_methods(plan)
    if args.dry_run:
        print_plan(plan, slots)
        for p in problems:
            print(f"warning: data not ready:\n{p}")
        if missing:
            print(f"warning: method(s) not available in this checkout: {', '.join(missing)}")
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
    if missing:
        from splitlora.learner import METHODS
        print(f"error: method(s) {', '.join(missing)} of suite {args.suite!r} are not available "
              f"in this checkout (known: {', '.join(sorted(METHODS))}); nothing was started",
              file=sys.stderr)
        return 2
    done = sum(r.status == "done" for r in plan)
    print(f"{len(plan)} runs: {done} already done, {len(plan) - done} to run on "
          f"{', '.join('cpu' if s == 'cpu' else 'cuda:' + s for s in slots)}", flush=True)
    suite = published["suites"][args.suite]
    table, paper = suite["table"], suite.get("paper_columns", True)
    with SignalRelay() as relay:  # also keeps a signal from cutting the summary's writes short
        stopped_by = execute(plan, slots, relay)
        if stopped_by is None:
            rows = collect_rows((r.setting, r.method, r.seed, r.out_dir, r.paper) for r in plan)
            md = write_summary(rows, Path(args.output), SUITE_TITLES.get(args.suite, args.suite),
                               table, paper)
    if stopped_by is not None:
        stopped = [r for r in plan if r.status == "interrupted"]
        print(f"interrupted by {signal.Signals(stopped_by).name}: {len(stopped)} run(s) stopped, "
              "finished runs are kept; run the same command again to continue (each stopped run "
              "resumes from its last completed task)", file=sys.stderr)
        return 128 + stopped_by
    print("\n" + md)
    print(f"written: {Path(args.output) / (table + '.md')}, {Path(args.output) / (table + '.csv')}")
    if relay.received:
        print(f"received {signal.Signals(relay.received[0]).name} after every run had finished; "
              "the results above are complete", file=sys.stderr)
        return 128 + relay.received[0]
    failed = [r for r in plan if r.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.setting}/{r.method}/seed{r.seed}"
                                                        for r in failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
