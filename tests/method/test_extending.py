"""docs/extending.md: the example method is one file plus its registration, and runs."""
from __future__ import annotations

import importlib.util
import re
import sys

import torch

from tests.helpers import REPO, main_inprocess, read_metrics

DOC = REPO / "docs" / "extending.md"


def _example(tmp_path, monkeypatch):
    """The document's method file, imported, and registered as the document says."""
    text = DOC.read_text()
    code, registration = re.findall(r"```python\n(.*?)```", text, re.S)[:2]
    assert registration.strip() == "from .ewc_lora import EWCLoRA"
    assert '`"ewc_lora": EWCLoRA,`' in text
    (tmp_path / "ewc_lora.py").write_text(code)
    spec = importlib.util.spec_from_file_location("ewc_lora", tmp_path / "ewc_lora.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ewc_lora", module)  # as an import would (inspect finds it)
    spec.loader.exec_module(module)
    from splitlora.methods import METHODS
    monkeypatch.setitem(METHODS, "ewc_lora", module.EWCLoRA)
    return text


def test_the_documented_method_runs_the_demo_with_its_own_hyper_parameter(tmp_path, monkeypatch,
                                                                          demo_runs):
    demo_runs.results()  # the session's demo runs have pretrained the demo backbone by then
    text = _example(tmp_path, monkeypatch)
    short = ["--set", "train.epochs=1", "--set", "train.milestones=[1]"]
    out = tmp_path / "run"
    proc = main_inprocess(["--set", "method.name=ewc_lora", "--set", "method.ewc_lora.lam=1e4",
                           *short, "--output", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = read_metrics(out)
    assert metrics["complete"] and metrics["method"] == "ewc_lora"
    assert "ewc_lora:\n    lam: 10000.0" in (out / "config.yaml").read_text()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(state["learner"]["fisher"]) == 4 and float(state["learner"]["fisher"][0].sum()) > 0
    # the document's refusal, word for word
    bad = main_inprocess(["--set", "method.name=ewc_lora", "--set", "method.ewc_lora.lam=-1",
                          "--output", str(tmp_path / "bad")], cwd=tmp_path)
    line = re.search(r"\(`(error: config key\s+'method\.ewc_lora\.lam'.*?)`\)", text, re.S).group(1)
    assert bad.returncode == 2 and bad.stderr.strip() == " ".join(line.split())
    assert not (tmp_path / "bad").exists()


def test_the_documented_method_is_listed_in_the_generated_config_reference(tmp_path, monkeypatch):
    _example(tmp_path, monkeypatch)
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import config_doc
    assert "| `method.ewc_lora.lam` | `100.0` | weight of the penalty" in config_doc.render()
