"""Shared fixtures: tiny timm ViTs and small configs that run in seconds on a CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

REPO = Path(__file__).resolve().parents[1]

# Subprocesses get a hang guard, not a speed limit: far above any run's time on a loaded
# machine, below CI's own limit.
HANG_GUARD_S = 3600

TINY_VIT = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_vit(img_size: int = 16, **kwargs) -> torch.nn.Module:
    """A 2-block, 32-dim timm VisionTransformer with its classifier removed."""
    args = dict(TINY_VIT, **kwargs)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                             img_size=img_size, **args)


def tiny_overrides(tmp_path: Path | None = None, epochs: int = 2) -> list[str]:
    """--set overrides turning any config into a tiny CPU run."""
    return [
        "device=cpu", "model.name=vit_tiny_patch16_224", "model.pretrained=false",
        "model.pretrained_file=null",
        "model.img_size=16", "model.kwargs={patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}",
        "lora.rank=2", f"train.epochs={epochs}", "train.milestones=[1]", "train.batch_size=16",
        "train.expand_times=1", "train.num_workers=0", "eval.num_workers=0", "eval.batch_size=32",
    ]


def run_main(args: list[str], cwd: Path | None = None,
             timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Run main.py as a user would; returns the completed process (text output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(REPO / "main.py"), "--no-progress", *args],
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=env)


def main_inprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """main.py's entry point called in this process (no interpreter start-up): same arguments,
    exit status and output as a subprocess, for the many cheap error-path checks."""
    import contextlib
    import io
    import logging

    import main as main_module
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main_module.main(["--no-progress", *args])
    finally:
        os.chdir(old)
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_splitlora", False):
                logging.getLogger().removeHandler(h)
                h.close()
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
