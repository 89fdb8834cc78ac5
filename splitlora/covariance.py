"""The feature covariance of the adapted layers (SplitLoRA, step 1).

After each task a no-grad pass over its training data accumulates, for every block, the
uncentred second moment of the input of ``attn.qkv`` (k and v share it) over every token:

    S_l += X^T X,   n_l += #tokens,   C_l = S_l / n_l        (X: (tokens, d))

never reset, so after task t, C_l covers tasks 0..t weighted by token count. The inputs are
caught by forward pre-hooks that exist only inside :func:`collect_covariance`."""
import contextlib
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .engine import autocast, progress_bar


class CovarianceAccumulator:
    """Sums of x x^T and token counts for L layers of input width d. State: ``sums`` (L, d, d)
    in ``dtype`` and ``counts`` (L,) float64, on ``device``."""

    def __init__(self, num_layers: int, dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(num_layers, dim, dim, dtype=dtype, device=device)
        self.counts = torch.zeros(num_layers, dtype=torch.float64, device=device)

    num_layers = property(lambda self: self.sums.shape[0])
    dim = property(lambda self: self.sums.shape[1])

    @torch.no_grad()
    def update(self, layer: int, x: Tensor) -> None:
        """Add the tokens of ``x`` (..., d): sums[layer] += X^T X, counts[layer] += #tokens."""
        flat = x.detach().reshape(-1, x.shape[-1]).to(self.sums.dtype)
        self.sums[layer].addmm_(flat.T, flat)
        self.counts[layer] += flat.shape[0]

    def covariance(self, layer: int) -> Tensor:
        """(d, d) uncentred second moment ``S / n`` (zeros before any token)."""
        count = float(self.counts[layer])
        return self.sums[layer] / count if count else torch.zeros_like(self.sums[layer])

    def add_(self, other: "CovarianceAccumulator") -> None:
        """Add another accumulator (one task's pass) to this one."""
        self.sums += other.sums
        self.counts += other.counts

    def all_reduce(self) -> None:
        """Sum over a torch.distributed process group (no-op when none runs). Reduce one pass's
        accumulator, never a running total that already holds reduced sums."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sums)
            torch.distributed.all_reduce(self.counts)

    def state_dict(self) -> dict[str, Tensor]:
        return {"sums": self.sums.detach().cpu().clone(), "counts": self.counts.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if tuple(state["sums"].shape) != tuple(self.sums.shape):
            raise ValueError(f"covariance state has shape {tuple(state['sums'].shape)}, "
                             f"expected {tuple(self.sums.shape)}")
        self.sums.copy_(state["sums"])
        self.counts.copy_(state["counts"])


@contextlib.contextmanager
def collect_covariance(modules: Sequence[nn.Module],
                       acc: CovarianceAccumulator) -> Iterator[CovarianceAccumulator]:
    """Accumulate the input of ``modules[i]`` into layer i of ``acc`` while inside the block
    (forward pre-hooks, removed on exit, also on error)."""
    if len(modules) != acc.num_layers:
        raise ValueError(f"{len(modules)} modules but the accumulator has {acc.num_layers} layers")
    handles = []
    try:
        for i, module in enumerate(modules):
            handles.append(module.register_forward_pre_hook(
                lambda _module, args, i=i: acc.update(i, args[0])))
        yield acc
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def covariance_pass(model: nn.Module, modules: Sequence[nn.Module], batches: Iterable,
                    acc: CovarianceAccumulator, device: torch.device,
                    amp_dtype: Optional[torch.dtype] = None, desc: str = "covariance",
                    progress: bool = False) -> int:
    """One no-grad pass of ``model.features`` over ``batches``, accumulating the inputs of
    ``modules`` into ``acc``; returns the number of images."""
    model.eval()
    images_seen = 0
    with collect_covariance(modules, acc):
        for images, _ in progress_bar(batches, desc, progress):
            images = images.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                model.features(images) if hasattr(model, "features") else model(images)
            images_seen += images.shape[0]
    return images_seen
