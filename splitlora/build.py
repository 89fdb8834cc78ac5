"""Building a run: the device, the names checked against their registries, the model and a
record of the weights it was loaded from."""
from __future__ import annotations

import difflib
import logging
from pathlib import Path

import timm
import torch

from models import (ContinualViT, WeightsError, check_backbone, create_backbone, file_sha256,
                    hub_weights_file)

from .config import Config, ConfigError
from .distributed import DistInfo

log = logging.getLogger("splitlora")


def resolve_device(name: str, dist_info: DistInfo = DistInfo()) -> torch.device:
    """``device`` config -> torch device; under torchrun each process takes its LOCAL_RANK GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' = {name!r}: CUDA is not available on this machine; "
                          "use device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"config key 'device' = {name!r}: this machine has "
                          f"{torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    return device


def check_names(cfg: Config) -> None:
    """Registry names (method, model) are checked before any data is read or model built."""
    from .learner import METHODS, get_method
    method = get_method(cfg.method.name)
    if cfg.method.train_a and not method.supports_train_a:
        raise ConfigError(f"config key 'method.train_a' = true needs a subspace method "
                          f"({', '.join(n for n, c in sorted(METHODS.items()) if c.supports_train_a)}"
                          f"), not {cfg.method.name!r}")
    if not timm.is_model(cfg.model.name):
        close = difflib.get_close_matches(cfg.model.name, timm.list_models(), n=3, cutoff=0.6)
        raise ConfigError(f"config key 'model.name' = {cfg.model.name!r} is not a timm model"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))
    check_backbone(cfg.model.name, cfg.model.img_size, cfg.model.kwargs)  # a ViT with fused qkv
    from .pretrain import check_demo_backbone
    check_demo_backbone(cfg)


def build_model(cfg: Config, device: torch.device) -> ContinualViT:
    """The backbone with its weights (pretraining the demo's first if asked), LoRA, heads."""
    m = cfg.model
    if m.pretrained_file and cfg.demo_pretrain.enabled and not Path(m.pretrained_file).exists():
        from .pretrain import pretrain_synthetic_backbone
        log.info("%s not found: pretraining the demo backbone on synthetic classes", m.pretrained_file)
        pretrain_synthetic_backbone(cfg, Path(m.pretrained_file), device)
    try:
        backbone = create_backbone(m.name, pretrained=m.pretrained,
                                   pretrained_file=m.pretrained_file, img_size=m.img_size,
                                   fused_attn=m.fused_attn, kwargs=m.kwargs)
    except WeightsError as exc:
        if not cfg.demo_pretrain.enabled:
            raise
        raise WeightsError(f"{exc} (it is the demo's pretrained backbone: delete "
                           f"{m.pretrained_file} to pretrain it again)") from None
    return ContinualViT(backbone, cfg.lora.rank, cfg.lora.targets).to(device)


def weights_info(cfg: Config, backbone: torch.nn.Module) -> dict:
    """Which weights the backbone was loaded from: source, tag or path, SHA-256."""
    m = cfg.model
    if m.pretrained_file:
        path = Path(m.pretrained_file).expanduser().resolve()
        return {"source": "file", "path": str(path), "sha256": file_sha256(path)}
    if m.pretrained:
        pcfg = getattr(backbone, "pretrained_cfg", None) or {}
        cached = hub_weights_file(m.name)
        return {"source": "hub", "tag": pcfg.get("tag"), "hf_hub_id": pcfg.get("hf_hub_id"),
                "path": cached, "sha256": file_sha256(cached) if cached else None}
    return {"source": "random init (model.pretrained: false)"}


def weights_fingerprint(info: dict) -> tuple:
    """What identifies backbone weights across machines: the source and the file's hash (the
    path of a hub cache or a copied file may differ)."""
    return info.get("source"), info.get("sha256"), info.get("tag") if not info.get("sha256") else None
