#!/usr/bin/env python
"""Check and measure SplitLoRA on one GPU in under 8 minutes: no internet, dataset or weights.

    python tools/gpu_check.py --out gpu_check.json      # on a machine with one GPU
    python tools/gpu_check.py --dry --out dry.json      # CPU, tiny scale, seconds (the tests)

Parts, in this order, each in its own process with its own time budget (a part that fails
or runs out of time is reported and the others still run; the whole stays under
``--time-limit``, 465 s by default):

  env          GPU, CUDA, torch, CPUs and memory of the machine
  cuda_paths   the CUDA paths of the test suite: AMP fp16 (grad scaler) and bf16 training
               steps, merged forward = unmerged forward, covariance on the GPU = a float64
               reference, the device normalisation bitwise = torchvision's ToTensor+Normalize,
               evaluation and covariance passes through the engine
  nccl         torchrun with one process over NCCL: DDP training step, covariance and
               accuracy all-reduce (gloo in --dry)
  bench_*      tools/benchmark.py at full scale (ViT-B/16, 224 px, batch 256): fp16, bf16,
               tf32 (amp off: the covariance pass's precision), then fp16 and bf16 compiled
  data         the project's train and eval loaders with this machine's cores (auto
               workers), decode cache on and off, 500x375 JPEG and 32x32 PNG
  main_run     configs/imagenet_r_10.yaml through main.py on generated 224-px JPEG folders
               (200 classes), random ViT-B weights, stopped after 2 tasks

Then it prints images/s of every part, peak GPU memory, whether training is data- or
GPU-bound, and the projected wall time of every published setting (ImageNet-R 5/10/20,
CIFAR-100 10, DomainNet 5), and writes all figures to ``--out`` (JSON, rewritten after
every part so that an interrupted check keeps what it measured).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_TIME_LIMIT = 465.0  # seconds for the whole check: under 8 minutes with start-up
MIN_PART_BUDGET = 10.0  # seconds: a part given less is skipped
END_RESERVE = 3.0  # seconds of --time-limit kept for the summary
FAIL_ENV = "SPLITLORA_GPU_CHECK_FAIL"  # test hook: comma-separated parts that raise


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[["Context"], dict]
    budget: float  # seconds on a GPU
    dry_budget: float  # seconds in --dry (a cap against hangs, not a speed requirement)
    what: str


@dataclass
class Context:
    dry: bool
    device: str  # "cuda" or "cpu"
    workdir: Path
    budget: float  # seconds this part may take
    in_process: bool = False  # --in-process: scripts that can run in this process do
    ends_at: float = 0.0  # time.time() by which the part must be done (0: now + budget)

    def __post_init__(self) -> None:
        if not self.ends_at:
            self.ends_at = time.time() + self.budget

    def remaining(self, margin: float = 5.0) -> float:
        """Seconds left for a command this part starts, keeping ``margin`` to report."""
        return max(1.0, self.ends_at - time.time() - margin)


# --------------------------------------------------------------------------- helpers

def _python_env() -> dict:
    return dict(os.environ, PYTHONWARNINGS="ignore")


def _run(cmd: list[str], timeout: float, cwd: Path = REPO, env: Optional[dict] = None
         ) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill that group and raise."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or _python_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise TimeoutError(f"{' '.join(cmd[:4])} ... ran past {timeout:.0f} s") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:] if text else ""


def _sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _write_images(folder: Path, count: int, size: tuple[int, int], fmt: str, seed: int,
                  threads: int) -> None:
    """``count`` generated images (photo-like smooth noise) into ``folder``."""
    from tools.benchmark import make_images
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]

    def one(i: int) -> None:
        (folder / f"{i:04d}.{ext}").write_bytes(make_images(1, size, fmt, seed * 100_003 + i)[0])
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(one, range(count)))


def _make_layout(root: Path, classes: int, train: int, val: int, size: tuple[int, int], fmt: str,
                 threads: int) -> Path:
    """ROOT/train/<class>/ and ROOT/val/<class>/ of generated images."""
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            _write_images(root / split / f"class{c:03d}", n, size, fmt, c * 7 + (split == "val"),
                          threads)
    return root


def _cpus() -> int:
    from splitlora.loading import usable_cpus
    return usable_cpus()


# --------------------------------------------------------------------------- parts

def part_env(ctx: Context) -> dict:
    import torch
    import torchvision

    from datasets.cache import available_memory
    from splitlora.loading import resolve_workers
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cuda_available": torch.cuda.is_available(),
           "cuda": torch.version.cuda, "cpus_usable": _cpus(), "cpu_count": os.cpu_count(),
           "auto_workers": resolve_workers("auto"),
           "memory_available_gib": (available_memory() or 0) / 2**30, "device": ctx.device}
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                   gpu_count=torch.cuda.device_count(),
                   bf16_supported=torch.cuda.is_bf16_supported())
    return out


def _small_model(dry: bool, device):
    """A small ContinualViT (random weights) with an active adapter and one 10-class head."""
    import timm
    import torch

    from models import ContinualViT
    from splitlora.subspace import kaiming_uniform_A
    kwargs = ({"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2} if dry else
              {"patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3})
    img = 16 if dry else 64
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                 img_size=img, **kwargs)
    model = ContinualViT(backbone, 4, ("k", "v")).to(device)
    model.heads.add_head(10).to(device)
    gen = torch.Generator().manual_seed(1)
    for a in model.adapters:
        a.set_adapter(torch.stack([kaiming_uniform_A(4, a.in_features, gen)
                                   for _ in a.targets]).to(device))
    return model, img


def _uint8_loader(n: int, img: int, batch: int, device, workers: int = 0):
    """Random uint8 images and labels 0..9 behind the project's device-normalising loader."""
    import torch
    from torch.utils.data import TensorDataset

    from datasets.normalize import Uint8Normalize
    from splitlora.engine import make_loader
    from splitlora.loading import DeviceBatches
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (n, 3, img, img), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    loader = make_loader(TensorDataset(x, y), batch, True, workers, torch.device(device), seed=3)
    return DeviceBatches(loader, torch.device(device), Uint8Normalize((0.5,) * 3, (0.5,) * 3)), x


def part_cuda_paths(ctx: Context) -> dict:
    import torch
    from torchvision import transforms as T

    from datasets.normalize import Uint8Normalize
    from models import lora_parameters
    from splitlora import engine
    from splitlora.config import TrainConfig
    from splitlora.covariance import CovarianceAccumulator, collect_covariance
    device = torch.device(ctx.device)
    out: dict = {}
    # AMP training steps through the engine (fp16 uses the grad scaler on CUDA)
    for amp in ("fp16", "bf16"):
        model, img = _small_model(ctx.dry, device)
        loader, _ = _uint8_loader(32 if ctx.dry else 64, img, 16, device)
        lora, head = lora_parameters(model.adapters), list(model.heads.heads[0].parameters())
        for p in lora + head:
            p.requires_grad_(True)
        cfg = TrainConfig(epochs=1 if ctx.dry else 2, milestones=[1], batch_size=16, amp=amp,
                          lr=1e-2, head_lr=1e-1)
        amp_dtype = engine.resolve_amp(amp, device)
        x = next(iter(loader))[0]
        with torch.no_grad():
            ref = model(x, 0).float()
            with engine.autocast(device, amp_dtype):
                low = model(x, 0).float()
        stats = engine.train_task(model, 0, loader, 0, lora, head, cfg, device, amp_dtype,
                                  progress=False)
        losses = [s.loss for s in stats]
        b_norm = float(sum(a.lora_B.detach().float().norm() for a in model.adapters))
        rel = float((low - ref).norm() / ref.norm().clamp_min(1e-12))
        ok = all(map(lambda v: v == v and abs(v) < float("inf"), losses)) and b_norm > 0
        out[f"amp_{amp}"] = {"losses": losses, "lora_B_norm": b_norm,
                             "forward_rel_err_vs_fp32": rel, "ok": ok and rel < 0.05}
        if not out[f"amp_{amp}"]["ok"]:
            raise AssertionError(f"AMP {amp}: {out[f'amp_{amp}']}")
    # merged forward = unmerged forward (fp32, TF32 off)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model, img = _small_model(ctx.dry, device)
        with torch.no_grad():
            for a in model.adapters:
                a.lora_B.normal_(0, 0.05)
            x = torch.randn(8, 3, img, img, device=device)
            before = model(x, 0)
            model.merge_adapters()
            after = model(x, 0)
        err = float((after - before).abs().max() / before.abs().max())
        out["merged_forward"] = {"max_rel_err": err, "ok": err < 1e-4}
        if err >= 1e-4:
            raise AssertionError(f"merged forward differs from the unmerged one: {err}")
        # covariance on the device vs a float64 reference of the same qkv inputs
        inputs: list = []
        hooks = [model.adapters[0].register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))]
        acc = CovarianceAccumulator(len(model.adapters), model.adapters[0].in_features,
                                    torch.float32, device)
        with torch.no_grad(), collect_covariance(model.adapters, acc):
            for _ in range(3):
                model.features(torch.randn(8, 3, img, img, device=device))
        for h in hooks:
            h.remove()
        flat = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs]).double().cpu()
        ref = flat.T @ flat
        cov_err = float((acc.sums[0].double().cpu() - ref).abs().max() / ref.abs().max())
        out["covariance"] = {"tokens": int(acc.counts[0]), "rows_ref": flat.shape[0],
                             "max_rel_err_vs_float64": cov_err,
                             "ok": cov_err < 1e-4 and int(acc.counts[0]) == flat.shape[0]}
        if not out["covariance"]["ok"]:
            raise AssertionError(f"covariance on {device}: {out['covariance']}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    # normalisation on the device: bitwise torchvision's ToTensor + Normalize on the CPU
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm = Uint8Normalize(mean, std)
    x8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    want = torch.stack([T.Normalize(mean, std)(T.ToTensor()(T.ToPILImage()(im))) for im in x8])
    got = norm(x8.to(device)).cpu()
    arith = ((x8.to(device).float() / 255 - torch.tensor(mean, device=device).view(3, 1, 1))
             / torch.tensor(std, device=device).view(3, 1, 1)).cpu()
    out["normalize_on_device"] = {"bitwise_equal": bool(torch.equal(got, want)),
                                  "plain_arithmetic_on_device_bitwise": bool(torch.equal(arith, want)),
                                  "ok": bool(torch.equal(got, want))}
    if not out["normalize_on_device"]["ok"]:
        raise AssertionError("device normalisation differs from ToTensor + Normalize")
    # evaluation and covariance passes of the engine, through the device-normalising loader
    model, img = _small_model(ctx.dry, device)
    model.merge_adapters()
    loader, _ = _uint8_loader(40, img, 20, device, workers=1)
    correct, total = engine.evaluate(model, loader, device, engine.resolve_amp("fp16", device),
                                     progress=False)
    acc = CovarianceAccumulator(len(model.adapters), model.adapters[0].in_features, torch.float32,
                                device)
    seen = engine.covariance_pass(model, model.adapters, loader, acc, device, None, progress=False)
    out["passes"] = {"eval_total": total, "cov_images": seen, "ok": total == 40 and seen == 40}
    if not out["passes"]["ok"]:
        raise AssertionError(f"engine passes: {out['passes']}")
    return out


def nccl_worker(out_path: str, dry: bool) -> int:
    """Entry point under torchrun: one process group over NCCL (gloo on CPU)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from models import lora_parameters
    from splitlora import engine
    from splitlora.config import TrainConfig
    from splitlora.covariance import CovarianceAccumulator
    from splitlora.distributed import all_reduce_counts
    use_cuda = not dry and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    t0 = time.perf_counter()
    model, img = _small_model(dry, device)
    lora, head = lora_parameters(model.adapters), list(model.heads.heads[0].parameters())
    for p in lora + head:
        p.requires_grad_(True)
    ddp = DistributedDataParallel(model, device_ids=[local] if use_cuda else None)
    loader, _ = _uint8_loader(32, img, 8, device)
    cfg = TrainConfig(epochs=1, milestones=[1], batch_size=8, amp="auto")
    stats = engine.train_task(ddp, 0, loader, 0, lora, head, cfg, device,
                              engine.resolve_amp("auto", device), progress=False)
    model.merge_adapters()
    acc = CovarianceAccumulator(len(model.adapters), model.adapters[0].in_features, torch.float32,
                                device)
    engine.covariance_pass(model, model.adapters, loader, acc, device, None, progress=False)
    before = acc.sums.clone()
    acc.all_reduce()
    ones = torch.ones(4, device=device)
    dist.all_reduce(ones)
    result = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
              "train_loss": stats[0].loss, "cov_allreduce_equal": bool(torch.equal(before, acc.sums)),
              "counts": list(all_reduce_counts(3, 5, device)),
              "allreduce_sum": float(ones.sum()), "seconds": time.perf_counter() - t0}
    result["ok"] = (result["cov_allreduce_equal"] and result["counts"] == [3, 5]
                    and result["allreduce_sum"] == 4.0 * result["world_size"])
    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps(result))
    dist.destroy_process_group()
    return 0 if result["ok"] else 1


def part_nccl(ctx: Context) -> dict:
    out_file = ctx.workdir / "nccl.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(__file__).resolve()), "--nccl-worker", str(out_file)] + (["--dry"] if ctx.dry else [])
    proc = _run(cmd, ctx.remaining())
    if proc.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {_tail(proc.stderr)}")
    result = json.loads(out_file.read_text())
    if not result["ok"]:
        raise AssertionError(f"NCCL checks failed: {result}")
    return result


def _bench_part(amp: str, compile_: bool) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        out_file = ctx.workdir / f"bench_{amp}_{int(compile_)}.json"
        if ctx.dry:  # the same script at tiny scale on the CPU (compilation disabled)
            args = ["--device", "cpu", "--img-size", "32", "--batch-size", "2", "--steps", "1",
                    "--warmup", "1", "--skip-data", "--amp", amp, "--model-kwargs",
                    json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2})]
        else:
            args = ["--device", "cuda", "--model", "vit_base_patch16_224", "--img-size", "224",
                    "--batch-size", "256", "--amp", amp, "--skip-data"]
        args += (["--compile"] if compile_ else []) + ["--json", str(out_file)]
        if ctx.dry and ctx.in_process:
            import contextlib
            import io

            import torch._dynamo

            from tools import benchmark
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), torch._dynamo.config.patch(disable=True):
                code = benchmark.main(args)
            stdout = buf.getvalue()
            if code != 0:
                raise RuntimeError(f"benchmark.py exited with {code}: {_tail(stdout)}")
        else:
            env = dict(_python_env(), **({"TORCH_COMPILE_DISABLE": "1"} if ctx.dry else {}))
            proc = _run([sys.executable, str(REPO / "tools" / "benchmark.py"), *args],
                        ctx.remaining(), env=env)
            if proc.returncode != 0 or not out_file.exists():
                raise RuntimeError(f"benchmark.py exited with {proc.returncode}: "
                                   f"{_tail(proc.stderr)}")
            stdout = proc.stdout
        r = json.loads(out_file.read_text())["model"]
        r["stdout"] = stdout.strip().splitlines()
        return r
    return run


def _loader_rate(loader, epochs: int, device: str) -> dict:
    """Images/s of a loader over ``epochs`` epochs (start-up included), the seconds to its
    first batch and the images/s after it (steady state)."""
    n, first, first_n = 0, None, 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for images, _ in loader:
            n += images.shape[0]
            if first is None:
                _sync(device)
                first, first_n = time.perf_counter() - t0, n
    _sync(device)
    total = time.perf_counter() - t0
    return {"img_per_s": n / total, "images": n, "first_batch_s": first or 0.0,
            "steady_img_per_s": (n - first_n) / max(total - (first or 0.0), 1e-9)}


def part_data(ctx: Context) -> dict:
    """The project's own loaders (Experiment.train_loader / val_loader) with auto workers."""
    from splitlora.config import load_config
    from splitlora.experiment import Experiment
    threads = _cpus()
    sizes = [("500x375.jpg", (500, 375), "JPEG"), ("32x32.png", (32, 32), "PNG")]
    if ctx.dry:
        classes, train, val, img, batch, expand, epochs, workers = 2, 4, 2, 32, 4, 2, 2, "1"
    else:
        classes, train, val, img, batch, expand, epochs, workers = 10, 60, 30, 224, 256, 10, 3, "auto"
    out: dict = {"workers": None, "img_size": img, "batch_size": batch}
    for spec, size, fmt in sizes:
        root = _make_layout(ctx.workdir / f"data_{spec}", classes, train, val, size, fmt, threads)
        rows = {}
        for cache in (True, False):
            cfg = load_config(None, [f"device={ctx.device}", "dataset.name=folder",
                                     f"dataset.root={root}", "dataset.num_tasks=1",
                                     f"dataset.cache={str(cache).lower()}",
                                     f"train.expand_times={expand}", f"train.epochs={epochs}",
                                     f"model.img_size={img}", f"train.batch_size={batch}",
                                     f"eval.batch_size={batch}", f"train.num_workers={workers}",
                                     f"eval.num_workers={workers}"])
            exp = Experiment(cfg, ctx.workdir / "unused_run", progress=False)
            out["workers"] = exp.workers
            t0 = time.perf_counter()
            loader = exp.train_loader(0)
            build = time.perf_counter() - t0
            r = _loader_rate(loader, epochs, ctx.device)
            row = {"train_img_per_s": r["img_per_s"], "train_images": r["images"],
                   "train_steady_img_per_s": r["steady_img_per_s"],
                   "first_batch_s": r["first_batch_s"], "loader_build_s": build}
            if cache:
                cached = exp.image_cache.current
                row["cache_bytes"] = getattr(cached, "nbytes", 0)
                row["cache_decode_img_per_s"] = classes * train / max(build, 1e-9)
                e = _loader_rate(exp.val_loader(0), 1, ctx.device)
                row.update(eval_img_per_s=e["img_per_s"], eval_images=e["images"])
            rows["cache_on" if cache else "cache_off"] = row
            del loader, exp
        rows["cache_speedup"] = rows["cache_on"]["train_img_per_s"] / rows["cache_off"]["train_img_per_s"]
        out[spec] = rows
    return out


_EPOCH_LINE = re.compile(r"task (\d+) epoch (\d+)/(\d+): .*\((\d+) images, ([\d.]+)s, (\d+) img/s\)")


def part_main_run(ctx: Context) -> dict:
    """configs/imagenet_r_10.yaml through main.py on generated folders, stopped after 2 tasks."""
    threads = _cpus()
    if ctx.dry:
        root = _make_layout(ctx.workdir / "imagenet_r", 200, 1, 1, (32, 32), "JPEG", threads)
        sets = ["device=cpu", "model.name=vit_tiny_patch16_224", "model.img_size=32",
                "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
                "lora.rank=2", "train.epochs=2", "train.milestones=[1]", "train.expand_times=1",
                "train.batch_size=8", "eval.batch_size=16", "train.num_workers=1",
                "eval.num_workers=0"]
    else:
        root = _make_layout(ctx.workdir / "imagenet_r", 200, 10, 2, (224, 224), "JPEG", threads)
        sets = []
    out_dir = ctx.workdir / "main_run"
    sets = [f"dataset.root={root}", "model.pretrained=false", *sets]
    cmd = [sys.executable, str(REPO / "main.py"), "--config", str(REPO / "configs" / "imagenet_r_10.yaml"),
           "--no-progress", "--output", str(out_dir)] + [x for s in sets for x in ("--set", s)]
    env_file = out_dir / "env.json"
    console = open(ctx.workdir / "main_run.console.txt", "w")  # a file: a pipe could fill up
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=console, stderr=subprocess.STDOUT,
                            text=True, env=_python_env(), start_new_session=True)
    stopped, tasks_done = False, 0
    limit = ctx.remaining()
    t0 = time.time()
    try:
        while proc.poll() is None:
            if time.time() - t0 > limit:
                raise TimeoutError(f"main.py did not finish 2 tasks in {limit:.0f} s")
            try:
                tasks_done = len(json.loads(env_file.read_text())["timing"]["task_seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                tasks_done = 0
            if tasks_done >= 2:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
                stopped = True
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        console.close()
    log_text = (ctx.workdir / "main_run.console.txt").read_text()
    env = json.loads(env_file.read_text()) if env_file.exists() else {}
    task_seconds = env.get("timing", {}).get("task_seconds", [])
    if len(task_seconds) < 2:
        raise RuntimeError(f"main.py stopped (status {proc.returncode}) before 2 tasks: "
                           f"{_tail(log_text)}")
    log_file = out_dir / "log.txt"
    epochs = [dict(zip(("task", "epoch", "epochs", "images", "seconds", "img_per_s"),
                       (int(m[1]), int(m[2]), int(m[3]), int(m[4]), float(m[5]), int(m[6]))))
              for m in _EPOCH_LINE.finditer(log_file.read_text() if log_file.exists() else "")]
    first_two = [e for e in epochs if e["task"] < 2]
    train_s = [sum(e["seconds"] for e in first_two if e["task"] == t) for t in range(2)]
    imgs = sum(e["images"] for e in first_two)
    return {"stopped_after_2_tasks": stopped, "task_seconds": task_seconds[:2],
            "train_seconds": train_s, "train_images": imgs,
            "train_img_per_s": imgs / max(sum(train_s), 1e-9),
            "epoch_img_per_s": [e["img_per_s"] for e in first_two],
            "overhead_s_per_task": [max(0.0, ts - tr) for ts, tr in zip(task_seconds, train_s)],
            "peak_gpu_mem_gib": env.get("peak_gpu_mem_gib"),
            "data_loading": env.get("data_loading"), "gpu": env.get("gpu")}


PARTS = [
    Part("env", part_env, 30, 60, "machine"),
    Part("cuda_paths", part_cuda_paths, 60, 300, "AMP fp16/bf16, merged forward, covariance, normalisation"),
    Part("nccl", part_nccl, 60, 300, "torchrun, 1 process, NCCL"),
    Part("bench_fp16", _bench_part("fp16", False), 60, 300, "benchmark ViT-B/16 fp16"),
    Part("bench_bf16", _bench_part("bf16", False), 60, 300, "benchmark ViT-B/16 bf16"),
    Part("bench_tf32", _bench_part("off", False), 60, 300, "benchmark ViT-B/16 fp32/TF32"),
    Part("data", part_data, 90, 300, "data pipeline, all cores"),
    Part("main_run", part_main_run, 150, 300, "imagenet_r_10 via main.py, 2 tasks"),
    Part("bench_fp16_compile", _bench_part("fp16", True), 150, 300, "benchmark fp16 + compile"),
    Part("bench_bf16_compile", _bench_part("bf16", True), 150, 300, "benchmark bf16 + compile"),
]
PART_NAMES = [p.name for p in PARTS]


# --------------------------------------------------------------------------- projection

# train / val images of each dataset (the public split lists); the rest comes from configs/
DATASET_IMAGES = {"imagenet_r": (24_000, 6_000), "cifar100": (50_000, 10_000),
                  "domainnet": (47_532, 20_450)}
DATA_SPEC = {"imagenet_r": "500x375.jpg", "domainnet": "500x375.jpg", "cifar100": "32x32.png"}
SETTINGS = ("imagenet_r_5", "imagenet_r_10", "imagenet_r_20", "cifar100_10", "domainnet_5")


def setting_work(name: str) -> dict:
    """Samples per run of a published setting: training (fwd + bwd), covariance pass (fwd),
    evaluation (fwd), from its config and the dataset sizes."""
    from splitlora.config import load_config
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    train, val = DATASET_IMAGES[cfg.dataset.name]
    t = cfg.dataset.num_tasks
    per_epoch = train * cfg.train.expand_times
    copies = cfg.train.expand_times if cfg.split.cov_pass == "faithful" else 1
    cov = train * copies * (t - 1) // t  # no covariance pass after the last task
    return {"dataset": cfg.dataset.name, "tasks": t, "train_samples": per_epoch * cfg.train.epochs,
            "cov_samples": cov, "eval_samples": val * (t + 1) // 2, "data": DATA_SPEC[cfg.dataset.name]}


def _get(results: dict, *path, default=None):
    node = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def projections(results: dict) -> dict:
    """Projected wall time of every published setting from the measured rates.

    Each pass streams its samples at min(GPU rate, data rate): training at benchmark (b) of
    the default precision (fp16, not compiled) against the train loader, the covariance
    pass (fp32/TF32 by default) at (c) of the tf32 benchmark against the train loader,
    evaluation at (d) (fp16) against the eval loader; plus, per task, the overhead measured
    in the 2-task run (loader start-up, decode cache, covariance and evaluation of its few
    images). A figure that was not measured leaves the setting's projection out, named.
    """
    gpu = {"train": _get(results, "bench_fp16", "img_per_s", "b"),
           "cov": _get(results, "bench_tf32", "img_per_s", "c"),
           "eval": _get(results, "bench_fp16", "img_per_s", "d")}
    overhead = _get(results, "main_run", "overhead_s_per_task")
    per_task = sum(overhead) / len(overhead) if overhead else None
    out = {}
    for name in SETTINGS:
        w = setting_work(name)
        data = {"train": _get(results, "data", w["data"], "cache_on", "train_img_per_s"),
                "eval": _get(results, "data", w["data"], "cache_on", "eval_img_per_s")}
        data["cov"] = data["train"]
        missing = [f"gpu {k}" for k, v in gpu.items() if not v] + \
                  [f"data {k} ({w['data']})" for k, v in data.items() if not v]
        if per_task is None:
            missing.append("per-task overhead (main_run)")
        row = dict(w)
        if missing:
            row.update(projected_min=None, unmeasured=missing)
            out[name] = row
            continue
        seconds = {}
        for k, samples in (("train", w["train_samples"]), ("cov", w["cov_samples"]),
                           ("eval", w["eval_samples"])):
            rate = min(gpu[k], data[k])
            seconds[k] = samples / rate
            row[f"{k}_bound"] = "data" if data[k] < gpu[k] else "GPU"
        seconds["overhead"] = per_task * w["tasks"]
        row["seconds"] = seconds
        row["projected_min"] = sum(seconds.values()) / 60
        out[name] = row
    return out


def boundness(results: dict) -> dict:
    """Is training data- or GPU-bound? The training loader's rate (500x375 JPEG, 32x32 PNG,
    cache on) against the GPU's training step (fp16, not compiled), and the 2-task run's
    end-to-end training rate against both."""
    gpu = _get(results, "bench_fp16", "img_per_s", "b")
    out = {"gpu_train_img_per_s": gpu,
           "main_run_train_img_per_s": _get(results, "main_run", "train_img_per_s")}
    for spec in ("500x375.jpg", "32x32.png"):
        data = _get(results, "data", spec, "cache_on", "train_img_per_s")
        out[spec] = {"loader_img_per_s": data,
                     "bound": None if not (gpu and data) else ("data" if data < gpu else "GPU")}
    return out


# --------------------------------------------------------------------------- runner

def _fail_injected(name: str) -> None:
    if name in [p for p in os.environ.get(FAIL_ENV, "").split(",") if p]:
        raise RuntimeError(f"failure injected into part {name!r} ({FAIL_ENV})")


def run_part(part: Part, ctx: Context, in_process: bool) -> dict:
    """One part, in this process or in a child process limited to ``ctx.budget`` seconds."""
    t0 = time.time()
    try:
        if in_process:
            _fail_injected(part.name)
            result = part.run(ctx)
        else:
            out_file = ctx.workdir / f"part_{part.name}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part.name,
                   "--part-out", str(out_file), "--part-budget", str(ctx.budget),
                   "--part-ends-at", str(ctx.ends_at),
                   "--workdir", str(ctx.workdir)] + (["--dry"] if ctx.dry else [])
            proc = _run(cmd, ctx.budget)
            if not out_file.exists():
                raise RuntimeError(f"part process exited with {proc.returncode}: {_tail(proc.stderr)}")
            result = json.loads(out_file.read_text())
            if result.get("status") == "error":
                return dict(result, seconds=time.time() - t0)
        return {"status": "ok", "seconds": time.time() - t0, **result}
    except TimeoutError as exc:
        return {"status": "timeout", "seconds": time.time() - t0, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing part is reported, the others go on
        return {"status": "error", "seconds": time.time() - t0,
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-3000:]}


def _rate(r: dict, key: str = "b") -> str:
    v = _get(r, "img_per_s", key)
    return f"{v:.0f} img/s" if v else "-"


def summary_lines(results: dict) -> list[str]:
    lines = []
    for name in PART_NAMES:
        r = results.get(name)
        if r is None:
            continue
        head = f"{name:<20s} {r['status']:<8s} {r.get('seconds', 0):6.1f} s"
        if r["status"] != "ok":
            lines.append(f"{head}  {r.get('error', r.get('reason', ''))[:300]}")
            continue
        if name == "env":
            detail = (f"{r.get('gpu', 'no GPU')}, torch {r['torch']}, CUDA {r['cuda']}, "
                      f"{r['cpus_usable']} CPUs usable, auto workers {r['auto_workers']}")
        elif name.startswith("bench_"):
            detail = (f"train step {_rate(r, 'b')}, frozen fwd+bwd {_rate(r, 'a')}, covariance "
                      f"{_rate(r, 'c')}, eval {_rate(r, 'd')}, b/a {r['ratio_b_over_a']:.3f}, "
                      f"peak GPU mem {r.get('peak_gpu_mem_gib') or 0:.1f} GiB")
        elif name == "data":
            parts = []
            for spec in ("500x375.jpg", "32x32.png"):
                row = r.get(spec, {})
                on, off = row.get("cache_on", {}), row.get("cache_off", {})
                parts.append(f"{spec}: train {on.get('train_img_per_s', 0):.0f} img/s cached, "
                             f"{off.get('train_img_per_s', 0):.0f} uncached, eval "
                             f"{on.get('eval_img_per_s', 0):.0f} img/s")
            detail = f"workers {r['workers']}; " + "; ".join(parts)
        elif name == "main_run":
            detail = (f"train {r['train_img_per_s']:.0f} img/s end to end, tasks "
                      f"{', '.join(f'{s:.1f}' for s in r['task_seconds'])} s, peak GPU mem "
                      f"{r.get('peak_gpu_mem_gib') or 0:.1f} GiB")
        elif name == "nccl":
            detail = f"backend {r['backend']}, world {r['world_size']}, all-reduce ok"
        else:
            detail = "ok: " + ", ".join(k for k, v in r.items() if isinstance(v, dict) and v.get("ok"))
        lines.append(f"{head}  {detail}")
    bound = results.get("bound")
    if bound:
        gpu = bound["gpu_train_img_per_s"]
        for spec in ("500x375.jpg", "32x32.png"):
            b = bound[spec]
            if b["bound"]:
                lines.append(f"training on {spec}: {b['bound']}-bound (loader "
                             f"{b['loader_img_per_s']:.0f} img/s, GPU step {gpu:.0f} img/s)")
            else:
                lines.append(f"training on {spec}: bound not known (a rate was not measured)")
        if bound["main_run_train_img_per_s"]:
            lines.append(f"2-task imagenet_r_10 run (224-px JPEGs): "
                         f"{bound['main_run_train_img_per_s']:.0f} img/s end to end")
    proj = results.get("projection", {})
    if proj:
        lines.append("projected wall time per run (default settings: fp16, not compiled, "
                     "decode cache on, auto workers):")
        for name, row in proj.items():
            if row.get("projected_min") is None:
                lines.append(f"  {name:<14s} not projected: unmeasured {', '.join(row['unmeasured'])}")
            else:
                s = row["seconds"]
                lines.append(f"  {name:<14s} {row['projected_min']:6.1f} min  (train "
                             f"{s['train'] / 60:.1f} min, {row['train_bound']}-bound; covariance "
                             f"{s['cov'] / 60:.1f}; eval {s['eval'] / 60:.1f}; overhead "
                             f"{s['overhead'] / 60:.1f})")
    return lines


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default="gpu_check.json", help="JSON file for every figure")
    p.add_argument("--dry", action="store_true", help="CPU, tiny scale: the same code paths in seconds")
    p.add_argument("--parts", default=",".join(PART_NAMES),
                   help=f"comma-separated parts to run (default all: {','.join(PART_NAMES)})")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                   help="seconds for the whole check (parts that do not fit are skipped)")
    p.add_argument("--in-process", action="store_true",
                   help="run the parts in this process (no per-part time limit; for tests)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part-budget", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--part-ends-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--nccl-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def top_level_problem(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with --time-limit or --out (None if nothing), checked before any part runs."""
    import math

    from splitlora.run.errors import WriteError
    from splitlora.run.fileio import check_output_dir, check_output_file

    least = MIN_PART_BUDGET + END_RESERVE
    if not math.isfinite(args.time_limit) or args.time_limit < least:
        return (f"--time-limit must be at least {least:g} seconds (with less every part would be "
                f"skipped), got {args.time_limit:g}; the default is {DEFAULT_TIME_LIMIT:g}")
    try:
        if args.workdir is not None:
            check_output_dir(Path(args.workdir), "--workdir")
        check_output_file(Path(args.out), "--out")
    except WriteError as exc:
        return str(exc)
    return None


def _device(dry: bool) -> str:
    if dry:
        return "cpu"
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.nccl_worker:
        return nccl_worker(args.nccl_worker, args.dry)
    if args.part:  # child process of one part
        part = {p.name: p for p in PARTS}[args.part]
        ctx = Context(args.dry, _device(args.dry), Path(args.workdir),
                      args.part_budget or part.budget, ends_at=args.part_ends_at)
        try:
            _fail_injected(part.name)
            result = part.run(ctx)
        except Exception as exc:  # noqa: BLE001
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        Path(args.part_out).write_text(json.dumps(result, default=str))
        return 0
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PART_NAMES]
    if not names:
        print(f"error: --parts names no part; known: {', '.join(PART_NAMES)}", file=sys.stderr)
        return 2
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; known: {', '.join(PART_NAMES)}",
              file=sys.stderr)
        return 2
    problem = top_level_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    device = _device(args.dry)
    if not args.dry and device != "cuda":
        print("warning: no CUDA device: measuring on the CPU (use --dry for the quick form)",
              file=sys.stderr)
    from splitlora.run.fileio import atomic_write_text

    started = time.time()
    out_path = Path(args.out)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry": args.dry,
                     "device": device, "time_limit_s": args.time_limit}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for part in PARTS:
            if part.name not in names:
                continue
            left = args.time_limit - (time.time() - started) - END_RESERVE
            budget = min(part.dry_budget if args.dry else part.budget, left)
            if budget < MIN_PART_BUDGET:
                results[part.name] = {"status": "skipped", "reason": "no time left in --time-limit"}
            else:
                print(f"[{time.time() - started:5.0f} s] {part.name}: {part.what} "
                      f"(budget {budget:.0f} s)", flush=True)
                ctx = Context(args.dry, device, workdir, budget, args.in_process)
                results[part.name] = run_part(part, ctx, args.in_process)
            print("    " + summary_lines({part.name: results[part.name]})[0], flush=True)
            atomic_write_text(out_path, json.dumps(results, indent=1, default=str))
        results["bound"] = boundness(results)
        results["projection"] = projections(results)
        results["total_seconds"] = time.time() - started
        atomic_write_text(out_path, json.dumps(results, indent=1, default=str))
    print()
    for line in summary_lines(results):
        print(line)
    print(f"total {results['total_seconds']:.0f} s; figures in {out_path}")
    failed = [n for n in names if results.get(n, {}).get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
