"""One experiment from a resolved config: build, run every task, write the run directory.

Run directory contents: ``config.yaml`` (resolved), ``log.txt``, ``metrics.json`` (rewritten
after every task; ``"complete": true`` once the last task is evaluated), ``env.json``
(versions, device, commit, weights, timings), ``checkpoint.pt`` (state after the last
completed task, for exact resumption).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DistributedSampler

from datasets import Benchmark, Repeated, build_benchmark, identity_changes, skipping_collate
from datasets.cache import TaskImageCache
from models import ContinualViT, model_mean_std

from . import engine, loading
from .checkpoint import CheckpointError, save_checkpoint
from .config import Config, config_hash, dump_yaml
from .distributed import ShardSampler, all_reduce_counts, init_distributed, per_rank_batch
from .run.fileio import atomic_write_text, read_json, write_json_atomic
from .build import build_model, check_names, resolve_device, weights_fingerprint, weights_info
from .learner import Learner, Stream, build_learner, derived_seed, get_method
from .metrics import AccuracyTracker
from .runinfo import environment, peak_rss_gib, utc_now

log = logging.getLogger("splitlora")


class Experiment:
    """Everything of one run. Lifecycle: ``Experiment(cfg, out)`` (checks names and data),
    ``build()`` (model, weights), optionally ``load_state_dict(checkpoint)``, ``start()``
    (writes the run directory), ``run()`` (the remaining tasks, a checkpoint after each)."""

    def __init__(self, cfg: Config, output_dir: Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(output_dir)
        self.progress = progress
        check_names(cfg)
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist)
        if self.dist.enabled:  # the global batch must split evenly over the processes
            per_rank_batch(cfg.train.batch_size, self.dist, "train.batch_size")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        mean, std = model_mean_std(cfg.model.name)
        # data first: a bad root fails before any model is built or downloaded
        self.bench: Benchmark = build_benchmark(cfg.dataset, cfg.model.img_size, mean, std)
        order_seed = cfg.dataset.class_order_seed
        # a single-task method (joint training) gets every class at once
        num_tasks = 1 if get_method(cfg.method.name).single_task else cfg.dataset.num_tasks
        self.tasks = self.bench.tasks(num_tasks, cfg.seed if order_seed is None else order_seed,
                                      cfg.dataset.shuffle_classes)
        self.data_identity = self.bench.identity(self.tasks)
        self.session_changes: list[str] = []  # resumable keys changed since the last session
        self.tracker = AccuracyTracker(len(self.tasks))
        self.workers = {"train": loading.resolve_workers(cfg.train.num_workers),
                        "eval": loading.resolve_workers(cfg.eval.num_workers)}
        self.image_cache = TaskImageCache(cfg.dataset.cache, loading.usable_cpus(),
                                          loading.processes_on_this_machine())
        self.bad_images: set[str] = set()
        self.model: Optional[ContinualViT] = None
        self.learner: Optional[Learner] = None
        self.env: dict = {}
        self.timing = {"task_seconds": [], "wall_seconds": 0.0}
        self._clock = time.time()

    def build(self) -> None:
        """Build the model (download or load weights) and the learner."""
        torch.manual_seed(self.cfg.seed)
        self.model = build_model(self.cfg, self.device)
        self.learner = build_learner(self.cfg, self.model, self.device, self.dist)
        self.env = environment(self.device)
        self.env["world_size"] = self.dist.world_size
        self.env["weights"] = weights_info(self.cfg, self.model.backbone)
        self.env["data_loading"] = {"train_workers": self.workers["train"],
                                    "eval_workers": self.workers["eval"],
                                    "cache": self.cfg.dataset.cache,
                                    "normalize_on_device": self.bench.normalize is not None}

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly after the last completed task."""
        self._tick()
        return {
            "config_hash": config_hash(self.cfg),
            "tasks_done": self.tracker.tasks_done(),
            "weights": self.env["weights"],
            "data": self.data_identity,
            "qkv": [a.base_layer.state_dict() for a in self.model.adapters],
            "head_sizes": [h.out_features for h in self.model.heads.heads],
            "heads": self.model.heads.state_dict(),
            "learner": self.learner.state_dict(),
            "tracker": self.tracker.state_dict(),
            "bad_images": sorted(self.bad_images),
            "timing": dict(self.timing),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict, source: Path) -> None:
        """Restore a checkpoint of this exact config (refused otherwise)."""
        if state.get("config_hash") != config_hash(self.cfg):
            raise CheckpointError(f"checkpoint {source} belongs to another config (hash "
                                  f"{state.get('config_hash')} != {config_hash(self.cfg)}); move "
                                  "it away or use another --output")
        if weights_fingerprint(state.get("weights") or {}) != weights_fingerprint(self.env["weights"]):
            raise CheckpointError(f"checkpoint {source} was made from other backbone weights "
                                  f"({state.get('weights')}); this run loads {self.env['weights']}")
        if "data" not in state:
            log.warning("checkpoint %s records no data identity (an older version): the data "
                        "cannot be checked against the finished tasks", source)
        else:
            changes = identity_changes(state["data"], self.data_identity)
            if changes:
                raise CheckpointError(
                    f"the data changed since the checkpoint {source} was written: "
                    + "; ".join(changes) + ". Restore the data the run started with, or start "
                    "a new run (another --output, or --force to replace this one)")
        try:
            for adapter, qkv in zip(self.model.adapters, state["qkv"], strict=True):
                adapter.base_layer.load_state_dict(qkv)
            for n in state["head_sizes"]:
                self.model.heads.add_head(n).to(self.device)
            self.model.heads.load_state_dict(state["heads"])
            self.learner.load_state_dict(state["learner"])
            self.tracker.load_state_dict(state["tracker"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {source} does not fit this model "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None
        self.bad_images = set(state["bad_images"])
        self.timing = {k: (list(v) if isinstance(v, list) else v) for k, v in state["timing"].items()}
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming %s after task %d of %d", self.out, self.tracker.tasks_done(),
                 len(self.tasks))

    def _tick(self) -> None:
        now = time.time()
        self.timing["wall_seconds"] += now - self._clock
        self._clock = now

    # ----------------------------------------------------------------- data
    def _loader(self, ds, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
                sampler=None, epochs: int = 1):
        """Batches of ``ds`` on the device, normalised there (uint8 transforms); with workers
        and several epochs, one :class:`loading.EpochStream` serves them all."""
        skip = self.cfg.dataset.skip_bad_images
        collate = skipping_collate if skip else None
        if workers > 0 and epochs > 1 and shuffle:
            loader = loading.EpochStream(ds, batch_size, workers, epochs, self.device, seed,
                                         sampler, collate_fn=collate)
        else:
            loader = engine.make_loader(ds, batch_size, shuffle=shuffle, num_workers=workers,
                                        device=self.device, seed=seed, sampler=sampler,
                                        collate_fn=collate)
        if skip:
            loader = engine.SkipBadImages(loader, self.bad_images)
        return loading.DeviceBatches(loader, self.device, self.bench.normalize)

    def train_loader(self, task: int, for_covariance: bool = False):
        """Training data of a task (x expand_times); for the covariance pass, with the eval
        transform and one copy when ``split.cov_pass: plain``. Under torchrun: training reads
        a DistributedSampler shard of the global batch, the covariance pass an unpadded shard."""
        cfg = self.cfg
        classes = self.tasks[task]
        plain = for_covariance and cfg.split.cov_pass == "plain"
        ds = self.bench.task_dataset("train", classes, task * len(classes),
                                     self.bench.transform("eval", uint8=True) if plain else None,
                                     skip_bad=cfg.dataset.skip_bad_images, uint8=True,
                                     images=self.image_cache.for_classes(self.bench.train, classes))
        if not plain:
            ds = Repeated(ds, cfg.train.expand_times)
        seed = derived_seed(cfg.seed, task,
                            Stream.COVARIANCE_DATA if for_covariance else Stream.TRAIN_DATA)
        batch, sampler = cfg.train.batch_size, None
        if self.dist.enabled:
            batch = per_rank_batch(batch, self.dist, "train.batch_size")
            sampler = (ShardSampler(ds, self.dist) if for_covariance else DistributedSampler(
                ds, self.dist.world_size, self.dist.rank, shuffle=True, seed=seed % 2**31))
        return self._loader(ds, batch, True, self.workers["train"], seed, sampler,
                            epochs=1 if for_covariance else cfg.train.epochs)

    def val_loader(self, task: int):
        classes = self.tasks[task]
        ds = self.bench.task_dataset("val", classes, task * len(classes),
                                     skip_bad=self.cfg.dataset.skip_bad_images, uint8=True)
        batch, sampler = self.cfg.eval.batch_size, None
        if self.dist.enabled:
            batch, sampler = max(1, batch // self.dist.world_size), ShardSampler(ds, self.dist)
        return self._loader(ds, batch, False, self.workers["eval"], sampler=sampler)

    # ----------------------------------------------------------------- run
    def run_task(self, task: int) -> None:
        t0 = time.perf_counter()
        classes = self.tasks[task]
        offset = task * len(classes)
        progress = self.progress and self.dist.is_main
        cov_loader = lambda: self.train_loader(task, for_covariance=True)  # noqa: E731
        self.learner.before_task(task, len(classes), cov_loader, progress)
        self.learner.train_task(task, self.train_loader(task), offset, progress)
        self.learner.after_task(task, cov_loader, last=task == len(self.tasks) - 1,
                                progress=progress)
        for j in range(task + 1):
            correct, total = self.learner.evaluate(self.val_loader(j), f"eval task {j}",
                                                   self.progress and self.dist.is_main)
            self.tracker.update(task, j, *all_reduce_counts(correct, total, self.device))
        self.timing["task_seconds"].append(time.perf_counter() - t0)
        row = self.tracker.acc_matrix()[task]
        acc = self.tracker.acc_after_task()[task]
        log.info("task %d/%d done in %.1fs: accuracy over seen tasks %.2f%% (per task: %s)",
                 task + 1, len(self.tasks), self.timing["task_seconds"][-1], acc,
                 ", ".join(f"{v:.1f}" for v in row[: task + 1]))
        if self.bad_images:
            log.warning("%d unreadable image(s) skipped so far", len(self.bad_images))

    def metrics(self) -> dict:
        """Results only (deterministic for a seed on CPU); timings live in env.json."""
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
        out["task_class_names"] = self.data_identity["task_classes"]
        out["bad_images"] = {"count": len(self.bad_images), "files": sorted(self.bad_images)[:50]}
        return out

    def write_env(self, end: bool = False) -> None:
        self._tick()
        if not self.dist.is_main:
            return
        self.env["end_time"] = utc_now() if end else None
        self.env["timing"] = dict(self.timing)
        self.env["peak_gpu_mem_gib"] = (torch.cuda.max_memory_allocated(self.device) / 2**30
                                        if self.device.type == "cuda" else None)
        rss = [v for v in (peak_rss_gib(), self.env.get("peak_rss_gib")) if v is not None]
        self.env["peak_rss_gib"] = max(rss) if rss else None  # over the sessions of a run
        write_json_atomic(self.out / "env.json", self.env)

    def start(self) -> None:
        """Write config.yaml and env.json (keeping the first start time of a resumed run)."""
        self._clock = time.time()
        if not self.dist.is_main:
            return
        prepare_run_dir(self.cfg, self.out)
        previous = read_json(self.out / "env.json")
        self.env["start_time"] = previous.get("start_time") or utc_now()
        resumed = self.tracker.tasks_done() > 0
        self.env["peak_rss_gib"] = previous.get("peak_rss_gib") if resumed else None
        sessions = previous.get("sessions", []) if previous else []
        sessions.append({"start_time": utc_now(), "from_task": self.tracker.tasks_done(),
                         "hostname": self.env["hostname"], "device": self.env["device"],
                         "gpu": self.env["gpu"], "changed_keys": list(self.session_changes)})
        self.env["sessions"] = sessions
        self.write_env()

    def run(self) -> dict:
        log.info("data loading: %d train / %d eval workers, decode cache %s", self.workers["train"],
                 self.workers["eval"], self.cfg.dataset.cache)
        log.info("run %s: method %s, %d tasks of %d classes, device %s", self.cfg.name,
                 self.cfg.method.name, len(self.tasks), len(self.tasks[0]), self.device)
        for task in range(self.tracker.tasks_done(), len(self.tasks)):
            self.run_task(task)
            if self.dist.is_main:
                save_checkpoint(self.out, self.state_dict())
            self.write_metrics()
            self.write_env()
        self.write_env(end=True)
        return self.write_metrics()

    def write_metrics(self) -> dict:
        m = self.metrics()
        if self.dist.is_main:
            write_json_atomic(self.out / "metrics.json", m)
        return m


def prepare_run_dir(cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
