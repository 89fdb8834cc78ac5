"""tools/plot_results.py on two demo-like runs (skipped without matplotlib)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, main_inprocess, tiny_overrides

SYNTH = ["dataset.name=synthetic", "dataset.num_tasks=3",
         "dataset.synthetic={num_classes: 6, train_per_class: 8, val_per_class: 4, image_size: 16}"]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_tool_writes_the_three_figures(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (requirements-extra.txt)")
    for method in ("splitlora", "seq_lora"):
        sets = tiny_overrides(epochs=1) + SYNTH + [f"method.name={method}"]
        proc = main_inprocess([x for s in sets for x in ("--set", s)] + ["--output", method], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "figures"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_results.py"), "splitlora",
                           "seq_lora", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["acc_matrix.png", "accuracy.png", "split_dims.png"]
    for name in ("acc_matrix.png", "accuracy.png", "split_dims.png"):
        w, h = _png_size(out / name)
        assert w >= 300 and h >= 200
    wide, _ = _png_size(out / "acc_matrix.png")
    assert wide > _png_size(out / "split_dims.png")[0]  # two matrices side by side, one split panel


def test_plot_tool_rejects_a_folder_without_results(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (requirements-extra.txt)")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_results.py"), str(tmp_path),
                           "--out", str(tmp_path / "f")], capture_output=True, text=True)
    assert proc.returncode == 2 and "metrics.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "f").exists()
