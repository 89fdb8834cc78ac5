"""Runs that survive: a real process killed (SIGKILL) mid-task or during the checkpoint write,
then resumed to the uninterrupted run's exact figures; Ctrl-C and SIGTERM stopping cleanly; a
full disk; a non-finite loss; unreadable images named or skipped."""
from __future__ import annotations

import json
import signal

import pytest
import torch

from tests.fault_injection import injected, subprocess_env
from tests.helpers import (assert_one_error, image_folder, kill_when, main_inprocess, popen_main,
                           read_metrics, sets, small_args, tiny_args, tiny_overrides)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run's metrics.json."""
    work = tmp_path_factory.mktemp("ref")
    proc = main_inprocess(tiny_args() + ["--output", "run"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_metrics(work / "run")


def test_sigkill_mid_task_then_resume_equals_uninterrupted(tmp_path, reference):
    proc = popen_main(tiny_args() + ["--output", "run"], tmp_path)
    kill_when(proc, "task 1 epoch 1/3")  # task 0 is complete, task 1 half-trained
    run = tmp_path / "run"
    partial = read_metrics(run)
    assert partial["tasks_done"] == 1 and not partial["complete"]
    assert (run / "checkpoint.pt").is_file()
    again = main_inprocess(tiny_args() + ["--output", "run"], tmp_path)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
    assert read_metrics(run) == reference
    env = json.loads((run / "env.json").read_text())
    assert [s["from_task"] for s in env["sessions"]] == [0, 1]


def test_sigkill_during_checkpoint_write_keeps_the_old_checkpoint(tmp_path, reference):
    proc = popen_main(tiny_args() + ["--output", "run"], tmp_path,
                      env=subprocess_env("pause:checkpoint_write:2"))  # the write after task 1
    kill_when(proc, "SPLITLORA-FAULT-PAUSE checkpoint_write")
    run = tmp_path / "run"
    assert list(run.glob(".checkpoint.pt.*.tmp")), "the torn temporary file should be left"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["tasks_done"] == 1  # the previous checkpoint, intact
    again = main_inprocess(tiny_args() + ["--output", "run", "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_metrics(run) == reference
    assert not list(run.glob(".checkpoint.pt.*.tmp"))


def _default_sigint():
    """SIGINT as in a terminal, even when the tests run as a background job (which ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_run_stops_cleanly_and_says_what_is_kept(tmp_path):
    """SIGTERM during the first checkpoint write: the write is abandoned (no temporary file),
    the lock released, and the message says there is nothing to continue from. (Ctrl-C after a
    completed task, through reproduce.py: tests/reproduce/test_reproduce.py.)"""
    proc = popen_main(tiny_args() + ["--output", "run"], tmp_path,
                      env=subprocess_env("pause:checkpoint_write:1"), preexec_fn=_default_sigint)
    lines = kill_when(proc, "SPLITLORA-FAULT-PAUSE", sig=signal.SIGTERM)
    assert proc.returncode == 130, "".join(lines)[-3000:]
    tail = [ln.strip() for ln in lines if ln.strip()][-1]
    assert "Traceback" not in "".join(lines)
    run = tmp_path / "run"
    assert not list(run.glob(".*.tmp"))
    assert (run / ".lock").read_text() == ""  # released
    assert tail == "interrupted before the first task completed: nothing to continue from"
    assert not (run / "checkpoint.pt").exists()


def test_full_disk_names_the_file_keeps_the_checkpoint_and_logs_the_error(tmp_path):
    """The second checkpoint write fails as on a full disk: one error line says what failed and
    that the checkpoint of task 1 is intact (and it is: the run resumes from it); the error is
    in log.txt too."""
    args = small_args() + ["--output", "run"]
    with injected("enospc:checkpoint.pt:2"):
        proc = main_inprocess(args, tmp_path)
    line = assert_one_error(proc, "cannot write", "checkpoint.pt", "No space left on device",
                            "after task 1 of 2", "is intact")
    run = tmp_path / "run"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["tasks_done"] == 1
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    log = (run / "log.txt").read_text()
    assert line in log.splitlines()[-1]
    proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in (run / "log.txt").read_text()
    assert read_metrics(run)["complete"]


def test_full_disk_before_any_checkpoint_says_there_is_none(tmp_path):
    with injected("enospc:config.yaml:1"):  # the first write of a run
        proc = main_inprocess(small_args() + ["--output", "run"], tmp_path)
    assert_one_error(proc, "cannot write", "config.yaml", "no task had completed, so there is "
                     "no checkpoint yet")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, reference):
    with injected("nan_loss:1"):
        proc = main_inprocess(tiny_args() + ["--output", "run"], tmp_path)
    assert_one_error(proc, "non-finite training loss", "task 1, epoch 1, step 0")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["tasks_done"] == 1
    again = main_inprocess(tiny_args() + ["--output", "run"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_metrics(tmp_path / "run") == reference


def _folder_args(root, extra=()):
    return sets(tiny_overrides(epochs=1) + ["dataset.name=folder", f"dataset.root={root}",
                                            "dataset.num_tasks=2", *extra])


def test_corrupt_image_names_file_and_split_or_is_skipped(tmp_path):
    data = image_folder(tmp_path / "data", "abcd", per_class=3, val_per_class=3, size=12)
    bad = data / "val" / "c" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = main_inprocess(_folder_args(data) + ["--output", str(tmp_path / "r1")], tmp_path)
    assert_one_error(proc, str(bad), "val split")
    proc = main_inprocess(_folder_args(data, ["dataset.skip_bad_images=true", "eval.num_workers=1"])
                          + ["--output", str(tmp_path / "r2")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "r2")
    assert m["bad_images"] == {"count": 1, "files": [str(bad)]}
    assert m["eval_counts"]["total"][1][0] + m["eval_counts"]["total"][1][1] == 4 * 3 - 1
    assert "unreadable" in (tmp_path / "r2" / "log.txt").read_text()
