"""The run directory (splitlora/run/rundir.py): one writer (the lock), the identity of a run
(its config.yaml compared key by key, keys absent from an older run at their defaults), the
keys that may change when a run is continued, the data a checkpoint was made from, ``--force``
setting the previous run aside, and a run from before a config key existed resuming exactly."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from splitlora.run.config import RESUMABLE_KEYS, load_config, to_dict
from splitlora.run.rundir import (CHECKPOINT, LOCK, RunDir, RunDirectoryBusy, config_changes,
                                  data_changes, run_status)
from tests.fault_injection import injected
from tests.helpers import (HANG_GUARD_S, assert_one_error, image_folder, main_inprocess,
                           popen_main, read_metrics, sets, small_args, snapshot, tiny_args,
                           tiny_overrides)

# ----------------------------------------------------------------------------- one writer


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    import os
    out = tmp_path / "run"
    holder = RunDir(out, "python main.py (the first run)")
    assert holder.open(load_config(None)).mode == "fresh"
    try:
        proc = main_inprocess(small_args() + ["--output", str(out)], tmp_path)
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of the run written
        with pytest.raises(RunDirectoryBusy, match="in use by pid"):
            RunDir(out).open(load_config(None))
    finally:
        holder.close()
    line = assert_one_error(proc, "in use by pid", f"pid {os.getpid()}", "started 20",
                            "(python main.py (the first run))", "another --output")
    assert "wait for it to finish" in line
    assert not out.exists()  # the holder never began: its lock file and folder are gone


def test_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    """The kernel releases a flock when its holder dies, however it dies; the record it
    leaves in the lock file only serves the message."""
    out = tmp_path / "run"
    out.mkdir()
    record = {"pid": 2**22 + 7, "host": "gone", "start_time": "2020-01-01T00:00:00Z",
              "command": "python main.py"}
    (out / LOCK).write_text(json.dumps(record) + "\n")
    proc = main_inprocess(small_args() + ["--output", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"took over the lock of {out} left by pid {2**22 + 7} on host gone" in (
        out / "log.txt").read_text()
    assert (out / LOCK).read_text() == ""  # released at exit


def test_two_concurrent_runs_on_one_directory_only_one_writes(tmp_path):
    first = popen_main(tiny_args() + ["--output", "run"], tmp_path)
    deadline = time.time() + HANG_GUARD_S
    while not (tmp_path / "run" / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.1)  # the first run holds the lock (and has written its config)
    second = main_inprocess(tiny_args(["method.name=seq_lora"]) + ["--output", "run"], tmp_path)
    first_out, first_err = first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == 0, first_err[-3000:]
    assert_one_error(second, "in use by pid", str(first.pid))
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert read_metrics(tmp_path / "run")["method"] == config["method"]["name"] == "splitlora"


def test_a_run_refused_by_a_busy_directory_removes_nothing_of_the_holders(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    holder = RunDir(out)
    holder.open(load_config(None))
    try:
        assert main_inprocess(small_args() + ["--output", str(out)], tmp_path).returncode == 2
        assert (out / LOCK).is_file()  # the refused run did not remove the holder's lock
    finally:
        holder.close()
    assert not (tmp_path / "a").exists()  # the holder created a/b/run, and took it all back


# ----------------------------------------------------------------------------- identity

def test_identity_ignores_resumable_keys_only():
    base = to_dict(load_config(None))
    resumable, identity = config_changes(base, load_config(
        None, ["train.num_workers=3", "train.amp=bf16", "device=cpu", "log.tensorboard=true"]))
    assert identity == [] and sorted(c.split(":")[0] for c in resumable) == [
        "device", "log.tensorboard", "train.amp", "train.num_workers"]
    _, identity = config_changes(base, load_config(None, ["train.lr=0.1"]))
    assert identity == ["train.lr: 0.001 -> 0.1"]
    _, identity = config_changes(base, load_config(None, ["method.splitlora.alpha=5"]))
    assert identity == ["method.splitlora.alpha: 20.0 -> 5.0"]
    _, identity = config_changes(base, load_config(None, ["method.threshold.energy=0.5"]))
    assert identity == []  # a section the method does not read is not part of the run
    _, identity = config_changes(base, load_config(None, ["method.name=threshold"]))
    assert "method.name: 'splitlora' -> 'threshold'" in identity


def test_keys_absent_from_a_stored_config_count_at_their_defaults():
    cfg = load_config(None)
    old = to_dict(cfg)
    del old["dataset"]["max_image_pixels"], old["log"]
    assert config_changes(old, cfg) == ([], [])
    changed = load_config(None, ["dataset.max_image_pixels=100"])  # resumable, but a change
    assert config_changes(old, changed)[0] == ["dataset.max_image_pixels: 40000000 -> 100"]
    assert config_changes({"obsolete": 1}, cfg)[1][0].startswith(
        "the stored config does not fit this version")


def test_run_status_tells_done_conflict_and_missing(tmp_path):
    cfg = load_config(None)
    assert run_status(tmp_path, cfg) == "missing"
    (tmp_path / "metrics.json").write_text(json.dumps({"complete": False}))
    assert run_status(tmp_path, cfg) == "missing"
    (tmp_path / "metrics.json").write_text(json.dumps({"complete": True}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert run_status(tmp_path, load_config(None, ["train.num_workers=1"])) == "done"
    assert run_status(tmp_path, load_config(None, ["seed=1"])) == "conflict"


def test_data_identity_lists_count_and_file_changes():
    old = {"benchmark": "folder", "task_classes": [["a", "b"]],
           "counts": {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}},
           "files_sha256": {"train": "x", "val": "y"}}
    assert data_changes(old, old) == []
    fewer = json.loads(json.dumps(old))
    fewer["counts"]["train"]["b"] = 2
    fewer["files_sha256"]["train"] = "z"
    assert data_changes(old, fewer) == ["train image counts changed (1 classes): b: 3 -> 2"]
    renamed = json.loads(json.dumps(old))
    renamed["files_sha256"]["val"] = "w"
    assert data_changes(old, renamed) == ["val file names changed (same counts)"]
    reordered = json.loads(json.dumps(old))
    reordered["task_classes"] = [["b", "a"]]
    assert data_changes(old, reordered) == ["the classes are assigned to tasks in another order"]
    other = dict(old, benchmark="cifar100", task_classes=[["a", "c"]])
    assert data_changes(old, other) == ["benchmark 'folder' -> 'cifar100'", "classes added: c",
                                        "classes removed: b"]


# ----------------------------------------------------------------------------- resume

def _stopped_after_task0(tmp_path: Path, args: list[str]) -> Path:
    """Run ``args`` until a NaN loss stops it during task 1 (task 0 checkpointed)."""
    with injected("nan_loss:1"):
        proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 2 and "non-finite training loss" in proc.stderr, proc.stderr[-2000:]
    run = tmp_path / "run"
    assert read_metrics(run)["tasks_done"] == 1
    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run's metrics.json (the shared tiny run, 3 tasks)."""
    work = tmp_path_factory.mktemp("ref")
    proc = main_inprocess(tiny_args() + ["--output", "run"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_metrics(work / "run")


def test_continuing_may_change_precision_and_loaders_but_not_the_experiment(tmp_path, reference):
    run = _stopped_after_task0(tmp_path, tiny_args() + ["--output", "run"])
    refused = main_inprocess(tiny_args(["train.lr=0.5"]) + ["--output", "run"], tmp_path)
    assert_one_error(refused, "different config", "train.lr: 0.003 -> 0.5",
                     "may change when a run is continued")
    changed = ["train.amp=bf16", "eval.batch_size=7", "train.num_workers=1",
               "dataset.skip_bad_images=true", "train.max_bad_steps=3", "name=renamed"]
    proc = main_inprocess(tiny_args(changed) + ["--output", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sessions = json.loads((run / "env.json").read_text())["sessions"]
    assert [s["from_task"] for s in sessions] == [0, 1] and sessions[0]["changed_keys"] == []
    keys = sorted(c.split(":")[0] for c in sessions[1]["changed_keys"])
    assert keys == ["dataset.skip_bad_images", "eval.batch_size", "name", "train.amp",
                    "train.max_bad_steps", "train.num_workers"]
    assert "continuing with changed keys: dataset.skip_bad_images" in (run / "log.txt").read_text()
    assert read_metrics(run)["complete"]


def test_a_run_from_before_a_config_key_existed_resumes_exactly(tmp_path, reference):
    """A run directory written by a version without ``dataset.max_image_pixels`` and without
    the ``log`` section (config.yaml and the checkpoint's copy of it) is continued, not
    refused, and finishes with the uninterrupted run's figures."""
    run = _stopped_after_task0(tmp_path, tiny_args() + ["--output", "run"])
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert "max_image_pixels" in stored["dataset"] and "log" in stored
    del stored["dataset"]["max_image_pixels"], stored["log"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    state = torch.load(run / CHECKPOINT, weights_only=True)
    del state["config"]["dataset"]["max_image_pixels"], state["config"]["log"]
    torch.save(state, run / CHECKPOINT)
    proc = main_inprocess(tiny_args() + ["--output", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr
    assert read_metrics(run) == reference


def test_resume_on_same_data_at_another_root_is_accepted_and_names_are_stored(tmp_path):
    data = image_folder(tmp_path / "data", "abcd")
    folder = ["dataset.name=folder", "dataset.num_tasks=2"]
    run = _stopped_after_task0(tmp_path, sets(tiny_overrides(epochs=1) + folder + [
        f"dataset.root={data}"]) + ["--output", "run"])
    moved = data.rename(tmp_path / "moved")
    proc = main_inprocess(sets(tiny_overrides(epochs=1) + folder + [f"dataset.root={moved}"])
                          + ["--output", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = read_metrics(run)
    names = ["a", "b", "c", "d"]
    assert m["task_class_names"] == [[names[c] for c in t] for t in m["task_classes"]]
    assert "dataset.root" in json.loads((run / "env.json").read_text())["sessions"][1][
        "changed_keys"][0]


# ----------------------------------------------------------------------------- --force

def _folder_with_an_empty_image(root: Path) -> Path:
    image_folder(root, "abcd", per_class=4, val_per_class=2)
    (root / "train" / "a" / "9.png").write_bytes(b"")  # unreadable, found when decoded
    return root


def test_force_moves_the_previous_run_aside_and_a_failing_forced_run_loses_nothing(tmp_path):
    args = small_args() + ["--output", "run"]
    assert main_inprocess(args, tmp_path).returncode == 0
    run = tmp_path / "run"
    before = snapshot(run)
    assert {"checkpoint.pt", "metrics.json", "config.yaml", "env.json", "log.txt"} <= set(before)
    # a forced restart that fails after it started (here: its images cannot be decoded)
    bad = args + ["--force", "--set", "dataset.name=folder", "--set",
                  f"dataset.root={_folder_with_an_empty_image(tmp_path / 'data')}"]
    proc = main_inprocess(bad, tmp_path)
    assert_one_error(proc, "cannot read image")
    (kept,) = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert "were moved to" in (run / "log.txt").read_text()
    assert snapshot(kept) == {n: b for n, b in before.items() if n != LOCK}  # byte for byte
    assert not (run / "checkpoint.pt").exists()  # the failed run left no state of its own


def test_run_files_without_a_readable_config_are_moved_aside_by_force(tmp_path):
    args = small_args() + ["--output", "run"]
    assert main_inprocess(args, tmp_path).returncode == 0
    run = tmp_path / "run"
    ckpt = (run / "checkpoint.pt").read_bytes()
    (run / "config.yaml").write_text("{{{")
    proc = main_inprocess(args + ["--seed", "5", "--force"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (kept,) = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert (kept / "checkpoint.pt").read_bytes() == ckpt and (kept / "config.yaml").exists()
    assert read_metrics(run)["seed"] == 5
    again = main_inprocess(args + ["--seed", "5", "--force"], tmp_path)  # twice in a second
    assert again.returncode == 0
    assert len([p for p in run.iterdir() if p.name.startswith("replaced-")]) == 2


def test_a_symbolic_link_among_the_run_files_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere.json").write_text("{}")
    (run / "metrics.json").symlink_to(tmp_path / "elsewhere.json")
    proc = main_inprocess(small_args() + ["--output", str(run)], tmp_path)
    assert_one_error(proc, "metrics.json is a symbolic link")
    assert (tmp_path / "elsewhere.json").read_text() == "{}"


def test_resumable_keys_name_what_may_change():
    assert {"device", "train.amp", "train.num_workers", "dataset.root", "log.wandb",
            "dataset.max_image_pixels"} <= set(RESUMABLE_KEYS)
    assert not {"seed", "train.lr", "lora.rank", "method.name"} & set(RESUMABLE_KEYS)


def test_lock_file_holds_the_holders_record_while_running(tmp_path):
    out = tmp_path / "run"
    holder = RunDir(out, "cmd")
    holder.open(load_config(None))
    try:
        record = json.loads((out / LOCK).read_text())
        assert record["command"] == "cmd" and isinstance(record["pid"], int)
    finally:
        holder.close()


def test_a_process_holding_the_lock_in_a_subprocess_blocks_another(tmp_path):
    """flock is per open file, not per process: a real second process is refused too."""
    code = ("import sys; sys.path.insert(0, %r); import fcntl, os; "
            "fd = os.open(%r, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()") % (
        str(Path(__file__).resolve().parents[2]), str(tmp_path / LOCK))
    import sys
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match="another process .no details recorded."):
            RunDir(tmp_path).open(load_config(None))
    finally:
        holder.stdin.close()
        holder.wait()
    RunDir(tmp_path).open(load_config(None)).mode  # free again once the holder exits
