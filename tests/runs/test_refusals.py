"""Bad input through main.py, refused cleanly: exit status 2, one ``error:`` line naming what
is wrong (and how to fix it), no traceback, and nothing written or changed: not the run
directory, not a file beside it, not the folders a refused run would have created.

Each case runs main.py's entry point in this process (interpreter start-up is most of a
subprocess's cost); ``tests/runs/test_resilience.py`` runs one as a real process.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.fault_injection import injected
from tests.helpers import (CONFIGS, assert_one_error, image_folder, main_inprocess, plot_inprocess,
                           read_metrics,
                           reproduce_inprocess, save_tiny_weights, sets, small_args, snapshot, tiny_args,
                           tiny_overrides, tree, unwritable_dir)

# ------------------------------------------------------------------ before any run directory

# case -> (arguments (tmp -> list), words the error line must contain); the default config
# (the demo) unless the arguments name another
EARLY = {
    "seed_negative": (lambda t: ["--seed", "-1"], ["'seed' = -1", "0 to 4294967295"]),
    "seed_huge": (lambda t: ["--seed", "100000000000000000000"],
                  ["'seed' = 100000000000000000000", "0 to 4294967295"]),
    "device_not_an_index": (lambda t: sets(["device=cuda:x"]), ["'device'", "cuda:N"]),
    "unknown_key": (lambda t: sets(["train.epoch=3"]),
                    ["unknown config key 'train.epoch'", "did you mean 'train.epochs'"]),
    "bad_type": (lambda t: sets(["train.lr=fast"]), ["'train.lr'", "fast"]),
    "rank_zero": (lambda t: sets(["lora.rank=0"]), ["lora.rank", ">= 1"]),
    "alpha_negative": (lambda t: sets(["method.splitlora.alpha=-1"]),
                       ["method.splitlora.alpha", ">= 0"]),
    "old_split_section": (lambda t: sets(["split.alpha=5"]), ["unknown config key 'split'"]),
    "epochs_zero": (lambda t: sets(["train.epochs=0"]), ["train.epochs", ">= 1"]),
    "batch_zero": (lambda t: sets(["eval.batch_size=0"]), ["eval.batch_size", ">= 1"]),
    "bad_choice": (lambda t: sets(["train.amp=fp8"]), ["train.amp", "bf16"]),
    "unknown_method": (lambda t: sets(["method.name=ewc"]), ["method.name", "splitlora"]),
    "missing_config": (lambda t: ["--config", t / "nope.yaml"], ["not found", "nope.yaml"]),
    "invalid_yaml": (lambda t: ["--config", t / "bad.yaml"], ["not a valid config", "bad.yaml"]),
    "config_is_a_directory": (lambda t: ["--config", "."], ["is a directory", "YAML file"]),
    "config_not_utf8": (lambda t: ["--config", t / "latin1.yaml"],
                        ["latin1.yaml", "not UTF-8", "0xe9"]),
    "output_empty": (lambda t: ["--output", ""], ["--output is empty"]),
    "output_blank": (lambda t: ["--output", "  "], ["--output is empty"]),
    "output_is_a_file": (lambda t: ["--output", t / "file.txt"],
                         ["--output", "file.txt is a file"]),
    "output_under_a_file": (lambda t: ["--output", t / "file.txt" / "run"],
                            ["lies under", "file.txt, which is a file"]),
    "output_unwritable": (lambda t: ["--output", unwritable_dir(t) / "run"],
                          ["--output", "cannot write in"]),
    "output_name_too_long": (lambda t: ["--output", t / ("o" * 256) / "run"],
                             ["256 characters long"]),
    "kwargs_img_size": (lambda t: sets(["model.kwargs={img_size: 64}"]),
                        ["'model.kwargs'", "img_size 64", "model.img_size is 32"]),
    "kwargs_rejected": (lambda t: sets(["model.kwargs={patch_size: 4, foo: 1}"]),
                        ["model.kwargs", "foo", "rejects"]),
    "unknown_model": (lambda t: sets(["model.name=vit_base_patch16_244"]),
                      ["model.name", "vit_base_patch16_224"]),
    "not_a_vit": (lambda t: sets(["model.name=resnet18"]),
                  ["resnet18", "not a Vision Transformer", "fused attn.qkv"]),
    "attention_without_fused_qkv": (lambda t: sets([
        "model.name=eva02_tiny_patch14_224", "model.kwargs={}", "model.img_size=224",
        "model.pretrained_file=null"]),
        ["eva02_tiny_patch14_224", "does not call the attn.qkv", "vit_base_patch16_224"]),
    "resume_and_force": (lambda t: ["--resume", "--force"], ["--resume and --force contradict"]),
    "one_class_per_task": (lambda t: tiny_args(["dataset.num_tasks=6"]) + ["--output", "run"],
                           ["1 class per task", "at most 3 tasks"]),
    "tensorboard_missing": (lambda t: sets(["log.tensorboard=true"]) + ["--output", "run"],
                            ["log.tensorboard needs the tensorboard package"]),
}


@pytest.mark.parametrize("case", list(EARLY))
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case, monkeypatch):
    make_args, words = EARLY[case]
    if case == "tensorboard_missing":
        import importlib.util
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "tensorboard" else real(name, *a))
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    (tmp_path / "bad.yaml").write_text("train: [epochs: 3\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("written before; must survive\n")
    args = [str(a) for a in make_args(tmp_path)]
    before = tree(tmp_path)
    try:
        proc = main_inprocess(args, tmp_path)
    finally:
        if (tmp_path / "readonly").exists():
            (tmp_path / "readonly").chmod(0o755)
    assert_one_error(proc, *words)
    assert tree(tmp_path) == before  # nothing written, nothing changed (no runs/ folder either)


# ------------------------------------------------------------------ against a run directory

def _folder_args(root: Path, extra: list[str] = ()) -> list[str]:
    return sets(tiny_overrides(epochs=1) + ["dataset.name=folder", f"dataset.root={root}",
                                            "dataset.num_tasks=2", *extra])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run directory) of a folder run stopped during task 1 (a NaN loss):
    checkpoint, metrics and config of task 0. Each case damages a copy of the directory."""
    base = tmp_path_factory.mktemp("interrupted")
    data = image_folder(base / "data", "abcd", per_class=3, val_per_class=3, size=12)
    with injected("nan_loss:1"):
        proc = main_inprocess(_folder_args(data) + ["--output", str(base / "run")], base)
    assert proc.returncode == 2 and "non-finite training loss" in proc.stderr, proc.stderr[-2000:]
    assert (base / "run" / "checkpoint.pt").is_file()
    return data, base / "run"


def _prepare(case: str, tmp: Path, interrupted) -> tuple[list[str], list[str], Path]:
    """(main.py arguments, words the error must contain, run directory to watch)."""
    run = tmp / "run"
    out = ["--output", str(run)]
    if case in ("changed_weights",):  # its own run: the weights file is part of the config
        run.mkdir()
        data = image_folder(tmp / "data", "abcd", per_class=3, val_per_class=3, size=12)
        weights = save_tiny_weights(tmp / "w.safetensors")
        args = _folder_args(data, [f"model.pretrained_file={weights}"]) + out
        with injected("nan_loss:1"):
            assert main_inprocess(args, tmp).returncode == 2
        save_tiny_weights(weights, seed=123)  # same path, other content
        return args, ["other backbone weights", "sha256"], run
    data, stopped = interrupted
    if case in FRESH:
        run.mkdir()
        data = shutil.copytree(data, tmp / "data")
    else:
        shutil.copytree(stopped, run)
    (run / "notes.txt").write_text("written before; must survive\n")
    args = _folder_args(data) + out
    if case == "tasks_not_dividing":
        return _folder_args(data, ["dataset.num_tasks=3"]) + out, ["does not divide", "4 classes"], run
    if case == "missing_root":
        return _folder_args(tmp / "absent") + out, ["does not exist", "absent"], run
    if case == "no_val":
        shutil.rmtree(data / "val")
        return args, ["no val/"], run
    if case == "class_mismatch":
        (data / "val" / "d").rename(data / "val" / "e")
        return args, ["different classes", "only in train: ['d']"], run
    if case == "empty_class":
        for f in (data / "train" / "b").iterdir():
            f.unlink()
        return args, ["empty class folder", "train/b"], run
    if case == "mismatched_weights":
        w = save_tiny_weights(tmp / "w.safetensors", depth=3)
        return (_folder_args(data, [f"model.pretrained_file={w}"]) + out,
                ["does not match", "w.safetensors", "unexpected"], run)
    if case == "resume_without_checkpoint":
        return args + ["--resume"], ["--resume", "nothing to resume"], run
    ckpt = run / "checkpoint.pt"
    if case == "truncated_checkpoint":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        return args, ["checkpoint", "cannot be read", "left untouched"], run
    if case == "malicious_checkpoint":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp / 'pwned'}",))
        torch.save({"format_version": 2, "x": Evil()}, ckpt)
        return args, ["checkpoint", "cannot be read", "pickled Python objects"], run
    if case == "old_format_checkpoint":
        state = torch.load(ckpt, weights_only=True)
        torch.save(dict(state, format_version=1), ckpt)
        return args, ["unknown format", "expected version 2"], run
    if case == "foreign_checkpoint":  # a checkpoint of another config beside this config.yaml
        state = torch.load(ckpt, weights_only=True)
        state["config"]["lora"]["rank"] = 3
        torch.save(state, ckpt)
        return args, ["belongs to another config", "lora.rank: 3 -> 2"], run
    if case == "changed_data":  # the same data at another root may resume; other data not
        moved = shutil.copytree(data, tmp / "moved")
        image_folder(moved, ["e", "f"], per_class=3, val_per_class=3, size=12)
        (moved / "train" / "a" / "0.png").unlink()
        return _folder_args(moved) + out, [
            "the data changed", "classes added: ", "train image counts changed"], run
    if case == "different_config":
        return _folder_args(data, ["lora.rank=3"]) + out, ["different config", "lora.rank: 2 -> 3",
                                                           "--force"], run
    if case == "config_unreadable":
        (run / "config.yaml").write_text("{{{")
        return args, ["cannot be identified", "not valid YAML", "--force"], run
    if case == "config_missing":
        (run / "config.yaml").unlink()
        return args, ["cannot be identified", "is missing", "--force"], run
    if case == "config_of_a_removed_key":  # written by a version with another schema
        (run / "config.yaml").write_text((run / "config.yaml").read_text() + "obsolete: 1\n")
        return args, ["different config", "does not fit this version", "obsolete"], run
    raise KeyError(case)


FRESH = {"tasks_not_dividing", "missing_root", "no_val", "class_mismatch", "empty_class",
         "mismatched_weights", "resume_without_checkpoint"}
CASES = [*sorted(FRESH), "truncated_checkpoint", "malicious_checkpoint", "old_format_checkpoint",
         "foreign_checkpoint", "changed_weights", "changed_data", "different_config",
         "config_unreadable", "config_missing", "config_of_a_removed_key"]


@pytest.mark.parametrize("case", CASES)
def test_a_run_directory_is_never_altered_by_a_refused_run(tmp_path, case, interrupted):
    args, words, run = _prepare(case, tmp_path, interrupted)
    before = snapshot(run)
    proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert_one_error(proc, *words)
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing altered
    assert set(after) == set(before)  # and nothing written before the inputs were accepted
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ what is not refused

def test_resume_of_a_finished_run_writes_nothing(tmp_path):
    args = small_args() + ["--output", "run"]
    assert main_inprocess(args, tmp_path).returncode == 0
    before = snapshot(tmp_path / "run")
    for extra in ([], ["--resume"]):
        proc = main_inprocess(args + extra, tmp_path)
        assert proc.returncode == 0 and "already holds the complete results" in proc.stdout
        assert "final accuracy" in proc.stdout  # the report of the stored results
    assert snapshot(tmp_path / "run") == before


def test_settings_that_deserve_a_warning_are_logged(tmp_path):
    args = small_args(["train.milestones=[1, 5]", "method.threshold.energy=0.5"]) + [
        "--output", "run"]
    proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "train.milestones [1, 5]: 5 lies beyond train.epochs = 1" in log
    assert ("method.threshold.energy is set, but method splitlora does not read it: it has no "
            "effect on this run") in log
    assert read_metrics(tmp_path / "run")["complete"]
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "threshold" not in cfg and "energy" not in cfg  # only the chosen method's section


def test_shipped_config_files_start_runs(tmp_path):
    """Every benchmark config parses and gets as far as its data (here: none)."""
    for file in ("cifar100_10.yaml", "domainnet_5.yaml", "imagenet_r_10.yaml"):
        proc = main_inprocess(["--config", CONFIGS / file, "--output", "run",
                               *sets(tiny_overrides())], tmp_path)
        assert_one_error(proc, "dataset.root is not set")
    assert not (tmp_path / "run").exists()


def test_a_cached_weights_file_of_another_recipe_is_refused_before_any_data(tmp_path):
    from splitlora.run.config import load_config
    from splitlora.run.experiment import demo_recipe, save_backbone
    other = load_config(CONFIGS / "demo.yaml", ["demo_pretrain.epochs=1"])
    path = tmp_path / "cache" / "demo_backbone_v1.safetensors"
    save_backbone({"w": torch.zeros(2)}, path, demo_recipe(other))
    os.environ["SPLITLORA_CACHE"], old = str(tmp_path / "cache"), os.environ["SPLITLORA_CACHE"]
    try:
        proc = main_inprocess(["--output", "run"], tmp_path)
    finally:
        os.environ["SPLITLORA_CACHE"] = old
    assert_one_error(proc, "pretrained with another recipe", "demo_pretrain.epochs: 1 -> 6",
                     "delete it")
    assert not (tmp_path / "run").exists()
    json.loads(demo_recipe(other))  # canonical JSON


@pytest.mark.parametrize("output, words", [("FILE", ["is a file"]), ("", ["--output is empty"])])
def test_reproduce_refuses_a_file_or_nothing_as_output(tmp_path, output, words):
    (tmp_path / "FILE").write_text("x")
    proc = reproduce_inprocess("--suite", "demo", "--output", output, cwd=tmp_path)
    assert proc.returncode == 2 and all(w in proc.stderr for w in words), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


@pytest.mark.parametrize("out, words", [("file.txt", ["--out", "file.txt is a file"]),
                                        ("file.txt/figs", ["--out", "lies under"])])
def test_the_plot_tool_refuses_an_output_it_cannot_write(tmp_path, out, words):
    (tmp_path / "file.txt").write_text("a file\n")
    before = tree(tmp_path)
    proc = plot_inprocess([tmp_path / "run", "--out", tmp_path / out])
    assert_one_error(proc, *words)
    assert tree(tmp_path) == before



def test_the_plot_tool_never_writes_through_a_link_in_its_output(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (requirements-extra.txt)")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"acc_matrix": [[50.0]], "acc_per_task": [50]}')
    (tmp_path / "victim.txt").write_text("keep me\n")
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "acc_matrix.png").symlink_to(tmp_path / "victim.txt")
    proc = plot_inprocess([tmp_path / "run", "--out", tmp_path / "figs"])
    assert_one_error(proc, "acc_matrix.png", "link")
    assert (tmp_path / "victim.txt").read_text() == "keep me\n"
    assert sorted(os.listdir(tmp_path / "figs")) == ["acc_matrix.png"]  # nothing else written