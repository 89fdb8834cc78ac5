"""Pretrain a small backbone on synthetic classes (the demo's stand-in for ImageNet weights).

The result is written to ``model.pretrained_file`` (safetensors, atomically) and then
loaded from there, the same path a user with offline ViT-B weights takes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datasets import SyntheticImageSet, TaskDataset
from datasets import transforms as tf
from models import create_backbone

from .config import Config
from .engine import make_loader
from .fileio import atomic_write_bytes

log = logging.getLogger(__name__)


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    from safetensors.torch import save
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()},
                metadata={k: str(v) for k, v in metadata.items()})
    atomic_write_bytes(path, data)


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
    save_safetensors_atomic(backbone.state_dict(), path,
                            {"source": "splitlora demo pretraining", "model": cfg.model.name,
                             "classes": f"synthetic {p.class_offset}..{p.class_offset + p.num_classes - 1}"})
    log.info("demo backbone pretrained in %.1fs and saved to %s", time.perf_counter() - t0, path)
