"""Inputs a hostile review found mishandled: section overrides, non-finite numbers, run names
that are paths, unreadable files described in one line, hidden and odd entries in dataset
folders, a forced restart that loses nothing, and the demo backbone's fingerprint."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from datasets.folder import list_class_dirs, list_images
from models import WeightsError, read_state_dict
from splitlora.checkpoint import CheckpointError, load_checkpoint
from splitlora.config import ConfigError, load_config
from tests.conftest import main_inprocess
from tests.test_resilience import _args

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


# ------------------------------------------------------------------------------ config values

def test_a_section_override_merges_into_the_section():
    base = load_config(DEMO)
    cfg = load_config(DEMO, ["train={epochs: 3}"])
    assert cfg.train.epochs == 3
    # every other key of the section keeps the file's value, not the schema default
    for key in ("lr", "milestones", "batch_size", "expand_times", "num_workers"):
        assert getattr(cfg.train, key) == getattr(base.train, key), key
    nested = load_config(DEMO, ["dataset={synthetic: {num_classes: 8}}"])
    assert nested.dataset.synthetic.num_classes == 8
    assert nested.dataset.synthetic.image_size == base.dataset.synthetic.image_size
    assert nested.dataset.name == base.dataset.name


@pytest.mark.parametrize("override", ["model=null", "train=3", "dataset.synthetic=[1, 2]"])
def test_a_section_cannot_be_replaced_by_a_value(override):
    with pytest.raises(ConfigError, match="is a section"):
        load_config(DEMO, [override])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "1e400", "nan"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="'train.lr' .* must be a finite number"):
        load_config(DEMO, [f"train.lr={value}"])


@pytest.mark.parametrize("name", ["../escape", "a/b", ".", "..", ""])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="'name' .* plain folder name"):
        load_config(DEMO, [f"name={name!r}" if name else "name=''"])


@pytest.mark.parametrize("args, words", [
    (["--output", ""], ["--output is empty"]),
    (["--output", "  "], ["--output is empty"]),
    (["--config", "."], ["is a directory", "YAML file"]),
])
def test_cli_refuses_empty_output_and_a_directory_as_config(tmp_path, args, words):
    proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and all(w in err[0] for w in words), proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written (no runs/ folder either)


# ------------------------------------------------------------------------ unreadable files

class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never",))


@pytest.mark.parametrize("content, words", [
    ("pickle", ["pickled Python objects", "never executed"]),
    ("truncated", ["not a complete torch archive"]),
    ("garbage", ["not a torch file"]),
])
def test_unreadable_checkpoints_and_weights_are_one_plain_line(tmp_path, content, words):
    path = tmp_path / "file.pt"
    if content == "pickle":
        torch.save({"x": _Payload()}, path)
    elif content == "truncated":
        torch.save({"a": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:600])
    else:
        path.write_bytes(b"garbage" * 20)
    for reader, error in ((load_checkpoint, CheckpointError), (read_state_dict, WeightsError)):
        with pytest.raises(error) as info:
            reader(path)
        message = str(info.value)
        assert "\n" not in message and all(w in message for w in words), message
        # torch's advice to turn safe loading off must not reach the user
        assert "weights_only" not in message and "file an issue" not in message


# ------------------------------------------------------------------- dataset folder entries

def test_hidden_folders_are_not_classes_and_folders_are_not_images(tmp_path):
    split = tmp_path / "train"
    for name in ("cat", "dog", ".ipynb_checkpoints", ".hidden"):
        (split / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(split / "cat" / "0.jpg")
    (split / "cat" / "dir.jpg").mkdir()  # a folder with an image's name
    (split / "cat" / ".1.jpg").write_bytes(b"hidden")
    (split / "cat" / "gone.jpg").symlink_to(tmp_path / "moved.jpg")  # broken: validation reports it
    assert list_class_dirs(split) == ["cat", "dog"]
    assert list_images(split / "cat") == ["0.jpg", "gone.jpg"]


# ------------------------------------------------------------------- --force loses nothing

def test_force_moves_the_previous_run_aside_and_a_failing_forced_run_loses_nothing(tmp_path):
    args = _args(["dataset.num_tasks=2"], epochs=1) + ["--output", "run"]
    assert main_inprocess(args, tmp_path).returncode == 0
    run = tmp_path / "run"
    before = {n: (run / n).read_bytes() for n in ("checkpoint.pt", "metrics.json", "config.yaml")}
    # a forced restart that fails after it started (here: its images cannot be decoded)
    bad = args + ["--force", "--set", "dataset.name=folder", "--set",
                  f"dataset.root={_folder_with_an_empty_image(tmp_path / 'data')}"]
    proc = main_inprocess(bad, tmp_path)
    assert proc.returncode == 2 and "cannot read image" in proc.stderr, proc.stderr[-2000:]
    kept = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert len(kept) == 1 and "were moved to" in (run / "log.txt").read_text()
    assert {n: (kept[0] / n).read_bytes() for n in before} == before
    assert not (run / "checkpoint.pt").exists()  # the failed run left no state of its own


def _folder_with_an_empty_image(root: Path) -> Path:
    for split in ("train", "val"):
        for k, c in enumerate("abcd"):
            (root / split / c).mkdir(parents=True)
            for i in range(4 if split == "train" else 2):
                Image.new("RGB", (16, 16), (60 * k, 20 * i, 90)).save(root / split / c / f"{i}.png")
    (root / "train" / "a" / "9.png").write_bytes(b"")  # unreadable, found when decoded
    return root


# ------------------------------------------------------------------- demo backbone identity

def test_identical_demo_weights_give_identical_files(tmp_path):
    """The file's SHA-256 is a resumed run's weights fingerprint: it must depend on the weights
    and the recipe only. (safetensors 0.8 writes several metadata entries in an order that
    varies from one call to the next: 30 saves of the former 3-entry header gave 6 different
    files.)"""
    from splitlora.pretrain import save_backbone
    state = {f"blocks.{i}.w": torch.randn(4, 4) for i in range(6)}
    files = set()
    for i in range(30):
        save_backbone(state, tmp_path / f"{i}.safetensors", '{"recipe": 1}')
        files.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(files) == 1


def test_a_cached_demo_backbone_of_another_recipe_is_refused(tmp_path):
    from splitlora.pretrain import check_demo_backbone, demo_recipe, save_backbone
    cfg = load_config(DEMO, [f"model.pretrained_file={tmp_path / 'b.safetensors'}"])
    save_backbone({"w": torch.zeros(2)}, Path(cfg.model.pretrained_file), demo_recipe(cfg))
    check_demo_backbone(cfg)  # the same recipe: accepted
    other = load_config(DEMO, [f"model.pretrained_file={cfg.model.pretrained_file}",
                               "demo_pretrain.epochs=1"])
    with pytest.raises(ConfigError, match=r"demo_pretrain.epochs: 6 -> 1.*delete it"):
        check_demo_backbone(other)
    json.loads(demo_recipe(other))  # canonical JSON


# ------------------------------------------------------------ keys a method does not read

def test_method_specific_keys_the_method_ignores_are_named():
    from splitlora.learner import ignored_keys
    cifar = DEMO.parent / "cifar100_10.yaml"  # its file sets method.inflora_lamb: not a warning
    base = load_config(cifar)
    assert ignored_keys(base, base) == []

    def ignored(*sets):
        return ignored_keys(load_config(cifar, list(sets)), base)
    assert ignored("split.alpha=5", "method.threshold=0.9") == ["method.threshold"]
    assert ignored("method.name=threshold", "split.alpha=5", "method.threshold=0.9") == [
        "split.alpha"]
    assert ignored("method.name=seq_lora", "split.alpha=5", "method.a_norm=constant") == [
        "split.alpha", "method.a_norm"]
    assert ignored("method.name=random_a", "method.a_norm=constant", "split.cov_pass=plain") == [
        "split.cov_pass"]
    assert ignored("method.name=inflora", "method.inflora_lame=0.99", "split.alpha=5") == [
        "split.alpha"]
    assert ignored("method.name=joint", "split.cov_dtype=float64") == ["split.cov_dtype"]


# ------------------------------------------------------------- second hostile review

@pytest.mark.parametrize("override, words", [
    ("dataset={synthetic: null}", ["'dataset.synthetic' is a section"]),
    ("train.milestones=[true]", ["'train.milestones'", "positive integers"]),
    ("name=' '", ["'name'", "plain folder name"]),
    (f"name={'n' * 101}", ["'name'", "at most 100 characters"]),
    ("demo_pretrain.train_per_class=1", ["'demo_pretrain.batch_size' = 64",
                                         "num_classes x train_per_class = 40"]),
])
def test_more_bad_values_are_refused(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    assert all(w in str(info.value) for w in words), str(info.value)


def test_a_plain_mapping_key_inside_a_section_override_is_replaced_not_merged():
    cfg = load_config(DEMO, ["model={kwargs: {depth: 2}}"])
    assert cfg.model.kwargs == {"depth": 2}  # as --set model.kwargs={depth: 2} gives


def test_run_files_without_a_readable_config_are_refused_and_force_moves_them(tmp_path):
    args = _args(["dataset.num_tasks=2"], epochs=1) + ["--output", "run"]
    assert main_inprocess(args, tmp_path).returncode == 0
    run = tmp_path / "run"
    ckpt = (run / "checkpoint.pt").read_bytes()
    for broken in ("missing", "{{{"):
        if broken == "missing":
            (run / "config.yaml").unlink()
        else:
            (run / "config.yaml").write_text(broken)
        proc = main_inprocess(args + ["--seed", "5"], tmp_path)
        assert proc.returncode == 2 and "cannot be identified" in proc.stderr, proc.stderr
        assert (run / "checkpoint.pt").read_bytes() == ckpt
    proc = main_inprocess(args + ["--seed", "5", "--force"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (kept,) = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert (kept / "checkpoint.pt").read_bytes() == ckpt and (kept / "config.yaml").exists()
    assert json.loads((run / "metrics.json").read_text())["seed"] == 5


def test_resume_of_a_finished_run_writes_nothing(tmp_path):
    args = _args(["dataset.num_tasks=2"], epochs=1) + ["--output", "run"]
    assert main_inprocess(args, tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    proc = main_inprocess(args + ["--resume"], tmp_path)
    assert proc.returncode == 0 and "already holds the complete results" in proc.stdout
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_output_names_too_long_for_a_file_system_are_refused(tmp_path):
    from splitlora.run.errors import WriteError
    from splitlora.run.fileio import check_output_dir
    with pytest.raises(WriteError, match="256 characters long"):
        check_output_dir(tmp_path / ("o" * 256) / "run")
    check_output_dir(tmp_path / ("o" * 255))  # the longest allowed name


def test_weights_path_that_is_a_directory_is_named(tmp_path):
    with pytest.raises(WeightsError, match="is a directory"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--workdir", "FILE", "--parts", "env"], ["--workdir", "is a file"]),
    (["--parts", ""], ["--parts names no part"]),
])
def test_gpu_check_refuses_a_file_as_workdir_and_no_parts(tmp_path, capsys, args, words):
    from tools import gpu_check
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a == "FILE" else a for a in args]
    assert gpu_check.main(args + ["--dry", "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("output, words", [("FILE", ["is a file"]), ("", ["--output is empty"])])
def test_reproduce_refuses_a_file_or_nothing_as_output(tmp_path, output, words):
    from tests.test_reproduce import reproduce_inprocess
    (tmp_path / "FILE").write_text("x")
    proc = reproduce_inprocess("--suite", "demo", "--output", output, cwd=tmp_path)
    assert proc.returncode == 2 and all(w in proc.stderr for w in words), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]
