#!/usr/bin/env python
"""Measure images/s on this machine and project the wall time of every published setting.

    python tools/measure.py                        # on a GPU: ViT-B/16, 224 px, batch 256, fp16
    python tools/measure.py --amp bf16 --compile --json figures.json
    python tools/measure.py --small                # a small ViT at 32 px: seconds on a CPU

Times the training step, the covariance pass (fp32) and the evaluation forward on synthetic
batches on the device, and the project's training loader on generated 500x375 JPEGs and 32x32
PNGs. A setting's projection: each pass's samples (fixed by the protocol) over the slower of its
rate and the loader's; start-up and per-task overheads are not included."""

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from datasets import FolderImageSet, TaskDataset, loading  # noqa: E402
from datasets import transforms as tf  # noqa: E402
from datasets.cache import TaskImageCache  # noqa: E402
from models import ContinualViT, create_backbone, kaiming_uniform_A  # noqa: E402
from splitlora.covariance import CovarianceAccumulator, collect_covariance  # noqa: E402
from splitlora.engine import TrainConfig, autocast, make_optimizer, resolve_amp  # noqa: E402

# The public train / val split sizes of the published settings' benchmarks, and their images.
DATASETS = {"imagenet_r": (24_000, 6_000, "jpeg"), "domainnet": (47_532, 20_450, "jpeg"),
            "cifar100": (50_000, 10_000, "png")}
SMALL = {"img_size": 32, "kwargs": {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}}
FORMATS = {"jpeg": ((500, 375), "JPEG", "imagenet", "bilinear"),
           "png": ((32, 32), "PNG", "cifar10", "bicubic")}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--small", action="store_true", help="a small ViT at 32 px, few steps (CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("fp16", "bf16", "off"), help="default fp16 (CUDA), off (CPU)")
    p.add_argument("--batch-size", type=int, help="default 256 (32 --small)")
    p.add_argument("--steps", type=int, help="timed steps (default 20, 3 --small)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--loader-images", type=int, help="per format (default 512, 48 --small)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    args = p.parse_args(argv)
    for flag in ("batch_size", "steps", "loader_images"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: must be >= 1")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as exc:
        p.error(f"--device {args.device!r}: {exc}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here; use --device cpu (with --small)")
    return args


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    run(2)
    return run(steps) / steps


def model_rates(args: argparse.Namespace, img: int, kwargs: dict, batch: int) -> dict:
    """Images/s of the training step, the covariance pass and the evaluation forward."""
    device, amp = args.device, resolve_amp(args.amp or "auto", args.device)
    torch.manual_seed(0)
    name = "vit_tiny_patch16_224" if args.small else "vit_base_patch16_224"
    backbone = create_backbone(name, pretrained=False, img_size=img, kwargs=kwargs)
    model = ContinualViT(backbone, 10, ("k", "v")).to(device)
    for a in model.adapters:
        a.set_adapter(torch.stack([kaiming_uniform_A(10, a.in_features) for _ in a.targets])
                      .to(device))
    head = model.heads.add_head(20, "fresh").to(device)
    images = torch.randn(batch, 3, img, img, device=device)
    labels = torch.randint(0, 20, (batch,), device=device)
    opt = make_optimizer([a.lora_B for a in model.adapters], list(head.parameters()), TrainConfig())
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16 and device.type == "cuda")
    forward = torch.compile(model) if args.compile else model
    model.eval()

    def train() -> None:
        with autocast(device, amp):
            logits = forward(images, 0)
        loss = F.cross_entropy(logits.float() / 30.0, labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    acc = CovarianceAccumulator(len(model.adapters), model.adapters[0].in_features, device=device)

    @torch.no_grad()
    def covariance() -> None:
        with collect_covariance(model.adapters, acc):
            model.features(images)

    @torch.no_grad()
    def evaluate() -> None:
        with autocast(device, amp):
            model(images)

    steps = args.steps or (3 if args.small else 20)
    rates = {name: batch / timed(fn, steps, device) for name, fn in
             (("train", train), ("covariance", covariance), ("eval", evaluate))}
    if device.type == "cuda":
        rates["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return rates


def loader_rate(kind: str, count: int, img: int, batch: int, folder: Path) -> float:
    """Training images/s of the project's loader (decode cache, uint8) on ``count`` files."""
    size, fmt, policy, interp = FORMATS[kind]
    root = folder / kind / "c0"
    root.mkdir(parents=True)
    base = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    for i in range(count):  # smooth, photo-like content (noise would make decoding slower)
        pixels = np.asarray(Image.fromarray(np.roll(base, i, 0)).resize(size, Image.BILINEAR))
        Image.fromarray(pixels).save(root / f"{i}.{kind}", fmt)
    cached = TaskImageCache("on").for_classes(FolderImageSet(root.parent, ["c0"], "train"), [0])
    transform = tf.train_transform(img, policy, interp, (0.5,) * 3, (0.5,) * 3, "uint8")
    data = TaskDataset(cached, [0], 0, transform)
    workers = loading.resolve_workers("auto")
    batches = loading.batches(data, batch, torch.device("cpu"), workers, epochs=2)
    for _ in batches:  # warm up: start the workers
        pass
    t0 = time.perf_counter()
    seen = sum(x.shape[0] for x, _ in batches)
    return seen / (time.perf_counter() - t0)


def settings() -> dict:
    """The published table's settings (configs/published.yaml): name -> their config."""
    from splitlora.run.config import load_config
    from splitlora.run.results import load_published
    published = load_published()
    return {name: load_config(REPO / "configs" / published["settings"][name]["config"])
            for name in published["suites"]["main"]["settings"]}


def project(rates: dict, loaders: dict) -> dict:
    """Minutes per published setting (the protocol's epochs and expand_times)."""
    out = {}
    for setting, cfg in settings().items():
        tasks, (train, val, kind) = cfg.dataset.num_tasks, DATASETS[cfg.dataset.name]
        cfg, feed = cfg.train, loaders[kind]
        samples = {"train": train * cfg.expand_times * cfg.epochs,
                   "covariance": train // tasks * cfg.expand_times * (tasks - 1),
                   "eval": val * (tasks + 1) / 2}
        seconds = sum(n / min(rates[k], feed) for k, n in samples.items())
        out[setting] = {"samples": samples, "minutes": seconds / 60,
                        "bound_by": "data" if feed < rates["train"] else "model"}
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    img, kwargs = (SMALL["img_size"], SMALL["kwargs"]) if args.small else (224, {})
    batch = args.batch_size or (32 if args.small else 256)
    rates = model_rates(args, img, kwargs, batch)
    with tempfile.TemporaryDirectory() as tmp:
        count = args.loader_images or (48 if args.small else 512)
        loaders = {k: loader_rate(k, count, img, min(batch, count), Path(tmp)) for k in FORMATS}
    projection = project(rates, loaders)
    device = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(f"{device}, {'small ViT, 32 px' if args.small else 'ViT-B/16, 224 px'}, batch {batch}, "
          f"amp {args.amp or ('fp16' if args.device.type == 'cuda' else 'off')}"
          f"{', compiled' if args.compile else ''}")
    for k in ("train", "covariance", "eval"):
        print(f"  {k:<11} {rates[k]:9.1f} img/s")
    for k, v in loaders.items():
        print(f"  loader {k:<4} {v:9.1f} img/s ({loading.resolve_workers('auto')} workers)")
    print("projected wall time (minutes; model passes and loading only):")
    for setting, p in projection.items():
        print(f"  {setting:<14} {p['minutes']:9.1f}  ({p['bound_by']}-bound)")
    if args.json:
        from splitlora.run.fileio import write_json_atomic
        write_json_atomic(args.json, {"device": device, "batch": batch, "rates": rates,
                                      "loaders": loaders, "projection": projection})
    return 0


if __name__ == "__main__":
    sys.exit(main())
