"""Files a user hands over are read safely: hostile YAML, special files, images that declare
huge sizes; the cache does not depend on the working directory; the reports say what ran."""
from __future__ import annotations

import os
import struct
import zlib

import pytest
import torch
from PIL import Image

from tests.helpers import assert_one_error, learn, main_inprocess, make_learner, task_of, tiny_args

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi"))  # 9 levels: 9^9 = 387 M nodes if expanded


@pytest.mark.parametrize("text, words", [
    ("model:\n  kwargs: !!python/object/apply:os.system ['touch MARKER']\n", ["tag"]),
    ("train: {epochs: 3}\ntrain: {epochs: 4}\n", ["duplicate key"]),
    ("model:\n  kwargs:\n    " + BOMB.replace("\n", "\n    "), ["not a valid config"]),
    ("model: {kwargs: " + "[" * 5000 + "]" * 5000 + "}\n", ["config"]),
    ("seed: " + "[" * 30000 + "]" * 30000 + "\n", ["nested too deeply"]),  # a C parser's limit
    ("model:\n  kwargs:\n" + "".join("  " * (i + 2) + f"k{i}:\n" for i in range(3000)),
     ["config"]),
], ids=["python-tag", "duplicate-section", "alias-bomb-in-kwargs", "deep-flow-nesting",
        "deeper-flow-nesting", "deep-block-nesting"])
def test_a_hostile_config_file_is_one_error_line_and_nothing_runs(tmp_path, text, words):
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = tmp_path / "hostile.yaml"
    config.write_text(text)
    proc = main_inprocess(["--config", str(config), "--output", str(tmp_path / "run")],
                          cwd=tmp_path)
    assert_one_error(proc, *words)
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "run").exists()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # GiB
    assert grown < 1, f"reading the config took {grown:.1f} GiB more"


@pytest.mark.parametrize("what", ["config", "weights"])
def test_a_fifo_or_device_given_as_a_file_is_named_as_what_it_is(tmp_path, what):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "named pipe (FIFO)"), ("/dev/zero", "character device")):
        args = ["--config", str(path)] if what == "config" else \
            tiny_args([f"model.pretrained_file={path}"])
        proc = main_inprocess(args + ["--output", str(tmp_path / "run")], cwd=tmp_path)
        line = assert_one_error(proc, str(path), kind)
        assert "delete" not in line and not (tmp_path / "run").exists()


def _image_folder(root, extra):
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * i, 90, 30)).save(d / f"{i}.png")
    extra(root / "train" / "a")
    return root


def _huge_png(path, width=12_000, height=12_000):
    """A PNG whose header declares width x height pixels (a few hundred bytes on disk)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # its CRC
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("bad", ["fifo", "huge"])
def test_special_files_and_huge_images_among_the_images_are_bad_images(tmp_path, bad):
    make = (lambda d: os.mkfifo(d / "9.png")) if bad == "fifo" else (lambda d: _huge_png(d / "9.png"))
    root = _image_folder(tmp_path / "data", make)
    data = ["dataset.name=folder", f"dataset.root={root}", "dataset.num_tasks=1"]
    proc = main_inprocess(tiny_args(data) + ["--output", str(tmp_path / "stop")], cwd=tmp_path)
    assert_one_error(proc, "9.png", "named pipe" if bad == "fifo" else "12000 x 12000")
    skip = main_inprocess(tiny_args(data + ["dataset.skip_bad_images=true"])
                          + ["--output", str(tmp_path / "skip")], cwd=tmp_path)
    assert skip.returncode == 0, skip.stderr[-2000:]
    import json
    bad_images = json.loads((tmp_path / "skip" / "metrics.json").read_text())["bad_images"]
    assert bad_images["count"] == 1 and bad_images["files"][0].endswith("9.png")


def test_the_demo_from_another_working_directory_uses_the_same_cache(tmp_path, cache_dir,
                                                                     demo_runs):
    demo_runs.results()  # the session's demo runs have made the demo backbone
    cached = os.path.join(cache_dir, "demo_backbone_v1.safetensors")
    assert os.path.isfile(cached)
    short = ["--set", "train.epochs=1", "--set", "train.milestones=[1]", "--set",
             "dataset.num_tasks=2", "--set", "dataset.synthetic.num_classes=4"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = main_inprocess(short + ["--output", str(elsewhere / "run")], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pretraining the demo backbone" not in proc.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["run"]  # no .cache/ here
    import json
    weights = json.loads((elsewhere / "run" / "env.json").read_text())["weights"]
    assert weights["path"] == os.path.realpath(cached)


def test_a_split_that_would_freeze_every_direction_reports_what_it_kept(caplog):
    from splitlora.methods.splitlora import SplitLoRA
    model, learner = make_learner("splitlora")
    learner.frozen_dims = lambda eigvals, task: eigvals.numel()  # a rule freezing all of d
    learn(learner, task_of(0))
    d = model.adapters[0].in_features
    assert learner.split_dims[0] == [d - 1] * len(model.adapters)  # what was used
    assert all(b.shape == (d, 1) for b in learner.bases)  # the last direction kept free
    assert learner.interference[0][0] > 0
    assert "froze all" in caplog.text and "the last one is kept free" in caplog.text
    assert isinstance(learner, SplitLoRA) and torch.isfinite(learner.bases[0]).all()


@pytest.mark.parametrize("name, make", [
    ("checkpoint.pt", os.mkfifo), (".lock", os.mkfifo), ("checkpoint.pt", os.mkdir),
    ("tensorboard", lambda p: os.symlink(p.parent.parent / "elsewhere", p)),
    ("wandb", lambda p: os.symlink(p.parent.parent / "elsewhere", p))])
def test_an_entry_of_the_run_directory_that_the_run_did_not_write_is_refused(tmp_path, name, make):
    """A run file that is a FIFO, a folder or a link (log folders included) stops the run before
    anything is written: no fresh start over earlier results, nothing written outside."""
    (tmp_path / "elsewhere").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    make(run / name)
    proc = main_inprocess(tiny_args(["log.tensorboard=true"]) + ["--output", str(run)],
                          cwd=tmp_path)
    assert_one_error(proc, str(run / name), "not what this run writes")
    assert sorted(os.listdir(run)) == [name] and not os.listdir(tmp_path / "elsewhere")


def test_synthetic_data_too_big_for_memory_is_refused_before_anything_is_made(tmp_path):
    proc = main_inprocess(["--set", "dataset.synthetic.num_classes=1000000000", "--output",
                           str(tmp_path / "run")], cwd=tmp_path)
    assert_one_error(proc, "dataset.synthetic", "8 GiB")
    assert not (tmp_path / "run").exists()
