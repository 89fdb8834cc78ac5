"""Backbone weights: local files (safetensors / torch), safe loading, offline hub errors."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from models import WeightsError, create_backbone, read_state_dict
from tests.conftest import TINY_VIT, run_main, tiny_overrides


def _tiny(**kw):
    return create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=16,
                           kwargs=dict(TINY_VIT, **kw))


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested_pt"])
def test_local_weights_file_is_loaded_exactly(tmp_path, fmt):
    src = _tiny()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 32)  # a classifier in the file is ignored
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if fmt == "nested_pt" else state, path)
    loaded = create_backbone("vit_tiny_patch16_224", pretrained=True, pretrained_file=str(path),
                             img_size=16, kwargs=TINY_VIT)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_mismatched_weights_name_the_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tiny(embed_dim=48, num_heads=2).state_dict(), str(path))
    with pytest.raises(WeightsError, match="does not") as err:
        create_backbone("vit_tiny_patch16_224", pretrained_file=str(path), img_size=16, kwargs=TINY_VIT)
    assert "w.safetensors" in str(err.value)


def test_weights_file_and_hash_recorded_in_env_json(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tiny().state_dict(), str(path))
    out = tmp_path / "run"
    sets = tiny_overrides(epochs=1) + [f"model.pretrained_file={path}", "dataset.name=synthetic",
                                       "dataset.num_tasks=2",
                                       "dataset.synthetic={num_classes: 4, train_per_class: 4, "
                                       "val_per_class: 2, image_size: 16}"]
    proc = run_main([x for s in sets for x in ("--set", s)] + ["--output", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = json.loads((out / "env.json").read_text())
    assert env["weights"] == {"source": "file", "path": str(path),
                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_offline_hub_download_is_a_clear_error(tmp_path):
    sets = ["model.name=vit_tiny_patch16_224", "model.pretrained=true", "model.pretrained_file=null",
            "model.kwargs={}", "model.img_size=224", "device=cpu"]
    env_before = dict(os.environ)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    try:
        proc = run_main([x for s in sets for x in ("--set", s)] + ["--output", str(tmp_path / "r")],
                        cwd=tmp_path)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert proc.returncode == 2
    err = proc.stderr
    assert "model.pretrained_file" in err and "model.safetensors" in err
    assert "huggingface.co/timm/vit_tiny_patch16_224" in err and "Traceback" not in err
