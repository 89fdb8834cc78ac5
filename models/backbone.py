"""Build a timm Vision Transformer backbone (classifier removed) and load its weights safely."""

import difflib
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from torch import Tensor, nn

SUPPORTED = ("SplitLoRA adapts timm Vision Transformers whose blocks compute q, k and v with one "
             "fused attn.qkv Linear layer (e.g. vit_base_patch16_224, deit_small_patch16_224, "
             "vit_small_patch14_dinov2)")
_SUPPORTED_MODELS: set[str] = set()  # arguments check_backbone accepted in this process


class ModelError(RuntimeError):
    """A model or weights the run cannot use; the message says how to fix it (one CLI line)."""


class UnsupportedModelError(ModelError, ValueError):
    """A model name or arguments that do not give a ViT this project can adapt."""


class WeightsError(ModelError):
    """Pretrained weights could not be found, read or matched to the model."""


def file_kind(mode: int) -> str:
    return {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)",
            stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
            stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link",
            stat.S_IFREG: "a regular file"}.get(stat.S_IFMT(mode), "not a regular file")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_error_reason(exc: BaseException) -> str:
    """Why a safe load (weights_only, safetensors) failed, in one line without "turn it off"."""
    text = str(exc)
    found = re.search(r"unsupported GLOBAL (\S+)", text)
    if found:
        return (f"it holds pickled Python objects ({found.group(1)}), not only tensors; they "
                "are never executed or loaded")
    if re.search(r"Unsupported operand (\S+)", text) or "Weights only load failed" in text:
        return "it is not a torch file of tensors (unreadable pickle data)"
    if "central directory" in text or "zip archive" in text:
        return "it is not a complete torch archive (truncated or damaged)"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {first[:160].rstrip('.')}"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Safe-load weights (no pickled code runs), bare or nested in state_dict / model / module."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise WeightsError(f"weights file {path} not found (check model.pretrained_file)") from None
    if not stat.S_ISREG(mode):
        raise WeightsError(f"model.pretrained_file {path} is {file_kind(mode)}; give the weights "
                           "file (.safetensors or a torch state dict)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        raise WeightsError(f"cannot read weights file {path}: {load_error_reason(exc)}. "
                           "Is it a complete .safetensors or torch state-dict file?") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weights file into a timm ViT, ignoring classifier keys, strictly otherwise."""
    state = read_state_dict(path)
    vit = timm.models.vision_transformer
    if isinstance(model, vit.VisionTransformer):
        try:  # converts layouts and resamples position embeddings to the model's grid
            state = vit.checkpoint_filter_fn(state, model)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"weights file {path} does not fit model "
                               f"{type(model).__name__}: {exc}") from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = model.state_dict()
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    problems = (("missing", sorted(k for k in own if k not in state and not k.startswith("head."))),
                ("unexpected", sorted(k for k in state if k not in own)),
                ("shape mismatch", sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                          for k in mismatched)))
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}" + (" ..." if len(keys) > 5 else "")
             for label, keys in problems if keys]
    if parts:
        raise WeightsError(f"weights file {path} does not match the configured model: "
                           + "; ".join(parts) + ". Check model.name and model.kwargs.")
    model.load_state_dict(state, strict=False)


def pretrained_config(model_name: str):
    try:
        return timm.models.get_pretrained_cfg(model_name)
    except Exception:  # noqa: BLE001 - unknown names raise various types across timm versions
        return None


def model_mean_std(model_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the model's pretrained weights; 0.5 where timm has no config."""
    cfg = pretrained_config(model_name)
    return tuple(tuple(getattr(cfg, k, None) or (0.5,) * 3) for k in ("mean", "std"))


def hub_source(model_name: str) -> tuple[Optional[str], str]:
    """(Hugging Face repo id or None, file name) timm downloads for ``model_name``."""
    cfg = pretrained_config(model_name)
    return (getattr(cfg, "hf_hub_id", None),
            getattr(cfg, "hf_hub_filename", None) or "model.safetensors")


def hub_weights_file(model_name: str) -> Optional[str]:
    """The hub file in the local cache that timm loads for ``model_name`` (None when absent)."""
    from huggingface_hub import try_to_load_from_cache  # a dependency of timm
    repo, name = hub_source(model_name)
    if not repo:
        return None
    repo_id, _, revision = repo.partition("@")
    for candidate in dict.fromkeys((name, "model.safetensors", "open_clip_pytorch_model.bin",
                                    "pytorch_model.bin")):
        path = try_to_load_from_cache(repo_id, candidate, revision=revision or None)
        if isinstance(path, str) and Path(path).is_file():
            return path
    return None


def offline_weights_help(model_name: str) -> str:
    """How to get the weights of ``model_name`` onto a machine without internet."""
    repo, fname = hub_source(model_name)
    if repo is None:
        return (f"timm has no hub weights registered for '{model_name}'; pass a local file with "
                "model.pretrained_file=PATH or use model.pretrained=false.")
    return (f"timm expects the file '{fname}' of https://huggingface.co/{repo}. On a machine "
            f"with internet run `hf download {repo} {fname} --local-dir weights/`, copy weights/ "
            f"here and pass --set model.pretrained_file=weights/{fname} (or model.pretrained=false "
            "for random weights); HF_HUB_OFFLINE=1 skips the download attempt.")


def _qkv_layers(model: nn.Module) -> Optional[list[Optional[nn.Module]]]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        return None
    return [getattr(getattr(b, "attn", None), "qkv", None) for b in blocks]


@torch.random.fork_rng(devices=[])  # the run's random stream stays untouched
def check_backbone(name: str, img_size: int = 224, kwargs: Optional[dict[str, Any]] = None,
                   key: str = "model.name") -> None:
    """Raise :class:`UnsupportedModelError` (naming ``key``) unless the model, built on the meta
    device before any weights load, calls a fused ``attn.qkv`` in every block and runs with LoRA."""
    from .lora import inject_lora
    extra = {"img_size": img_size, **(kwargs or {}), "num_classes": 0}
    memo = repr((name, sorted(extra.items(), key=str)))
    if memo in _SUPPORTED_MODELS:
        return
    label = f"{key} {name!r}" if key.startswith("-") else f"{key} = {name!r}"
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **extra)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
            raise UnsupportedModelError(f"{label} is not a timm model; " + (
                f"did you mean {', '.join(close)}?" if close else "list them with "
                "timm.list_models('vit_*')")) from None
        raise UnsupportedModelError(f"{label} cannot be built with img_size {img_size} and "
                                    f"model.kwargs {kwargs or {}}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a constructor rejecting its arguments
        try:
            with torch.device("meta"):
                bare = timm.create_model(name, pretrained=False, num_classes=0)
        except Exception:  # noqa: BLE001
            bare = None
        if bare is not None and _qkv_layers(bare) is None:
            raise UnsupportedModelError(f"{label} is a {type(bare).__name__}, not a Vision "
                                        f"Transformer. {SUPPORTED}") from None
        raise UnsupportedModelError(f"{label} rejects its arguments (img_size {img_size}, "
                                    f"model.kwargs {kwargs or {}}): {type(exc).__name__}: {exc}. "
                                    "Fix model.kwargs") from None
    layers = _qkv_layers(model)
    if layers is None:
        raise UnsupportedModelError(f"{label} is a {type(model).__name__}, not a Vision "
                                    f"Transformer with transformer blocks. {SUPPORTED}")
    for i, qkv in enumerate(layers):
        if not isinstance(qkv, nn.Linear) or qkv.out_features % 3:
            attn = getattr(model.blocks[i], "attn", None)
            raise UnsupportedModelError(f"{label}: block {i} has no fused attn.qkv Linear (its "
                                        f"attention is {type(attn).__name__}). {SUPPORTED}")
    calls: set[int] = set()
    for i, q in enumerate(layers):  # the hooks stay: this meta model is thrown away
        q.register_forward_hook(lambda *_, i=i: calls.add(i))
    x = torch.empty(1, 3, img_size, img_size, device="meta")  # the data: RGB, model.img_size
    _forward_or_refuse(model, x, f"{label} does not run on {img_size}x{img_size} RGB images "
                                 f"(model.img_size) with model.kwargs {kwargs or {}}")
    if len(calls) < len(layers):
        attn = type(model.blocks[min(set(range(len(layers))) - calls)].attn).__name__
        raise UnsupportedModelError(f"{label}: its attention ({attn}) does not call the attn.qkv "
                                    "layer (it reads attn.qkv.weight directly), so adapters on "
                                    f"qkv would not act. {SUPPORTED}")
    inject_lora(model, 1, ("k", "v"))
    _forward_or_refuse(model, x, f"{label} does not run with LoRA on attn.qkv", SUPPORTED)
    _SUPPORTED_MODELS.add(memo)


def _forward_or_refuse(model: nn.Module, x: Tensor, problem: str, advice: str = "") -> None:
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises means it cannot be used
        raise UnsupportedModelError(f"{problem} ({type(exc).__name__}: {exc})"
                                    + (f". {advice}" if advice else "")) from None


def check_hub_reachable(name: str) -> None:
    """Unless cached, one request (no retries) must reach the hub, else say how to get the file."""
    import huggingface_hub as hf  # a dependency of timm
    from huggingface_hub.utils import HfHubHTTPError
    repo, fname = hub_source(name)
    if repo is None or hub_weights_file(name):
        return  # cached: the hub falls back to it at once when offline
    repo_id, _, revision = repo.partition("@")
    try:
        hf.get_hf_file_metadata(hf.hf_hub_url(repo_id, fname, revision=revision or None),
                                timeout=10)
    except HfHubHTTPError:
        return  # the hub answered (e.g. another file name): let timm go on
    except Exception as exc:  # noqa: BLE001 - no network, offline mode, proxy, DNS, timeout
        raise WeightsError(f"cannot download the pretrained weights of '{name}': the Hugging Face "
                           f"hub is unreachable ({type(exc).__name__}) and they are not in the "
                           "local cache. " + offline_weights_help(name)) from None


def create_backbone(name: str, pretrained: bool = True, pretrained_file: Optional[str] = None,
                    img_size: int = 224, fused_attn: bool = True,
                    kwargs: Optional[dict[str, Any]] = None) -> nn.Module:
    """A headless timm ViT; weights from ``pretrained_file``, else the hub if ``pretrained``."""
    check_backbone(name, img_size, kwargs)  # also refuses unknown names and models without blocks
    extra = {"img_size": img_size, **(kwargs or {}), "num_classes": 0}
    use_hub = pretrained and not pretrained_file
    if use_hub:
        check_hub_reachable(name)
    try:
        model = timm.create_model(name, pretrained=use_hub, **extra)
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        if not use_hub or isinstance(exc, (TypeError, KeyError, RuntimeError)):
            raise
        raise WeightsError(f"could not download the pretrained weights of '{name}' "
                           f"({type(exc).__name__}). " + offline_weights_help(name)) from None
    if pretrained_file:
        load_backbone_weights(model, pretrained_file)
    for block in model.blocks:  # check_backbone: every block has attn.qkv
        if hasattr(block.attn, "fused_attn"):
            block.attn.fused_attn = fused_attn
    return model
