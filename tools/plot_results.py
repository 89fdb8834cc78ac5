#!/usr/bin/env python
"""Pictures of finished (or running) runs, from their metrics.json.

    python tools/plot_results.py runs/demo/splitlora/seed0 runs/demo/seq_lora/seed0 --out figures/

Writes three PNGs into --out:
  accuracy.png    accuracy over the seen tasks after each task (Acc_t), every run on one axis
  acc_matrix.png  the accuracy matrix R[t, j] of each run as a heat map
  split_dims.png  the frozen dimension of every block across tasks (runs that split)
Needs matplotlib (pip install -r requirements-extra.txt).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", help="run directories (holding metrics.json)")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--labels", nargs="+", help="legend labels, one per run (default: "
                   "name/method/seed)")
    return p.parse_args(argv)


def load_runs(dirs: list[str], labels: Optional[list[str]]) -> list[tuple[str, dict]]:
    runs, problems = [], []
    for d in dirs:
        path = Path(d) / "metrics.json"
        try:
            m = json.loads(path.read_text())
            if not isinstance(m, dict) or "acc_matrix" not in m:
                raise ValueError("no acc_matrix")
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        runs.append((f"{m.get('name')}/{m.get('method')}/seed{m.get('seed')}", m))
    if problems:
        raise SystemExit("error: cannot read these runs (is each argument a run directory?):\n  "
                         + "\n  ".join(problems))
    if labels:
        if len(labels) != len(runs):
            raise SystemExit(f"error: {len(labels)} --labels for {len(runs)} runs")
        runs = [(lab, m) for lab, (_, m) in zip(labels, runs)]
    names = [lab for lab, _ in runs]
    return [(f"{lab} ({Path(d).name})" if names.count(lab) > 1 else lab, m)
            for (lab, m), d in zip(runs, dirs)]


def plot_accuracy(plt, runs: list[tuple[str, dict]], path: Path) -> None:
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, m in runs:
        accs = m.get("acc_per_task") or []
        ax.plot(range(1, len(accs) + 1), accs, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("accuracy over seen classes (%)")
    ax.set_title("Accuracy after each task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_matrices(plt, runs: list[tuple[str, dict]], path: Path) -> None:
    import numpy as np
    n = len(runs)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (label, m) in zip(axes[0], runs):
        mat = np.array([[np.nan if v is None else v for v in row] for row in m["acc_matrix"]])
        im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        for (t, j), v in np.ndenumerate(mat):
            if not np.isnan(v) and mat.shape[0] <= 10:
                ax.text(j, t, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 60 else "black")
        ax.set_xlabel("evaluated task j")
        ax.set_ylabel("after task t")
        ax.set_title(label, fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_split_dims(plt, runs: list[tuple[str, dict]], path: Path) -> None:
    from matplotlib.ticker import MaxNLocator
    with_splits = [(lab, m) for lab, m in runs if any(d for d in m.get("split_dims") or [])]
    n = max(len(with_splits), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    if not with_splits:
        axes[0][0].text(0.5, 0.5, "no run split a subspace\n(seq_lora / random_a)",
                        ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, (label, m) in zip(axes[0], with_splits):
        dims = [d for d in m["split_dims"] if d]
        blocks = len(dims[0])
        for b in range(blocks):
            ax.plot(range(1, len(dims) + 1), [d[b] for d in dims], marker=".", label=f"block {b}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("split after task")
        ax.set_ylabel("frozen dimensions")
        ax.set_title(label, fontsize=8)
        ax.grid(alpha=0.3)
        if blocks <= 12:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def out_problem(out: Path) -> Optional[str]:
    """Why ``out`` cannot be the output folder (None if it can)."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    parent = out
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"--out {out} lies under {parent}, which is a file, not a folder"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    problem = out_problem(Path(args.out))
    if problem:
        print(f"error: {problem}; pass a folder for the PNG files", file=sys.stderr)
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: tools/plot_results.py needs matplotlib, an optional dependency: "
              "pip install -r requirements-extra.txt", file=sys.stderr)
        return 2
    try:
        runs = load_runs(args.runs, args.labels)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        plot_accuracy(plt, runs, out / "accuracy.png")
        plot_matrices(plt, runs, out / "acc_matrix.png")
        plot_split_dims(plt, runs, out / "split_dims.png")
    except OSError as exc:
        print(f"error: cannot write into {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for name in ("accuracy.png", "acc_matrix.png", "split_dims.png"):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
