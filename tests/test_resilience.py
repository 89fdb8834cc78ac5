"""Runs that survive: SIGKILL and resume, atomic checkpoints, bad inputs, bad data, NaNs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.fault_injection import injected, subprocess_env
from tests.conftest import HANG_GUARD_S, REPO, TINY_VIT, main_inprocess, run_main, tiny_overrides

SYNTH = ["dataset.name=synthetic", "dataset.num_tasks=3",
         "dataset.synthetic={num_classes: 6, train_per_class: 40, val_per_class: 6, image_size: 16}",
         "train.expand_times=2"]


def _args(extra: list[str] = (), epochs: int = 3) -> list[str]:
    return [x for s in tiny_overrides(epochs=epochs) + SYNTH + list(extra) for x in ("--set", s)]


def _popen(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), "--no-progress", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def _kill_when(proc: subprocess.Popen, marker: str, timeout: float = HANG_GUARD_S) -> list[str]:
    """Read stderr until a line contains ``marker``, then SIGKILL the process (from here)."""
    seen, deadline = [], time.time() + timeout
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return seen
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError(f"marker {marker!r} never seen:\n{''.join(seen)[-3000:]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run's metrics.json."""
    work = tmp_path_factory.mktemp("ref")
    proc = main_inprocess(_args() + ["--output", "run"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "run" / "metrics.json").read_text())


def test_sigkill_mid_task_then_resume_equals_uninterrupted(tmp_path, reference):
    proc = _popen(_args() + ["--output", "run"], tmp_path)
    _kill_when(proc, "task 1 epoch 1/3")  # task 0 is complete, task 1 half-trained
    run = tmp_path / "run"
    partial = json.loads((run / "metrics.json").read_text())
    assert partial["tasks_done"] == 1 and not partial["complete"]
    assert (run / "checkpoint.pt").is_file()
    again = main_inprocess(_args() + ["--output", "run"], tmp_path)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
    assert json.loads((run / "metrics.json").read_text()) == reference
    env = json.loads((run / "env.json").read_text())
    assert [s["from_task"] for s in env["sessions"]] == [0, 1]


def test_sigkill_during_checkpoint_write_keeps_the_old_checkpoint(tmp_path, reference):
    proc = _popen(_args() + ["--output", "run"], tmp_path,
                  env=subprocess_env("pause:checkpoint_write:2"))  # the write after task 1
    _kill_when(proc, "SPLITLORA-FAULT-PAUSE checkpoint_write")
    run = tmp_path / "run"
    assert list(run.glob(".checkpoint.pt.*.tmp")), "the torn temporary file should be left"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["tasks_done"] == 1  # the previous checkpoint, intact
    again = main_inprocess(_args() + ["--output", "run", "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text()) == reference
    assert not list(run.glob(".checkpoint.pt.*.tmp"))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, reference):
    with injected("nan_loss:1"):
        proc = main_inprocess(_args() + ["--output", "run"], tmp_path)
    assert proc.returncode == 2
    assert "non-finite training loss" in proc.stderr and "task 1, epoch 1, step 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["tasks_done"] == 1
    again = main_inprocess(_args() + ["--output", "run"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == reference


def _folder_data(root: Path, classes=("a", "b", "c", "d"), per=3) -> Path:
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(per):
                Image.new("RGB", (12, 12), (40 * i, 20 * j, 90)).save(root / split / c / f"{j}.png")
    return root


def _folder_args(root: Path, extra: list[str] = ()) -> list[str]:
    sets = tiny_overrides(epochs=1) + ["dataset.name=folder", f"dataset.root={root}",
                                       "dataset.num_tasks=2", *extra]
    return [x for s in sets for x in ("--set", s)]


def test_corrupt_image_names_file_and_split_or_is_skipped(tmp_path):
    data = _folder_data(tmp_path / "data")
    bad = data / "val" / "c" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = main_inprocess(_folder_args(data) + ["--output", str(tmp_path / "r1")], tmp_path)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "val split" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = main_inprocess(_folder_args(data, ["dataset.skip_bad_images=true", "eval.num_workers=1"])
                          + ["--output", str(tmp_path / "r2")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert m["bad_images"] == {"count": 1, "files": [str(bad)]}
    assert m["eval_counts"]["total"][1][0] + m["eval_counts"]["total"][1][1] == 4 * 3 - 1
    assert "unreadable" in (tmp_path / "r2" / "log.txt").read_text()


def test_zero_covariance_gives_a_valid_split():
    from torch.utils.data import DataLoader, TensorDataset

    from models import ContinualViT
    from splitlora.config import from_dict
    from splitlora.learner import build_learner
    from tests.conftest import tiny_vit
    cfg = from_dict({"lora": {"rank": 2}, "train": {"epochs": 1, "batch_size": 4}})
    model = ContinualViT(tiny_vit(), rank=2)
    learner = build_learner(cfg, model, torch.device("cpu"))
    learner.before_task(0, 2)
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)))
    learner.after_task(0, lambda: empty, progress=False)  # a task that contributes no tokens
    assert learner.split_dims[0] == [2, 2]
    learner.before_task(1, 2)
    for a in model.adapters:
        assert torch.isfinite(a.lora_A).all() and a.lora_A.abs().max() > 0


# ---------------------------------------------------------------- bad inputs, through main.py

def _prepare_case(case: str, tmp: Path) -> tuple[list[str], list[str], Path]:
    """(main.py arguments, words the error must contain, run directory to watch)."""
    run = tmp / "run"
    run.mkdir()
    (run / "notes.txt").write_text("written before; must survive\n")
    data = _folder_data(tmp / "data")
    out = ["--output", str(run)]
    if case == "unknown_key":
        return ["--set", "train.epoch=3", *out], ["train.epoch", "did you mean 'train.epochs'"], run
    if case == "bad_type":
        return ["--set", "train.lr=fast", *out], ["train.lr", "float"], run
    if case == "rank_zero":
        return ["--set", "lora.rank=0", *out], ["lora.rank", ">= 1"], run
    if case == "alpha_negative":
        return ["--set", "split.alpha=-1", *out], ["split.alpha", ">= 0"], run
    if case == "epochs_zero":
        return ["--set", "train.epochs=0", *out], ["train.epochs", ">= 1"], run
    if case == "batch_zero":
        return ["--set", "eval.batch_size=0", *out], ["eval.batch_size", ">= 1"], run
    if case == "bad_choice":
        return ["--set", "train.amp=fp8", *out], ["train.amp", "bf16"], run
    if case == "missing_config":
        return ["--config", str(tmp / "nope.yaml"), *out], ["config file not found", "nope.yaml"], run
    if case == "invalid_yaml":
        (tmp / "bad.yaml").write_text("train: [epochs: 3\n")
        return ["--config", str(tmp / "bad.yaml"), *out], ["not valid YAML", "bad.yaml"], run
    if case == "unknown_model":
        return ["--set", "model.name=vit_base_patch16_244", *out], ["model.name", "vit_base_patch16_224"], run
    if case == "unknown_method":
        return ["--set", "method.name=ewc", *out], ["method.name", "splitlora"], run
    if case == "tasks_not_dividing":
        return _folder_args(data, ["dataset.num_tasks=3"]) + out, ["does not divide", "4 classes"], run
    if case == "missing_root":
        return _folder_args(tmp / "absent") + out, ["does not exist", "absent"], run
    if case == "no_val":
        import shutil
        shutil.rmtree(data / "val")
        return _folder_args(data) + out, ["no val/"], run
    if case == "class_mismatch":
        (data / "val" / "d").rename(data / "val" / "e")
        return _folder_args(data) + out, ["different classes", "only in train: ['d']"], run
    if case == "empty_class":
        for f in (data / "train" / "b").iterdir():
            f.unlink()
        return _folder_args(data) + out, ["empty class folder", "train/b"], run
    if case == "mismatched_weights":
        from models import create_backbone
        w = tmp / "w.safetensors"
        save_file(create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=16,
                                  kwargs=dict(TINY_VIT, depth=3)).state_dict(), str(w))
        return (_folder_args(data, [f"model.pretrained_file={w}"]) + out,
                ["does not match", "w.safetensors", "unexpected"], run)
    if case == "resume_without_checkpoint":
        return _folder_args(data) + out + ["--resume"], ["--resume", "nothing to resume"], run
    # checkpoint cases: a finished task-0 state of this exact config, then damaged
    extra = []
    if case == "changed_weights":
        from models import create_backbone
        weights = tmp / "w.safetensors"
        save_file(create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=16,
                                  kwargs=TINY_VIT).state_dict(), str(weights))
        extra = [f"model.pretrained_file={weights}"]
    args = _folder_args(data, extra) + out
    with injected("nan_loss:1"):  # stop during task 1, after checkpointing task 0
        assert main_inprocess(args, tmp).returncode == 2
    ckpt = run / "checkpoint.pt"
    assert ckpt.is_file()
    if case == "truncated_checkpoint":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        return args, ["checkpoint", "cannot be read", "left untouched"], run
    if case == "malicious_checkpoint":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp / 'pwned'}",))
        torch.save({"format_version": 1, "x": Evil()}, ckpt)
        return args, ["checkpoint", "cannot be read"], run
    if case == "foreign_checkpoint":
        state = torch.load(ckpt, weights_only=True)
        state["config_hash"] = "0123456789abcdef"
        torch.save(state, ckpt)
        return args, ["belongs to another config"], run
    if case == "changed_weights":  # same path, other content: the checkpoint does not fit
        torch.manual_seed(123)
        save_file(create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=16,
                                  kwargs=TINY_VIT).state_dict(), str(weights))
        return args, ["other backbone weights", "sha256"], run
    if case == "different_config":
        return _folder_args(data, ["lora.rank=3"]) + out, ["different config", "lora.rank: 2 -> 3",
                                                           "--force"], run
    raise KeyError(case)


CASES = ["unknown_key", "bad_type", "rank_zero", "alpha_negative", "epochs_zero", "batch_zero",
         "bad_choice", "missing_config", "invalid_yaml", "unknown_model", "unknown_method",
         "tasks_not_dividing", "missing_root", "no_val", "class_mismatch", "empty_class",
         "mismatched_weights", "resume_without_checkpoint", "truncated_checkpoint",
         "malicious_checkpoint", "foreign_checkpoint", "changed_weights", "different_config"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# each case runs main.py's entry point in-process (interpreter start-up is most of a
# subprocess's cost); three of them also run as a real subprocess
SUBPROCESS_CASES = {"invalid_yaml", "missing_root", "truncated_checkpoint"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error_and_loses_nothing(tmp_path, case):
    args, words, run = _prepare_case(case, tmp_path)
    before = _snapshot(run)
    runner = run_main if case in SUBPROCESS_CASES else main_inprocess
    proc = runner(args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    for w in words:
        assert w in proc.stderr, (w, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing altered
    assert set(after) == set(before)  # and nothing written before the inputs were accepted
    assert not (tmp_path / "pwned").exists()
