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
(e) the data pipeline, per worker (one thread), on generated image files of real sizes
    (500x375 JPEG as ImageNet-R / DomainNet, 64x64 JPEG and PNG, 32x32 PNG as CIFAR-100),
    three paths timed alternately through the project's own dataset classes and transforms
    (each round seeds the three alike, so they draw the same augmentations):
      old:    decode from disk, AutoAugment, RandomResizedCrop, ToTensor, Normalize (float32),
              collate a float batch (the pipeline before the decode cache);
      uint8:  decode from disk, the same augmentation, uint8 output, collate a uint8 batch
              (normalisation moved to the device);
      cached: the decoded cache (datasets/cache.py), the same augmentation, uint8, collate;
    plus the device-side normalisation of the uint8 batch, the ratios cached/old and
    cached/uint8 (what the cache alone buys) and the cache's memory per 10,000 images.
Prints images/s for each, the ratios b/a and c/d, peak memory and, on CUDA, the achieved
TFLOP/s of (a)-(d) against the bf16 matmul rate measured here. ``--json FILE`` also writes
every figure to FILE; ``--data-only`` runs (e) alone.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
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
from splitlora.run.fileio import atomic_write_text  # noqa: E402
from splitlora.subspace import kaiming_uniform_A  # noqa: E402

SMALL_VIT = {"embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 16}
IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}  # --data-sizes extension -> PIL


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None,
                   help="timm model (default: vit_base_patch16_224 on CUDA, a 6-block 192-wide "
                        "ViT on CPU)")
    p.add_argument("--model-kwargs", default=None,
                   help='JSON of extra timm.create_model arguments, e.g. \'{"depth": 2}\'')
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
    p.add_argument("--data-images", type=int, default=64,
                   help="images per size for the pipeline test (e)")
    p.add_argument("--data-steps", type=int, default=7, help="timed rounds of (e)")
    p.add_argument("--data-sizes", default="500x375.jpg,64x64.jpg,64x64.png,32x32.png",
                   help="image files of (e): WxH.ext, comma-separated")
    p.add_argument("--skip-data", action="store_true", help="skip (e)")
    p.add_argument("--data-only", action="store_true", help="run (e) alone")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return args


def check_args(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the arguments (None if nothing), checked before anything is measured:
    counts must be positive, the device usable, --model-kwargs a JSON object, --data-sizes
    well-formed, --json writable, and the model (unless --data-only) a timm ViT the method
    supports that accepts --model-kwargs and --img-size."""
    for flag in ("batch_size", "steps", "img_size", "rank", "classes", "data_images",
                 "data_steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return f"--{flag.replace('_', '-')} must be >= 1, got {value}"
    if args.warmup < 0:
        return f"--warmup must be >= 0, got {args.warmup}"
    if args.data_only and args.skip_data:
        return "--data-only and --skip-data contradict each other (nothing would run); pass one"
    problem = device_problem(args.device)
    if problem:
        return problem
    try:
        model_kwargs(args.model_kwargs)
    except ValueError as exc:
        return str(exc)
    if not args.skip_data:
        for spec in args.data_sizes.split(","):
            try:
                parse_size(spec)
            except ValueError as exc:
                return str(exc)
    if args.json is not None:
        from splitlora.run.errors import WriteError
        from splitlora.run.fileio import check_output_file
        try:
            check_output_file(Path(args.json), "--json")
        except WriteError as exc:
            return str(exc)
    if not args.data_only:
        return model_problem(args)
    return None


def device_problem(spec: str) -> Optional[str]:
    """Why ``--device spec`` cannot be used here (None if it can)."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        return f"--device {spec!r} is not a device; pass cpu, cuda or cuda:N"
    if device.type not in ("cpu", "cuda"):
        return f"--device {spec!r}: this benchmark runs on cpu or cuda (cuda:N), not {device.type}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {spec} but CUDA is not available here; pass --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return (f"--device {spec}: there are only {torch.cuda.device_count()} CUDA device(s) "
                    f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return None


def model_kwargs(raw: Optional[str]) -> dict:
    """The ``--model-kwargs`` JSON object as a dict ({} when not given); ValueError naming the
    problem when it is not a JSON object or sets what other options set."""
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-kwargs {raw!r} is not valid JSON ({exc.msg} at character "
                         f"{exc.pos}); pass an object such as '{{\"depth\": 2}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"--model-kwargs must be a JSON object such as '{{\"depth\": 2}}', "
                         f"got a {type(value).__name__}: {raw!r}")
    clash = sorted(k for k in value if k in ("img_size", "num_classes", "pretrained"))
    if clash:
        raise ValueError(f"--model-kwargs sets {', '.join(clash)}, which this tool sets itself; "
                         "use --img-size (and leave num_classes / pretrained out)")
    return value


def model_spec(args: argparse.Namespace, device_type: str) -> tuple[str, dict]:
    """(timm model name, keyword arguments) the benchmark builds on ``device_type``."""
    name = args.model or ("vit_base_patch16_224" if device_type == "cuda" else "vit_small_patch16_224")
    kwargs = {} if (args.model or device_type == "cuda") else dict(SMALL_VIT)
    kwargs.update(model_kwargs(args.model_kwargs))
    return name, kwargs


def model_problem(args: argparse.Namespace) -> Optional[str]:
    """Why the model cannot be built and run at --img-size with --model-kwargs (None if it can);
    built on the meta device: no memory, no weights."""
    from models.backbone import ModelError, check_backbone

    name, kwargs = model_spec(args, torch.device(args.device).type)
    key = "--model" if args.model else "--model (default)"
    try:
        check_backbone(name, args.img_size, kwargs, key=key)
    except ModelError as exc:
        return (str(exc).replace("model.kwargs", "--model-kwargs")
                .replace("(model.img_size)", "(--img-size)"))
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, img_size=args.img_size,
                                  **kwargs)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if isinstance(patch, int) and args.img_size % patch:
        return (f"--img-size {args.img_size} is not a multiple of the patch size {patch} of {key} "
                f"{name!r}; pass e.g. --img-size {max(patch, args.img_size // patch * patch)}")
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
    med = timed_alternating([fn_a] + ([fn_b] if fn_b is not None else []), device, steps, warmup)
    return med[0], (med[1] if len(med) > 1 else float("nan"))


def timed_alternating(fns: list[Callable[[], None]], device: torch.device, steps: int,
                      warmup: int) -> list[float]:
    """Median seconds per call of each function, timed round-robin (f0, f1, ..., f0, f1, ...)."""
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
    return [float(np.median(t)) for t in times]


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


def make_images(n: int, size: tuple[int, int] = (500, 375), fmt: str = "JPEG",
                seed: int = 0) -> list[bytes]:
    """``n`` encoded images of ``size`` with photo-like smooth content (upsampled noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(max(1, size[1] // 8), max(1, size[0] // 8), 3),
                            dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def make_jpegs(n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[bytes]:
    return make_images(n, size, "JPEG", seed)


def parse_size(spec: str) -> tuple[int, int, str]:
    """'500x375.jpg' -> (500, 375, 'jpg'); ValueError naming the spec when malformed."""
    dims, _, ext = spec.strip().partition(".")
    w, _, h = dims.partition("x")
    ext = (ext or "jpg").lower()
    if not (w.isdigit() and h.isdigit() and int(w) >= 1 and int(h) >= 1) or ext not in IMAGE_FORMATS:
        raise ValueError(f"--data-sizes entry {spec!r} is not WxH.ext with positive W, H and ext one "
                         f"of {', '.join(IMAGE_FORMATS)}; e.g. 500x375.jpg,32x32.png")
    return int(w), int(h), ext


def data_section(args: argparse.Namespace, device: torch.device) -> dict:
    """(e): per-worker images/s of the old, uint8 and cached paths on generated image files,
    timed alternately in this process with one thread (as a DataLoader worker runs)."""
    from torch.utils.data import default_collate

    from datasets.cache import DecodedImages
    from datasets.folder import FolderImageSet, TaskDataset
    from datasets.normalize import Uint8Normalize

    mean = std = (0.5, 0.5, 0.5)
    old_tf = tf.train_transform(args.img_size, "imagenet", "bilinear", mean, std)
    new_tf = tf.train_transform(args.img_size, "imagenet", "bilinear", mean, std, output="uint8")
    norm = Uint8Normalize(mean, std)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for spec in args.data_sizes.split(","):
                w, h, ext = parse_size(spec)
                folder = Path(tmp) / f"{w}x{h}_{ext}" / "c0"
                folder.mkdir(parents=True)
                fmt = IMAGE_FORMATS[ext]
                for i, data in enumerate(make_images(args.data_images, (w, h), fmt)):
                    (folder / f"{i:04d}.{ext}").write_bytes(data)
                files = FolderImageSet(folder.parent, ["c0"], "train")
                cached = DecodedImages(files, range(len(files)))
                paths = {"old": TaskDataset(files, [0], 0, old_tf),
                         "uint8": TaskDataset(files, [0], 0, new_tf),
                         "cached": TaskDataset(cached, [0], 0, new_tf)}
                batches = {}
                calls = {k: 0 for k in paths}

                def run(name: str):
                    # the same seed for the three paths in each round: the same AutoAugment
                    # ops and crops, so only decoding and normalisation differ between them
                    torch.manual_seed(calls[name])
                    calls[name] += 1
                    ds = paths[name]
                    batches[name] = default_collate([ds[i] for i in range(len(ds))])

                sec = timed_alternating([lambda k=k: run(k) for k in paths], torch.device("cpu"),
                                        args.data_steps, warmup=1)
                rates = {k: len(files) / t for k, t in zip(paths, sec)}
                uint8_batch = batches["cached"][0].to(device)
                norm(uint8_batch)  # table on the device
                norm_sec = timed(lambda: norm(uint8_batch), device, steps=args.data_steps, warmup=1)
                per_image = cached.nbytes / len(files)
                out[spec] = {
                    "images": len(files), "size": [w, h], "format": ext,
                    "img_per_s": rates,
                    "ratio_cached_over_old": rates["cached"] / rates["old"],
                    "ratio_uint8_over_old": rates["uint8"] / rates["old"],
                    "ratio_cached_over_uint8": rates["cached"] / rates["uint8"],
                    "normalize_on_device_img_per_s": len(files) / norm_sec,
                    "normalize_device": str(device),
                    "cache_bytes_per_image": per_image,
                    "cache_gib_per_10k_images": per_image * 10_000 / 2**30,
                }
    finally:
        torch.set_num_threads(threads)
    return out


def print_data_section(data: dict) -> None:
    print("(e) data pipeline per worker (1 thread): img/s of old (decode + float) | uint8 "
          "(decode, normalise on device) | cached (decode once, uint8)")
    for spec, r in data.items():
        rates = r["img_per_s"]
        mem = r["cache_gib_per_10k_images"]
        mem_s = f"{mem:.2f} GiB" if mem >= 1 else f"{mem * 1024:.0f} MiB"
        print(f"    {spec:<12s} old {rates['old']:8.1f} | uint8 {rates['uint8']:8.1f} | cached "
              f"{rates['cached']:8.1f} img/s   cached/old {r['ratio_cached_over_old']:.2f}x, "
              f"cache alone (cached/uint8) {r['ratio_cached_over_uint8']:.2f}x; cache "
              f"{mem_s} per 10,000 images; normalise on {r['normalize_device']} "
              f"{r['normalize_on_device_img_per_s']:.0f} img/s")


def build_models(args: argparse.Namespace, device: torch.device):
    name, kwargs = model_spec(args, device.type)
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


def model_section(args: argparse.Namespace, device: torch.device) -> dict:
    """(a)-(d): images/s of the four passes on one synthetic batch (and TFLOP/s on CUDA)."""
    bs = args.batch_size or (256 if device.type == "cuda" else 32)
    steps = args.steps or (20 if device.type == "cuda" else 8)
    amp = args.amp or ("fp16" if device.type == "cuda" else "off")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]

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

    def step_b(net=None):
        with autocast():
            logits = (net or forward)(x, 0)
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

    sec = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec["a"], sec["b"] = timed_pair(step_a, step_b, device, steps, args.warmup)
    assert embed_grad["norm"] is not None  # the backward really reached the first block
    assert all(a.lora_B.grad is not None for a in model.adapters)
    model.merge_adapters()
    sec["c"], sec["d"] = timed_pair(step_c, step_d, device, steps, args.warmup)
    peak_mem = peak_memory(device)
    flops = {}
    if device.type == "cuda":
        flops = {"a": count_flops(step_a), "d": count_flops(step_d)}
        flops["c"] = flops["d"]
        for a in model.adapters:
            a.set_adapter(a.lora_A.detach().clone())
        flops["b"] = count_flops(lambda: step_b(model))  # eager: the same FLOPs, no recompile
    peak = bf16_matmul_rate(device) if device.type == "cuda" else None
    out = {"model": name, "model_kwargs": kwargs, "img_size": args.img_size, "batch_size": bs,
           "amp": amp, "compile": bool(args.compile), "steps": steps,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "img_per_s": {k: bs / t for k, t in sec.items()},
           "ms_per_batch": {k: t * 1e3 for k, t in sec.items()},
           "ratio_b_over_a": sec["b"] / sec["a"], "ratio_c_over_d": sec["c"] / sec["d"],
           "peak_memory": peak_mem,
           "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                if device.type == "cuda" else None)}
    if flops:
        out["tflops"] = {k: flops[k] / sec[k] / 1e12 for k in sec}
        out["bf16_matmul_tflops"] = peak
    return out


LABELS = {"a": "frozen backbone fwd+bwd (no adapters)", "b": "SplitLoRA training step",
          "c": "covariance pass (fwd, hooks)", "d": "evaluation forward"}


def print_model_section(r: dict) -> None:
    print(f"model {r['model']} {r['model_kwargs'] or ''} | img {r['img_size']} | batch "
          f"{r['batch_size']} | amp {r['amp']} | compile {r['compile']} | device {r['device']} "
          f"({r['threads']} threads) | torch {r['torch']} | steps {r['steps']}")
    for k in "abcd":
        line = (f"({k}) {LABELS[k]:<40s} {r['img_per_s'][k]:10.1f} img/s  "
                f"{r['ms_per_batch'][k]:9.2f} ms/batch")
        if "tflops" in r:
            t = r["tflops"][k]
            line += f"  {t:7.1f} TFLOP/s ({100 * t / r['bf16_matmul_tflops']:.0f}% of bf16 matmul peak)"
        print(line)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results: dict = {}
    if not args.data_only:
        results["model"] = model_section(args, device)
        print_model_section(results["model"])
    if not args.skip_data:
        results["data"] = data_section(args, device)
        print_data_section(results["data"])
    if "model" in results:
        r = results["model"]
        print(f"ratio b/a (method overhead over frozen-backbone training): {r['ratio_b_over_a']:.3f}")
        print(f"ratio c/d (covariance pass over evaluation forward):      {r['ratio_c_over_d']:.3f}")
        if r.get("bf16_matmul_tflops"):
            print(f"bf16 matmul rate measured here: {r['bf16_matmul_tflops']:.0f} TFLOP/s")
    print(f"peak memory: {peak_memory(device)}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
