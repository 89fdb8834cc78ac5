"""reproduce.py --launcher slurm on a real Slurm (tools/slurm_single_node.sh starts one).

Marked ``slurm``: not part of the default suite (they take minutes); ``.ci/run`` starts the
single-node cluster and runs ``python -m pytest -m slurm``. Without a reachable cluster every
test here is skipped, saying why.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD_S, REPO

pytestmark = pytest.mark.slurm

RESULT_KEYS = ("acc_matrix", "final_acc", "avg_inc_acc", "forgetting", "split_dims",
               "interference", "eval_counts", "task_classes")


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no Slurm here (sbatch not found); start one with tools/slurm_single_node.sh"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc})"
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"no Slurm cluster reachable (sinfo: {proc.stderr.strip()[:200]}); start one " \
               "with tools/slurm_single_node.sh and export SLURM_CONF"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


def reproduce(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "reproduce.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def results(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in RESULT_KEYS}


def table(path: Path) -> list[dict]:
    """A suite's table without the columns that time or memory fill."""
    return [{k: v for k, v in row.items() if not k.startswith(("wall", "peak"))}
            for row in csv.DictReader(path.open())]


def wait_for(condition, what: str) -> None:
    deadline = time.time() + HANG_GUARD_S  # a hang guard, not a speed requirement
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def queued(output: Path) -> bool:
    jobs = json.loads((output / "slurm" / "jobs.json").read_text())
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(jobs.values())],
                         capture_output=True, text=True).stdout.split()
    return any(j in out for j in jobs.values())


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory):
    """The demo suite, seeds 0 and 1, through the local launcher (one thread per run)."""
    work = tmp_path_factory.mktemp("local")
    proc = reproduce("--suite", "demo", "--seeds", "0", "1", "--cpu-jobs", "2", "--output",
                     "results", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "results"


def test_demo_suite_on_slurm_equals_the_local_launcher(local_demo, tmp_path):
    proc = reproduce("--suite", "demo", "--seeds", "0", "1", "--launcher", "slurm",
                     "--cpus-per-run", "1", "--wait", "--output", "results", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "submitted as Slurm job" in proc.stdout
    out = tmp_path / "results"
    assert table(out / "demo.csv") == table(local_demo / "demo.csv")
    runs = sorted(p.parent.relative_to(out) for p in out.glob("runs/**/metrics.json"))
    assert runs == sorted(p.parent.relative_to(local_demo)
                          for p in local_demo.glob("runs/**/metrics.json"))
    assert len(runs) == 12
    for run in runs:
        assert results(out / run) == results(local_demo / run), run
    logs = list((out / "slurm").glob("*/*_log.out"))
    assert len(logs) == 12  # one job per run, logs under OUTPUT/slurm/


def test_a_time_limited_job_is_requeued_and_ends_like_an_uninterrupted_run(local_demo, tmp_path):
    longer = ["--set", "train.epochs=24", "--set", "train.milestones=[18]"]  # ~20 s per task
    reference = tmp_path / "reference"  # the uninterrupted run (local_demo made the backbone)
    t0 = time.time()
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--no-progress", "--output",
                           str(reference), *longer], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    wall = time.time() - t0
    task = max(json.loads((reference / "env.json").read_text())["timing"]["task_seconds"])
    # Slurm signals an attempt (USR2: submitit requeues the job) `window` s after it starts, or
    # earlier by up to its 30 s time-limit check period: the latest leaves a task undone, so the
    # run needs a second attempt; the earliest (40 s early, to be safe) still fits a task
    window = wall - task
    assert window - 40 >= task + 10, f"tasks too short for Slurm's signal jitter ({task:.0f} s)"
    minutes = math.ceil((window + 10) / 60)
    proc = reproduce("--suite", "demo", "--methods", "splitlora", "--launcher", "slurm",
                     "--time", str(minutes), "--sbatch", f"signal=USR2@{60 * minutes - int(window)}",
                     "--cpus-per-run", "1", "--wait", "--output", "results", *longer, cwd=tmp_path)
    run = tmp_path / "results" / "runs" / "demo" / "seed0"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    console = (run / "console.txt").read_text()
    assert console.count("[reproduce] main.py exited") >= 2, console[-3000:]  # requeued
    assert "resuming" in (run / "log.txt").read_text()
    assert results(run) == results(reference)


def test_a_cancelled_job_resubmitted_continues_where_it_stopped(local_demo, tmp_path):
    args = ("--suite", "demo", "--methods", "splitlora", "--launcher", "slurm",
            "--cpus-per-run", "1", "--output", "results")
    proc = reproduce(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results"
    run = out / "runs" / "demo" / "seed0"
    wait_for(lambda: json.loads((run / "metrics.json").read_text())["tasks_done"] >= 1
             if (run / "metrics.json").exists() else False, "a completed task")
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    subprocess.run(["scancel", *jobs.values()], check=True)
    wait_for(lambda: not queued(out), "the cancelled jobs to end")
    summary = reproduce(*args, "--summarize", cwd=tmp_path)
    assert "stopped  demo/splitlora/seed0" in summary.stdout, summary.stdout
    again = reproduce(*args, "--wait", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "resuming" in (run / "log.txt").read_text()
    assert results(run) == results(local_demo / "runs" / "demo" / "seed0")


def test_summarize_names_a_failed_job_and_the_log_that_says_why(tmp_path):
    bad = ("--set", "demo_pretrain.enabled=false", "--set",
           f"model.pretrained_file={tmp_path / 'missing.safetensors'}")
    args = ("--suite", "demo", "--methods", "splitlora", "seq_lora", "--launcher", "slurm",
            "--cpus-per-run", "1", "--output", "results", *bad)
    proc = reproduce(*args, "--wait", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = reproduce(*args, "--summarize", cwd=tmp_path)
    assert summary.returncode == 1
    run = tmp_path / "results" / "runs" / "demo" / "seed0"
    line = next(ln for ln in summary.stdout.splitlines() if "demo/splitlora/seed0" in ln)
    assert line.startswith("failed") and str(run / "console.txt") in line, summary.stdout
    assert "weights file" in (run / "console.txt").read_text()  # the log says why
    assert any(ln.startswith("failed") and "demo/seq_lora/seed0" in ln
               for ln in summary.stdout.splitlines())
