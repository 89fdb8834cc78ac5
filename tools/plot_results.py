#!/usr/bin/env python
"""Pictures of finished (or running) runs, from their metrics.json, written into --out: accuracy.png
(accuracy over the seen tasks after each task, every run on one axis), acc_matrix.png (the accuracy
matrix R[t, j] of each run as a heat map) and split_dims.png (the frozen dimension of every block
across tasks, runs that split). Needs matplotlib (pip install -r requirements-extra.txt).

    python tools/plot_results.py runs/demo/splitlora/seed0 runs/demo/seq_lora/seed0 --out figures/
"""
import argparse
import json
import sys
from pathlib import Path

NAMES = ("accuracy.png", "acc_matrix.png", "split_dims.png")  # what figures() writes


def load_runs(dirs: list[str], labels: list[str] | None) -> list[tuple[str, dict]]:
    runs, problems = [], []
    for d in dirs:
        path = Path(d) / "metrics.json"
        try:
            runs.append(json.loads(path.read_text()))
            if not isinstance(runs[-1], dict) or "acc_matrix" not in runs[-1]:
                raise ValueError("no acc_matrix")
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
    if problems:
        raise SystemExit(f"cannot read these runs (is each argument a run directory?): {'; '.join(problems)}")
    if labels and len(labels) != len(runs):
        raise SystemExit(f"{len(labels)} --labels for {len(runs)} runs")
    names = labels or [f"{m.get('name')}/{m.get('method')}/seed{m.get('seed')}" for m in runs]
    return [(f"{lab} ({Path(d).name})" if names.count(lab) > 1 else lab, m) for lab, m, d in zip(names, runs, dirs)]


def figures(runs: list[tuple[str, dict]]):
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    ax = Figure(figsize=(6, 4)).subplots()
    for label, accs in ((label, m.get("acc_per_task") or []) for label, m in runs):
        ax.plot(range(1, len(accs) + 1), accs, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="tasks learned", ylabel="accuracy over seen classes (%)", title="Accuracy after each task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    yield "accuracy.png", ax.figure, True  # True: tight_layout, False: cropped when saved
    axes = Figure(figsize=(3.6 * len(runs), 3.4)).subplots(1, len(runs), squeeze=False)[0]
    for ax, (label, m) in zip(axes, runs):
        mat = np.array([[np.nan if v is None else v for v in row] for row in m["acc_matrix"]])
        im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        for (t, j), v in np.ndenumerate(mat) if mat.shape[0] <= 10 else ():
            if not np.isnan(v):
                ax.text(j, t, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        ax.set(xlabel="evaluated task j", ylabel="after task t")
        ax.set_title(label, fontsize=8)
    ax.figure.colorbar(im, ax=axes.tolist(), shrink=0.8, label="accuracy (%)")
    yield "acc_matrix.png", ax.figure, False
    splits = [(label, dims) for label, m in runs if (dims := [d for d in m.get("split_dims") or [] if d])]
    axes = Figure(figsize=(4.2 * max(len(splits), 1), 3.4)).subplots(1, max(len(splits), 1), squeeze=False)[0]
    if not splits:
        axes[0].text(0.5, 0.5, "no run split a subspace\n(seq_lora / random_a)", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, (label, dims) in zip(axes, splits):
        for b in range(len(dims[0])):
            ax.plot(range(1, len(dims) + 1), [d[b] for d in dims], marker=".", label=f"block {b}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="split after task", ylabel="frozen dimensions")
        ax.set_title(label, fontsize=8)
        ax.grid(alpha=0.3)
        if len(dims[0]) <= 12:
            ax.legend(fontsize=6, ncol=2)
    yield "split_dims.png", axes[0].figure, True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (holding metrics.json)")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    p.add_argument("--labels", nargs="+", help="legend labels, one per run (default: name/method/seed)")
    args = p.parse_args(argv)
    out = args.out
    try:
        if (parent := next(d for d in (out, *out.parents) if d.exists())).is_file():
            raise SystemExit(f"--out {out} {'is' if parent == out else f'lies under {parent}, which is'} a file")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("tools/plot_results.py needs matplotlib, an optional dependency: "
                             "pip install -r requirements-extra.txt") from None
        runs = load_runs(args.runs, args.labels)
        out.mkdir(parents=True, exist_ok=True)
        for odd in (p for p in map(out.joinpath, NAMES) if p.is_symlink() or p.exists() and not p.is_file()):
            raise SystemExit(f"{odd} is a link or not a file; nothing is written through it (move it away)")
        for name, fig, tight in figures(runs):
            if tight:
                fig.tight_layout()
            fig.savefig(out / name, dpi=120, bbox_inches=None if tight else "tight")
            print(out / name)
    except (SystemExit, OSError) as exc:
        why = f"cannot write into {out}: {exc.strerror or exc}" if isinstance(exc, OSError) else exc
        print(f"error: {why}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
