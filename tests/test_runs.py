"""Run directories that cannot be corrupted: one writer, data checked on resume, the keys that
may change when a run is continued, default directories per method, degenerate tasks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from splitlora.cli import default_output
from splitlora.config import config_hash, load_config
from splitlora.runlock import LOCK_NAME, RunLock
from tests.conftest import HANG_GUARD_S, REPO, main_inprocess, run_main
from tests.test_resilience import _args, _kill_when, _popen


def _folder(root: Path, classes: list[str], per_class: int = 6) -> Path:
    from PIL import Image
    for split in ("train", "val"):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 2):
                Image.new("RGB", (16, 16), (40 * k % 256, 9 * i, 100)).save(
                    root / split / c / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- one writer

def test_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = RunLock(out, "python main.py (the first run)").acquire()
    try:
        proc = main_inprocess(_args() + ["--output", str(out)], tmp_path)
    finally:
        holder.release()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "in use by pid" in errors[0]
    assert f"pid {os.getpid()}" in errors[0] and "started 20" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the run written


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; sys.path.insert(0, %r); from splitlora.runlock import RunLock; "
            "RunLock(%r).acquire(); print('locked', flush=True); time.sleep(120)" % (str(REPO), str(out)))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    dead_pid = holder.pid
    os.kill(dead_pid, signal.SIGKILL)
    holder.wait()
    assert f'"pid": {dead_pid}' in (out / LOCK_NAME).read_text()  # its record is still there
    proc = main_inprocess(_args(epochs=1) + ["--output", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"took over the lock of {out} left by pid {dead_pid}" in (out / "log.txt").read_text()
    assert (out / LOCK_NAME).read_text() == ""  # released at exit


def test_two_concurrent_runs_one_directory_only_one_writes(tmp_path):
    first = _popen(_args() + ["--output", "run"], tmp_path)
    deadline = time.time() + HANG_GUARD_S
    while not (tmp_path / "run" / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.2)  # the first run holds the lock (and has written its config)
    second = main_inprocess(_args(["method.name=seq_lora"]) + ["--output", "run"], tmp_path)
    first_out, first_err = first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 2 and "in use by pid" in second.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert metrics["method"] == "splitlora" and "name: splitlora" in config


def test_default_directory_distinguishes_method_and_changed_keys():
    demo = REPO / "configs" / "demo.yaml"
    base = load_config(demo)
    assert default_output(base, base) == Path("runs/demo/splitlora/seed0")
    seq = load_config(demo, ["method.name=seq_lora", "seed=3"])
    assert default_output(seq, base) == Path("runs/demo/seq_lora/seed3")
    longer = load_config(demo, ["train.epochs=2", "train.num_workers=1"])  # workers: resumable
    assert default_output(longer, base) == Path("runs/demo/splitlora+train.epochs=2/seed0")
    same = load_config(demo, ["train.epochs=4"])  # the file's own value: nothing changed
    assert default_output(same, base) == Path("runs/demo/splitlora/seed0")


# ----------------------------------------------------------------------------- resume checks

def _interrupted_folder_run(tmp_path: Path, classes: list[str]) -> tuple[Path, list[str]]:
    data = _folder(tmp_path / "data", classes)
    args = _args(["dataset.name=folder", f"dataset.root={data}", "dataset.num_tasks=2"]) + [
        "--output", "run"]
    _kill_when(_popen(args, tmp_path), "task 1 epoch 1/3")  # task 0 done, task 1 under way
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["tasks_done"] == 1
    return data, args


def test_resume_on_changed_data_is_refused_listing_what_changed(tmp_path):
    data, args = _interrupted_folder_run(tmp_path, ["a", "b", "c", "d"])
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    _folder(data, ["e", "f"])  # two class folders added
    (data / "train" / "a" / "0.png").unlink()  # and one image removed
    proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "the data changed" in err[0] and "classes added" in err[0]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()
            if p.name != LOCK_NAME} == {p: t for p, t in before.items() if p.name != LOCK_NAME}


def test_resume_on_same_data_at_another_root_is_accepted_and_names_are_stored(tmp_path):
    data, args = _interrupted_folder_run(tmp_path, ["a", "b", "c", "d"])
    moved = data.rename(tmp_path / "moved")
    args = [f"dataset.root={moved}" if a == f"dataset.root={data}" else a for a in args]
    proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    names = ["a", "b", "c", "d"]
    assert m["task_class_names"] == [[names[c] for c in t] for t in m["task_classes"]]


def test_data_identity_lists_count_and_file_changes():
    from datasets import identity_changes
    old = {"benchmark": "folder", "task_classes": [["a", "b"]],
           "counts": {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}},
           "files_sha256": {"train": "x", "val": "y"}}
    assert identity_changes(old, old) == []
    fewer = json.loads(json.dumps(old))
    fewer["counts"]["train"]["b"] = 2
    fewer["files_sha256"]["train"] = "z"
    assert identity_changes(old, fewer) == ["train image counts changed (1 classes): b: 3 -> 2"]
    renamed = json.loads(json.dumps(old))
    renamed["files_sha256"]["val"] = "w"
    assert identity_changes(old, renamed) == ["val file names changed (same counts)"]
    reordered = json.loads(json.dumps(old))
    reordered["task_classes"] = [["b", "a"]]
    assert identity_changes(old, reordered) == ["the classes are assigned to tasks in another order"]


def test_continuing_may_change_precision_and_loaders_but_not_the_experiment(tmp_path):
    proc = _popen(_args() + ["--output", "run"], tmp_path)
    _kill_when(proc, "task 1 epoch 1/3")
    refused = main_inprocess(_args(["train.lr=0.5"]) + ["--output", "run"], tmp_path)
    assert refused.returncode == 2 and "train.lr" in refused.stderr
    assert "may change when a run is continued" in refused.stderr
    changed = ["train.amp=bf16", "eval.batch_size=7", "train.num_workers=1",
               "dataset.skip_bad_images=true", "train.max_bad_steps=3"]
    proc = main_inprocess(_args(changed) + ["--output", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    sessions = json.loads((run / "env.json").read_text())["sessions"]
    assert [s["from_task"] for s in sessions] == [0, 1] and sessions[0]["changed_keys"] == []
    keys = sorted(c.split(":")[0] for c in sessions[1]["changed_keys"])
    assert keys == ["dataset.skip_bad_images", "eval.batch_size", "train.amp",
                    "train.max_bad_steps", "train.num_workers"]
    assert "continuing with changed keys: dataset.skip_bad_images" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["complete"]


def test_config_hash_ignores_resumable_keys_only():
    a = load_config(None, ["train.num_workers=3", "train.amp=bf16", "device=cpu"])
    assert config_hash(a) == config_hash(load_config(None))
    assert config_hash(load_config(None, ["train.lr=0.1"])) != config_hash(load_config(None))


# ----------------------------------------------------------------------------- degenerate tasks

def test_one_class_per_task_is_refused(tmp_path):
    proc = main_inprocess(_args(["dataset.num_tasks=6"]) + ["--output", "run"], tmp_path)
    assert proc.returncode == 2
    assert "1 class per task" in proc.stderr and "at most 3 tasks" in proc.stderr
    assert not (tmp_path / "run").exists()
