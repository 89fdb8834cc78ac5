"""InfLoRA (Liang & Li, CVPR 2024) as a method of this project: ``method.name: inflora``.

The adapters are SplitLoRA's (A frozen, B trained, merged after each task); A differs:

    before_task(t)  a no-grad pass over task t's data with the model as it is gives its input
                    second moment C_t per block; A_t = the top-r left singular vectors of C_t
                    with the old subspace projected out, / sqrt(3)
    after_task(t)   merge; a second pass (the trained model, task t) extends the old-task basis
                    DualGPM-style with threshold lamb + (lame - lamb) t / T

docs/inflora.md relates each function to the official code. d = input width of the adapted
layer, r = LoRA rank, C = (d, d) uncentred second moment of a task's layer inputs. The old
tasks' subspace is one orthonormal basis per layer, of one of two kinds (DualGPM): ``remove``,
M (d, k) spans it; ``retain``, F (d, k) spans its complement (used once the old subspace holds
more than half the dimension). Either way ``project_free(C)`` = (I - M M^T) C = F F^T C."""
import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from ..covariance import CovarianceAccumulator, covariance_pass
from ..engine import NumericalError
from ..learner import Learner, MethodParams, Task, require

log = logging.getLogger(__name__)

REMOVE, RETAIN = "remove", "retain"  # the two kinds of basis (module docstring)
KINDS = (REMOVE, RETAIN)


def threshold_schedule(task: int, num_tasks: int, lamb: float, lame: float) -> float:
    """DualGPM energy threshold after task ``task`` (0-based) of ``num_tasks``:
    ``lamb + (lame - lamb) * task / num_tasks`` (lamb after the first task, rising to lame)."""
    if num_tasks < 1 or not 0 <= task < num_tasks:
        raise ValueError(f"task {task} is not in 0..{num_tasks - 1}")
    return lamb + (lame - lamb) * task / num_tasks


def _check_basis(basis: Tensor, kind: str, dim: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"basis kind must be one of {KINDS}, got {kind!r}")
    if basis.ndim != 2 or basis.shape[0] != dim:
        raise ValueError(f"basis must be ({dim}, k), got {tuple(basis.shape)}")


def project_free(cov: Tensor, basis: Optional[Tensor], kind: str = REMOVE) -> Tensor:
    """(d, d) C -> (d, d) float64 ``C - M M^T C`` (remove) or ``F F^T C`` (retain): the old
    tasks' subspace projected out of C's columns; ``basis`` (d, k) orthonormal, or None before
    any task (nothing to project)."""
    c = cov.detach().to(torch.float64)
    if basis is None:
        return c
    _check_basis(basis, kind, c.shape[0])
    b = basis.to(torch.float64)
    proj = b @ (b.T @ c)
    return c - proj if kind == REMOVE else proj


def design_A(cov: Tensor, rank: int, basis: Optional[Tensor] = None, kind: str = REMOVE) -> Tensor:
    """InfLoRA's (r, d) float32 A for the next task: the top-``rank`` left singular vectors of
    its projected second moment (``cov``, collected before training it), as rows, / sqrt(3):
    orthogonal rows of norm 1 / sqrt(3), orthogonal to the old subspace where the projected
    matrix has rank >= r. ``basis``, ``kind``: as :func:`project_free`."""
    mat = project_free(cov, basis, kind)
    if not torch.isfinite(mat).all():
        raise FloatingPointError("input second moment holds non-finite values")
    if not 1 <= rank <= mat.shape[0]:
        raise ValueError(f"rank {rank} must be in 1..{mat.shape[0]}")
    u, _, _ = torch.linalg.svd(mat, full_matrices=False)
    return (u[:, :rank].T / math.sqrt(3.0)).to(torch.float32).contiguous()


def _numerical_rank(s: Tensor, dim: int) -> int:
    if s.numel() == 0 or float(s[0]) <= 0:
        return 0
    return int((s > s[0] * dim * torch.finfo(s.dtype).eps).sum())


def first_basis(cov: Tensor, threshold: float) -> tuple[Tensor, str]:
    """(basis float64, kind) of the old tasks after the first: with c the cumulative shares of
    C's squared singular values, ``k = #{i : c_i < threshold}`` (the official criterion counts
    the directions *below* it), basis = the leading max(k, 1) left singular vectors, then
    :func:`to_compact_kind`."""
    c = cov.detach().to(torch.float64)
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    sq = s * s
    total = float(sq.sum())
    k = int((torch.cumsum(sq / total, 0) < threshold).sum()) if total > 0 else 0
    return to_compact_kind(u[:, :max(k, 1)], REMOVE)


def update_basis(cov: Tensor, basis: Tensor, kind: str,
                 threshold: float) -> tuple[Tensor, str, int]:
    """Extend the old-task subspace with the directions of a new task (DualGPM).

    ``remove``: with E = (I - M M^T) C and shares s_i^2 / ||C||_F^2 of E's squared singular
    values, add E's leading left singular vectors until the share of ||C||_F^2 captured by
    the old subspace reaches ``threshold``: M <- [M, U_E[:, :n]] (at most d columns).

    ``retain``: with E = F F^T C, move E's leading directions out of the free basis while
    the free share of ||C||_F^2 stays >= 1 - threshold: F <- an orthonormal basis of
    (I - U_E[:, :n] U_E[:, :n]^T) F, of k - n columns.

    Then :func:`to_compact_kind`. n never exceeds the rank of E (a guard against rounding;
    the official loop has none). Returns (new basis float64, new kind, n)."""
    c = cov.detach().to(torch.float64)
    d = c.shape[0]
    _check_basis(basis, kind, d)
    b = basis.to(torch.float64)
    energies = torch.linalg.svdvals(c)
    total = float((energies * energies).sum())  # ||C||_F^2, the energy DualGPM shares out
    if not total > 0:  # a task without tokens adds nothing
        return to_compact_kind(b, kind) + (0,)
    e = project_free(c, b, kind)
    u, s, _ = torch.linalg.svd(e, full_matrices=False)
    ratios = ((s * s) / total).tolist()
    limit, n = _numerical_rank(s, d), 0
    if kind == REMOVE:
        captured = (total - float((s * s).sum())) / total
        for ratio in ratios[:limit]:
            if captured >= threshold:
                break
            captured += ratio
            n += 1
        if n:
            b = torch.cat([b, u[:, :n]], dim=1)[:, :d]
    else:
        free = float((s * s).sum()) / total
        limit = min(limit, b.shape[1])
        for ratio in ratios[:limit]:
            if free < 1.0 - threshold:
                break
            free -= ratio
            n += 1
        if n:
            rest = b - u[:, :n] @ (u[:, :n].T @ b)
            ur, _, _ = torch.linalg.svd(rest, full_matrices=True)
            b = ur[:, : b.shape[1] - n]
    return to_compact_kind(b, kind) + (n,)


def to_compact_kind(basis: Tensor, kind: str) -> tuple[Tensor, str]:
    """A ``remove`` basis (d, k) of more than d / 2 columns becomes the ``retain`` basis
    (d, d - k) of its complement (M's trailing left singular vectors); others are unchanged."""
    d = basis.shape[0]
    if kind == REMOVE and basis.shape[1] > d / 2:
        u, _, _ = torch.linalg.svd(basis.to(torch.float64), full_matrices=True)
        return u[:, basis.shape[1]:], RETAIN
    return basis, kind


def old_dims(basis: Optional[Tensor], kind: str) -> int:
    """Dimension of the old tasks' subspace held by (basis, kind); 0 without a basis."""
    if basis is None:
        return 0
    return basis.shape[1] if kind == REMOVE else basis.shape[0] - basis.shape[1]


# ------------------------------------------------------------------- the learner
@dataclass
class InfLoRAParams(MethodParams):
    """InfLoRA: the DualGPM threshold schedule and its covariance passes."""

    CHOICES: ClassVar[dict[str, tuple]] = {"cov_pass": ("faithful", "plain"),
                                           "cov_dtype": ("float32", "float64")}

    # DualGPM threshold after task t of T: lamb + (lame - lamb) t / T. InfLoRA's configs:
    # 0.98 / 1.0 for ImageNet-R, 0.95 / 1.0 for CIFAR-100 and DomainNet
    lamb: float = 0.98
    lame: float = 1.0  # the threshold the schedule rises toward
    # faithful: the training loader (train transforms, x expand_times); plain: the eval
    # transform, one copy of each image
    cov_pass: str = "faithful"
    cov_dtype: str = "float32"  # accumulator precision of the input second moments
    cov_amp: bool = False  # run the passes' forward under autocast

    def validate(self) -> None:
        super().validate()
        require(0 < self.lamb < 1, "lamb", self.lamb,
                "must be in (0, 1), e.g. 0.98 (InfLoRA's ImageNet-R value) or 0.95")
        require(self.lamb <= self.lame <= 1, "lame", self.lame,
                f"must be in [lamb, 1] = [{self.lamb}, 1], e.g. 1.0")


class InfLoRA(Learner):
    """A of every task designed from the task's own inputs, outside the old tasks' subspace.
    State: per block an orthonormal basis (float32, CPU) and its kind, as DualGPM keeps them."""

    Params = InfLoRAParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bases: list[Optional[Tensor]] = [None] * len(self.model.adapters)
        self.kinds: list[str] = [REMOVE] * len(self.model.adapters)
        self._designed: list[Tensor] = []

    def _task_covariance(self, task: Task, desc: str) -> list[Tensor]:
        """One no-grad pass over a task's data: per block its (d, d) second moment (CPU,
        float64), summed over the processes under torchrun."""
        adapters = self.model.adapters
        acc = CovarianceAccumulator(len(adapters), adapters[0].in_features,
                                    getattr(torch, self.params.cov_dtype), self.device)
        covariance_pass(self.model, adapters, task.data_pass(plain=self.params.cov_pass == "plain"),
                        acc, self.device, self.amp_dtype if self.params.cov_amp else None, desc,
                        self.progress)
        acc.all_reduce()
        covs = []
        for layer in range(acc.num_layers):
            c = acc.covariance(layer).to(torch.float64).cpu()
            if not torch.isfinite(c).all():
                raise NumericalError(f"the input second moment of block {layer} holds non-finite "
                                     f"values ({desc}); the run stops (the checkpoint of the "
                                     "previous task is kept). Check the data and train.amp.")
            covs.append(c)
        return covs

    def before_task(self, task: Task) -> None:
        self.seed_task(task.index)  # the pass's random transforms (single process)
        covs = self._task_covariance(task, f"task {task.index} input (A design)")
        self._designed = [design_A(c, self.rank, b, k)
                          for c, b, k in zip(covs, self.bases, self.kinds)]
        try:
            super().before_task(task)
        finally:
            self._designed = []

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        """The designed A (the same for every target slice, as InfLoRA's k and v share it)."""
        return self._designed[layer]

    def after_task(self, task: Task) -> None:
        self.model.merge_adapters()
        if task.last:  # no task follows: the basis would never be used
            return self.record(None, None)
        covs = self._task_covariance(task, f"task {task.index} input (DualGPM)")
        threshold = threshold_schedule(task.index, self.num_tasks, self.params.lamb,
                                       self.params.lame)
        for layer, c in enumerate(covs):
            if self.bases[layer] is None:
                basis, kind = first_basis(c, threshold)
            else:
                basis, kind, _ = update_basis(c, self.bases[layer], self.kinds[layer], threshold)
            self.bases[layer] = basis.to(torch.float32).contiguous()
            self.kinds[layer] = kind
        dims = [old_dims(b, k) for b, k in zip(self.bases, self.kinds)]
        self.record(dims, None)
        log.info("task %d DualGPM (threshold %.4f): old-task dims per block %s of %d (%s)",
                 task.index, threshold, dims, self.bases[0].shape[0],
                 ", ".join(k[:3] for k in self.kinds))

    def state_dict(self) -> dict:
        return dict(super().state_dict(), kinds=list(self.kinds),
                    bases=[None if b is None else b.detach().cpu().clone() for b in self.bases])

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if len(state["bases"]) != len(self.bases):
            raise ValueError(f"InfLoRA state has {len(state['bases'])} blocks, the model "
                             f"{len(self.bases)}")
        self.bases = [None if b is None else b.to(torch.float32).cpu() for b in state["bases"]]
        self.kinds = [str(k) for k in state["kinds"]]
