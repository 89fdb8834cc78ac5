"""Experiment configuration: typed dataclasses merged by OmegaConf (defaults, YAML file, ``--set``
overrides), which refuses unknown keys, wrong types, duplicate keys, YAML tags and alias bombs.

The defaults *are* the published protocol (docs/protocol.md): a file in ``configs/`` states only
what differs. Only the chosen method's section goes into ``config.yaml`` and a run's identity."""
import dataclasses
import difflib
import itertools
import math
import re
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from splitlora.engine import TrainConfig
from splitlora.learner import ParamError
from splitlora.methods import METHODS

from .fileio import ConfigError, read_regular_file


@dataclass
class ModelConfig:
    """Backbone: any timm Vision Transformer."""

    name: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k"  # any timm ViT with a fused attn.qkv
    pretrained: bool = True  # download from the hub (timm's cache) unless pretrained_file is set
    pretrained_file: Optional[str] = None  # local weights: .safetensors, or a torch state dict
    img_size: int = 224  # input resolution (square)
    fused_attn: bool = True  # scaled-dot-product attention (numerically the same as unfused)
    # official: task 0 timm init, task 1 a copy of task 0's trained head, then nn.Linear's
    # default (what the official code does) | fresh: nn.Linear's default for every task
    head_init: str = "official"
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments (e.g. depth)


@dataclass
class LoRAConfig:
    """Low-rank adapters on slices of every block's fused ``attn.qkv``."""

    rank: int = 10  # LoRA rank r
    targets: list[str] = field(default_factory=lambda: ["k", "v"])  # slices of qkv with adapters: any of q, k, v


@dataclass
class EvalConfig:
    """Evaluation after every task, on every task seen so far."""

    batch_size: int = 100  # evaluation batch
    num_workers: Union[int, str] = "auto"  # as train.num_workers


@dataclass
class SyntheticConfig:
    """The procedurally generated benchmark used by the demo (no download)."""

    num_classes: int = 20  # classes of the benchmark
    train_per_class: int = 48  # training images per class
    val_per_class: int = 24  # validation images per class
    image_size: int = 32  # side of the square images
    seed: int = 0  # fixes the class prototypes; class offset picks a disjoint family of classes
    class_offset: int = 0  # id of the first class


@dataclass
class DatasetConfig:
    """The benchmark, its location and its cut into tasks."""

    name: str = "folder"  # the benchmark
    root: Optional[str] = None  # ROOT with train/<class>/ and val/<class>/
    num_tasks: int = 10  # tasks; must divide the class count and leave >= 2 classes per task
    shuffle_classes: bool = True  # class order: sorted ids permuted by numpy PCG64(seed)
    class_order_seed: Optional[int] = None  # None: the run seed
    skip_bad_images: bool = False  # skip (and count) unreadable images instead of stopping
    # decode each task's training images once into memory (uint8; the same pixels every read):
    # auto = unless they would take more than half the available memory
    cache: Union[bool, str] = "auto"
    # official: the benchmark's own (squash_crop for imagenet_r, domainnet, folder; resize for
    # cifar100); squash_crop: both sides to 256/224 x img_size, centre crop; shorter_side_crop:
    # aspect kept, centre crop (not official); resize: both sides to img_size
    eval_transform: str = "official"
    # largest image (width x height, pixels) decoded; a larger one is a bad image (refused, or
    # skipped with skip_bad_images), so one file cannot exhaust memory
    max_image_pixels: int = 40_000_000
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class DemoPretrainConfig:
    """The demo's stand-in for ImageNet weights: a small backbone pretrained on synthetic classes
    disjoint from its tasks when ``model.pretrained_file`` is absent, saved there (a relative path
    lies in the cache folder, see docs/runs.md), then loaded like a user's weights."""

    enabled: bool = False  # the demo config turns it on
    seed: int = 0  # pretraining is independent of the run seed (one cached file serves all)
    num_classes: int = 40  # synthetic classes to pretrain on
    train_per_class: int = 40  # images per class
    class_offset: int = 1000  # synthetic class ids start here: disjoint from the demo's tasks
    epochs: int = 6  # pretraining epochs
    lr: float = 1e-3  # AdamW lr of the whole small ViT
    batch_size: int = 64  # pretraining batch


@dataclass
class LogConfig:
    """Run logs besides log.txt and metrics.json (optional packages: requirements-extra.txt)."""

    tensorboard: bool = False  # write TensorBoard event files to <run dir>/tensorboard/
    wandb: str = "off"  # Weights & Biases: off | offline (files under <run dir>/wandb/) | online
    wandb_project: str = "splitlora"  # W&B project; the run is named <name>/<method>/seed<seed>


@dataclass
class Config:
    """The whole configuration of a run."""

    name: str = "experiment"  # run name (default directory runs/<name>/<method>/seed<seed>); the config file's stem
    seed: int = 0  # run seed; also the class-order seed unless dataset.class_order_seed is set
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    method: Any = None  # the method and its hyper-parameters (see schema())
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    demo_pretrain: DemoPretrainConfig = field(default_factory=DemoPretrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def schema() -> type[Config]:
    """:class:`Config` with its ``method`` section made from the methods registered now."""
    fields: list[tuple] = [("name", str, field(default="splitlora"))]
    fields += [(name, cls.Params, field(default_factory=cls.Params))
               for name, cls in METHODS.items() if dataclasses.fields(cls.Params)]
    method = dataclasses.make_dataclass("MethodConfig", fields, namespace={
        "__doc__": "Which continual learner runs (``name``) and each method's hyper-parameters "
                   "(only the chosen method's section is read)."})
    return dataclasses.make_dataclass("Config", [("method", method, field(default_factory=method))],
                                      bases=(Config,), namespace={"__doc__": Config.__doc__})


# Keys that may change when a run is continued: how the remaining tasks run (device, speed,
# precision, robustness, data location, logs), never what finished tasks computed.
RESUMABLE_KEYS = ("name", "device", "train.amp", "train.tf32", "train.compile",
                  "train.num_workers", "train.max_bad_steps", "eval.batch_size", "eval.num_workers",
                  "dataset.root", "dataset.skip_bad_images", "dataset.max_image_pixels",
                  "log.tensorboard", "log.wandb", "log.wandb_project")


def to_dict(cfg: Config) -> dict:
    """Plain nested dicts with only the chosen method's section (what ``config.yaml`` holds)."""
    data = dataclasses.asdict(cfg)
    method = data["method"]
    data["method"] = {k: v for k, v in method.items() if k in ("name", method["name"])}
    return data


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts -> {'a.b': value} (``model.kwargs`` stays one value)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "kwargs":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse anything huge
# keys holding a mapping that is a value, not a section: a file or an override replaces it
# whole (``--set model.kwargs={depth: 6}`` drops the file's other kwargs), never key by key
PLAIN_MAPPINGS = ("model.kwargs",)
_UNSET = object()


def _omegaconf_problem(exc: Exception) -> str:
    """One line from an OmegaConf or YAML error (no object types, no multi-line context)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return where + (exc.problem or lines[0]) + (f" ({exc.context})" if exc.context else "")
    text = lines[0] if lines else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if text.startswith("Key '") and " not in " in text and key is not None:  # unknown key
        section, _, name = key.rpartition(".")
        cls = _sections().get(section)
        known = [f.name for f in dataclasses.fields(cls)] if cls is not None else []
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        prefix = f"{section}." if section else ""
        hint = (f"; did you mean '{prefix}{close[0]}'?" if close else
                f"; known keys here: {', '.join(prefix + k for k in known)}")
        return f"unknown config key '{key}'{hint}"
    replaced = re.match(r"Merge error: (\w+) is not a subclass of (\w+)\. value: (.*)", text)
    section = next((path for path, cls in _sections().items()
                    if replaced and cls.__name__ == replaced.group(2)), None)
    if section and not key:  # OmegaConf names no key when a value replaces a section
        return (f"config key '{section}' is a section, not a value (got {replaced.group(3)}); "
                f"set its keys: --set {section}.KEY=VALUE, or {section}={{KEY: VALUE}}")
    return f"config key '{key}': {text}" if key else text


def _sections(cls: Optional[type] = None, path: str = "") -> dict[str, type]:
    """Every section of the schema by its dotted path ('' for the top level)."""
    out = {path: cls or schema()}
    for name, tp in typing.get_type_hints(out[path]).items():  # the fields' types, resolved
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(_sections(tp, f"{path}.{name}" if path else name))
    return out


def _parse(text: str, what: str):
    from omegaconf import OmegaConf
    try:  # (a C parser's recursion would end the process before any RecursionError)
        if max(itertools.accumulate((c in "[{") - (c in "]}") for c in text), default=0) > 500:
            raise RecursionError
        node = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to be a config") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{what} is not a valid config ({_omegaconf_problem(exc)})") from None
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"{what} must hold a mapping of sections, got a list")
    return node


def _dotlist(overrides: list[str]):
    """``--set KEY=VALUE`` overrides as one OmegaConf config (values parsed as YAML)."""
    from omegaconf import OmegaConf
    out = OmegaConf.create({})
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError(f"bad override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
        node = _parse(f"v: {value}" if value.strip() else "v: null", f"--set {text}")
        nested: Any = node.v
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        out = OmegaConf.merge(out, OmegaConf.create(nested))
    return out


def override_keys(overrides: list[str]) -> list[str]:
    return [o.partition("=")[0].strip() for o in overrides]


def _resolve(layers: list, overrides: list[str]) -> Config:
    """The schema's defaults, each layer (a mapping), then ``overrides``; fails as ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    try:
        layers = [OmegaConf.create(layer) for layer in layers] + [_dotlist(overrides)]
        merged = OmegaConf.merge(OmegaConf.structured(schema()), *layers)
        for key in PLAIN_MAPPINGS:  # a value, not a section: the last layer setting it wins whole
            for layer in layers:
                value = OmegaConf.select(layer, key, default=_UNSET)
                if value is not _UNSET:
                    OmegaConf.update(merged, key, value, merge=False)
        return OmegaConf.to_object(merged)
    except RecursionError:
        raise ConfigError("the config is nested too deeply") from None
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError) as exc:
        raise ConfigError(_omegaconf_problem(exc)) from None


def load_config(path: str | Path | None = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML file at ``path`` (``name``: its stem), then ``overrides``."""
    file_cfg: Any = {}
    if path is not None:
        text = read_regular_file(Path(path), "--config", MAX_CONFIG_BYTES, ConfigError,
                                 "give a YAML file, e.g. configs/imagenet_r_10.yaml")
        try:
            file_cfg = _parse(text.decode("utf-8"), f"config file {path}")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start}); save it "
                              "with UTF-8 encoding") from None
    default_name = Path(path).stem if path is not None else "experiment"
    cfg = _resolve([{"name": default_name}, file_cfg], overrides or [])
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    """A config from the nested dicts of a ``config.yaml`` (absent keys at their defaults)."""
    return _resolve([data], [])


CHOICES = {"train.amp": ("auto", "fp16", "bf16", "off"), "model.head_init": ("official", "fresh"),
           "dataset.eval_transform": ("official", "squash_crop", "shorter_side_crop", "resize"),
           "dataset.cache": ("auto", True, False), "log.wandb": ("off", "offline", "online")}
# lower bounds (every seed: 0 to MAX_SEED)
MINIMUM = {"lora.rank": 1, "train.epochs": 1, "train.batch_size": 1, "train.expand_times": 1,
           "train.weight_decay": 0, "train.max_bad_steps": 0, "eval.batch_size": 1,
           "dataset.num_tasks": 1, "model.img_size": 8, "dataset.synthetic.num_classes": 1,
           "dataset.synthetic.train_per_class": 1, "dataset.synthetic.val_per_class": 1,
           "dataset.synthetic.image_size": 8, "demo_pretrain.num_classes": 1,
           "demo_pretrain.train_per_class": 1, "demo_pretrain.epochs": 1,
           "demo_pretrain.batch_size": 1, "dataset.max_image_pixels": 1}
POSITIVE = ("train.lr", "train.head_lr", "train.temperature", "demo_pretrain.lr")
SEEDS = ("seed", "dataset.class_order_seed", "dataset.synthetic.seed", "demo_pretrain.seed")
MAX_SEED = 2**32 - 1  # seeds feed numpy, torch and DataLoader generators: one 32-bit range for all
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _check(ok: bool, key: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: {requirement}")


def validate(cfg: Config) -> None:
    """Ranges, choices and cross-field rules that types do not catch."""
    flat = flatten(to_dict(cfg))
    for key, value in flat.items():
        if isinstance(value, float):
            _check(math.isfinite(value), key, value, "must be a finite number")
    for key, allowed in CHOICES.items():
        _check(flat[key] in allowed, key, flat[key], "must be one of "
               + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in allowed))
    for key, low in MINIMUM.items():
        _check(flat[key] >= low, key, flat[key], f"must be >= {low}")
    for key in POSITIVE:
        _check(flat[key] > 0, key, flat[key], "must be > 0")
    for key in SEEDS:
        _check(flat[key] is None or 0 <= flat[key] <= MAX_SEED, key, flat[key],
               f"must be an integer from 0 to {MAX_SEED}" + (" (--seed)" if key == "seed" else ""))
    _check(cfg.method.name in METHODS, "method.name", cfg.method.name,
           f"not a known method; known: {', '.join(sorted(METHODS))}")
    params = getattr(cfg.method, cfg.method.name, None)
    try:
        if params is not None:
            params.validate()
    except ParamError as exc:
        _check(False, f"method.{cfg.method.name}.{exc.key}", exc.value, exc.requirement)
    targets = cfg.lora.targets
    _check(len(targets) >= 1 and all(t in ("q", "k", "v") for t in targets)
           and len(set(targets)) == len(targets), "lora.targets", targets,
           "must be a non-empty list of distinct slices among q, k, v")
    t = cfg.train
    _check(all(m >= 1 for m in t.milestones) and list(t.milestones) == sorted(t.milestones),
           "train.milestones", t.milestones, "must be an increasing list of positive epochs")
    _check(0 < t.gamma <= 1, "train.gamma", t.gamma, "must be in (0, 1]")
    for key in ("train.num_workers", "eval.num_workers"):
        _check(flat[key] == "auto" or (isinstance(flat[key], int) and flat[key] >= 0), key,
               flat[key], "must be auto or an integer >= 0")
    _check(bool(cfg.name.strip()) and cfg.name == cfg.name.strip() and len(cfg.name) <= 100
           and cfg.name not in (".", "..") and not any(c in cfg.name for c in "/\\\0"), "name",
           cfg.name, "must be a plain folder name (no '/', no surrounding spaces, at most 100 "
           "characters; it names runs/<name>/): use --output to choose another place")
    _check(_DEVICE.fullmatch(cfg.device) is not None, "device", cfg.device,
           "must be auto, cpu, cuda or cuda:N with N a GPU index (e.g. cuda:0)")
    kw = cfg.model.kwargs
    _check("num_classes" not in kw, "model.kwargs", kw, "must not set num_classes (task heads do)")
    _check(kw.get("img_size", cfg.model.img_size) == cfg.model.img_size, "model.kwargs", kw,
           f"sets img_size {kw.get('img_size')!r} but model.img_size is {cfg.model.img_size} (the "
           "size images are resized to); set model.img_size instead and drop it from model.kwargs")
    s, p = cfg.dataset.synthetic, cfg.demo_pretrain
    images = s.num_classes * (s.train_per_class + s.val_per_class) + p.num_classes * p.train_per_class
    _check(images * 3 * s.image_size ** 2 <= 2**33, "dataset.synthetic", asdict(s), "the synthetic "
           "images (and the demo's pretraining images) would take over 8 GiB of memory")
    _check(p.num_classes * p.train_per_class >= p.batch_size, "demo_pretrain.batch_size",
           p.batch_size, "must be at most num_classes x train_per_class = "
           f"{p.num_classes * p.train_per_class} (the pretraining images: one full batch)")


def config_warnings(cfg: Config, overrides: list[str]) -> list[str]:
    """Legal but probably unintended settings (the CLI logs them as warnings)."""
    out, t = [], cfg.train
    late = [m for m in t.milestones if m > t.epochs]
    if late:
        out.append(f"train.milestones {t.milestones}: {', '.join(map(str, late))} "
                   f"{'lies' if len(late) == 1 else 'lie'} beyond train.epochs = {t.epochs}, so "
                   "train.gamma never applies there (milestone m from epoch m on); lower the "
                   "milestones or raise the epochs")
    for key in override_keys(overrides):
        parts = key.split(".")
        if parts[0] == "method" and len(parts) > 1 and parts[1] not in ("name", cfg.method.name):
            out.append(f"{key} is set, but method {cfg.method.name} does not read it: it has no "
                       "effect on this run")
    return out
