"""Pretrain a small backbone on synthetic classes (the demo's stand-in for ImageNet weights).

The result is written to ``model.pretrained_file`` (safetensors, atomically) and then
loaded from there, the same path a user with offline ViT-B weights takes.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from datasets import SyntheticImageSet, TaskDataset
from datasets import transforms as tf
from datasets.loading import make_loader
from models import create_backbone

from .config import Config
from .errors import ConfigError
from .fileio import atomic_write_bytes

log = logging.getLogger(__name__)


RECIPE_KEY = "splitlora_demo_recipe"  # the one metadata entry of a demo backbone file


def demo_recipe(cfg: Config) -> str:
    """Everything the demo backbone's weights depend on, as canonical JSON."""
    m, syn = cfg.model, cfg.dataset.synthetic
    return json.dumps({"demo_pretrain": {k: v for k, v in asdict(cfg.demo_pretrain).items()
                                         if k != "enabled"},
                       "model": {"name": m.name, "img_size": m.img_size, "kwargs": m.kwargs,
                                 "fused_attn": m.fused_attn},
                       "synthetic": {"image_size": syn.image_size, "seed": syn.seed}},
                      sort_keys=True)


def save_backbone(state: dict[str, torch.Tensor], path: Path, recipe: str) -> None:
    """Write ``state`` as safetensors (atomically) with the recipe as its one metadata entry.
    One entry keeps the bytes a function of the tensors and the recipe: safetensors writes
    several entries in a per-process order, which would give identical weights another
    SHA-256 (the weights fingerprint a resumed run is checked against)."""
    from safetensors.torch import save
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()},
                metadata={RECIPE_KEY: recipe})
    atomic_write_bytes(path, data)


def check_demo_backbone(cfg: Config, path: Optional[Path]) -> None:
    """Refuse a cached demo backbone at ``path`` that was pretrained with another recipe
    (another ``demo_pretrain``, model or synthetic image size) than this config asks for."""
    if path is None or not path.is_file():
        return
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get(RECIPE_KEY)
    except Exception:  # noqa: BLE001 - not safetensors: create_backbone reports what is wrong
        recorded = None
    if recorded is None:
        log.warning("the demo backbone %s records no pretraining recipe (an older version's "
                    "file, or one not made by the demo), so it cannot be checked against "
                    "demo_pretrain; delete it to pretrain again", path)
    elif recorded != demo_recipe(cfg):
        old, new = json.loads(recorded), json.loads(demo_recipe(cfg))
        diff = [f"{section}.{k}: {old.get(section, {}).get(k)!r} -> {v!r}"
                for section, keys in new.items() for k, v in keys.items()
                if old.get(section, {}).get(k) != v]
        raise ConfigError(f"the demo backbone {path} was pretrained with another recipe than this "
                          f"config asks for ({'; '.join(diff)}); delete it to pretrain again, or "
                          "set model.pretrained_file to another path")


def pretrain_synthetic_backbone(cfg: Config, path: Path, device: torch.device) -> None:
    """Train ``cfg.model`` from scratch on ``cfg.demo_pretrain`` synthetic classes; save to path."""
    p = cfg.demo_pretrain
    syn = cfg.dataset.synthetic
    t0 = time.perf_counter()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(p.seed)
    backbone = create_backbone(cfg.model.name, pretrained=False, img_size=cfg.model.img_size,
                               fused_attn=cfg.model.fused_attn, kwargs=cfg.model.kwargs).to(device)
    head = nn.Linear(backbone.num_features, p.num_classes).to(device)
    images = SyntheticImageSet(p.num_classes, p.train_per_class, syn.image_size, syn.seed,
                               p.class_offset, "train")
    mean = std = (0.5, 0.5, 0.5)
    data = TaskDataset(images, list(range(p.num_classes)), 0,
                       tf.tensor_train_transform(cfg.model.img_size, mean, std))
    loader = make_loader(data, p.batch_size, True, 0, device, seed=p.seed, drop_last=True)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=0.05)
    steps = p.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=steps, pct_start=0.15)
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
