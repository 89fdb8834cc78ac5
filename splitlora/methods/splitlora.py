"""SplitLoRA: continual learning by splitting the gradient space of LoRA adapters.

In the order of the paper (docs/protocol.md cites the official code for each step); d = input
width of the adapted layer, r = LoRA rank, n = tasks learned so far:

1. **Covariance.** After task t a pass over its training data adds the inputs of every block's
   ``attn.qkv`` to a second moment C that is never reset (:mod:`splitlora.covariance`).
2. **Split.** With ``C = U diag(s) U^T`` (s descending), the leading :func:`split_point`
   directions are the old tasks' (frozen) subspace; the rest is free.
3. **Free basis.** ``U_free`` = the remaining columns of U (:func:`free_basis`).
4. **A.** Task t+1's A is drawn inside span(U_free) (:func:`init_lora_A`), so ``B A x ~ 0``
   for the old tasks' inputs x whatever B learns.
5. **Training and merge.** B and the task's head train, A is frozen (``Learner.trainable``);
   after the task ``W <- W + B A`` (``LoRAQKV.merge``) and step 1 runs again.

The paper's ablations: ``threshold`` freezes a fixed share of the spectrum instead of step 2's
rule; ``random_a`` draws A in the whole space."""
import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from models import kaiming_uniform_A

from ..covariance import CovarianceAccumulator, covariance_pass
from ..engine import NumericalError
from ..learner import Learner, MethodParams, Task, require

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- 2. the split
def spectrum(cov: Tensor) -> tuple[Tensor, Tensor]:
    """(d, d) symmetric PSD -> eigenvalues (d,) descending, clamped at 0 (= its singular
    values), and eigenvectors (d, d), column i for eigenvalue i; float64."""
    c = cov.detach().to(torch.float64)
    c = 0.5 * (c + c.T)
    if not torch.isfinite(c).all():
        raise FloatingPointError("covariance holds non-finite values; cannot split")
    vals, vecs = torch.linalg.eigh(c)
    return vals.flip(0).clamp_min(0.0), vecs.flip(1)


def split_criterion(eigvals: Tensor, num_tasks: int, alpha: float) -> Tensor:
    """(d,) float64: ``n (1 - c_i) - alpha (d - i) / d`` for i = 0..d-1, with ``c_i`` the share
    of the spectrum held by the leading i+1 directions: the old tasks' energy left free
    (weighted by the n tasks it can hurt) against the room left to learn."""
    s = eigvals.detach().to(torch.float64)
    d, total = s.numel(), s.sum()
    # an all-zero spectrum leaves no old-task energy anywhere: no interference term
    cum = torch.cumsum(s / total, 0) if total > 0 and torch.isfinite(total) else torch.ones_like(s)
    return num_tasks * (1.0 - cum) - alpha * (d - torch.arange(d, dtype=torch.float64)) / d


def split_point(eigvals: Tensor, num_tasks: int, alpha: float) -> int:
    """Leading directions kept frozen: ``max(i*, 1) + 1`` with
    ``i* = argmin_i  n (1 - c_i) - alpha (d - i) / d`` (the first minimiser), the rule and index
    convention of the official code. ``eigvals``: (d,) descending; n = ``num_tasks`` (t + 1
    after task t)."""
    if eigvals.ndim != 1 or eigvals.numel() < 1:
        raise ValueError(f"eigvals must be a non-empty 1-D tensor, got shape {tuple(eigvals.shape)}")
    return max(int(torch.argmin(split_criterion(eigvals, num_tasks, alpha))), 1) + 1


def threshold_split_point(eigvals: Tensor, threshold: float) -> int:
    """The ablation's rule (GPM / InfLoRA style): the fewest leading directions holding a share
    ``threshold`` of the spectrum (smallest k with c_{k-1} >= threshold); 0 for a zero one."""
    s = eigvals.detach().to(torch.float64)
    total = s.sum()
    if not (total > 0 and torch.isfinite(total)):
        return 0
    reached = torch.nonzero(torch.cumsum(s / total, 0) >= threshold - 1e-9)
    return int(reached[0]) + 1 if reached.numel() else s.numel()


def interference(eigvals: Tensor, frozen: int) -> float:
    """Share of the old tasks' spectrum left in the free subspace: ``1 - c_{frozen-1}``."""
    s = eigvals.detach().to(torch.float64)
    total = float(s.sum())
    return max(0.0, 1.0 - float(s[:frozen].sum()) / total) if total > 0 and math.isfinite(total) \
        else 0.0


# ------------------------------------------------------------------- 3. the free basis
def usable_frozen(frozen: int, dim: int) -> int:
    """The frozen count used: at most d - 1, so that one direction stays free (a rule that
    freezes all would leave A no room; the official code would divide by a zero norm)."""
    return min(frozen, dim - 1)


def free_basis_from_spectrum(eigvecs: Tensor, frozen: int) -> Tensor:
    """(d, d) eigenvectors, descending -> (d, m) orthonormal basis of the free subspace: the
    columns after the ``usable_frozen`` leading ones."""
    return eigvecs[:, usable_frozen(frozen, eigvecs.shape[1]):]


def free_basis(cov: Tensor, num_tasks: int, alpha: float) -> Tensor:
    """Steps 2-3 in one call: (d, d) old tasks' covariance -> (d, m) free basis, float64."""
    vals, vecs = spectrum(cov)
    return free_basis_from_spectrum(vecs, split_point(vals, num_tasks, alpha))


# ------------------------------------------------------------------- 4. initialising A
def init_lora_A(free_basis: Tensor, rank: int, task_index: int,
                generator: Optional[torch.Generator] = None, decay: bool = True) -> Tensor:
    """(r, d) float32 A for task t = ``task_index`` >= 1, every row in span(``free_basis``):

    ``A_ref`` Kaiming-uniform (only its Frobenius norm is used), ``G ~ N(0, 1)`` of shape
    (m, r), ``M = U_free G``, ``A = (M / ||M||_F * ||A_ref||_F / (t + 1))^T``; without the
    ``1 / (t + 1)`` when ``decay`` is False (the official code's earlier version).
    ``free_basis``: (d, m) orthonormal columns."""
    if free_basis.ndim != 2 or free_basis.shape[1] < 1:
        raise ValueError(f"free_basis must be (d, m) with m >= 1, got {tuple(free_basis.shape)}")
    d, m = free_basis.shape
    ref_norm = torch.linalg.matrix_norm(kaiming_uniform_A(rank, d, generator), ord="fro")
    mat = free_basis.to(torch.float64) @ torch.randn(m, rank, generator=generator, dtype=torch.float64)
    norm = torch.linalg.matrix_norm(mat, ord="fro")
    if norm <= 0 or not torch.isfinite(norm):
        raise FloatingPointError("degenerate random draw for LoRA A (zero norm)")
    scale = ref_norm.to(torch.float64) / ((task_index + 1) if decay else 1)
    return (mat / norm * scale).T.to(torch.float32).contiguous()


# ------------------------------------------------------------------- the learners
@dataclass
class SubspaceParams(MethodParams):
    """What every free-subspace method shares: the covariance pass and A."""

    CHOICES: ClassVar[dict[str, tuple]] = {"cov_pass": ("faithful", "plain"),
                                           "cov_dtype": ("float32", "float64"),
                                           "a_norm": ("decay", "constant")}
    # faithful: the training loader (train transforms, x expand_times), as the official code;
    # plain: the eval transform, one copy of each image (a tenth of the reads)
    cov_pass: str = "faithful"
    cov_dtype: str = "float32"  # accumulator precision of the feature second moment
    cov_amp: bool = False  # run the covariance forward under autocast (the official pass is fp32)
    # ||A_t|| of task t >= 1: decay = ||A_ref|| / (t + 1) (the official code); constant = ||A_ref||
    a_norm: str = "decay"
    train_a: bool = False  # A trains too, kept in the free subspace (not the paper)


class SubspaceLoRA(Learner):
    """A of task t >= 1 inside the free subspace of the old tasks' features; a subclass says how
    many leading directions are frozen (``frozen_dims``). With ``train_a`` A trains too: its
    gradient is projected onto the free subspace, and A again after every step (Adam's
    per-coordinate scaling does not preserve a subspace)."""

    Params = SubspaceParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        adapters = self.model.adapters
        self.cov = CovarianceAccumulator(len(adapters), adapters[0].in_features,
                                         getattr(torch, self.params.cov_dtype), self.device)
        self.bases: list[Optional[Tensor]] = [None] * len(adapters)
        self._projectors: list[Optional[Tensor]] = []

    def frozen_dims(self, eigvals: Tensor, task: int) -> int:
        """Leading directions of the spectrum after task ``task`` kept for the old tasks."""
        raise NotImplementedError

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        basis = self.bases[layer]
        if task == 0 or basis is None:
            return kaiming_uniform_A(self.rank, dim, generator)
        return init_lora_A(basis, self.rank, task, generator, self.params.a_norm == "decay")

    def trains_A(self) -> bool:
        return self.params.train_a

    def train_task(self, task: Task, monitor=None):
        if not self.trains_A():
            return super().train_task(task, monitor)
        self._projectors = [None if b is None else (b @ b.T).to(self.device) for b in self.bases]
        for a in self.model.adapters:  # a gradient hook needs a tensor that requires grad
            a.lora_A.requires_grad_(True)
        handles = [a.lora_A.register_hook(lambda g, p=p: g @ p)
                   for a, p in zip(self.model.adapters, self._projectors) if p is not None]
        try:
            return super().train_task(task, monitor)
        finally:
            for h in handles:
                h.remove()
            self._projectors = []

    @torch.no_grad()
    def after_step(self) -> None:
        for a, p in zip(self.model.adapters, self._projectors):
            if p is not None:
                a.lora_A.copy_(a.lora_A @ p)

    def after_task(self, task: Task) -> None:
        """Merge, then steps 1-3 for the next task (nothing after the last one)."""
        self.model.merge_adapters()
        if task.last:
            return self.record(None, None)
        this_task = CovarianceAccumulator(self.cov.num_layers, self.cov.dim, self.cov.sums.dtype,
                                          self.device)
        covariance_pass(self.model, self.model.adapters,
                        task.data_pass(plain=self.params.cov_pass == "plain"), this_task,
                        self.device, self.amp_dtype if self.params.cov_amp else None,
                        f"task {task.index} covariance", self.progress)
        this_task.all_reduce()  # the processes' shards of this task's data
        self.cov.add_(this_task)  # sums and token counts accumulate over tasks, never reset
        dims, interf = [], []
        for layer in range(self.cov.num_layers):
            try:
                vals, vecs = spectrum(self.cov.covariance(layer))
            except FloatingPointError:
                raise NumericalError(f"the feature covariance of block {layer} holds non-finite "
                                     f"values after task {task.index}; check the data and "
                                     "train.amp") from None
            k = self.frozen_dims(vals, task.index)
            if usable_frozen(k, self.cov.dim) < k:
                log.warning("block %d: the split froze all %d directions; the last one is kept "
                            "free", layer, self.cov.dim)
                k = usable_frozen(k, self.cov.dim)
            self.bases[layer] = free_basis_from_spectrum(vecs, k).to(torch.float32).cpu()
            dims.append(k)
            interf.append(interference(vals, k))
        self.record(dims, interf)
        log.info("task %d split (%d tokens so far): frozen dims per block %s of %d", task.index,
                 int(self.cov.counts[0]), dims, self.cov.dim)

    def state_dict(self) -> dict:
        return dict(super().state_dict(), cov=self.cov.state_dict(),
                    bases=[None if b is None else b.detach().cpu() for b in self.bases])

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cov.load_state_dict(state["cov"])
        self.bases = [None if b is None else b.cpu() for b in state["bases"]]


@dataclass
class SplitLoRAParams(SubspaceParams):
    """SplitLoRA: the covariance pass, the split rule and A."""

    alpha: float = 20.0  # weight of the 'room left' term of the split rule

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, "alpha", self.alpha, "must be >= 0")


class SplitLoRA(SubspaceLoRA):
    """The paper's adaptive split: ``split_point`` frozen directions after each task."""

    Params = SplitLoRAParams

    def frozen_dims(self, eigvals: Tensor, task: int) -> int:
        return split_point(eigvals, task + 1, self.params.alpha)


@dataclass
class ThresholdParams(SubspaceParams):
    """Ablation ``threshold``: a fixed share of the spectrum frozen per block."""

    energy: float = 0.95  # share of the spectrum the frozen subspace must hold

    def validate(self) -> None:
        super().validate()
        require(0 < self.energy <= 1, "energy", self.energy, "must be in (0, 1], e.g. 0.95")


class ThresholdLoRA(SubspaceLoRA):
    """Ablation: ``threshold_split_point`` frozen directions (GPM / InfLoRA style)."""

    Params = ThresholdParams

    def frozen_dims(self, eigvals: Tensor, task: int) -> int:
        return threshold_split_point(eigvals, self.params.energy)


@dataclass
class RandomAParams(MethodParams):
    """Ablation ``random_a``: A random in the whole space."""

    CHOICES: ClassVar[dict[str, tuple]] = {"a_norm": ("decay", "constant")}
    # ||A_t|| of task t >= 1: decay = ||A_ref|| / (t + 1) (as SplitLoRA); constant = ||A_ref||
    a_norm: str = "decay"


class RandomA(Learner):
    """Ablation: A random and frozen in the whole space, scaled as SplitLoRA scales it (Kaiming
    at t = 0, then ``init_lora_A`` with the identity as basis)."""

    Params = RandomAParams

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        if task == 0:
            return kaiming_uniform_A(self.rank, dim, generator)
        return init_lora_A(torch.eye(dim), self.rank, task, generator, self.params.a_norm == "decay")
