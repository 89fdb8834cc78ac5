"""Bad input, refused cleanly (issue 11, items 6-8): one ``error:`` line, exit status 2, no
traceback, nothing written; high-bit-depth images read with their real brightness; a full
disk, a moved dataset, no internet, and the settings that deserve a warning."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, main_inprocess, tiny_overrides

SYNTH = ["dataset.name=synthetic", "dataset.num_tasks=2",
         "dataset.synthetic={num_classes: 4, train_per_class: 8, val_per_class: 4, image_size: 16}"]


def _sets(items: list[str]) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def _subprocess(script: str, args: list[str], cwd: Path, env: dict | None = None,
                drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.update(PYTHONWARNINGS="ignore", PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=full_env)


def _benchmark_inprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """tools/benchmark.py's main() in this process (its torch import is most of a subprocess)."""
    spec = importlib.util.spec_from_file_location("bench_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(args)
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------- item 7: one table of bad inputs

def _unwritable_dir(tmp: Path) -> Path:
    """A folder this process cannot write in: permission bits, or (as root, who ignores them)
    a place in sysfs, which nobody can write."""
    if os.geteuid() != 0:
        ro = tmp / "readonly"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    return Path("/sys")


# case -> (runner, arguments (tmp -> list), words the error line must contain)
# runners: "main" = main.py as a subprocess, "main_inproc" = main.py's entry point in this
# process (cases that need torch: its import is most of a subprocess's cost), "plot" =
# tools/plot_results.py as a subprocess, "bench" = tools/benchmark.py's main() in this process.
BAD = {
    "seed_negative": ("main", lambda t: ["--seed", "-1"], ["'seed' = -1", "0 to 4294967295"]),
    "seed_huge": ("main", lambda t: ["--seed", "100000000000000000000"],
                  ["'seed' = 100000000000000000000", "0 to 4294967295"]),
    "device_not_an_index": ("main", lambda t: _sets(["device=cuda:x"]), ["'device'", "cuda:N"]),
    "config_not_utf8": ("main", lambda t: ["--config", t / "latin1.yaml"],
                        ["latin1.yaml", "not UTF-8", "0xe9"]),
    "output_is_a_file": ("main", lambda t: ["--output", t / "file.txt"],
                         ["--output", "file.txt is a file"]),
    "output_under_a_file": ("main", lambda t: ["--output", t / "file.txt" / "run"],
                            ["lies under", "file.txt, which is a file"]),
    "output_unwritable": ("main", lambda t: ["--output", _unwritable_dir(t) / "run"],
                          ["--output", "cannot write in"]),
    "kwargs_img_size": ("main", lambda t: _sets(["model.kwargs={img_size: 64}"]),
                        ["'model.kwargs'", "img_size 64", "model.img_size is 32"]),
    "kwargs_rejected": ("main_inproc", lambda t: _sets(["model.kwargs={patch_size: 4, foo: 1}"]),
                        ["model.kwargs", "foo", "rejects"]),
    "not_a_vit": ("main_inproc", lambda t: _sets(["model.name=resnet18"]),
                  ["resnet18", "not a Vision Transformer", "fused attn.qkv"]),
    "attention_without_fused_qkv": ("main_inproc", lambda t: _sets([
        "model.name=eva02_tiny_patch14_224", "model.kwargs={}", "model.img_size=224",
        "model.pretrained_file=null"]),
        ["eva02_tiny_patch14_224", "does not call the attn.qkv", "vit_base_patch16_224"]),
    "resume_and_force": ("main", lambda t: ["--resume", "--force"],
                         ["--resume and --force contradict"]),
    "plot_out_is_a_file": ("plot", lambda t: [t / "run", "--out", t / "file.txt"],
                           ["--out", "file.txt is a file"]),
    "plot_out_under_a_file": ("plot", lambda t: [t / "run", "--out", t / "file.txt" / "figs"],
                              ["--out", "lies under"]),
    "bench_unknown_model": ("bench", lambda t: ["--model", "nope"], ["--model 'nope'",
                                                                     "not a timm model"]),
    "bench_steps_zero": ("bench", lambda t: ["--steps", "0"], ["--steps must be >= 1, got 0"]),
    "bench_steps_negative": ("bench", lambda t: ["--steps", "-3"], ["--steps must be >= 1, got -3"]),
    "bench_batch_zero": ("bench", lambda t: ["--batch-size", "0"],
                         ["--batch-size must be >= 1, got 0"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case):
    runner, make_args, words = BAD[case]
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("written before; must survive\n")
    args = [str(a) for a in make_args(tmp_path)]
    before = _tree(tmp_path)
    try:
        if runner == "main":
            proc = _subprocess("main.py", ["--no-progress", *args], tmp_path)
        elif runner == "main_inproc":
            proc = main_inprocess(args, tmp_path)
        elif runner == "plot":
            proc = _subprocess("tools/plot_results.py", args, tmp_path)
        else:
            proc = _benchmark_inprocess(args, tmp_path)
    finally:
        if (tmp_path / "readonly").exists():
            (tmp_path / "readonly").chmod(0o755)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _tree(tmp_path) == before  # nothing written, nothing changed


def test_full_disk_names_the_file_keeps_the_checkpoint_and_logs_the_error(tmp_path):
    """The second checkpoint write fails as on a full disk: one error line says what failed and
    that the checkpoint of task 1 is intact (and it is: the run resumes from it); the error is
    in log.txt too (item 8), and the milestone beyond the epochs was warned about."""
    from splitlora.checkpoint import load_checkpoint
    from tests.fault_injection import injected
    args = _sets(tiny_overrides(epochs=1) + SYNTH + ["train.milestones=[1, 5]"]) + ["--output", "run"]
    with injected("enospc:checkpoint.pt:2"):
        proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    for w in ("cannot write", "checkpoint.pt", "No space left on device", "after task 1 of 2",
              "is intact"):
        assert w in errors[0], (w, errors[0])
    run = tmp_path / "run"
    assert load_checkpoint(run / "checkpoint.pt")["tasks_done"] == 1
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    log = (run / "log.txt").read_text()
    assert errors[0] in log.splitlines()[-1]
    assert "train.milestones [1, 5]: 5 lies beyond train.epochs = 1" in log
    proc = main_inprocess(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["complete"]


# ---------------------------------------------------------------- item 6: high-bit-depth images

def _png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale (H, W) or RGB (H, W, 3) uint16), written byte by byte: Pillow
    cannot write 16-bit RGB."""
    h, w = array.shape[:2]
    color_type = 0 if array.ndim == 2 else 2
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _load_all(root: Path) -> dict[str, np.ndarray]:
    from datasets.folder import FolderImageSet
    images = FolderImageSet(root, ["c"], "train")
    return {Path(p).name: np.asarray(images.load(i)) for i, p in enumerate(images.paths)}


def test_16bit_images_read_like_their_8bit_version(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (9, 11)).astype(np.uint16)
    rgb = rng.integers(0, 256, (9, 11, 3)).astype(np.uint16)
    noise = rng.integers(-128, 129, gray.shape)  # |noise| / 257 < 0.5: rounds back to gray
    folder = tmp_path / "c"
    folder.mkdir()
    Image.fromarray(gray.astype(np.uint8)).save(folder / "gray8.png")
    Image.fromarray(gray * 257).save(folder / "gray16.png")  # Pillow: mode I;16
    Image.fromarray(np.clip(gray * 257 + noise, 0, 65535).astype(np.uint16)).save(
        folder / "gray16_noisy.png")
    Image.fromarray((gray * 257).astype(np.int32)).save(folder / "gray32.tif")  # mode I
    Image.fromarray((gray / 255).astype(np.float32)).save(folder / "grayf.tif")  # mode F, [0, 1]
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "rgb8.png")
    (folder / "rgb16.png").write_bytes(_png16(rgb * 257))
    with Image.open(folder / "gray16.png") as img:
        assert img.mode.startswith("I;16")  # what the fix is about
    loaded = _load_all(tmp_path)
    expected_gray = np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(loaded["gray8.png"], expected_gray)
    for name in ("gray16.png", "gray16_noisy.png", "gray32.tif", "grayf.tif"):
        assert loaded[name].dtype == np.uint8 and np.array_equal(loaded[name], expected_gray), name
    assert np.array_equal(loaded["rgb8.png"], rgb.astype(np.uint8))
    assert np.array_equal(loaded["rgb16.png"], rgb.astype(np.uint8))


def test_8bit_images_are_read_exactly_as_before(tmp_path):
    """Every 8-bit mode still goes through Pillow's own convert("RGB"), bit for bit."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8))
    folder = tmp_path / "c"
    folder.mkdir()
    rgb.save(folder / "rgb.jpg", quality=90)
    rgb.convert("L").save(folder / "l.png")
    rgb.convert("P").save(folder / "p.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    loaded = _load_all(tmp_path)
    for name, array in loaded.items():
        with Image.open(folder / name) as img:
            pil = np.asarray(img.convert("RGB"))
        assert array.dtype == np.uint8 and np.array_equal(array, pil), name


# ---------------------------------------------------------------- item 8

def test_offline_hub_fails_fast_with_one_clean_message(tmp_path):
    """No network (the hub endpoint refuses connections) and an empty cache: one error line
    with the offline help, no retries, no warnings."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    sets = tiny_overrides(epochs=1) + SYNTH + ["model.pretrained=true"]
    proc = _subprocess("main.py", ["--no-progress", *_sets(sets), "--output", "run"], tmp_path,
                       env, drop=("HF_HUB_OFFLINE",))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    for w in ("error: cannot download the pretrained weights of 'vit_tiny_patch16_224'",
              "unreachable", "hf download timm/vit_tiny_patch16_224", "model.pretrained_file="):
        assert w in lines[0], w
    assert not (tmp_path / "run").exists()


def test_dataset_linking_to_a_moved_source_is_refused_at_validation(tmp_path):
    from datasets import DataError, build_benchmark
    from splitlora.config import from_dict
    source, root = tmp_path / "source", tmp_path / "prepared"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (source / split / c).mkdir(parents=True)
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 90, 30)).save(source / split / c / f"{i}.png")
                (root / split / c / f"{i}.png").symlink_to(source / split / c / f"{i}.png")
    cfg = from_dict({"dataset": {"name": "folder", "root": str(root), "num_tasks": 1}}).dataset
    assert build_benchmark(cfg, 16).num_classes == 2
    source.rename(tmp_path / "moved")
    with pytest.raises(DataError) as err:
        build_benchmark(cfg, 16)
    for w in ("4 symbolic link(s) in train/", "train/a/0.png ->", "moved or been deleted"):
        assert w in str(err.value), w
    link = tmp_path / "link_root"  # the root itself a link to a folder that moved
    link.symlink_to(tmp_path / "source")
    cfg = from_dict({"dataset": {"name": "folder", "root": str(link), "num_tasks": 1}}).dataset
    with pytest.raises(DataError, match="symbolic link to .*source, which does not exist"):
        build_benchmark(cfg, 16)


def test_rank_not_below_the_layer_width_warns(caplog):
    from models import ContinualViT
    from tests.conftest import tiny_vit  # qkv: 32 -> 3 x 32
    with caplog.at_level(logging.WARNING):
        ContinualViT(tiny_vit(), rank=31)
    assert not [r for r in caplog.records if "lora.rank" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        ContinualViT(tiny_vit(), rank=32)
    warned = [r.getMessage() for r in caplog.records if "lora.rank" in r.getMessage()]
    assert len(warned) == 1 and "lora.rank = 32 is not below the width 32" in warned[0]


@pytest.mark.parametrize("epochs, milestones, late", [
    (10, [5, 8], []), (8, [5, 8], []), (7, [5, 8], [8]), (4, [5, 8], [5, 8])])
def test_milestones_beyond_the_epochs_warn(epochs, milestones, late):
    """Milestone m applies from epoch m on (splitlora/engine.py make_scheduler): one beyond
    train.epochs never applies."""
    from splitlora.config import config_warnings, from_dict
    from splitlora.engine import make_scheduler
    cfg = from_dict({"train": {"epochs": epochs, "milestones": milestones}})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg.train)
    sched.step(0)
    lrs = []
    for e in range(1, epochs + 1):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(e)
    decays = len({round(lr, 12) for lr in lrs}) - 1  # the milestones that took effect
    assert decays == len(milestones) - len(late)
    warnings = config_warnings(cfg)
    if not late:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert f"{', '.join(map(str, late))} {'lies' if len(late) == 1 else 'lie'} beyond " \
               f"train.epochs = {epochs}" in warnings[0]
