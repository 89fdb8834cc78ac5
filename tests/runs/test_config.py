"""Config loading (splitlora/run/config.py): the schema's defaults, files, ``--set``
overrides and per-method sections; every bad value refused with one message naming the key;
the warnings for legal but probably unintended settings; the default run directory."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from splitlora.methods import METHODS
from splitlora.run.cli import default_output
from splitlora.run.config import (RESUMABLE_KEYS, config_warnings, dump_yaml, flatten,
                                  load_config, schema, to_dict)
from splitlora.run.fileio import ConfigError
from tests.helpers import CONFIGS, DEMO, make_config, method_names

# ------------------------------------------------------------------------------ the schema


def test_every_registered_method_with_params_has_its_own_section():
    cfg = load_config(None)
    for name in method_names():
        fields = dataclasses.fields(METHODS[name].Params)
        section = getattr(cfg.method, name, None)
        if fields:
            assert section == METHODS[name].Params(), name  # defaults = the Params defaults
        else:
            assert section is None, name


def test_only_the_chosen_methods_section_is_written():
    cfg = load_config(None, ["method.name=threshold", "method.threshold.energy=0.9"])
    data = to_dict(cfg)
    assert data["method"] == {"name": "threshold", "threshold": dataclasses.asdict(
        METHODS["threshold"].Params(energy=0.9))}
    assert yaml.safe_load(dump_yaml(cfg))["method"] == data["method"]
    assert "split" not in data  # the old section is gone
    seq = to_dict(load_config(None, ["method.name=seq_lora"]))
    assert seq["method"] == {"name": "seq_lora"}


def test_resumable_keys_are_keys_of_the_schema():
    keys = set(flatten(to_dict(load_config(None))))
    assert set(RESUMABLE_KEYS) <= keys


@pytest.mark.parametrize("file", sorted(p.name for p in CONFIGS.glob("*.yaml")
                                        if p.name != "published.yaml"))
def test_every_shipped_config_loads(file):
    cfg = load_config(CONFIGS / file)
    assert cfg.name == Path(file).stem and cfg.method.name in METHODS


# ------------------------------------------------------------------------------ overrides

def test_a_section_override_merges_into_the_section():
    base = load_config(DEMO)
    cfg = load_config(DEMO, ["train={epochs: 3}"])
    assert cfg.train.epochs == 3
    # every other key of the section keeps the file's value, not the schema default
    for key in ("lr", "milestones", "batch_size", "expand_times", "num_workers"):
        assert getattr(cfg.train, key) == getattr(base.train, key), key
    nested = load_config(DEMO, ["dataset={synthetic: {num_classes: 8}}"])
    assert nested.dataset.synthetic.num_classes == 8
    assert nested.dataset.synthetic.image_size == base.dataset.synthetic.image_size
    assert nested.dataset.name == base.dataset.name
    method = load_config(DEMO, ["method={splitlora: {alpha: 5}}"])
    assert method.method.splitlora.alpha == 5.0 and method.method.splitlora.cov_pass == "faithful"


def test_a_plain_mapping_key_inside_a_section_override_is_replaced_not_merged():
    cfg = load_config(DEMO, ["model={kwargs: {depth: 2}}"])
    assert cfg.model.kwargs == {"depth": 2}  # as --set model.kwargs={depth: 2} gives
    assert load_config(DEMO, ["model.kwargs={depth: 2}"]).model.kwargs == {"depth": 2}
    assert load_config(DEMO, ["model.kwargs={}"]).model.kwargs == {}  # the file's dropped
    with pytest.raises(ConfigError, match="model.kwargs"):
        load_config(DEMO, ["model.kwargs=null"])


def test_a_method_section_is_set_key_by_key():
    cfg = load_config(None, ["method.name=inflora", "method.inflora.lamb=0.95",
                             "method.splitlora.alpha=3"])
    assert cfg.method.inflora.lamb == 0.95 and cfg.method.inflora.lame == 1.0
    cifar = load_config(CONFIGS / "cifar100_10.yaml")  # the file sets inflora's own value
    assert cifar.method.inflora.lamb == 0.95


@pytest.mark.parametrize("override", ["model=null", "train=3", "dataset.synthetic=[1, 2]",
                                      "dataset={synthetic: null}", "method.splitlora=5"])
def test_a_section_cannot_be_replaced_by_a_value(override):
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    message = str(info.value)
    assert "\n" not in message and "config key '" in message, message
    if "null" not in override:
        section = override.split("=")[0] if "{" not in override else "dataset.synthetic"
        assert f"config key '{section}' is a section, not a value" in message, message


# ------------------------------------------------------------------------------ bad values

@pytest.mark.parametrize("override, words", [
    ("train.lrr=0.1", ["unknown config key 'train.lrr'; did you mean 'train.lr'?"]),
    ("train.epoch=3", ["unknown config key 'train.epoch'; did you mean 'train.epochs'?"]),
    ("trian.lr=0.1", ["unknown config key 'trian'", "did you mean 'train'"]),
    ("split.alpha=5", ["unknown config key 'split'"]),  # the old section is gone
    ("method.threshold=0.9", ["'method.threshold' is a section"]),  # not a float now
    ("method.train_a=true", ["unknown config key 'method.train_a'"]),
    ("method.inflora_lamb=0.9", ["unknown config key 'method.inflora_lamb'"]),
    ("method.splitlora.alfa=3", ["unknown config key 'method.splitlora.alfa'",
                                 "did you mean 'method.splitlora.alpha'?"]),
    ("train.epochs=abc", ["config key 'train.epochs'", "abc"]),
    ("train.lr=fast", ["config key 'train.lr'", "fast"]),
    ("lora.rank=0", ["'lora.rank' = 0 is invalid: must be >= 1"]),
    ("train.epochs=0", ["'train.epochs' = 0", ">= 1"]),
    ("eval.batch_size=0", ["'eval.batch_size' = 0", ">= 1"]),
    ("train.amp=fp8", ["'train.amp' = 'fp8'", "auto, fp16, bf16, off"]),
    ("method.name=ewc", ["'method.name' = 'ewc'", "known: " + ", ".join(sorted(METHODS))]),
    ("method.splitlora.alpha=-1", ["'method.splitlora.alpha' = -1.0 is invalid: must be >= 0"]),
    ("method={name: threshold, threshold: {energy: 0}}", ["'method.threshold.energy' = 0.0"]),
    ("method.splitlora.cov_pass=half", ["'method.splitlora.cov_pass' = 'half'", "faithful, plain"]),
    ("train.milestones=[true]", ["'train.milestones[0]'"]),
    ("train.milestones=[8, 5]", ["'train.milestones'", "increasing"]),
    ("train.gamma=0", ["'train.gamma' = 0.0", "(0, 1]"]),
    ("train.num_workers=many", ["train.num_workers"]),
    ("eval.num_workers=-1", ["eval.num_workers", "auto or an integer >= 0"]),
    ("train.num_workers=2.5", ["train.num_workers"]),
    ("dataset.cache=maybe", ["dataset.cache"]),
    ("dataset.eval_transform=center", ["'dataset.eval_transform' = 'center'", "official"]),
    ("lora.targets=[k, k]", ["'lora.targets'", "distinct slices"]),
    ("lora.targets=[x]", ["'lora.targets'", "q, k, v"]),
    ("device=cuda:x", ["'device'", "cuda:N"]),
    ("device=tpu", ["'device'", "cuda:N"]),
    ("seed=-1", ["'seed' = -1", "0 to 4294967295"]),
    ("seed=100000000000000000000", ["'seed'"]),
    ("dataset.class_order_seed=-2", ["'dataset.class_order_seed' = -2", "0 to 4294967295"]),
    ("model.kwargs={num_classes: 5}", ["'model.kwargs'", "num_classes"]),
    ("model.kwargs={img_size: 64}", ["'model.kwargs'", "img_size 64", "model.img_size is 32"]),
    ("model.head_init=zero", ["'model.head_init' = 'zero'", "official, fresh"]),
    ("name=' '", ["'name'", "plain folder name"]),
    (f"name={'n' * 101}", ["'name'", "at most 100 characters"]),
    ("demo_pretrain.train_per_class=1", ["'demo_pretrain.batch_size' = 64",
                                         "num_classes x train_per_class = 40"]),
    ("log.wandb=maybe", ["'log.wandb' = 'maybe'", "off, offline, online"]),
])
def test_bad_values_are_refused_naming_the_key(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    message = str(info.value)
    assert "\n" not in message, message  # one line, whatever OmegaConf said
    for w in words:
        assert w in message, (w, message)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "1e400", "nan"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="'train.lr' .* must be a finite number"):
        load_config(DEMO, [f"train.lr={value}"])


@pytest.mark.parametrize("name", ["../escape", "a/b", ".", "..", ""])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="'name' .* plain folder name"):
        load_config(DEMO, [f"name={name!r}" if name else "name=''"])


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train..epochs=3", "train.=3"])
def test_an_override_without_key_or_value_is_refused(override):
    with pytest.raises(ConfigError, match="bad override .*KEY=VALUE"):
        load_config(None, [override])


@pytest.mark.parametrize("text, words", [
    ("train: [epochs: 3\n", ["not a valid config", "line"]),
    ("- 1\n- 2\n", ["must hold a mapping"]),
    ("train: {epochs: 3}\ntrain: {epochs: 4}\n", ["not a valid config"]),  # duplicate key
    ("a: &a [*a]\n", ["not a valid config"]),
    ("x: !!python/object/apply:os.system ['echo never']\n", ["not a valid config"]),
])
def test_bad_config_files_are_refused_in_one_line(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and "bad.yaml" in message, message
    for w in words:
        assert w in message, (w, message)


def test_config_files_that_are_not_files_or_too_big_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="config file not found|not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="bytes"):
        load_config(big)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 .*0xe9"):
        load_config(latin)


def test_a_stored_config_is_read_with_absent_keys_at_their_defaults():
    """What a run directory's config.yaml holds is read without validation (an old run's
    file may lack keys added since); the keys it has keep their values."""
    from splitlora.run.config import config_from_dict
    cfg = config_from_dict({"seed": 3, "train": {"epochs": 2}})
    assert cfg.seed == 3 and cfg.train.epochs == 2 and cfg.train.lr == 1e-3
    assert cfg.dataset.max_image_pixels == load_config(None).dataset.max_image_pixels
    assert make_config({"lora": {"rank": 4}}).lora.rank == 4
    with pytest.raises(ConfigError, match="lora.rank"):
        make_config({"lora": {"rank": 0}})


# ------------------------------------------------------------------------------ warnings

@pytest.mark.parametrize("epochs, milestones, late", [
    (10, [5, 8], []), (8, [5, 8], []), (7, [5, 8], [8]), (4, [5, 8], [5, 8])])
def test_milestones_beyond_the_epochs_warn(epochs, milestones, late):
    cfg = make_config({"train": {"epochs": epochs, "milestones": milestones}})
    warnings = config_warnings(cfg, [])
    if not late:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert f"{', '.join(map(str, late))} {'lies' if len(late) == 1 else 'lie'} beyond " \
               f"train.epochs = {epochs}" in warnings[0]


def test_another_methods_section_set_on_the_command_line_warns():
    def warned(*overrides):
        cfg = load_config(CONFIGS / "cifar100_10.yaml", list(overrides))
        return [w.split(" is set")[0] for w in config_warnings(cfg, list(overrides))
                if "does not read it" in w]
    assert warned() == []  # the file's own inflora values are not a warning
    assert warned("method.splitlora.alpha=5") == []
    assert warned("method.name=threshold", "method.splitlora.alpha=5",
                  "method.threshold.energy=0.9") == ["method.splitlora.alpha"]
    assert warned("method.name=seq_lora", "method.random_a.a_norm=constant") == [
        "method.random_a.a_norm"]
    assert warned("method.name=inflora", "method.inflora.lame=0.99",
                  "method.splitlora={alpha: 5}") == ["method.splitlora"]
    cfg = load_config(None, ["method.name=joint", "method.threshold.cov_dtype=float64"])
    (message,) = config_warnings(cfg, ["method.threshold.cov_dtype=float64"])
    assert message == ("method.threshold.cov_dtype is set, but method joint does not read it: "
                       "it has no effect on this run")


# ------------------------------------------------------------------------------ run directory

def test_default_directory_distinguishes_method_and_changed_keys():
    base = load_config(DEMO)
    assert default_output(base, base) == Path("runs/demo/splitlora/seed0")
    seq = load_config(DEMO, ["method.name=seq_lora", "seed=3"])
    assert default_output(seq, base) == Path("runs/demo/seq_lora/seed3")
    longer = load_config(DEMO, ["train.epochs=2", "train.num_workers=1"])  # workers: resumable
    assert default_output(longer, base) == Path("runs/demo/splitlora+train.epochs=2/seed0")
    same = load_config(DEMO, ["train.epochs=4"])  # the file's own value: nothing changed
    assert default_output(same, base) == Path("runs/demo/splitlora/seed0")
    alpha = load_config(DEMO, ["method.splitlora.alpha=5"])
    assert default_output(alpha, base) == Path("runs/demo/splitlora+method.splitlora.alpha=5.0/seed0")
    other = load_config(DEMO, ["method.threshold.energy=0.5"])  # not read by splitlora
    assert default_output(other, base) == Path("runs/demo/splitlora/seed0")
    many = load_config(DEMO, [f"model.kwargs={{depth: 2, num_heads: 2, embed_dim: 32, "
                              f"patch_size: 4, mlp_ratio: 2}}", "train.lr=0.1"])
    tag = default_output(many, base).parts[2]
    assert tag.startswith("splitlora+cfg-") and len(tag) < 40  # long tags are hashed


def test_schema_of_a_method_without_params_has_no_section():
    fields = {f.name for f in dataclasses.fields(schema())}
    assert {"name", "seed", "device", "model", "lora", "method", "train", "eval", "dataset",
            "demo_pretrain", "log"} == fields


def test_worker_counts_and_the_decode_cache_take_auto_or_a_value():
    cfg = load_config(None)
    assert cfg.train.num_workers == "auto" and cfg.eval.num_workers == "auto"
    assert cfg.dataset.cache == "auto"
    assert load_config(None, ["train.num_workers=3"]).train.num_workers == 3
    assert load_config(None, ["dataset.cache=false"]).dataset.cache is False
