"""One experiment from a resolved config: build, run every task, write the run directory.

Run directory contents: ``config.yaml`` (resolved), ``log.txt``, ``metrics.json`` (rewritten
after every task; ``"complete": true`` once the last task is evaluated).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import timm
import torch

from datasets import Benchmark, Repeated, build_benchmark
from models import ContinualViT, create_backbone, file_sha256

from . import engine
from .config import Config, config_hash, dump_yaml
from .learner import Learner, build_learner, derived_seed
from .metrics import AccuracyTracker
from .runinfo import environment, hub_weights_file, utc_now

log = logging.getLogger("splitlora")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError
        raise ConfigError(f"config key 'device' = {name!r}: CUDA is not available on this machine; "
                          "use device=cpu or device=auto")
    return device


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def model_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation of the model's pretrained config (0.5 / 0.5 for the protocol's ViT)."""
    try:
        pcfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001
        pcfg = None
    mean = tuple(getattr(pcfg, "mean", None) or (0.5, 0.5, 0.5))
    std = tuple(getattr(pcfg, "std", None) or (0.5, 0.5, 0.5))
    return mean, std


def check_names(cfg: Config) -> None:
    """Registry names (method, model) are checked before any data is read or model built."""
    from .config import ConfigError
    from .learner import METHODS
    if cfg.method.name not in METHODS:
        raise ConfigError(f"config key 'method.name' = {cfg.method.name!r} is not a known method; "
                          f"known: {', '.join(sorted(METHODS))}")
    if not timm.is_model(cfg.model.name):
        import difflib
        close = difflib.get_close_matches(cfg.model.name, timm.list_models(), n=3, cutoff=0.6)
        raise ConfigError(f"config key 'model.name' = {cfg.model.name!r} is not a timm model"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))


def build_model(cfg: Config, device: torch.device, progress: bool = True) -> ContinualViT:
    m = cfg.model
    if m.pretrained_file and cfg.demo_pretrain.enabled and not Path(m.pretrained_file).exists():
        from .pretrain import pretrain_synthetic_backbone
        log.info("%s not found: pretraining the demo backbone on synthetic classes", m.pretrained_file)
        pretrain_synthetic_backbone(cfg, Path(m.pretrained_file), device, progress)
    backbone = create_backbone(m.name, pretrained=m.pretrained, pretrained_file=m.pretrained_file,
                               img_size=m.img_size, fused_attn=m.fused_attn, kwargs=m.kwargs)
    return ContinualViT(backbone, cfg.lora.rank, cfg.lora.targets).to(device)


def weights_info(cfg: Config, backbone: torch.nn.Module) -> dict:
    """Which weights the backbone was loaded from: source, tag or path, SHA-256."""
    m = cfg.model
    if m.pretrained_file:
        path = Path(m.pretrained_file).expanduser().resolve()
        return {"source": "file", "path": str(path), "sha256": file_sha256(path)}
    if m.pretrained:
        pcfg = getattr(backbone, "pretrained_cfg", None) or {}
        cached = hub_weights_file(backbone)
        return {"source": "hub", "tag": pcfg.get("tag"), "hf_hub_id": pcfg.get("hf_hub_id"),
                "path": cached, "sha256": file_sha256(cached) if cached else None}
    return {"source": "random init (model.pretrained: false)"}


class Experiment:
    """Holds everything of one run; ``run()`` executes the remaining tasks."""

    def __init__(self, cfg: Config, output_dir: Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(output_dir)
        self.progress = progress
        check_names(cfg)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        mean, std = model_mean_std(cfg.model.name)
        # data first: a bad root fails before any model is built or downloaded
        self.bench: Benchmark = build_benchmark(cfg.dataset, cfg.model.img_size, mean, std)
        order_seed = cfg.dataset.class_order_seed
        self.tasks = self.bench.tasks(cfg.dataset.num_tasks,
                                      cfg.seed if order_seed is None else order_seed,
                                      cfg.dataset.shuffle_classes)
        self.tracker = AccuracyTracker(len(self.tasks))
        self.task_seconds: list[float] = []
        self.started = time.time()
        self.model: Optional[ContinualViT] = None
        self.learner: Optional[Learner] = None

    def build(self) -> None:
        """Build the model (download or load weights) and the learner."""
        torch.manual_seed(self.cfg.seed)
        self.model = build_model(self.cfg, self.device, self.progress)
        self.learner = build_learner(self.cfg, self.model, self.device)
        self.env = environment(self.device)
        self.env["weights"] = weights_info(self.cfg, self.model.backbone)
        self.env["start_time"] = utc_now()
        self.env["end_time"] = None
        write_json_atomic(self.out / "env.json", self.env)

    # ----------------------------------------------------------------- data
    def train_loader(self, task: int, for_covariance: bool = False):
        cfg = self.cfg
        classes = self.tasks[task]
        offset = task * len(classes)
        plain = for_covariance and cfg.split.cov_pass == "plain"
        ds = self.bench.task_dataset("train", classes, offset,
                                     self.bench.eval_transform if plain else None)
        if not plain:
            ds = Repeated(ds, cfg.train.expand_times)
        return engine.make_loader(ds, cfg.train.batch_size, shuffle=True,
                                  num_workers=cfg.train.num_workers, device=self.device,
                                  seed=derived_seed(cfg.seed, task, 2 if for_covariance else 3))

    def val_loader(self, task: int):
        classes = self.tasks[task]
        ds = self.bench.task_dataset("val", classes, task * len(classes))
        return engine.make_loader(ds, self.cfg.eval.batch_size, shuffle=False,
                                  num_workers=self.cfg.eval.num_workers, device=self.device)

    # ----------------------------------------------------------------- run
    def run_task(self, task: int) -> None:
        t0 = time.perf_counter()
        classes = self.tasks[task]
        offset = task * len(classes)
        self.learner.before_task(task, len(classes))
        self.learner.train_task(task, self.train_loader(task), offset, self.progress)
        self.learner.after_task(task, lambda: self.train_loader(task, for_covariance=True),
                                last=task == len(self.tasks) - 1, progress=self.progress)
        for j in range(task + 1):
            correct, total = self.learner.evaluate(self.val_loader(j), f"eval task {j}", self.progress)
            self.tracker.update(task, j, correct, total)
        self.task_seconds.append(time.perf_counter() - t0)
        row = self.tracker.acc_matrix()[task]
        acc = self.tracker.acc_after_task()[task]
        log.info("task %d/%d done in %.1fs: accuracy over seen tasks %.2f%% (per task: %s)",
                 task + 1, len(self.tasks), self.task_seconds[-1], acc,
                 ", ".join(f"{v:.1f}" for v in row[: task + 1]))

    def metrics(self) -> dict:
        done = self.tracker.tasks_done()
        out = {
            "name": self.cfg.name,
            "method": self.cfg.method.name,
            "seed": self.cfg.seed,
            "config_hash": config_hash(self.cfg),
            "num_tasks": len(self.tasks),
            "tasks_done": done,
            "complete": done == len(self.tasks),
        }
        out.update(self.tracker.summary())
        out["split_dims"] = self.learner.split_dims
        out["interference"] = self.learner.interference
        out["task_classes"] = self.tasks
        out["task_seconds"] = self.task_seconds
        out["wall_seconds"] = time.time() - self.started
        out["peak_gpu_mem_gib"] = (torch.cuda.max_memory_allocated(self.device) / 2**30
                                   if self.device.type == "cuda" else None)
        return out

    def write_metrics(self) -> dict:
        m = self.metrics()
        write_json_atomic(self.out / "metrics.json", m)
        return m

    def run(self) -> dict:
        if self.learner is None:
            self.build()
        log.info("run %s: method %s, %d tasks of %d classes, device %s, %s", self.cfg.name,
                 self.cfg.method.name, len(self.tasks), len(self.tasks[0]), self.device,
                 platform.node())
        for task in range(self.tracker.tasks_done(), len(self.tasks)):
            self.run_task(task)
            self.write_metrics()
        self.env["end_time"] = utc_now()
        write_json_atomic(self.out / "env.json", self.env)
        return self.write_metrics()


def setup_logging(log_file: Optional[Path], level: int = logging.INFO) -> None:
    """Console (stderr) and optional file logging for the ``splitlora`` loggers."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_splitlora", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    handlers = [console]
    if log_file is not None:
        fh = logging.FileHandler(log_file, mode="a")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(fh)
    for h in handlers:
        h._splitlora = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)


def prepare_run_dir(cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", dump_yaml(cfg))
