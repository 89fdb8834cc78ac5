"""Backbone weights (models/backbone.py, splitlora/run/experiment.py): local files
(safetensors / torch), safe loading, the weights' fingerprint in env.json and the demo
backbone's file, and the errors of a hub that cannot be reached."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from models import WeightsError, create_backbone, read_state_dict
from splitlora.run.rundir import CheckpointError, RunDir
from tests.helpers import (TINY_VIT, main_inprocess, run_script, sets, small_args, synthetic,
                           tiny_overrides)


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
    proc = main_inprocess(small_args([f"model.pretrained_file={path}"]) + ["--output", str(out)],
                          tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = json.loads((out / "env.json").read_text())
    assert env["weights"] == {"source": "file", "path": str(path),
                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_offline_hub_download_is_a_clear_error(tmp_path):
    """HF_HUB_OFFLINE and an empty cache: one error line naming the file to download and the
    key to point at it."""
    sets_ = ["model.name=vit_tiny_patch16_224", "model.pretrained=true", "model.pretrained_file=null",
             "model.kwargs={}", "model.img_size=224", "device=cpu", "demo_pretrain.enabled=false"]
    proc = run_script("main.py", ["--no-progress", *sets(sets_), "--output", tmp_path / "r"],
                      tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    err = proc.stderr
    assert "model.pretrained_file" in err and "model.safetensors" in err
    assert "huggingface.co/timm/vit_tiny_patch16_224" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_unreachable_hub_fails_fast_with_one_clean_message(tmp_path):
    """No network (the hub endpoint refuses connections) and an empty cache: one error line
    with the offline help, no retries, no warnings."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    args = sets(tiny_overrides(epochs=1) + synthetic(2, 4, 8, 4) + ["model.pretrained=true"])
    proc = run_script("main.py", ["--no-progress", *args, "--output", "run"], tmp_path, env,
                      drop=("HF_HUB_OFFLINE",))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    for w in ("error: cannot download the pretrained weights of 'vit_tiny_patch16_224'",
              "unreachable", "hf download timm/vit_tiny_patch16_224", "model.pretrained_file="):
        assert w in lines[0], w
    assert not (tmp_path / "run").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never",))


@pytest.mark.parametrize("content, words", [
    ("pickle", ["pickled Python objects", "never executed"]),
    ("truncated", ["not a complete torch archive"]),
    ("garbage", ["not a torch file"]),
])
def test_unreadable_checkpoints_and_weights_are_one_plain_line(tmp_path, content, words):
    path = tmp_path / "checkpoint.pt"
    if content == "pickle":
        torch.save({"x": _Payload()}, path)
    elif content == "truncated":
        torch.save({"a": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:600])
    else:
        path.write_bytes(b"garbage" * 20)
    for reader, error in ((lambda p: RunDir(p.parent).load_checkpoint(), CheckpointError),
                          (read_state_dict, WeightsError)):
        with pytest.raises(error) as info:
            reader(path)
        message = str(info.value)
        assert "\n" not in message and all(w in message for w in words), message
        # torch's advice to turn safe loading off must not reach the user
        assert "weights_only" not in message and "file an issue" not in message


def test_weights_path_that_is_a_directory_is_named(tmp_path):
    with pytest.raises(WeightsError, match="is a directory"):
        read_state_dict(tmp_path)


def test_identical_demo_weights_give_identical_files(tmp_path):
    """The file's SHA-256 is a resumed run's weights fingerprint: it must depend on the weights
    and the recipe only. (safetensors 0.8 writes several metadata entries in an order that
    varies from one call to the next: 30 saves of a 3-entry header gave 6 different files.)"""
    from splitlora.run.experiment import save_backbone
    state = {f"blocks.{i}.w": torch.randn(4, 4) for i in range(6)}
    files = set()
    for i in range(30):
        save_backbone(state, tmp_path / f"{i}.safetensors", '{"recipe": 1}')
        files.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(files) == 1


def test_a_cached_demo_backbone_of_another_recipe_is_refused(tmp_path):
    from splitlora.run.config import load_config
    from splitlora.run.fileio import ConfigError
    from splitlora.run.experiment import check_demo_backbone, demo_recipe, save_backbone
    from tests.helpers import DEMO
    path = tmp_path / "b.safetensors"
    cfg = load_config(DEMO, [f"model.pretrained_file={path}"])
    save_backbone({"w": torch.zeros(2)}, path, demo_recipe(cfg))
    check_demo_backbone(cfg, path)  # the same recipe: accepted
    other = load_config(DEMO, [f"model.pretrained_file={path}", "demo_pretrain.epochs=1"])
    with pytest.raises(ConfigError, match=r"demo_pretrain.epochs: 6 -> 1.*delete it"):
        check_demo_backbone(other, path)
    json.loads(demo_recipe(other))  # canonical JSON
    check_demo_backbone(other, tmp_path / "absent.safetensors")  # nothing cached: nothing to check
