"""A suite's table from its finished runs' metrics.json, beside the paper's figures (no torch)."""
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
METRICS = ("final_acc", "avg_inc_acc", "forgetting")


def load_published(path: Path = PUBLISHED) -> dict:
    """The published settings, the paper's figures and the suites (configs/published.yaml)."""
    return yaml.safe_load(path.read_text())


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (None for one value: no spread; both for none)."""
    if len(values) < 2:
        return (float(values[0]) if values else None), None
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Row:
    """One line of the table: a setting (and method) over the seeds that finished."""

    setting: str
    method: str
    seeds: list[int] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    paper: dict = field(default_factory=dict)

    def as_dict(self, paper: bool = True) -> dict:
        """The row's figures (None where unknown); ``paper``: with the paper's columns."""
        def known(key: str) -> list:
            return [r[key] for r in self.runs if r.get(key) is not None]
        out = {"setting": self.setting, "method": self.method,
               "seeds": " ".join(map(str, self.seeds)), "num_runs": len(self.runs)}
        for key in METRICS:
            out[f"{key}_mean"], out[f"{key}_std"] = mean_std(known(key))
        for key in ("final_acc", "avg_inc_acc") if paper else ():
            p, m = self.paper.get(key), out[f"{key}_mean"]
            out[f"paper_{key}"], out[f"diff_{key}"] = p, None if p is None or m is None else m - p
        walls = known("wall_seconds")
        out["wall_minutes_mean"] = sum(walls) / len(walls) / 60 if walls else None
        for key in ("peak_gpu_mem_gib", "peak_rss_gib"):
            out[f"{key}_max"] = max(known(key), default=None)
        return out


def collect_rows(plan: Iterable[tuple[str, str, int, Path, dict]]) -> list[Row]:
    """Rows from (setting, method, seed, run dir, paper figures), in the plan's order, of
    complete runs of distinct seeds (the seed metrics.json records): each counts once."""
    rows: dict[tuple[str, str], Row] = {}
    seen: set[Path] = set()
    for setting, method, seed, run_dir, paper in plan:
        row = rows.setdefault((setting, method), Row(setting, method, paper=paper))
        metrics = read_json(Path(run_dir) / "metrics.json")
        if not metrics.get("complete") or Path(run_dir).resolve() in seen:
            continue
        seen.add(Path(run_dir).resolve())
        run_seed = metrics["seed"] if isinstance(metrics.get("seed"), int) else seed
        if run_seed in row.seeds:
            log.warning("%s: a second run of seed %s for %s / %s left out of the table (each "
                        "seed counts once)", run_dir, run_seed, setting, method)
            continue
        env = read_json(Path(run_dir) / "env.json")
        row.seeds.append(run_seed)
        row.runs.append(dict(metrics, wall_seconds=(env.get("timing") or {}).get("wall_seconds"),
                             **{k: env.get(k) for k in ("peak_gpu_mem_gib", "peak_rss_gib")}))
    return list(rows.values())


def _cell(m: Optional[float], s: Optional[float] = None, signed: bool = False) -> str:
    """'mean ± std', the mean alone without a spread, '–' when undefined."""
    if m is None:
        return "–"
    text = f"{m:+.2f}" if signed else f"{m:.2f}"
    return text if s is None else f"{text} ± {s:.2f}"


def markdown_table(rows: list[Row], paper: bool = True) -> str:
    head = ["setting", "method", "seeds", "final acc.", "avg. inc. acc.", "forgetting"]
    head += ["paper final", "Δ final", "paper avg. inc.", "Δ avg. inc."] if paper else []
    head += ["wall (min/run)", "peak GPU mem (GiB)", "peak RSS (GiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        d = row.as_dict(paper)
        cells = [d["setting"], d["method"], d["seeds"] or "none finished"]
        cells += [_cell(d[f"{k}_mean"], d[f"{k}_std"]) for k in METRICS]
        for k in ("final_acc", "avg_inc_acc") if paper else ():
            cells += [_cell(d[f"paper_{k}"]), _cell(d[f"diff_{k}"], signed=True)]
        cells += [_cell(d[k]) for k in ("wall_minutes_mean", "peak_gpu_mem_gib_max",
                                        "peak_rss_gib_max")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[Row], paper: bool = True) -> str:
    """The same figures as CSV, unrounded; empty cells where a figure is undefined."""
    dicts = [r.as_dict(paper) for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dicts[0]) if dicts else ["setting"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in d.items()} for d in dicts)
    return buf.getvalue()


def write_summary(rows: list[Row], out_dir: Path, title: str = "Results",
                  stem: str = "summary", paper: bool = True) -> str:
    note = ("Accuracies in %, mean ± sample std over the seeds that finished (one seed: no ±)"
            + ("; Δ = ours − paper" if paper else "") + ". Forgetting is – where undefined (one "
            "task, e.g. joint training). Wall time: mean per run; peak memory: the largest over "
            "the runs (torch's GPU allocation, – on CPU; the main.py process's resident memory).")
    md = f"# {title}\n\n{note}\n\n" + markdown_table(rows, paper)
    atomic_write_text(Path(out_dir) / f"{stem}.md", md)
    atomic_write_text(Path(out_dir) / f"{stem}.csv", csv_table(rows, paper))
    return md
