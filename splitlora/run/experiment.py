"""One experiment from a resolved config: the data, the model and the learner, the task loop.

It writes config.yaml, log.txt, metrics.json (after every task), env.json (versions, device,
commit, weights, timings) and checkpoint.pt (for an exact resume). Under torchrun, evaluation
and the covariance pass read disjoint unpadded shards: the all-reduced sums equal the
single-process ones, and only rank 0 writes."""
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sized

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from datasets import Benchmark, Repeated, SyntheticImageSet, TaskDataset, build_benchmark, loading
from datasets import transforms as tf
from datasets.cache import TaskImageCache
from datasets.loading import make_loader
from models import (ContinualViT, WeightsError, check_backbone, create_backbone, file_sha256,
                    hub_weights_file, model_mean_std)
from splitlora.learner import Learner, Stream, Task, derived_seed
from splitlora.methods import get_method
from splitlora.metrics import AccuracyTracker

from .config import Config, to_dict
from .fileio import ConfigError, atomic_write_bytes, read_json, write_json_atomic
from .rundir import CheckpointError, RunDir, utc_now

log = logging.getLogger("splitlora")

REPO = Path(__file__).resolve().parents[2]
RECIPE_KEY = "splitlora_demo_recipe"  # the one metadata entry of a demo backbone file


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the processes of a torchrun job (one process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", 0))
    if world <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(int(os.environ["RANK"]), world, local)


def per_rank_batch(global_batch: int, info: DistInfo, key: str) -> int:
    if global_batch % info.world_size:
        raise ConfigError(f"config key '{key}' = {global_batch} is not divisible by the "
                          f"{info.world_size} processes of this run; pick a multiple")
    return global_batch // info.world_size


def shard_indices(data: Sized, info: DistInfo) -> range:
    """A sampler of indices rank, rank + world, ... of ``data``: disjoint, unpadded, in order."""
    return range(info.rank, len(data), info.world_size)


def cache_dir() -> Path:
    """The demo backbone's folder: ``$SPLITLORA_CACHE``, else ``$XDG_CACHE_HOME/splitlora``."""
    if os.environ.get("SPLITLORA_CACHE"):
        return Path(os.environ["SPLITLORA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "splitlora"


def weights_path(cfg: Config) -> Optional[Path]:
    """``model.pretrained_file``; the demo's, if relative, lies in :func:`cache_dir`."""
    if not cfg.model.pretrained_file:
        return None
    path = Path(cfg.model.pretrained_file).expanduser()
    return cache_dir() / path if cfg.demo_pretrain.enabled and not path.is_absolute() else path


def demo_recipe(cfg: Config) -> str:
    """Everything the demo backbone's weights depend on, as canonical JSON."""
    m, syn, p = cfg.model, cfg.dataset.synthetic, asdict(cfg.demo_pretrain)
    return json.dumps({"demo_pretrain": {k: v for k, v in p.items() if k != "enabled"},
                       "model": {"name": m.name, "img_size": m.img_size, "kwargs": m.kwargs,
                                 "fused_attn": m.fused_attn},
                       "synthetic": {"image_size": syn.image_size, "seed": syn.seed}},
                      sort_keys=True)


def save_backbone(state: dict[str, torch.Tensor], path: Path, recipe: str) -> None:
    """Write ``state`` atomically as safetensors, the recipe its one metadata entry (several
    are written in a per-process order: the same weights would get another SHA-256)."""
    from safetensors.torch import save
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in state.items()},
                                  metadata={RECIPE_KEY: recipe}))


def check_demo_backbone(cfg: Config, path: Optional[Path]) -> None:
    """Refuse a cached demo backbone at ``path`` pretrained with another recipe than ``cfg``'s."""
    if path is None or not path.is_file():
        return
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get(RECIPE_KEY)
    except Exception:  # noqa: BLE001 - not safetensors: create_backbone reports what is wrong
        recorded = None
    if recorded != demo_recipe(cfg):  # (None: not a demo backbone file)
        old, new = json.loads(recorded or "{}"), json.loads(demo_recipe(cfg))
        diff = [f"{section}.{k}: {old.get(section, {}).get(k)!r} -> {v!r}"
                for section, keys in new.items() for k, v in keys.items()
                if old.get(section, {}).get(k) != v]
        raise ConfigError(f"the demo backbone {path} was pretrained with another recipe "
                          f"({'; '.join(diff)}); delete it to pretrain again, or set "
                          "model.pretrained_file to another path")


def pretrain_synthetic_backbone(cfg: Config, path: Path, device: torch.device) -> None:
    """Train ``cfg.model`` from scratch on ``cfg.demo_pretrain`` synthetic classes; save to path."""
    p, syn, m = cfg.demo_pretrain, cfg.dataset.synthetic, cfg.model
    t0, gen_state = time.perf_counter(), torch.random.get_rng_state()
    torch.manual_seed(p.seed)
    backbone = create_backbone(m.name, pretrained=False, img_size=m.img_size,
                               fused_attn=m.fused_attn, kwargs=m.kwargs).to(device)
    head = nn.Linear(backbone.num_features, p.num_classes).to(device)
    images = SyntheticImageSet(p.num_classes, p.train_per_class, syn.image_size, syn.seed,
                               p.class_offset, "train")
    data = TaskDataset(images, list(range(p.num_classes)), 0,
                       tf.tensor_train_transform(m.img_size, (0.5,) * 3, (0.5,) * 3))
    loader = make_loader(data, p.batch_size, True, 0, device, seed=p.seed, drop_last=True)
    opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=p.lr,
                            weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, pct_start=0.15,
                                                total_steps=p.epochs * len(loader))
    backbone.train()
    for epoch in range(p.epochs):
        correct = seen = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = head(backbone(x))
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
        log.info("demo pretraining epoch %d/%d: loss %.3f train acc %.1f%%", epoch + 1, p.epochs,
                 loss.item(), 100.0 * correct / max(seen, 1))
    torch.random.set_rng_state(gen_state)
    save_backbone(backbone.state_dict(), path, demo_recipe(cfg))
    log.info("demo backbone pretrained in %.1fs and saved to %s", time.perf_counter() - t0, path)


def resolve_device(name: str, dist_info: DistInfo = DistInfo()) -> torch.device:
    """``device`` config -> torch device; under torchrun each process takes its LOCAL_RANK GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' = {name!r}: CUDA is not available on this machine; "
                          "use device=cpu or device=auto")
    if device.index is not None and device.index >= torch.cuda.device_count():  # cuda:N
        raise ConfigError(f"config key 'device' = {name!r}: this machine has "
                          f"{torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type == "cuda" and dist_info.enabled:
        return torch.device("cuda", dist_info.local_rank)
    return device


def check_model(cfg: Config) -> None:
    """The model name, its arguments and a cached demo backbone, before any data is read."""
    check_backbone(cfg.model.name, cfg.model.img_size, cfg.model.kwargs)  # a ViT with fused qkv
    if cfg.demo_pretrain.enabled:
        check_demo_backbone(cfg, weights_path(cfg))


def weights_info(cfg: Config, backbone: torch.nn.Module) -> dict:
    """Which weights the backbone was loaded from: source, tag or path, SHA-256."""
    path = weights_path(cfg)
    if path is not None:
        return {"source": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
    if cfg.model.pretrained:
        pcfg = getattr(backbone, "pretrained_cfg", None) or {}
        cached = hub_weights_file(cfg.model.name)
        return {"source": "hub", "tag": pcfg.get("tag"), "hf_hub_id": pcfg.get("hf_hub_id"),
                "path": cached, "sha256": file_sha256(cached) if cached else None}
    return {"source": "random init (model.pretrained: false)"}


def environment(device: torch.device) -> dict:
    """What a run ran on, for env.json: versions, device, the project's commit."""
    import torchvision

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else ""
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "hostname": platform.node(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "cuda": torch.version.cuda,
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "num_gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "git_commit": (commit + ("-dirty" if dirty else "")) or None}


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB."""
    import resource
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return kib / 2**30 if sys.platform == "darwin" else kib / 2**20


class Experiment:
    """One run: the constructor checks the names and the data, ``build()`` makes the model and
    the learner, ``resume()`` restores a checkpoint, ``run()`` runs the remaining tasks."""

    def __init__(self, cfg: Config, run_dir: RunDir, progress: bool = True, logger=None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.method = get_method(cfg.method.name)
        check_model(cfg)
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist)
        self.progress, self.logger = progress and self.dist.is_main, logger
        per_rank_batch(cfg.train.batch_size, self.dist, "train.batch_size")  # splits evenly
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        # data first: a bad root fails before any model is built or downloaded
        self.bench: Benchmark = build_benchmark(cfg.dataset, cfg.model.img_size,
                                                *model_mean_std(cfg.model.name))
        order_seed = cfg.dataset.class_order_seed
        num_tasks = 1 if self.method.single_task else cfg.dataset.num_tasks
        self.tasks = self.bench.tasks(num_tasks, cfg.seed if order_seed is None else order_seed,
                                      cfg.dataset.shuffle_classes)
        self.data_identity = self.bench.identity(self.tasks)
        self.tracker = AccuracyTracker(len(self.tasks))
        self.workers = {"train_workers": loading.resolve_workers(cfg.train.num_workers),
                        "eval_workers": loading.resolve_workers(cfg.eval.num_workers)}
        self.image_cache = TaskImageCache(cfg.dataset.cache, loading.usable_cpus(),
                                          loading.processes_on_this_machine())
        self.bad_images: set[str] = set()
        self.model: Optional[ContinualViT] = None
        self.learner: Optional[Learner] = None
        self.env: dict = {}
        self.timing = {"task_seconds": [], "wall_seconds": 0.0}
        self.steps_done = 0  # optimizer steps of the completed tasks (the run logs' x axis)
        self._clock = time.time()

    def build(self) -> None:
        """The backbone and its weights (the demo's pretrained first), LoRA, heads, learner."""
        cfg, m, path = self.cfg, self.cfg.model, weights_path(self.cfg)
        torch.manual_seed(cfg.seed)
        if path is not None and cfg.demo_pretrain.enabled and not path.exists():
            log.info("%s not found: pretraining the demo backbone on synthetic classes", path)
            pretrain_synthetic_backbone(cfg, path, self.device)
        try:
            backbone = create_backbone(m.name, pretrained=m.pretrained, img_size=m.img_size,
                                       pretrained_file=str(path) if path else None,
                                       fused_attn=m.fused_attn, kwargs=m.kwargs)
        except WeightsError as exc:
            if not (cfg.demo_pretrain.enabled and path is not None and path.is_file()):
                raise
            raise WeightsError(f"{exc} (it is the demo's pretrained backbone: delete {path} to "
                               "pretrain it again)") from None
        self.model = ContinualViT(backbone, cfg.lora.rank, cfg.lora.targets).to(self.device)
        self.learner = self.method(self.model, self.device, cfg.train,
                                   getattr(cfg.method, cfg.method.name, None), seed=cfg.seed,
                                   num_tasks=len(self.tasks), head_init=m.head_init,
                                   progress=self.progress)
        self.env = dict(environment(self.device), world_size=self.dist.world_size,
                        weights=weights_info(cfg, backbone),
                        data_loading=dict(self.workers, cache=cfg.dataset.cache))

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly after the last completed task."""
        self._tick()
        return {"config": to_dict(self.cfg), "tasks_done": self.tracker.tasks_done(),
                "weights": self.env["weights"], "data": self.data_identity, "timing": self.timing,
                "qkv": [a.base_layer.state_dict() for a in self.model.adapters],
                "head_sizes": [h.out_features for h in self.model.heads.heads],
                "heads": self.model.heads.state_dict(), "learner": self.learner.state_dict(),
                "tracker": self.tracker.state_dict(), "bad_images": sorted(self.bad_images),
                "steps_done": self.steps_done, "torch_rng": torch.get_rng_state()}

    def resume(self, state: dict) -> None:
        """Restore a checkpoint of this exact config, weights and data (refused otherwise)."""
        self.run_dir.verify(state, self.cfg, self.env["weights"], self.data_identity)
        try:
            for adapter, qkv in zip(self.model.adapters, state["qkv"], strict=True):
                adapter.base_layer.load_state_dict(qkv)
            for n in state["head_sizes"]:
                self.model.heads.add_head(n).to(self.device)
            self.model.heads.load_state_dict(state["heads"])
            self.learner.load_state_dict(state["learner"])
            self.tracker.load_state_dict(state["tracker"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {self.run_dir.path / 'checkpoint.pt'} does not fit "
                                  f"this model ({type(exc).__name__}: {str(exc)[:200]})") from None
        self.bad_images = set(state["bad_images"])
        self.steps_done = int(state["steps_done"])
        self.timing = {k: (list(v) if isinstance(v, list) else v) for k, v in state["timing"].items()}
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming %s after task %d of %d", self.run_dir.path, self.tracker.tasks_done(),
                 len(self.tasks))

    def _tick(self) -> None:
        now = time.time()
        self.timing["wall_seconds"] += now - self._clock
        self._clock = now

    def train_batches(self, task: int, data_pass: bool = False, plain: bool = False):
        """Training data of a task (x expand_times); ``data_pass``: one pass on its own random
        stream (``plain``: eval transform, each image once), an unpadded shard under torchrun."""
        cfg, classes = self.cfg, self.tasks[task]
        plain = data_pass and plain
        ds = self.bench.task_dataset("train", classes, task * len(classes),
                                     self.bench.eval_transform if plain else None,
                                     skip_bad=cfg.dataset.skip_bad_images,
                                     images=self.image_cache.for_classes(self.bench.train, classes))
        if not plain:
            ds = Repeated(ds, cfg.train.expand_times)
        seed = derived_seed(cfg.seed, task, Stream.COVARIANCE_DATA if data_pass else Stream.TRAIN_DATA)
        batch, sampler = per_rank_batch(cfg.train.batch_size, self.dist, "train.batch_size"), None
        if self.dist.enabled:
            sampler = (shard_indices(ds, self.dist) if data_pass else DistributedSampler(
                ds, self.dist.world_size, self.dist.rank, shuffle=True, seed=seed % 2**31))
        return self._batches(ds, batch, True, self.workers["train_workers"], seed, sampler,
                             epochs=1 if data_pass else cfg.train.epochs)

    def val_batches(self, task: int):
        classes = self.tasks[task]
        ds = self.bench.task_dataset("val", classes, task * len(classes),
                                     skip_bad=self.cfg.dataset.skip_bad_images)
        batch, sampler = self.cfg.eval.batch_size, None
        if self.dist.enabled:
            batch, sampler = max(1, batch // self.dist.world_size), shard_indices(ds, self.dist)
        return self._batches(ds, batch, False, self.workers["eval_workers"], sampler=sampler)

    def _batches(self, ds, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
                 sampler=None, epochs: int = 1):
        return loading.batches(ds, batch_size, self.device, workers, shuffle, seed, sampler, epochs,
                               self.bench.normalize,
                               self.bad_images if self.cfg.dataset.skip_bad_images else None)

    def task(self, t: int) -> Task:
        classes = self.tasks[t]
        return Task(t, len(classes), t * len(classes), t == len(self.tasks) - 1,
                    batches=lambda: self.train_batches(t),
                    data_pass=lambda plain=False: self.train_batches(t, True, plain))

    def run_task(self, t: int) -> None:
        t0 = time.perf_counter()
        task = self.task(t)
        self.learner.before_task(task)
        stats = self.learner.train_task(task, self.logger)
        self.steps_done += sum(s.steps for s in stats)
        self.learner.after_task(task)
        for j in range(t + 1):
            correct, total = self.learner.evaluate(self.val_batches(j), f"eval task {j}")
            if self.dist.enabled:  # sum the counts over the processes
                counts = torch.tensor([correct, total], dtype=torch.long, device=self.device)
                dist.all_reduce(counts)
                correct, total = int(counts[0]), int(counts[1])
            self.tracker.update(t, j, correct, total)
        self.timing["task_seconds"].append(time.perf_counter() - t0)
        row, acc = self.tracker.acc_matrix()[t], self.tracker.acc_after_task()[t]
        log.info("task %d/%d done in %.1fs: accuracy over seen tasks %.2f%% (per task: %s)",
                 t + 1, len(self.tasks), self.timing["task_seconds"][-1], acc,
                 ", ".join(f"{v:.1f}" for v in row[: t + 1]))
        if self.bad_images:
            log.warning("%d unreadable image(s) skipped so far", len(self.bad_images))

    def metrics(self) -> dict:
        """Results only (deterministic for a seed on CPU); timings live in env.json."""
        done, bad = self.tracker.tasks_done(), sorted(self.bad_images)
        return {"name": self.cfg.name, "method": self.cfg.method.name, "seed": self.cfg.seed,
                "num_tasks": len(self.tasks), "tasks_done": done,
                "complete": done == len(self.tasks), **self.tracker.summary(),
                "split_dims": self.learner.split_dims, "interference": self.learner.interference,
                "task_classes": self.tasks, "task_class_names": self.data_identity["task_classes"],
                "bad_images": {"count": len(bad), "files": bad[:50]}}

    def write_env(self, end: bool = False) -> None:
        self._tick()
        if not self.dist.is_main:
            return
        self.env.update(end_time=utc_now() if end else None, timing=dict(self.timing),
                        peak_gpu_mem_gib=(torch.cuda.max_memory_allocated(self.device) / 2**30
                                          if self.device.type == "cuda" else None))
        self.env["peak_rss_gib"] = max(peak_rss_gib(), self.env.get("peak_rss_gib") or 0.0)
        write_json_atomic(self.run_dir.path / "env.json", self.env)

    def start(self, changes: list[str]) -> None:
        """env.json for this session (keeping the first start time of a resumed run)."""
        self._clock = time.time()
        if not self.dist.is_main:
            return
        done, previous = self.tracker.tasks_done(), read_json(self.run_dir.path / "env.json")
        self.env["start_time"] = previous.get("start_time") or utc_now()
        self.env["peak_rss_gib"] = previous.get("peak_rss_gib") if done else None  # kept on resume
        self.env["sessions"] = (previous.get("sessions") or []) + [
            {"start_time": utc_now(), "from_task": done,
             "hostname": self.env["hostname"], "device": self.env["device"],
             "gpu": self.env["gpu"], "changed_keys": list(changes)}]
        self.write_env()

    def run(self) -> dict:
        log.info("run %s: method %s, %d tasks of %d classes, device %s, %d train / %d eval "
                 "workers, decode cache %s", self.cfg.name, self.cfg.method.name, len(self.tasks),
                 len(self.tasks[0]), self.device, *self.workers.values(), self.cfg.dataset.cache)
        for t in range(self.tracker.tasks_done(), len(self.tasks)):
            self.run_task(t)
            metrics = self.metrics()
            if self.dist.is_main:
                self.run_dir.save_checkpoint(self.state_dict())
                write_json_atomic(self.run_dir.path / "metrics.json", metrics)
                if self.logger:
                    self.logger.task(t, metrics, self.learner)
            self.write_env()
        self.write_env(end=True)
        return self.metrics()
