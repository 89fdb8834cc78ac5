"""tools/measure.py in its reduced form (a small ViT on the CPU)."""
from __future__ import annotations

import json
import sys

from tests.helpers import REPO, published_suites

sys.path.insert(0, str(REPO / "tools"))
import measure  # noqa: E402


def test_measure_prints_the_rates_and_a_projection_of_every_published_setting(tmp_path, capsys):
    assert measure.main(["--small", "--device", "cpu", "--steps", "1", "--batch-size", "4",
                         "--loader-images", "8", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    figures = json.loads((tmp_path / "m.json").read_text())
    assert set(figures["projection"]) == set(published_suites()["main"]["settings"])
    for k in ("train", "covariance", "eval"):
        assert figures["rates"][k] > 0 and f"  {k}" in out
    assert all(v > 0 for v in figures["loaders"].values())
    for setting, p in figures["projection"].items():
        assert p["minutes"] > 0 and setting in out
    # the protocol's work: 10 epochs x expand_times 10, a pass after every task but the last
    assert figures["projection"]["imagenet_r_10"]["samples"] == {
        "train": 2_400_000, "covariance": 216_000, "eval": 33_000.0}


def test_measure_refuses_bad_arguments_with_one_line(capsys):
    import pytest
    for bad, says in ((["--steps", "0"], "--steps: must be >= 1"),
                      (["--batch-size", "-3"], "--batch-size: must be >= 1"),
                      (["--device", "cuda:x"], "--device 'cuda:x'")):
        with pytest.raises(SystemExit) as exc:
            measure.parse_args(bad)
        assert exc.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "error:" in last and says in last, last
