"""reproduce.py as a user runs it: all five settings on fabricated data, on CPU."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from splitlora.run.config import load_config
from splitlora.run.results import collect_rows, write_summary
from tests.fault_injection import subprocess_env
from tests.helpers import HANG_GUARD_S, REPO, published_suites, reproduce_inprocess, tiny_overrides

SETTINGS = published_suites()["main"]["settings"]
RAN = ["imagenet_r_5", "cifar100_10"]  # the settings the shared fixture runs (seeds 0 and 1)


def _fabricate(root: Path, only: tuple[str, ...] = ("cifar100", "imagenet-r", "domainnet")) -> Path:
    """Folder-layout data with the real class counts, one tiny image per class and split."""
    spec = {"cifar100": [f"{i:02d}" for i in range(100)],
            "imagenet-r": [f"n{i:08d}" for i in range(200)],
            "domainnet": [f"{i:03d}" for i in range(200)]}
    for name, classes in spec.items():
        if name not in only:
            continue
        for split in ("train", "val"):
            for i, c in enumerate(classes):
                d = root / name / split / c
                d.mkdir(parents=True)
                Image.new("RGB", (8, 8), ((i * 7) % 256, (i * 13) % 256, 90)).save(d / "0.png")
    return root


def reproduce(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "reproduce.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def _tiny_sets() -> list[str]:
    out = []
    for item in tiny_overrides(epochs=1):
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    work = tmp_path_factory.mktemp("repro")
    data = _fabricate(work / "data")
    proc = reproduce("--data-root", "data", "--seeds", "0", "1", "--gpus", "cpu",  # relative paths
                     "--only", *RAN, "--cpu-jobs", "2", "--output", "results", *_tiny_sets(),
                     cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return work, data, proc


def test_summary_has_five_rows_with_paper_columns_and_aggregated_seeds(reproduced):
    work, data, proc = reproduced
    assert "| cifar100_10 |" in proc.stdout  # the table is printed at the end
    # the table of the whole suite, written from what finished (two settings of five)
    again = reproduce_inprocess("--data-root", str(data), "--seeds", "0", "1", "--output",
                                str(work / "results"), "--summarize", *_tiny_sets(), cwd=work)
    assert again.returncode == 0, again.stderr
    rows = list(csv.DictReader((work / "results" / "summary.csv").open()))
    assert [r["setting"] for r in rows] == SETTINGS
    paper = {"imagenet_r_5": ("81.92", ""), "imagenet_r_10": ("81.0", ""),
             "imagenet_r_20": ("78.82", "84.57"), "cifar100_10": ("90.33", "93.7"),
             "domainnet_5": ("84.31", "88.99")}
    for r in rows:
        assert (r["paper_final_acc"], r["paper_avg_inc_acc"]) == paper[r["setting"]]
        if r["setting"] not in RAN:
            assert r["num_runs"] == "0" and r["final_acc_mean"] == ""
            assert f"missing  {r['setting']}/splitlora/seed1" in again.stdout
            continue
        assert r["seeds"] == "0 1" and r["num_runs"] == "2"
        finals = [json.loads((work / "results" / "runs" / r["setting"] / f"seed{s}" /
                              "metrics.json").read_text())["final_acc"] for s in (0, 1)]
        assert float(r["final_acc_mean"]) == pytest.approx(sum(finals) / 2)
        assert float(r["diff_final_acc"]) == pytest.approx(sum(finals) / 2 - float(r["paper_final_acc"]))
        assert float(r["final_acc_std"]) == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)
        assert r["wall_minutes_mean"] != ""
    md = (work / "results" / "summary.md").read_text()
    assert md.count("\n| ") == 6  # header + five settings
    assert "| cifar100_10 | splitlora | 0 1 |" in md and "90.33" in md
    env = json.loads((work / "results" / "runs" / "cifar100_10" / "seed0" / "env.json").read_text())
    for key in ("python", "torch", "timm", "torchvision", "cuda", "gpu", "git_commit",
                "start_time", "end_time", "weights"):
        assert key in env
    assert env["end_time"] is not None and env["weights"]["source"].startswith("random")
    assert env["peak_gpu_mem_gib"] is None and 0.05 < env["peak_rss_gib"] < 64  # CPU: RSS only
    rss = [json.loads((work / "results" / "runs" / "cifar100_10" / f"seed{s}" / "env.json")
                      .read_text())["peak_rss_gib"] for s in (0, 1)]
    row = next(r for r in rows if r["setting"] == "cifar100_10")
    assert float(row["peak_rss_gib_max"]) == pytest.approx(max(rss))
    assert row["peak_gpu_mem_gib_max"] == ""


def test_second_invocation_skips_finished_runs(reproduced):
    work, data, _ = reproduced
    metrics = work / "results" / "runs" / "cifar100_10" / "seed1" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    proc = reproduce("--data-root", str(data), "--seeds", "0", "1", "--gpus", "cpu", "--only",
                     *RAN, "--output", str(work / "results"), *_tiny_sets(), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "4 runs: 4 already done, 0 to run" in proc.stdout
    assert "[start]" not in proc.stdout
    assert metrics.stat().st_mtime_ns == before


def test_dry_run_lists_the_plan_and_writes_nothing(reproduced, tmp_path):
    work, data, _ = reproduced
    out = tmp_path / "fresh"
    proc = reproduce_inprocess("--data-root", str(data), "--seeds", "0", "2", "--gpus", "cpu",
                               "--output", str(out), "--dry-run", *_tiny_sets(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 10
    assert all(" missing " in ln and "main.py" in ln and " cpu " in ln for ln in lines)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # against the finished results: seeds 0 done, seed 2 pending
    proc = reproduce_inprocess("--data-root", str(data), "--seeds", "0", "2", "--gpus", "cpu",
                               "--output", str(work / "results"), "--dry-run", "--only",
                               "cifar100_10", *_tiny_sets(), cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2 and " done " in lines[0] and " missing " in lines[1]


def test_missing_data_roots_are_all_reported_before_anything_starts(tmp_path):
    data = tmp_path / "data"
    (data / "imagenet-r" / "train").mkdir(parents=True)  # present but incomplete
    proc = reproduce_inprocess("--data-root", str(data), "--gpus", "cpu", "--output",
                               str(tmp_path / "results"), *_tiny_sets(), cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr
    assert "nothing was started" in err and "Traceback" not in err
    for tool in ("split_cifar100.py", "split_imagenet_r.py", "split_domainnet.py"):
        assert tool in err
    assert str(data / "cifar100") in err and str(data / "domainnet") in err
    assert "no val/" in err
    assert not (tmp_path / "results").exists()


def test_unknown_setting_is_refused(tmp_path):
    proc = reproduce_inprocess("--data-root", str(tmp_path), "--only", "cifar10_10", "--dry-run",
                               cwd=tmp_path)
    assert proc.returncode == 2 and "cifar10_10" in proc.stderr and "cifar100_10" in proc.stderr


# The published protocol (docs/protocol.md), written out here key for key.
PROTOCOL = {
    "model.name": "vit_base_patch16_224.augreg2_in21k_ft_in1k", "model.img_size": 224,
    "model.pretrained": True, "lora.rank": 10, "lora.targets": ["k", "v"],
    "method.name": "splitlora", "method.splitlora.alpha": 20.0,
    "method.splitlora.cov_pass": "faithful", "method.splitlora.a_norm": "decay",
    "train.lr": 1e-3, "train.head_lr": 1e-2, "train.weight_decay": 5e-5, "train.epochs": 10,
    "train.milestones": [5, 8], "train.gamma": 0.1, "train.expand_times": 10,
    "train.batch_size": 256, "eval.batch_size": 100, "train.temperature": 30.0,
    "train.amp": "auto", "dataset.shuffle_classes": True, "seed": 0,
    "model.head_init": "official", "dataset.eval_transform": "official",
}
SETTING_DATA = {"imagenet_r_5": ("imagenet_r", 5), "imagenet_r_10": ("imagenet_r", 10),
                "imagenet_r_20": ("imagenet_r", 20), "cifar100_10": ("cifar100", 10),
                "domainnet_5": ("domainnet", 5)}


@pytest.mark.parametrize("setting", SETTINGS)
def test_configs_equal_the_protocol_key_for_key(setting):
    cfg = load_config(REPO / "configs" / f"{setting}.yaml")
    for key, expected in PROTOCOL.items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == expected, f"{setting}: {key} = {node!r}, protocol {expected!r}"
    assert (cfg.dataset.name, cfg.dataset.num_tasks) == SETTING_DATA[setting]
    assert cfg.name == setting


def test_ablation_suite_reuses_splitlora_runs_and_tabulates_the_paper_ablation(reproduced):
    work, _, _ = reproduced
    proc = reproduce("--suite", "ablation", "--only", "imagenet_r_5", "--methods", "splitlora",
                     "threshold", "--data-root", "data", "--seeds", "0", "--gpus", "cpu",
                     "--output", "results", *_tiny_sets(), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs: 1 already done, 1 to run" in proc.stdout  # splitlora came from the main suite
    m = json.loads((work / "results" / "runs" / "imagenet_r_5" / "threshold" / "seed0" /
                    "metrics.json").read_text())
    assert m["method"] == "threshold" and m["complete"] and m["split_dims"][0] is not None
    table = reproduce_inprocess("--suite", "ablation", "--only", "imagenet_r_5", "--data-root",
                                "data", "--seeds", "0", "--output", "results", "--summarize",
                                *_tiny_sets(), cwd=work)
    rows = list(csv.DictReader((work / "results" / "ablation.csv").open()))
    assert [(r["method"], r["paper_final_acc"], r["num_runs"]) for r in rows] == [
        ("splitlora", "81.92", "1"), ("threshold", "78.92", "1"), ("random_a", "76.57", "0")]
    assert "missing  imagenet_r_5/random_a/seed0" in table.stdout
    assert "Ablation" in (work / "results" / "ablation.md").read_text()


def test_ablation_dry_run_plans_three_settings_by_three_methods(tmp_path):
    proc = reproduce_inprocess("--suite", "ablation", "--data-root", str(tmp_path), "--dry-run",
                               "--gpus", "cpu", cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if "seed 0" in ln]
    assert len(lines) == 9
    assert sum("method.name=threshold" in ln for ln in lines) == 3
    assert sum("random_a" in ln for ln in lines) == 3


# ------------------------------------------------------------------ honest statistics

def test_repeated_seeds_and_settings_run_once(tmp_path):
    proc = reproduce_inprocess("--data-root", str(tmp_path), "--seeds", "0", "0", "1", "--only",
                               "cifar100_10", "cifar100_10", "--gpus", "cpu", "--dry-run",
                               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if " seed " in ln]
    assert [ln.split()[3] for ln in lines] == ["0", "1"]  # one writer per run directory
    assert "--seeds repeats 0; each runs once (0 1)" in proc.stderr
    assert "--only repeats cifar100_10" in proc.stderr


def _fake_run(run_dir: Path, seed: int, final: float, avg: float, forgetting, num_tasks: int = 5,
              rss: float = 0.5) -> None:
    """A finished run directory as main.py leaves it (only what the table reads)."""
    run_dir.mkdir(parents=True)
    matrix = [[final] * num_tasks for _ in range(num_tasks)]
    (run_dir / "metrics.json").write_text(json.dumps({
        "complete": True, "seed": seed, "num_tasks": num_tasks, "acc_matrix": matrix,
        "final_acc": final, "avg_inc_acc": avg, "forgetting": forgetting}))
    (run_dir / "env.json").write_text(json.dumps({
        "timing": {"wall_seconds": 90.0}, "peak_gpu_mem_gib": None, "peak_rss_gib": rss}))


def test_one_seed_has_no_spread_and_undefined_forgetting_is_a_dash(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "a" / "seed0", 0, 80.0, 90.0, 4.0, rss=0.75)
    _fake_run(runs / "b" / "seed0", 0, 70.0, 85.0, 6.0)
    _fake_run(runs / "b" / "seed1", 1, 74.0, 87.0, 8.0)
    _fake_run(runs / "joint" / "seed0", 0, 95.0, 95.0, None, num_tasks=1)  # one task: undefined
    plan = [("s", "a", 0, runs / "a" / "seed0", {}),
            ("s", "b", 0, runs / "b" / "seed0", {}), ("s", "b", 1, runs / "b" / "seed1", {}),
            ("s", "b", 1, runs / "b" / "seed1", {}),  # listed twice: counted once
            ("s", "joint", 0, runs / "joint" / "seed0", {})]
    md = write_summary(collect_rows(plan), tmp_path, "T", "compare", paper=False)
    lines = {ln.split(" | ")[1]: ln for ln in md.splitlines() if ln.startswith("| s |")}
    assert lines["a"] == "| s | a | 0 | 80.00 | 90.00 | 4.00 | 1.50 | – | 0.75 |"
    assert lines["b"] == ("| s | b | 0 1 | 72.00 ± 2.83 | 86.00 ± 1.41 | 7.00 ± 1.41 | 1.50 "
                          "| – | 0.50 |")
    assert lines["joint"] == "| s | joint | 0 | 95.00 | 95.00 | – | 1.50 | – | 0.50 |"
    assert "paper" not in md.splitlines()[4]  # no paper columns in a comparison
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "compare.csv").open())}
    assert rows["a"]["final_acc_mean"] == "80.0" and rows["a"]["final_acc_std"] == ""
    assert rows["b"]["num_runs"] == "2"
    assert float(rows["b"]["final_acc_std"]) == pytest.approx(8 ** 0.5)
    assert rows["joint"]["forgetting_mean"] == rows["joint"]["forgetting_std"] == ""


# ------------------------------------------------------------------ interrupts

def _ppid_and_state(pid: int) -> tuple[int, str]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if _ppid_and_state(int(stat.parent.name))[0] == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return _ppid_and_state(pid)[1] != "Z"
    except OSError:
        return False


def _stop_mid_run(work: Path, sig: int, pause: str) -> tuple[subprocess.CompletedProcess,
                                                             list[int]]:
    """Start reproduce.py (imagenet_r_5, seed 0), wait until its run pauses at the fault point
    ``pause`` (a temporary checkpoint written, not yet renamed), send ``sig`` to reproduce.py."""
    console = work / "results" / "runs" / "imagenet_r_5" / "seed0" / "console.txt"

    def pauses() -> int:  # console.txt is appended to by every session of the run
        return console.read_text().count("SPLITLORA-FAULT-PAUSE") if console.exists() else 0

    before = pauses()
    proc = subprocess.Popen([sys.executable, str(REPO / "reproduce.py"), "--data-root", "data",
                             "--only", "imagenet_r_5", "--gpus", "cpu", "--output", "results",
                             *_tiny_sets()], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore",
                                 **subprocess_env(f"pause:{pause}")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # (SIGINT as in a terminal, even when the tests run as a background job, which ignores it)
    children: list[int] = []
    try:
        deadline = time.time() + HANG_GUARD_S  # a hang guard, not a speed requirement
        while pauses() == before:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        children = _children(proc.pid)
        assert len(children) == 1  # the run's main.py
        assert list(console.parent.glob(".checkpoint.pt.*.tmp"))  # the write is in progress
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG_GUARD_S)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), children
    finally:
        survivors = [c for c in children if _alive(c)]
        for pid in [proc.pid] * (proc.poll() is None) + survivors:
            os.kill(pid, signal.SIGKILL)
        assert not survivors, f"main.py still running after reproduce.py exited: {survivors}"


def _assert_stopped_cleanly(work: Path, stopped: subprocess.CompletedProcess, sig: int,
                           done: int) -> None:
    assert stopped.returncode == 128 + sig, stopped.stderr[-3000:]
    assert f"interrupted by {signal.Signals(sig).name}" in stopped.stderr
    assert "run the same command again" in stopped.stderr and "resumes" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    run = work / "results" / "runs" / "imagenet_r_5" / "seed0"
    assert not list(work.rglob("*.tmp"))  # the run removed its half-written checkpoint
    console = (run / "console.txt").read_text()
    # main.py stopped as on Ctrl-C, saying what it keeps (task 0's checkpoint, or nothing)
    assert console.count("interrupted before the first task completed" if done == 0 else
                         "interrupted: the last completed task is checkpointed") == 1
    assert not (work / "results" / "summary.md").exists()  # no table of a partial run
    metrics = run / "metrics.json"  # written after each checkpoint
    assert (json.loads(metrics.read_text())["tasks_done"] if metrics.exists() else 0) == done


def test_a_stop_signal_reaches_the_runs_which_the_same_command_resumes(tmp_path):
    _fabricate(tmp_path / "data", only=("imagenet-r",))
    run = tmp_path / "results" / "runs" / "imagenet_r_5" / "seed0"
    # Ctrl-C while the checkpoint of task 1 is being written (SIGTERM and SIGHUP take the same
    # path through reproduce.py; main.py's own handling of each: tests/runs/test_resilience.py)
    stopped, _ = _stop_mid_run(tmp_path, signal.SIGINT, "checkpoint_write:2")
    _assert_stopped_cleanly(tmp_path, stopped, signal.SIGINT, done=1)
    again = reproduce("--data-root", "data", "--only", "imagenet_r_5", "--gpus", "cpu",
                      "--output", "results", *_tiny_sets(), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {run} after task 1 of 5" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["complete"]
    assert "| imagenet_r_5 | splitlora | 0 |" in (tmp_path / "results" / "summary.md").read_text()


# ------------------------------------------------------------------ same-protocol comparison

def test_compare_dry_run_plans_four_methods_on_every_setting_sharing_splitlora_runs(tmp_path):
    proc = reproduce_inprocess("--suite", "compare", "--data-root", str(tmp_path), "--seeds", "0",
                               "1", "--dry-run", "--gpus", "cpu", "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln.split() for ln in proc.stdout.splitlines() if " seed " in ln]
    assert len(lines) == 5 * 4 * 2
    compare = published_suites()["compare"]
    assert {(ln[0], ln[1], ln[3]) for ln in lines} == {
        (s, m, seed) for s in compare["settings"] for m in compare["methods"] for seed in ("0", "1")}
    out = tmp_path / "out" / "runs"
    for ln in lines:
        setting, method, seed, run_dir = ln[0], ln[1], ln[3], Path(ln[6])
        # splitlora: the main table's directory; the others: one folder per method
        method_dir = out / setting if method == "splitlora" else out / setting / method
        assert run_dir == method_dir / f"seed{seed}"
        assert ("method.name=" + method in " ".join(ln)) == (method != "splitlora")
    assert not (tmp_path / "out").exists()


def test_demo_suite_plans_every_method_of_its_config(tmp_path):
    proc = reproduce_inprocess("--suite", "demo", "--dry-run", "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    methods = [ln.split()[1] for ln in proc.stdout.splitlines() if " seed " in ln]
    assert methods == published_suites()["demo"]["methods"]
    assert {"inflora", "joint", "seq_lora"} <= set(methods)


def test_a_run_directory_that_is_a_link_out_of_the_output_is_refused(tmp_path):
    (tmp_path / "foreign").mkdir()
    link = tmp_path / "out" / "runs" / "demo" / "inflora" / "seed0"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "foreign")
    proc = reproduce_inprocess("--suite", "demo", "--methods", "inflora", "--output", "out",
                               cwd=tmp_path)
    assert proc.returncode == 2 and "is a symbolic link" in proc.stderr, proc.stderr
    assert not os.listdir(tmp_path / "foreign")


def test_compare_suite_tabulates_every_method_beside_the_shared_splitlora_run(reproduced):
    work, _, _ = reproduced
    proc = reproduce("--suite", "compare", "--only", "imagenet_r_5", "--methods", "splitlora",
                     "inflora", "joint", "--data-root", "data", "--seeds", "0", "--gpus", "cpu",
                     "--cpu-jobs", "2", "--output", "results", *_tiny_sets(), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 runs: 1 already done, 2 to run" in proc.stdout  # splitlora came from the main suite
    rows = {r["method"]: r for r in csv.DictReader((work / "results" / "compare.csv").open())}
    assert list(rows) == ["splitlora", "inflora", "joint"]
    for method, r in rows.items():
        run = (work / "results" / "runs" / "imagenet_r_5"
               / ("" if method == "splitlora" else method) / "seed0")
        m = json.loads((run / "metrics.json").read_text())
        assert m["method"] == method and m["complete"]
        assert float(r["final_acc_mean"]) == pytest.approx(m["final_acc"])
        assert r["final_acc_std"] == "" and r["seeds"] == "0"  # one seed: no spread
        assert float(r["wall_minutes_mean"]) > 0 and float(r["peak_rss_gib_max"]) > 0
        assert (r["forgetting_mean"] == "") == (method == "joint")
    assert "paper_final_acc" not in rows["joint"]
    md = (work / "results" / "compare.md").read_text()
    joint = next(ln for ln in md.splitlines() if ln.startswith("| imagenet_r_5 | joint |"))
    assert joint.split(" | ")[5] == "–"  # joint training has no forgetting
    assert "±" not in md.split("\n| ", 1)[1]


def test_unknown_methods_of_a_suite_are_refused(tmp_path):
    proc = reproduce_inprocess("--suite", "ablation", "--methods", "inflora", "--dry-run",
                               cwd=tmp_path)
    assert proc.returncode == 2 and "inflora" in proc.stderr and "threshold" in proc.stderr


# ------------------------------------------------------------------ keys reproduce.py sets per run

@pytest.mark.parametrize("override, key, instead", [
    ("method.name=joint", "method.name", "--suite"),
    ("seed=5", "seed", "--seeds"),
    ("name=mine", "name", "--only"),
    ("dataset.name=cifar100", "dataset.name", "--only"),
    ("dataset.num_tasks=5", "dataset.num_tasks", "--only"),
    ("dataset.root=/elsewhere", "dataset.root", "--data-root"),
    ("method={name: joint}", "method.name", "--set method.KEY=VALUE"),  # a whole section
])
def test_set_of_a_key_reproduce_sets_per_run_is_refused(tmp_path, override, key, instead):
    for mode in (["--suite", "demo", "--dry-run"],  # would have planned six copies of one run
                 ["--only", "cifar100_10", "--data-root", str(tmp_path / "none")]):
        proc = reproduce_inprocess(*mode, "--gpus", "cpu", "--output", "out", "--set", override,
                                   *_tiny_sets(), cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --set {override}: ")
        assert key in lines[0] and instead in lines[0] and proc.stdout == ""
        assert list(tmp_path.iterdir()) == []


def test_other_keys_of_the_per_run_sections_may_be_set(tmp_path):
    proc = reproduce_inprocess("--suite", "demo", "--dry-run", "--gpus", "cpu", "--set",
                               "method.threshold.energy=0.9", "--set", "dataset.shuffle_classes=false",
                               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if " seed " in ln]
    assert len(lines) == 6 and all("method.threshold.energy=0.9" in ln for ln in lines)


def test_a_row_never_averages_two_runs_of_one_seed(tmp_path):
    runs = tmp_path / "runs"
    for i, method in enumerate(["m0", "m1", "m2"]):  # three copies of seed 0 in three folders
        _fake_run(runs / method / "seed0", 0, 90.0 + i, 95.0, 1.0)
    _fake_run(runs / "m3" / "seed1", 0, 50.0, 60.0, 1.0)  # planned as seed 1, ran seed 0
    plan = [("demo", "joint", s, runs / m / f"seed{s}", {})
            for m, s in (("m0", 0), ("m1", 0), ("m2", 0), ("m3", 1))]
    (row,) = collect_rows(plan)
    assert row.seeds == [0] and len(row.runs) == 1
    figures = row.as_dict(False)
    assert figures["final_acc_mean"] == 90.0 and figures["final_acc_std"] is None


# ------------------------------------------------------------------ --gpus

@pytest.mark.parametrize("spec, bad", [("x,y", "'x', 'y'"), ("-1", "'-1'"), ("0,,1", "''"),
                                       ("", "''"), ("0,cpu", "'cpu'"), ("1.5", "'1.5'")])
def test_gpus_entries_must_be_indices_or_cpu(tmp_path, spec, bad):
    proc = reproduce_inprocess("--suite", "demo", "--dry-run", "--gpus", spec, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --gpus {spec!r}: {bad} ")
    assert "--gpus cpu" in lines[0]


def _fake_gpus(monkeypatch, count: int) -> None:
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_gpus_this_machine_lacks_are_refused_but_only_noted_in_a_dry_run(tmp_path, monkeypatch):
    _fake_gpus(monkeypatch, 0)
    data = ["--only", "cifar100_10", "--data-root", str(tmp_path / "none"), "--output", "out"]
    proc = reproduce_inprocess(*data, "--gpus", "0", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: --gpus 0: GPU 0 not found; no GPU is visible here (CUDA unavailable); use "
        "--gpus cpu (or --dry-run to plan for another machine)"]
    proc = reproduce_inprocess("--suite", "demo", "--dry-run", "--gpus", "0", cwd=tmp_path)
    assert proc.returncode == 0
    assert "note: --gpus 0: GPU 0 not found; no GPU is visible here" in proc.stderr
    assert all(" cuda:0 " in ln for ln in proc.stdout.splitlines() if " seed " in ln)
    _fake_gpus(monkeypatch, 2)
    proc = reproduce_inprocess(*data, "--gpus", "0,2,99", cwd=tmp_path)
    assert proc.returncode == 2
    assert ("GPU 2, 99 not found; this machine has 2 visible GPU(s), indices 0-1; use --gpus "
            "cpu or indices below 2") in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_default_devices_fall_back_to_cpu_without_a_gpu(tmp_path, monkeypatch):
    _fake_gpus(monkeypatch, 0)
    proc = reproduce_inprocess("--suite", "demo", "--dry-run", "--cpu-jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    lines = [ln for ln in proc.stdout.splitlines() if " seed " in ln]
    assert len(lines) == 6 and all(" cpu " in ln and "CUDA_VISIBLE" not in ln for ln in lines)


def test_gpu_indices_count_within_the_callers_cuda_visible_devices(tmp_path, monkeypatch):
    _fake_gpus(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")  # this process sees physical 4 and 6
    proc = reproduce_inprocess("--suite", "demo", "--dry-run", "--gpus", "1", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    lines = [ln for ln in proc.stdout.splitlines() if " seed " in ln]
    assert len(lines) == 6 and all(" cuda:1 " in ln and "CUDA_VISIBLE_DEVICES=6 " in ln
                                   for ln in lines)
    proc = reproduce_inprocess("--suite", "demo", "--dry-run", "--gpus", "0,1", "--gpus-per-run",
                               "2", cwd=tmp_path)
    assert all("CUDA_VISIBLE_DEVICES=4,6 " in ln for ln in proc.stdout.splitlines()
               if " seed " in ln)


# ------------------------------------------------------------------ states, orphans, --summarize

def test_summarize_names_done_missing_running_and_failed_runs(reproduced, tmp_path):
    work, data, _ = reproduced
    args = ("--suite", "compare", "--only", "cifar100_10", "--seeds", "0", "1", "--data-root",
            str(data), "--gpus", "cpu", "--output", str(work / "results"), *_tiny_sets())
    runs = work / "results" / "runs" / "cifar100_10"
    failed = runs / "seq_lora" / "seed0"  # a session that ended with an error
    failed.mkdir(parents=True)
    (failed / "console.txt").write_text("error: something went wrong\n"
                                        "[reproduce] main.py exited with status 2\n")
    gave_up = runs / "seq_lora" / "seed1"  # a Slurm job not requeued after idle attempts
    gave_up.mkdir(parents=True)
    (gave_up / "console.txt").write_text("[reproduce] main.py exited with status 130\n")
    job_log = work / "results" / "slurm" / "7_1" / "7_1_0_log.out"
    job_log.parent.mkdir(parents=True)
    job_log.write_text("not requeued: three attempts in a row completed no task\n")
    (job_log.parents[1] / "jobs.json").write_text(json.dumps({str(gave_up): "7_1"}))
    held = runs / "joint" / "seed0"  # a live process holds its lock
    held.mkdir(parents=True)
    import fcntl
    with open(held / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = reproduce_inprocess(*args, "--summarize", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # a failed run
    states = {ln.split()[1]: ln for ln in proc.stdout.splitlines()
              if ln.split()[:1] in (["missing"], ["running"], ["failed"], ["stopped"])}
    assert states["cifar100_10/seq_lora/seed0"].startswith("failed")
    assert str(failed / "console.txt") in states["cifar100_10/seq_lora/seed0"]
    assert states["cifar100_10/seq_lora/seed1"].startswith("failed")
    assert str(job_log) in states["cifar100_10/seq_lora/seed1"]
    assert states["cifar100_10/joint/seed0"].startswith("running")
    assert states["cifar100_10/inflora/seed0"].startswith("missing")
    assert "cifar100_10/splitlora/seed0" not in states  # done: in the table
    assert "| cifar100_10 | splitlora |" in proc.stdout
    assert (work / "results" / "compare.md").exists()


def test_a_suite_killed_with_sigkill_leaves_no_run_going_on_its_own(tmp_path):
    _fabricate(tmp_path / "data", only=("imagenet-r",))
    run = tmp_path / "results" / "runs" / "imagenet_r_5" / "seed0"
    args = ["--data-root", "data", "--only", "imagenet_r_5", "--gpus", "cpu", "--output",
            "results", *_tiny_sets()]
    proc = subprocess.Popen([sys.executable, str(REPO / "reproduce.py"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore",
                                 **subprocess_env("pause:checkpoint_write:1")})
    children: list[int] = []
    try:
        deadline = time.time() + HANG_GUARD_S  # a hang guard, not a speed requirement
        while "SPLITLORA-FAULT-PAUSE" not in ((run / "console.txt").read_text()
                                              if (run / "console.txt").exists() else ""):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        children = _children(proc.pid)
        assert len(children) == 1
        meanwhile = reproduce_inprocess(*args, "--summarize", cwd=tmp_path)
        assert "running  imagenet_r_5/splitlora/seed0" in meanwhile.stdout  # not "failed"
        proc.kill()  # as the OOM killer or a lost terminal would
        proc.wait()
        while any(_alive(c) for c in children):  # the run ends with its parent
            assert time.time() < deadline, "main.py outlived reproduce.py"
            time.sleep(0.2)
    finally:
        for pid in [proc.pid] * (proc.poll() is None) + [c for c in children if _alive(c)]:
            os.kill(pid, signal.SIGKILL)
    after = reproduce_inprocess(*args, "--summarize", cwd=tmp_path)
    assert "stopped  imagenet_r_5/splitlora/seed0" in after.stdout, after.stdout
