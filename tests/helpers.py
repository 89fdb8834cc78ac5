"""What the tests share: tiny timm ViTs and configs that run in seconds on a CPU, ways to run
``main.py`` (in this process or as a user does), small datasets on disk, learners and tasks
built by hand, snapshots of folders, and the device list of the tests that have GPU variants.

Imported as ``from tests.helpers import ...``; ``tests/conftest.py`` only registers fixtures.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEMO = CONFIGS / "demo.yaml"

# Subprocesses get a hang guard, not a speed limit: far above any run's time on a loaded
# machine, below CI's own limit.
HANG_GUARD_S = 3600

TINY_VIT = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}

# --------------------------------------------------------------------------- devices

HAS_CUDA = torch.cuda.is_available()
TWO_GPUS = HAS_CUDA and torch.cuda.device_count() >= 2
NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
# parametrise a test with ``@pytest.mark.parametrize("device", DEVICES)``: ``pytest -m cuda``
# selects the GPU variants, which are skipped (reason shown by -rs) on a machine without one
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA, id="cuda")]


def cuda_only(*marks) -> list:
    """Marks of a test that only makes sense on a GPU."""
    return [*NEEDS_CUDA, *marks]


# --------------------------------------------------------------------------- models

def tiny_vit(img_size: int = 16, **kwargs) -> torch.nn.Module:
    """A 2-block, 32-dim timm VisionTransformer with its classifier removed."""
    import timm
    args = dict(TINY_VIT, **kwargs)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                             img_size=img_size, **args)


def tiny_model(rank: int = 2, targets=("k", "v"), device: str = "cpu", **kwargs):
    from models import ContinualViT
    return ContinualViT(tiny_vit(**kwargs), rank=rank, targets=targets).to(device)


# --------------------------------------------------------------------------- configs

def tiny_overrides(tmp_path: Path | None = None, epochs: int = 2) -> list[str]:
    """--set overrides turning any config into a tiny CPU run."""
    return [
        "device=cpu", "model.name=vit_tiny_patch16_224", "model.pretrained=false",
        "model.pretrained_file=null", "demo_pretrain.enabled=false",
        "model.img_size=16", "model.kwargs={patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}",
        "lora.rank=2", f"train.epochs={epochs}", "train.milestones=[1]", "train.batch_size=16",
        "train.expand_times=1", "train.num_workers=0", "eval.num_workers=0", "eval.batch_size=32",
    ]


def synthetic(num_tasks: int, classes: int, train: int, val: int, size: int = 16) -> list[str]:
    """--set overrides for a synthetic benchmark of ``classes`` classes in ``num_tasks`` tasks."""
    return ["dataset.name=synthetic", f"dataset.num_tasks={num_tasks}",
            f"dataset.synthetic={{num_classes: {classes}, train_per_class: {train}, "
            f"val_per_class: {val}, image_size: {size}}}"]


def sets(items: Iterable[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [x for item in items for x in ("--set", item)]


# the run most run-directory tests share: 3 tasks of 2 classes, 3 epochs of 5 steps
SYNTH3 = synthetic(3, 6, 40, 6) + ["train.expand_times=2"]


# the cheapest complete run: 2 tasks of 2 classes, 1 epoch of 1 step
SMALL = synthetic(2, 4, 8, 4)


def small_args(extra: Iterable[str] = ()) -> list[str]:
    """main.py arguments of the cheapest complete tiny run plus ``extra`` overrides."""
    return sets(tiny_overrides(epochs=1) + SMALL + list(extra))


def tiny_args(extra: Iterable[str] = (), epochs: int = 3) -> list[str]:
    """main.py arguments of the shared tiny run (``SYNTH3``) plus ``extra`` overrides."""
    return sets(tiny_overrides(epochs=epochs) + SYNTH3 + list(extra))


def make_config(data: Optional[dict] = None):
    """A validated config from nested dicts (absent keys at their defaults), as a run
    directory's config.yaml is read; a bad value is a ConfigError as from a file."""
    from splitlora.run.config import config_from_dict, validate
    cfg = config_from_dict(data or {})
    validate(cfg)
    return cfg


def method_names() -> list[str]:
    """Every registered method (tests derive their method lists from the registry)."""
    from splitlora.methods import METHODS
    return list(METHODS)


def published_suites() -> dict:
    import yaml
    return yaml.safe_load((CONFIGS / "published.yaml").read_text())["suites"]


# --------------------------------------------------------------------------- learners

def train_config(**kw):
    from splitlora.engine import TrainConfig
    base = {"epochs": 2, "milestones": [1], "batch_size": 8, "expand_times": 1, "lr": 1e-2,
            "num_workers": 0}
    base.update(kw)
    return TrainConfig(**base)


def make_learner(method: str, model=None, device: str = "cpu", train=None, num_tasks: int = 3,
                 seed: int = 0, **params):
    """A learner of ``method`` on ``model`` (a tiny one by default), its ``Params`` from the
    defaults with ``params`` set."""
    from splitlora.methods import METHODS
    cls = METHODS[method]
    p = cls.Params(**params)
    p.validate()
    model = model if model is not None else tiny_model(device=device)
    return model, cls(model, torch.device(device), train or train_config(), p, seed=seed,
                      num_tasks=num_tasks)


def loader(seed: int, n: int = 16, offset: int = 0, classes: int = 3, batch_size: int = 8,
           img_size: int = 16):
    """A fixed DataLoader of ``n`` random images, labels ``offset + [0, classes)``."""
    from torch.utils.data import DataLoader, TensorDataset
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, img_size, img_size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) + offset
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def make_task(index: int, batches: Callable[[], Iterable], num_classes: int = 3,
              last: bool = False, data_pass: Optional[Callable[[], Iterable]] = None):
    """A :class:`splitlora.learner.Task` over fixed batches (label offset = index x classes);
    its data pass reads ``data_pass`` (default: the training batches)."""
    from splitlora.learner import Task
    pass_of = data_pass or batches
    return Task(index, num_classes, index * num_classes, last, batches=batches,
                data_pass=lambda plain=False: pass_of())


def task_of(index: int, seed: Optional[int] = None, last: bool = False, classes: int = 3, **kw):
    """Task ``index`` over :func:`loader` (seed defaults to the index)."""
    s = index if seed is None else seed
    return make_task(index, lambda: loader(s, offset=index * classes, classes=classes, **kw),
                     classes, last)


def learn(learner, task) -> list:
    """The whole lifecycle of one task."""
    learner.before_task(task)
    stats = learner.train_task(task)
    learner.after_task(task)
    return stats


# --------------------------------------------------------------------------- running main.py

def run_main(args: list[str], cwd: Path | None = None, timeout: float = HANG_GUARD_S,
             env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run main.py as a user would; returns the completed process (text output)."""
    full = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / "main.py"), "--no-progress", *args],
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
                          env=full)


def run_script(script: str, args: list, cwd: Path, env: Optional[dict] = None,
               drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """A script of the repository as a subprocess (``drop``: environment variables removed)."""
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(PYTHONWARNINGS="ignore", PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S, env=full)


def main_inprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """main.py's entry point called in this process (no interpreter start-up): same arguments,
    exit status and output as a subprocess, for the many cheap checks."""
    import main as main_module
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main_module.main(["--no-progress", *map(str, args)])
    finally:
        os.chdir(old)
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_splitlora", False):
                logging.getLogger().removeHandler(h)
                h.close()
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def popen_main(args: list[str], cwd: Path, env: Optional[dict] = None,
               launcher: Optional[list[str]] = None, **kwargs) -> subprocess.Popen:
    """main.py started as a subprocess (stdout and stderr piped, text); ``launcher``: the
    command before main.py (default: this Python)."""
    return subprocess.Popen([*(launcher or [sys.executable]), str(REPO / "main.py"),
                             "--no-progress", *map(str, args)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
                            **kwargs)


def wait_for_line(proc: subprocess.Popen, marker: str, timeout: float = HANG_GUARD_S) -> list[str]:
    """Read ``proc``'s stderr until a line contains ``marker``; returns the lines read."""
    seen, deadline = [], time.time() + timeout
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            return seen
        if time.time() > deadline:
            break
    proc.kill()
    proc.wait()
    raise AssertionError(f"marker {marker!r} never seen:\n{''.join(seen)[-3000:]}")


def kill_when(proc: subprocess.Popen, marker: str, sig: int = signal.SIGKILL,
              timeout: float = HANG_GUARD_S) -> list[str]:
    """Read stderr until a line contains ``marker``, then send ``sig`` and wait for the end."""
    seen = wait_for_line(proc, marker, timeout)
    os.kill(proc.pid, sig)
    rest = proc.stderr.read()
    proc.wait(timeout=timeout)
    return seen + rest.splitlines(keepends=True)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def assert_one_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2, one ``error:`` line holding ``words``, no traceback; returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr[-3000:]
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert "Traceback" not in proc.stderr + proc.stdout
    return errors[0]


def plot_inprocess(args: list) -> subprocess.CompletedProcess:
    """tools/plot_results.py's main() in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("plot_tool", REPO / "tools" / "plot_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def reproduce_inprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """reproduce.py's main() in this process."""
    import reproduce as reproduce_module
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = reproduce_module.main(list(args))
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


# --------------------------------------------------------------------------- files

def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def snapshot(folder: Path) -> dict[str, bytes]:
    """The files directly in ``folder`` with their bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def read_metrics(run: Path) -> dict:
    import json
    return json.loads((Path(run) / "metrics.json").read_text())


def noise_image(rng: np.random.Generator, w: int, h: int, channels: int = 3) -> np.ndarray:
    """An image with detail everywhere (upsampled noise), (h, w[, channels]) uint8."""
    from PIL import Image
    small = rng.integers(0, 256, size=(max(1, h // 4), max(1, w // 4), channels), dtype=np.uint8)
    return np.asarray(Image.fromarray(small.squeeze(-1) if channels == 1 else small).resize((w, h)))


def image_folder(root: Path, classes: Iterable[str], per_class: int = 6, val_per_class: int = 2,
                 size: int = 16, ext: str = "png") -> Path:
    """``root/{train,val}/<class>/<i>.<ext>``: plain images, distinct per class and index."""
    from PIL import Image
    for split, per in (("train", per_class), ("val", val_per_class)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                Image.new("RGB", (size, size), (40 * k % 256, 9 * i % 256, 100)).save(
                    root / split / c / f"{i}.{ext}")
    return root


def png16(array: np.ndarray) -> bytes:
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


def unwritable_dir(tmp: Path) -> Path:
    """A folder this process cannot write in: permission bits, or (as root, who ignores them)
    a place in sysfs, which nobody can write."""
    if os.geteuid() != 0:
        ro = tmp / "readonly"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    return Path("/sys")


def save_tiny_weights(path: Path, seed: int = 0, **kw) -> Path:
    """A tiny backbone's weights as safetensors (``kw`` changes its architecture)."""
    from safetensors.torch import save_file

    from models import create_backbone
    torch.manual_seed(seed)
    save_file(create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=16,
                              kwargs=dict(TINY_VIT, **kw)).state_dict(), str(path))
    return path


# --------------------------------------------------------------------------- the demo

class DemoRuns:
    """The demo's runs as a newcomer makes them (``python main.py``, then the seq_lora
    baseline and the joint upper bound, each a real process), one after the other in a
    background process started when the session begins: they take most of a CPU for a minute
    or more, so they run beside the rest of the suite (which uses one thread) and the demo
    tests, ordered last, only collect the results. The first run pretrains the demo backbone
    into the session's SPLITLORA_CACHE; the others load it."""

    RUNS = {"splitlora": [], "seq_lora": ["--set", "method.name=seq_lora"],
            "joint": ["--set", "method.name=joint"]}
    DRIVER = """if True:
        import json, subprocess, sys
        main, cwd, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        for name, args in runs.items():
            proc = subprocess.run([sys.executable, main, "--no-progress", *args], cwd=cwd,
                                  capture_output=True, text=True)
            with open(f"{cwd}/{name}.result.json", "w") as f:
                json.dump({"args": args, "returncode": proc.returncode, "stdout": proc.stdout,
                           "stderr": proc.stderr}, f)
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "DemoRuns":
        import json
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.DRIVER, str(REPO / "main.py"), str(self.workdir),
             json.dumps(self.RUNS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONWARNINGS="ignore"))
        return self

    def results(self, timeout: float = HANG_GUARD_S) -> dict[str, subprocess.CompletedProcess]:
        """Wait for the runs; name -> completed process (a run not made: returncode None)."""
        import json
        if self.proc is None:
            self.start()
        self.proc.wait(timeout=timeout)
        out = {}
        for name in self.RUNS:
            path = self.workdir / f"{name}.result.json"
            data = json.loads(path.read_text()) if path.is_file() else {
                "args": self.RUNS[name], "returncode": None, "stdout": "", "stderr": ""}
            out[name] = subprocess.CompletedProcess(data["args"], data["returncode"],
                                                    data["stdout"], data["stderr"])
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mixed_image_folder(root: Path):
    """One class of images of several formats and modes (JPEG, PNG, grey, palette, RGBA) and
    a corrupt file; returns (the FolderImageSet, the indices of the readable images)."""
    from PIL import Image

    from datasets.folder import FolderImageSet
    rng = np.random.default_rng(0)
    d = root / "c0"
    d.mkdir(parents=True)
    Image.fromarray(noise_image(rng, 60, 45)).save(d / "a.jpg", quality=90)
    Image.fromarray(noise_image(rng, 40, 40)).save(d / "b.png")
    Image.fromarray(noise_image(rng, 30, 50, 1)).save(d / "c.png")  # mode L
    Image.fromarray(noise_image(rng, 36, 28)).convert("P").save(d / "d.gif")  # palette
    Image.fromarray(np.dstack([noise_image(rng, 24, 32), noise_image(rng, 24, 32, 1)])).save(
        d / "e.png")
    (d / "f.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return FolderImageSet(root, ["c0"], "train"), [0, 1, 2, 3, 4]


# ------------------------------------------------------------ the dataset-preparation tools
# Downloads fabricated in their real on-disk formats (CIFAR-100 python pickles and tar.gz, an
# imagenet-r folder and tar, a DomainNet tree with list files), only tiny.
TOOLS = REPO / "tools"
def run_tool(script: str, *args: object, env: dict | None = None, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` as a user would, from the repository root."""
    full_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, str(TOOLS / script), *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def run_inprocess(script: str, *args: object) -> subprocess.CompletedProcess:
    """``tools/<script>``'s entry point called in this process (no interpreter start-up): the
    same arguments, exit status and output as :func:`run_tool`, for the many cheap checks."""
    saved = list(sys.path)
    sys.path.append(str(TOOLS))
    try:
        pc, tool = importlib.import_module("_prep_common"), importlib.import_module(script.removesuffix(".py"))
    finally:
        sys.path[:] = saved  # the tools put their folder first: keep it out of later imports
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            pc.run_main(tool.main, [str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(), err.getvalue())


def error_text(stderr: str) -> str:
    """The ``error: ...`` message of a failed run (must start a line; progress bars may precede it)."""
    lines = stderr.replace("\r", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert starts, f"no line starting with 'error:' in stderr: {stderr!r}"
    return "\n".join(lines[starts[0]:])


def lstat_snapshot(root: Path) -> dict[str, tuple[int, int, int, bool]]:
    """relative path -> (mtime_ns, inode, size, is_symlink) for every entry under ``root`` (lstat)."""
    out: dict[str, tuple[int, int, int, bool]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_ino, st.st_size, os.path.islink(p))
    return out


def prepared_tree(dst: Path) -> dict[str, dict[str, list[str]]]:
    """``{split: {class folder: sorted file names}}`` of a prepared destination."""
    out: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "val"):
        sdir = dst / split
        out[split] = {c: sorted(os.listdir(sdir / c)) for c in sorted(os.listdir(sdir))} if sdir.is_dir() else {}
    return out


def count(dst: Path, split: str) -> int:
    """Number of images in one split of a prepared destination."""
    return sum(len(v) for v in prepared_tree(dst)[split].values())


# ------------------------------------------------------------------------------ CIFAR-100
@dataclass
class Cifar:
    folder: Path  # .../cifar-100-python (train, test, meta)
    targz: Path  # .../cifar-100-python.tar.gz
    train_data: np.ndarray
    train_labels: list[int]
    test_data: np.ndarray
    test_labels: list[int]
    names: list[str] = field(default_factory=list)


def _cifar_batch(rng: np.random.Generator, labels: list[int], name: str, cifar10: bool = False) -> dict:
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    d = {
        b"batch_label": name.encode(),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
        b"data": data,
    }
    if cifar10:
        d[b"labels"] = labels
    else:
        d[b"fine_labels"] = labels
        d[b"coarse_labels"] = [lab // 5 for lab in labels]
    return d


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles as Python 2's cPickle wrote the real CIFAR files: str and bytes as 8-bit strings
    (SHORT_BINSTRING / BINSTRING), numpy's reconstructor named numpy.core.multiarray."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_str8(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        head = pickle.SHORT_BINSTRING + bytes([len(data)]) if len(data) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(data))
        self.write(head + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_str8

    def save_global(self, obj: object, name: str | None = None) -> None:
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def make_cifar100(root: Path, num_classes: int = 100, train_per_class: int = 2, test_per_class: int = 1,
                  seed: int = 0, cifar10: bool = False, py2: bool = False) -> Cifar:
    """A CIFAR-100-format folder and tar.gz (python pickles, protocol 2, bytes keys), written by
    Python 3's pickle or (``py2``) in the byte format of the real files (Python 2's cPickle)."""
    rng = np.random.default_rng(seed)
    train_labels = [int(x) for x in rng.permutation(np.repeat(np.arange(num_classes), train_per_class))]
    test_labels = [int(x) for x in rng.permutation(np.repeat(np.arange(num_classes), test_per_class))]
    train = _cifar_batch(rng, train_labels, "training batch 1 of 1", cifar10)
    test = _cifar_batch(rng, test_labels, "testing batch 1 of 1", cifar10)
    names = [f"name_{i:02d}" for i in range(num_classes)]
    meta = {b"fine_label_names": [n.encode() for n in names],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(max(1, num_classes // 5))]}
    if cifar10:
        meta = {b"label_names": [n.encode() for n in names]}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, obj in (("train", train), ("test", test), ("meta", meta)):
        with open(folder / name, "wb") as f:
            if py2:
                Py2Pickler(f, protocol=2).dump(obj)
            else:
                pickle.dump(obj, f, protocol=2)
    targz = root / "cifar-100-python.tar.gz"
    with tarfile.open(targz, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return Cifar(folder, targz, train[b"data"], train_labels, test[b"data"], test_labels, names)


def cifar_rgb(row: np.ndarray) -> np.ndarray:
    """(32, 32, 3) image of one CIFAR data row."""
    return row.reshape(3, 32, 32).transpose(1, 2, 0)


# ------------------------------------------------------------------------------ ImageNet-R
INR_CLASSES = {  # wnid -> (name, number of images)
    "n01443537": ("goldfish", 7),
    "n01484850": ("great_white_shark", 5),
    "n01494475": ("hammerhead", 2),
    "n01498041": ("stingray", 10),
}
INR_RENDITIONS = ("art", "cartoon", "sketch", "toy")


def tiny_jpeg(path: Path, seed: int) -> None:
    """Write a small JPEG whose content depends on ``seed``."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)).save(path, format="JPEG")


def make_imagenet_r(root: Path, classes: dict[str, tuple[str, int]] | None = None, readme: bool = True) -> tuple[Path, Path]:
    """An ``imagenet-r`` folder (wnid folders of tiny JPEGs, README.txt) and ``imagenet-r.tar``."""
    classes = classes or INR_CLASSES
    folder = root / "imagenet-r"
    folder.mkdir(parents=True)
    k = 0
    for wnid, (_, n) in classes.items():
        (folder / wnid).mkdir()
        for i in range(n):
            tiny_jpeg(folder / wnid / f"{INR_RENDITIONS[i % 4]}_{i}.jpg", k)
            k += 1
    if readme:
        lines = ["ImageNet-R: 200 ImageNet classes, renditions.", "", "wnid class name:"]
        lines += [f"{w} {name}" for w, (name, _) in classes.items()]
        (folder / "README.txt").write_text("\n".join(lines) + "\n")
    tar_path = root / "imagenet-r.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder, arcname="imagenet-r")
    return folder, tar_path


def inr_files(folder: Path) -> list[str]:
    """All ``wnid/file`` paths of a fabricated imagenet-r folder, sorted."""
    return sorted(f"{w}/{f}" for w in os.listdir(folder) if (folder / w).is_dir() for f in os.listdir(folder / w))


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write a list file."""
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


# ------------------------------------------------------------------------------ DomainNet
DN_CLASSES = ["aircraft_carrier", "bee", "cat", "pickup_truck", "zebra"]  # official label = index
DN_DOMAINS = ["clipart", "quickdraw", "real"]
DN_PER_CLASS = 5  # files per domain and class; the first 3 are "train"
DN_SUBSET = ["pickup_truck", "cat", "zebra"]  # 200-class-subset style: relabelled 0..2


@dataclass
class DomainNet:
    root: Path
    official_train: list[Path]  # <domain>_train.txt, labels = index in DN_CLASSES
    official_test: list[Path]
    subset_train: Path  # mixed domains, labels 0..len(DN_SUBSET)-1
    subset_val: Path


def dn_file_name(domain: str, ci: int, j: int) -> str:
    """DomainNet-like file names; quickdraw's are bare numbers as in the real release."""
    if domain == "quickdraw":
        return f"{5000000000000000 + ci * 1000 + j}.png"
    return f"{domain}_{ci + 1:03d}_{j:06d}.jpg"


def make_domainnet(root: Path) -> DomainNet:
    """A DomainNet tree plus official per-domain lists and a class-subset list pair."""
    root.mkdir(parents=True)
    lists = root.parent / "lists"
    lists.mkdir(exist_ok=True)
    official_train, official_test = [], []
    for domain in DN_DOMAINS:
        tr, te = [], []
        for ci, cls in enumerate(DN_CLASSES):
            d = root / domain / cls
            d.mkdir(parents=True)
            for j in range(DN_PER_CLASS):
                name = dn_file_name(domain, ci, j)
                (d / name).write_bytes(f"{domain}/{cls}/{name}".encode() * (j + 1))
                (tr if j < 3 else te).append(f"{domain}/{cls}/{name} {ci}")
        official_train.append(write_lines(lists / f"{domain}_train.txt", tr))
        official_test.append(write_lines(lists / f"{domain}_test.txt", te))
    sub_tr, sub_va = [], []
    for label, cls in enumerate(DN_SUBSET):
        ci = DN_CLASSES.index(cls)
        for domain in DN_DOMAINS:
            for j in range(DN_PER_CLASS):
                (sub_tr if j < 3 else sub_va).append(f"{domain}/{cls}/{dn_file_name(domain, ci, j)} {label}")
    return DomainNet(root, official_train, official_test,
                     write_lines(lists / "subset_train.txt", sub_tr), write_lines(lists / "subset_val.txt", sub_va))


def garbage(path: Path, data: bytes = b"this is not an archive\n") -> Path:
    """Write a file with arbitrary content."""
    path.write_bytes(data)
    return path


def tar_of(path: Path, members: dict[str, bytes | tuple[bytes, str]], mode: str = "w") -> Path:
    """A tar with the given members: name -> content (a regular file) or -> (type, link name),
    the type one of tarfile's SYMTYPE, LNKTYPE, FIFOTYPE, CHRTYPE, ..."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def reference_dir() -> Path | None:
    """$SPLITLORA_REFERENCE_SPLITS when it holds the four published split lists, else None."""
    value = os.environ.get("SPLITLORA_REFERENCE_SPLITS")
    if not value:
        return None
    d = Path(value)
    names = ("imagenet_r_train.txt", "imagenet_r_val.txt", "sdomain_train.txt", "sdomain_val.txt")
    return d if all((d / n).is_file() for n in names) else None


def touch_listed(root: Path, lists: list[Path]) -> None:
    """Create a small file for every path named in the lists (first column) under ``root``."""
    made: set[str] = set()
    for lst in lists:
        for line in lst.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            rel = line.split()[0]
            parent = os.path.dirname(rel)
            if parent not in made:
                (root / parent).mkdir(parents=True, exist_ok=True)
                made.add(parent)
            with open(root / rel, "wb") as f:
                f.write(b"x")
