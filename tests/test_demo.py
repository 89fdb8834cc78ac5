"""The demo as a newcomer runs it: `python main.py`, then the seq_lora baseline."""
from __future__ import annotations

import json

from tests.conftest import run_main


def test_demo_splitlora_forgets_less_than_sequential_lora(tmp_path):
    first = run_main([], cwd=tmp_path)  # pretrains the demo backbone into .cache/ on first use
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / ".cache" / "demo_backbone_v1.safetensors").is_file()
    assert "final accuracy" in first.stdout
    base = run_main(["--set", "method.name=seq_lora"], cwd=tmp_path)  # its own default directory
    assert base.returncode == 0, base.stderr[-3000:]
    assert "pretraining" not in base.stderr  # the cached backbone is loaded, not retrained
    split = json.loads((tmp_path / "runs/demo/splitlora/seed0/metrics.json").read_text())
    seq = json.loads((tmp_path / "runs/demo/seq_lora/seed0/metrics.json").read_text())
    assert (split["method"], seq["method"]) == ("splitlora", "seq_lora")
    assert split["num_tasks"] == seq["num_tasks"] == 5
    # CPU runs are deterministic: the same seed gives the same numbers on every run
    assert split["forgetting"] < seq["forgetting"]
    # SplitLoRA's adapters really were confined: frozen dimensions grow with the tasks
    dims = [sum(d) for d in split["split_dims"][:-1]]
    assert dims == sorted(dims) and dims[-1] > dims[0]
