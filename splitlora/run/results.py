"""Aggregate finished runs into the results table, beside the paper's figures.

Light module (no torch): reads ``metrics.json`` files and writes Markdown and CSV.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import yaml

from .fileio import atomic_write_text, read_json

log = logging.getLogger(__name__)

PUBLISHED = Path(__file__).resolve().parents[2] / "configs" / "published.yaml"


def load_published(path: Path = PUBLISHED) -> dict:
    """The published settings table (configs/published.yaml)."""
    return yaml.safe_load(path.read_text())


def read_metrics(run_dir: Path) -> Optional[dict]:
    """metrics.json of a run directory when it is complete, else None."""
    data = read_json(run_dir / "metrics.json")
    return data if data.get("complete") else None


def read_env(run_dir: Path) -> dict:
    """env.json of a run directory ({} when absent or unreadable)."""
    return read_json(run_dir / "env.json")


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation; the std is None for a single value (no spread to
    report) and both are None when there is no value."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def run_forgetting(metrics: dict) -> Optional[float]:
    """A run's forgetting, None where it is undefined: a run of a single task (joint training,
    one-task settings) has no earlier task to forget, whatever number its metrics hold."""
    matrix = metrics.get("acc_matrix") or []
    if metrics.get("num_tasks") == 1 or len(matrix) == 1:
        return None
    return metrics.get("forgetting")


@dataclass
class Row:
    """One line of the table: a setting (and method) over the seeds that finished."""

    setting: str
    method: str
    seeds: list[int] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    paper: dict = field(default_factory=dict)

    def stat(self, key: str) -> tuple[Optional[float], Optional[float]]:
        return mean_std([r[key] for r in self.runs if r.get(key) is not None])

    def as_dict(self, paper: bool = True) -> dict:
        """The row's figures (None where unknown); ``paper``: with the paper's columns."""
        out = {"setting": self.setting, "method": self.method,
               "seeds": " ".join(str(s) for s in self.seeds), "num_runs": len(self.runs)}
        for key in ("final_acc", "avg_inc_acc", "forgetting"):
            m, s = self.stat(key)
            out[f"{key}_mean"], out[f"{key}_std"] = m, s
        if paper:
            for key in ("final_acc", "avg_inc_acc"):
                p = self.paper.get(key)
                m = out[f"{key}_mean"]
                out[f"paper_{key}"] = p
                out[f"diff_{key}"] = None if p is None or m is None else m - p
        walls = [r["wall_seconds"] for r in self.runs if r.get("wall_seconds") is not None]
        out["wall_minutes_mean"] = sum(walls) / len(walls) / 60 if walls else None
        for key in ("peak_gpu_mem_gib", "peak_rss_gib"):
            vals = [r[key] for r in self.runs if r.get(key) is not None]
            out[f"{key}_max"] = max(vals) if vals else None
        return out


def collect_rows(plan: Iterable[tuple[str, str, int, Path, dict]]) -> list[Row]:
    """Rows from (setting, method, seed, run dir, paper figures), keeping the plan's order.
    A run directory listed twice counts once, and so does a seed: a row averages runs of
    distinct seeds only (the seed a run's metrics.json records, else the planned one); a
    further run of a seed already in its row is left out with a warning."""
    rows: dict[tuple[str, str], Row] = {}
    seen: set[Path] = set()
    for setting, method, seed, run_dir, paper in plan:
        row = rows.setdefault((setting, method), Row(setting, method, paper=paper))
        metrics = read_metrics(run_dir)
        key = Path(run_dir).resolve()
        if metrics is None or key in seen:
            continue
        seen.add(key)
        recorded = metrics.get("seed")
        run_seed = recorded if isinstance(recorded, int) else seed
        if run_seed in row.seeds:
            log.warning("%s: a second run of seed %s for %s / %s left out of the table (each "
                        "seed counts once)", run_dir, run_seed, setting, method)
            continue
        env = read_env(run_dir)
        metrics = dict(metrics, forgetting=run_forgetting(metrics),
                       wall_seconds=(env.get("timing") or {}).get("wall_seconds"),
                       peak_gpu_mem_gib=env.get("peak_gpu_mem_gib"),
                       peak_rss_gib=env.get("peak_rss_gib"))
        row.seeds.append(run_seed)
        row.runs.append(metrics)
    return list(rows.values())


def _pm(m: Optional[float], s: Optional[float]) -> str:
    """'mean ± std'; the mean alone for a single run; '–' when undefined."""
    if m is None:
        return "–"
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def _num(v: Optional[float], signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def markdown_table(rows: list[Row], paper: bool = True) -> str:
    """The Markdown table; ``paper``: with the paper's figures and our difference to them."""
    head = ["setting", "method", "seeds", "final acc.", "avg. inc. acc.", "forgetting"]
    if paper:
        head += ["paper final", "Δ final", "paper avg. inc.", "Δ avg. inc."]
    head += ["wall (min/run)", "peak GPU mem (GiB)", "peak RSS (GiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        d = row.as_dict(paper)
        cells = [d["setting"], d["method"], d["seeds"] or "none finished",
                 _pm(d["final_acc_mean"], d["final_acc_std"]),
                 _pm(d["avg_inc_acc_mean"], d["avg_inc_acc_std"]),
                 _pm(d["forgetting_mean"], d["forgetting_std"])]
        if paper:
            cells += [_num(d["paper_final_acc"]), _num(d["diff_final_acc"], True),
                      _num(d["paper_avg_inc_acc"]), _num(d["diff_avg_inc_acc"], True)]
        cells += [_num(d["wall_minutes_mean"]), _num(d["peak_gpu_mem_gib_max"]),
                  _num(d["peak_rss_gib_max"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[Row], paper: bool = True) -> str:
    """The same figures as CSV, unrounded; empty cells where a figure is undefined."""
    buf = io.StringIO()
    dicts = [r.as_dict(paper) for r in rows]
    fields = list(dicts[0]) if dicts else ["setting"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for d in dicts:
        writer.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return buf.getvalue()


def table_note(paper: bool = True) -> str:
    """What the table's cells mean."""
    return ("Accuracies in %, mean ± sample std over the seeds that finished (one seed: its "
            "value, no ±)" + ("; Δ = ours − paper" if paper else "")
            + ". Forgetting is – where undefined (a single task, e.g. joint training). "
            "Wall time: mean per run; peak memory: the largest over the runs (GPU memory "
            "allocated by torch, – on CPU; resident memory of the main.py process).")


def write_summary(rows: list[Row], out_dir: Path, title: str = "Results",
                  stem: str = "summary", paper: bool = True) -> str:
    """Write <stem>.md and <stem>.csv into ``out_dir``; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"# {title}\n\n{table_note(paper)}\n\n" + markdown_table(rows, paper)
    atomic_write_text(out_dir / f"{stem}.md", md)
    atomic_write_text(out_dir / f"{stem}.csv", csv_table(rows, paper))
    return md
