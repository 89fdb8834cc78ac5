#!/usr/bin/env python
"""Measure where a SplitLoRA run spends its time, in one process on one synthetic batch.

    python tools/benchmark.py                                  # small ViT on CPU
    python tools/benchmark.py --device cuda --batch-size 256 --amp fp16
    python tools/benchmark.py --device cuda --batch-size 256 --amp bf16

(a) frozen backbone, no adapters: forward + backward through every block (gradients reach
    the patch embeddings) with the same loss on the same head, head optimiser step;
(b) the SplitLoRA training step: adapters on k, v of every block (B and head train, AdamW);
(c) the covariance pass: no-grad forward with the covariance hooks accumulating;
(d) the evaluation forward (no grad, adapters merged);
(e) the data pipeline, per worker: JPEG decode + the training transforms.
Prints images/s for each, the ratios b/a and c/d, peak memory and, on CUDA, the achieved
TFLOP/s of (a)-(d) against the bf16 matmul rate measured here.
"""
from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from datasets import transforms as tf  # noqa: E402
from models import ContinualViT  # noqa: E402
from splitlora.covariance import CovarianceAccumulator, collect_covariance  # noqa: E402
from splitlora.subspace import kaiming_uniform_A  # noqa: E402

SMALL_VIT = {"embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 16}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None,
                   help="timm model (default: vit_base_patch16_224 on CUDA, a 6-block 192-wide "
                        "ViT on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 8 CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", choices=("fp16", "bf16", "off"), default=None,
                   help="autocast dtype (default fp16 on CUDA, off on CPU)")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--classes", type=int, default=20, help="classes of the task head")
    p.add_argument("--fused-attn", type=int, choices=(0, 1), default=1)
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--data-images", type=int, default=64, help="JPEGs for the pipeline test")
    p.add_argument("--skip-data", action="store_true")
    args = p.parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return args


def check_args(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the arguments (None if nothing): counts must be positive, the model a
    timm ViT the method supports."""
    for flag in ("batch_size", "steps", "img_size", "rank", "classes", "data_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return f"--{flag.replace('_', '-')} must be >= 1, got {value}"
    if args.warmup < 0:
        return f"--warmup must be >= 0, got {args.warmup}"
    if args.model is not None:
        from models.backbone import check_backbone
        from splitlora.errors import UserError
        try:
            check_backbone(args.model, args.img_size, key="--model")
        except UserError as exc:
            return str(exc)
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call (median of ``steps`` timed calls after ``warmup``)."""
    return timed_pair(fn, None, device, steps, warmup)[0]


def timed_pair(fn_a: Callable[[], None], fn_b: Optional[Callable[[], None]], device: torch.device,
               steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds per call of two functions timed alternately (a, b, a, b, ...), so that
    drifts of the machine's speed affect both sides of their ratio alike."""
    fns = [fn_a] + ([fn_b] if fn_b is not None else [])
    for _ in range(warmup):
        for fn in fns:
            fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(steps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - t0)
    med = [float(np.median(t)) for t in times]
    return med[0], (med[1] if len(med) > 1 else float("nan"))


def count_flops(fn: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def bf16_matmul_rate(device: torch.device, n: int = 8192) -> float:
    """Achievable dense bf16 matmul TFLOP/s on this GPU (measured)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sec = timed(lambda: torch.mm(a, b), device, steps=20, warmup=5)
    return 2 * n ** 3 / sec / 1e12


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (torch allocator peak)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS)"


def make_jpegs(n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_models(args: argparse.Namespace, device: torch.device):
    name = args.model or ("vit_base_patch16_224" if device.type == "cuda" else "vit_small_patch16_224")
    kwargs = {} if (args.model or device.type == "cuda") else dict(SMALL_VIT)
    torch.manual_seed(0)
    plain = timm.create_model(name, pretrained=False, num_classes=0, img_size=args.img_size, **kwargs)
    torch.manual_seed(0)
    lora_backbone = timm.create_model(name, pretrained=False, num_classes=0, img_size=args.img_size,
                                      **kwargs)
    for m in (plain, lora_backbone):
        for blk in m.blocks:
            blk.attn.fused_attn = bool(args.fused_attn)
    model = ContinualViT(lora_backbone, args.rank, ("k", "v")).to(device)
    plain = plain.to(device)
    for p in plain.parameters():
        p.requires_grad_(False)
    return name, kwargs, plain, model


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    bs = args.batch_size or (256 if device.type == "cuda" else 32)
    steps = args.steps or (20 if device.type == "cuda" else 8)
    amp = args.amp or ("fp16" if device.type == "cuda" else "off")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    name, kwargs, plain, model = build_models(args, device)
    dim = model.adapters[0].in_features
    x = torch.randn(bs, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.classes, (bs,), device=device)
    head_a = torch.nn.Linear(dim, args.classes).to(device)
    opt_a = torch.optim.AdamW(head_a.parameters(), lr=1e-2, weight_decay=5e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16" and device.type == "cuda")

    # (a) frozen backbone: gradients flow back through every block to the patch embeddings
    embed_grad = {}

    def keep_embed_grad(module, inputs, output):
        output.requires_grad_(True)
        output.register_hook(lambda g: embed_grad.__setitem__("norm", g.norm()))
        return output
    plain.patch_embed.register_forward_hook(keep_embed_grad)

    def step_a():
        with autocast():
            logits = head_a(plain(x))
        loss = F.cross_entropy(logits.float() / 30.0, y)
        opt_a.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt_a)
        scaler.update()

    # (b) the SplitLoRA step: adapters active, B and the head train
    model.heads.add_head(args.classes)
    gen = torch.Generator().manual_seed(0)
    for a in model.adapters:
        a.set_adapter(torch.stack([kaiming_uniform_A(args.rank, dim, gen) for _ in a.targets]).to(device))
    train_params = [a.lora_B for a in model.adapters] + list(model.heads.parameters())
    for p in train_params:
        p.requires_grad_(True)
    opt_b = torch.optim.AdamW([{"params": [a.lora_B for a in model.adapters], "lr": 1e-3},
                               {"params": list(model.heads.parameters()), "lr": 1e-2}],
                              weight_decay=5e-5)
    forward = torch.compile(model) if args.compile else model

    def step_b():
        with autocast():
            logits = forward(x, 0)
        loss = F.cross_entropy(logits.float() / 30.0, y)
        opt_b.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt_b)
        scaler.update()

    # (c) covariance pass and (d) evaluation forward, adapters merged
    acc = CovarianceAccumulator(len(model.adapters), dim, torch.float32, device)

    @torch.no_grad()
    def step_c():
        with collect_covariance(model.adapters, acc), autocast():
            model.features(x)

    @torch.no_grad()
    def step_d():
        with autocast():
            model(x)

    results = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results["a"], results["b"] = timed_pair(step_a, step_b, device, steps, args.warmup)
    assert embed_grad["norm"] is not None  # the backward really reached the first block
    assert all(a.lora_B.grad is not None for a in model.adapters)
    model.merge_adapters()
    results["c"], results["d"] = timed_pair(step_c, step_d, device, steps, args.warmup)
    flops = {}
    if device.type == "cuda":
        flops = {"a": count_flops(step_a), "d": count_flops(step_d)}
        flops["c"] = flops["d"]
        for a in model.adapters:
            a.set_adapter(a.lora_A.detach().clone())
        flops["b"] = count_flops(step_b)

    print(f"model {name} {kwargs or ''} | img {args.img_size} | batch {bs} | amp {amp} | "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads) | torch {torch.__version__} | steps {steps}")
    labels = {"a": "frozen backbone fwd+bwd (no adapters)", "b": "SplitLoRA training step",
              "c": "covariance pass (fwd, hooks)", "d": "evaluation forward"}
    peak = bf16_matmul_rate(device) if device.type == "cuda" else None
    for k, sec in results.items():
        line = f"({k}) {labels[k]:<40s} {bs / sec:10.1f} img/s  {sec * 1e3:9.2f} ms/batch"
        if flops:
            tflops = flops[k] / sec / 1e12
            line += f"  {tflops:7.1f} TFLOP/s ({100 * tflops / peak:.0f}% of bf16 matmul peak)"
        print(line)
    if not args.skip_data:
        jpegs = make_jpegs(args.data_images)
        transform = tf.train_transform(args.img_size, "imagenet", "bilinear", (0.5,) * 3, (0.5,) * 3)

        def decode_all():
            for data in jpegs:
                with Image.open(io.BytesIO(data)) as img:
                    transform(img.convert("RGB"))
        torch.manual_seed(0)
        sec = timed(decode_all, torch.device("cpu"), steps=3, warmup=1)
        print(f"(e) data pipeline per worker (JPEG 500x375 decode + train transforms) "
              f"{len(jpegs) / sec:10.1f} img/s")
    print(f"ratio b/a (method overhead over frozen-backbone training): {results['b'] / results['a']:.3f}")
    print(f"ratio c/d (covariance pass over evaluation forward):      {results['c'] / results['d']:.3f}")
    if peak is not None:
        print(f"bf16 matmul rate measured here: {peak:.0f} TFLOP/s")
    print(f"peak memory: {peak_memory(device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
