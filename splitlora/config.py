"""Experiment configuration: a typed schema, YAML loading, ``--set`` overrides, validation.

The schema's defaults *are* the published protocol (docs/protocol.md): a setting file
in ``configs/`` only states what differs (dataset, number of tasks, ...). The resolved
configuration, every key included, is written to each run directory as ``config.yaml``.

Every error is a :class:`ConfigError` whose message names the offending key and, for an
unknown key, suggests the closest known one.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .run.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad configuration file, key or value. The message says which and how to fix it."""


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
    kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments (e.g. depth)


@dataclass
class LoRAConfig:
    """Low-rank adapters on slices of every block's fused ``attn.qkv``."""

    rank: int = 10  # LoRA rank r
    targets: list = field(default_factory=lambda: ["k", "v"])  # slices of qkv with adapters: any of q, k, v


@dataclass
class MethodConfig:
    """Which continual learner runs (registered by name in ``splitlora.learner``)."""

    name: str = "splitlora"  # the continual learner (docs/results.md describes each)
    threshold: float = 0.95  # threshold: share of the spectrum the frozen subspace must hold
    train_a: bool = False  # subspace methods: A trains too, kept in the free subspace
    # ||A_t|| of task t >= 1 (splitlora, threshold, random_a): decay = ||A_ref|| / (t + 1);
    # constant = ||A_ref||. The public versions of the official code differ here (docs/protocol.md)
    a_norm: str = "decay"
    # inflora: DualGPM threshold after task t of T is lamb + (lame - lamb) t / T. InfLoRA's
    # configs: 0.98 / 1.0 for ImageNet-R, 0.95 / 1.0 for CIFAR-100 and DomainNet
    inflora_lamb: float = 0.98
    inflora_lame: float = 1.0  # inflora: the threshold the schedule rises toward


@dataclass
class SplitConfig:
    """The covariance pass and the split rule of SplitLoRA."""

    alpha: float = 20.0  # weight of the 'room left' term of the split rule
    # faithful: the training loader (train transforms, x expand_times), as the official code;
    # plain: the eval transform, one copy of each image (a tenth of the reads)
    cov_pass: str = "faithful"
    cov_dtype: str = "float32"  # accumulator precision of the feature second moment
    cov_amp: bool = False  # run the covariance forward under autocast (the official pass is fp32)


@dataclass
class TrainConfig:
    """Optimisation of each task (AdamW, multistep schedule per epoch)."""

    epochs: int = 10  # epochs per task
    # timm's multistep schedule as the official code steps it: epoch e (1-based) runs at
    # lr x gamma^(number of milestones <= e); [5, 8]: epochs 1-4 at lr, 5-7 at 0.1 lr, 8-10 at 0.01 lr
    milestones: list = field(default_factory=lambda: [5, 8])
    gamma: float = 0.1  # decay factor at each milestone
    lr: float = 1e-3  # AdamW lr of LoRA B
    head_lr: float = 1e-2  # AdamW lr of the current task's head
    weight_decay: float = 5e-5  # AdamW weight decay, both groups
    batch_size: int = 256  # training batch (the global batch under torchrun)
    expand_times: int = 10  # the task's training set is repeated this many times per epoch
    temperature: float = 30.0  # cross-entropy on logits / temperature
    amp: str = "auto"  # autocast: auto = fp16 with a grad scaler on CUDA, off on CPU
    # data-loading worker processes; auto = the CPUs this process may use (shared by the
    # torchrun processes of this machine) minus one
    num_workers: Union[int, str] = "auto"
    tf32: bool = True  # allow TF32 matmuls on CUDA (the official code sets precision 'high')
    compile: bool = False  # torch.compile the training forward (falls back to eager on failure)
    max_bad_steps: int = 20  # fp16: consecutive non-finite losses tolerated (skipped) before stopping


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
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class DemoPretrainConfig:
    """Pretrain a small backbone on synthetic classes when ``model.pretrained_file`` is absent.

    The demo's stand-in for an ImageNet-pretrained ViT: trained on synthetic classes
    disjoint from the demo's tasks, saved to ``model.pretrained_file`` and loaded from there
    exactly like a user's offline ViT-B weights.
    """

    enabled: bool = False  # the demo config turns it on
    seed: int = 0  # pretraining is independent of the run seed (one cached file serves all)
    num_classes: int = 40  # synthetic classes to pretrain on
    train_per_class: int = 40  # images per class
    class_offset: int = 1000  # synthetic class ids start here: disjoint from the demo's tasks
    epochs: int = 6  # pretraining epochs
    lr: float = 1e-3  # AdamW lr of the whole small ViT
    batch_size: int = 64  # pretraining batch


@dataclass
class Config:
    """The whole configuration of a run."""

    name: str = "experiment"  # run name (default directory runs/<name>/<method>/seed<seed>); the config file's stem
    seed: int = 0  # run seed; also the class-order seed unless dataset.class_order_seed is set
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    demo_pretrain: DemoPretrainConfig = field(default_factory=DemoPretrainConfig)


# --------------------------------------------------------------------------- conversion

def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = type(None) in typing.get_args(tp)
        return " or ".join(_type_name(a) for a in args) + (" or null" if optional else "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for member in inner:
            try:
                return _coerce(value, member, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} "
                          f"({type(value).__name__})")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 or isinstance(value, float) else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}' = {value!r} is invalid: must be a finite "
                                  "number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif tp is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} "
                      f"({type(value).__name__})")


def _build(cls: type, data: dict, prefix: str) -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, "
                          f"got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else \
                f"; known keys here: {', '.join(prefix + n for n in names)}"
            raise ConfigError(f"unknown config key '{full}'{hint}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if _is_dataclass_type(tp):
            kwargs[name] = _build(tp, data[name] if data[name] is not None else {},
                                  f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], tp, f"{prefix}{name}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """The configuration as plain nested dicts (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


# Keys that may change when a run is continued: they change how the remaining tasks run
# (device, speed, precision, robustness, where the same data lies), never what the finished
# tasks computed. Every other key is part of the run's identity (``config_hash``).
RESUMABLE_KEYS = (
    "name", "device", "train.amp", "train.tf32", "train.compile", "train.num_workers",
    "train.max_bad_steps", "eval.batch_size", "eval.num_workers", "dataset.root",
    "dataset.skip_bad_images",
)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts -> {'a.b': value} (``model.kwargs`` stays one value)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "kwargs":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg: Config) -> str:
    """A short stable hash of what defines the run: every key but :data:`RESUMABLE_KEYS`."""
    flat = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in RESUMABLE_KEYS}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.epochs=3'`` -> (['train', 'epochs'], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"bad override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override {text!r}: empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad override {text!r}: value is not valid YAML ({_yaml_problem(exc)})"
                          ) from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides to a nested dict (returns a new dict)."""
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node, cls = data, Config
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"bad override {text!r}: '{'.'.join(parts[:i + 1])}' is not a "
                                  "section")
            node, cls = child, _section_type(cls, part)
        try:  # a whole section is merged key by key, never reset to the defaults
            node.update(_merge(node, {parts[-1]: value}, cls, "".join(p + "." for p in parts[:-1])))
        except ConfigError as exc:
            raise ConfigError(f"bad override {text!r}: {exc}") from None
    return data


def _section_type(cls: Optional[type], name: str) -> Optional[type]:
    """The dataclass of section ``name`` of ``cls`` (None if it is a plain key, or unknown)."""
    if cls is None:
        return None
    tp = typing.get_type_hints(cls).get(name)
    return tp if tp is not None and _is_dataclass_type(tp) else None


def _merge(base: dict, update: dict, cls: Optional[type] = None, where: str = "") -> dict:
    """``update`` merged into a copy of ``base``, nested mappings key by key; ``cls`` (the
    section's dataclass) refuses a value that would replace a whole sub-section."""
    out = dict(base)
    for key, value in update.items():
        section = _section_type(cls, key) if isinstance(key, str) else None
        if section is not None and not isinstance(value, dict):
            raise ConfigError(f"'{where}{key}' is a section; set its keys ({where}{key}.KEY="
                              f"VALUE) or give a mapping of them, not {value!r}")
        # a sub-section merges; any other key (model.kwargs too) takes the value as given
        out[key] = value if section is None else _merge(out.get(key) or {}, value, section,
                                                        f"{where}{key}.")
    return out


# --------------------------------------------------------------------------- loading

def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A one-line description of a YAML error: 'line L, column C: problem'."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory; give a YAML file, e.g. "
                          "configs/imagenet_r_10.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for the provided ones)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start}); save it with UTF-8 encoding") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML ({_yaml_problem(exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got "
                          f"{type(data).__name__}")
    return data


def from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from nested dicts."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Optional[list[str]] = None,
                name: Optional[str] = None) -> Config:
    """Load a YAML file (or the schema defaults when ``path`` is None) plus overrides.

    ``name`` defaults to the file's stem when the file does not set one.
    """
    data = load_yaml(path) if path is not None else {}
    if "name" not in data:
        data["name"] = name or (Path(path).stem if path is not None else "experiment")
    data = apply_overrides(data, overrides or [])
    return from_dict(data)


# --------------------------------------------------------------------------- validation

_CHOICES = {
    "split.cov_pass": ("faithful", "plain"),
    "split.cov_dtype": ("float32", "float64"),
    "train.amp": ("auto", "fp16", "bf16", "off"),
    "model.head_init": ("official", "fresh"),
    "method.a_norm": ("decay", "constant"),
    "dataset.eval_transform": ("official", "squash_crop", "shorter_side_crop", "resize"),
    "dataset.cache": ("auto", True, False),
}


MAX_SEED = 2**32 - 1  # seeds feed numpy, torch and DataLoader generators: one 32-bit range for all
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _check(cond: bool, key: str, value: Any, requirement: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: {requirement}")


def validate(cfg: Config) -> None:
    """Ranges and choices that types alone do not catch (registry names are checked where
    the registries live: the method at learner build, the dataset at benchmark build)."""
    flat = {
        "split.cov_pass": cfg.split.cov_pass,
        "split.cov_dtype": cfg.split.cov_dtype,
        "train.amp": cfg.train.amp,
        "dataset.eval_transform": cfg.dataset.eval_transform,
        "dataset.cache": cfg.dataset.cache,
        "model.head_init": cfg.model.head_init,
        "method.a_norm": cfg.method.a_norm,
    }
    for key, value in flat.items():
        _check(value in _CHOICES[key], key, value, "must be one of "
               + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in _CHOICES[key]))
    _check(cfg.lora.rank >= 1, "lora.rank", cfg.lora.rank, "must be >= 1")
    targets = cfg.lora.targets
    _check(len(targets) >= 1 and all(t in ("q", "k", "v") for t in targets)
           and len(set(targets)) == len(targets), "lora.targets", targets,
           "must be a non-empty list of distinct slices among q, k, v")
    _check(cfg.split.alpha >= 0, "split.alpha", cfg.split.alpha, "must be >= 0")
    _check(0 < cfg.method.threshold <= 1, "method.threshold", cfg.method.threshold,
           "must be in (0, 1], e.g. 0.95 or 0.99")
    lamb, lame = cfg.method.inflora_lamb, cfg.method.inflora_lame
    _check(0 < lamb < 1, "method.inflora_lamb", lamb,
           "must be in (0, 1), e.g. 0.98 (InfLoRA's ImageNet-R value) or 0.95")
    _check(lamb <= lame <= 1, "method.inflora_lame", lame,
           f"must be in [method.inflora_lamb, 1] = [{lamb}, 1], e.g. 1.0")
    t = cfg.train
    _check(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _check(all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in t.milestones),
           "train.milestones",
           t.milestones, "must be a list of positive integers (epochs)")
    _check(list(t.milestones) == sorted(t.milestones), "train.milestones", t.milestones,
           "must be increasing")
    _check(0 < t.gamma <= 1, "train.gamma", t.gamma, "must be in (0, 1]")
    for key in ("lr", "head_lr"):
        _check(getattr(t, key) > 0, f"train.{key}", getattr(t, key), "must be > 0")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.expand_times >= 1, "train.expand_times", t.expand_times, "must be >= 1")
    _check(t.temperature > 0, "train.temperature", t.temperature, "must be > 0")
    _check(t.max_bad_steps >= 0, "train.max_bad_steps", t.max_bad_steps, "must be >= 0")
    for key, value in (("train.num_workers", t.num_workers),
                       ("eval.num_workers", cfg.eval.num_workers)):
        _check(value == "auto" or (isinstance(value, int) and value >= 0), key, value,
               "must be auto or an integer >= 0")
    _check(cfg.eval.batch_size >= 1, "eval.batch_size", cfg.eval.batch_size, "must be >= 1")
    _check(cfg.dataset.num_tasks >= 1, "dataset.num_tasks", cfg.dataset.num_tasks, "must be >= 1")
    _check(cfg.model.img_size >= 8, "model.img_size", cfg.model.img_size, "must be >= 8")
    _check(bool(cfg.name.strip()) and cfg.name == cfg.name.strip() and len(cfg.name) <= 100
           and cfg.name not in (".", "..") and "/" not in cfg.name
           and "\\" not in cfg.name and "\0" not in cfg.name, "name", cfg.name,
           "must be a plain folder name (no '/', no surrounding spaces, at most 100 characters; "
           "it names runs/<name>/): use --output to "
           "choose another place")
    _check(_DEVICE.fullmatch(cfg.device) is not None, "device", cfg.device,
           "must be auto, cpu, cuda or cuda:N with N a GPU index (e.g. cuda:0)")
    seeds = {"seed": cfg.seed, "dataset.class_order_seed": cfg.dataset.class_order_seed,
             "dataset.synthetic.seed": cfg.dataset.synthetic.seed,
             "demo_pretrain.seed": cfg.demo_pretrain.seed}
    for key, value in seeds.items():
        _check(value is None or 0 <= value <= MAX_SEED, key, value,
               f"must be an integer from 0 to {MAX_SEED}" + (" (--seed)" if key == "seed" else ""))
    kw = cfg.model.kwargs
    _check(all(isinstance(k, str) for k in kw), "model.kwargs", kw,
           "must map argument names of timm.create_model to values")
    _check("num_classes" not in kw, "model.kwargs", kw,
           "must not set num_classes: the backbone has no classifier, each task adds its own head")
    _check(kw.get("img_size", cfg.model.img_size) == cfg.model.img_size, "model.kwargs", kw,
           f"sets img_size {kw.get('img_size')!r} but model.img_size is {cfg.model.img_size} (the "
           "size images are resized to); set model.img_size instead and drop it from model.kwargs")
    s = cfg.dataset.synthetic
    for key in ("num_classes", "train_per_class", "val_per_class"):
        _check(getattr(s, key) >= 1, f"dataset.synthetic.{key}", getattr(s, key), "must be >= 1")
    _check(s.image_size >= 8, "dataset.synthetic.image_size", s.image_size, "must be >= 8")
    p = cfg.demo_pretrain
    for key in ("num_classes", "train_per_class", "epochs", "batch_size"):
        _check(getattr(p, key) >= 1, f"demo_pretrain.{key}", getattr(p, key), "must be >= 1")
    _check(p.lr > 0, "demo_pretrain.lr", p.lr, "must be > 0")
    _check(p.num_classes * p.train_per_class >= p.batch_size, "demo_pretrain.batch_size",
           p.batch_size, f"must be at most num_classes x train_per_class = "
           f"{p.num_classes * p.train_per_class} (the pretraining images; a smaller set gives "
           "no full batch)")


def config_warnings(cfg: Config) -> list[str]:
    """Legal but probably unintended settings (the CLI logs them as warnings)."""
    out = []
    t = cfg.train
    late = [m for m in t.milestones if m > t.epochs]
    if late:
        out.append(f"train.milestones {t.milestones}: {', '.join(map(str, late))} "
                   f"{'lies' if len(late) == 1 else 'lie'} beyond train.epochs = {t.epochs}, so the "
                   f"learning rate is never multiplied by train.gamma there (milestone m applies "
                   f"from epoch m on); lower the milestones or raise the epochs")
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
