"""The mathematics of SplitLoRA: spectrum, split rule, free subspace, initialisation of A.

Pure functions, tensors in and tensors out (docs/protocol.md states the method). Notation:
d = input dimension of the adapted layer, r = LoRA rank, n = number of tasks learned.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def spectrum(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix, sorted descending.

    Args:
        cov: (d, d) feature second moment.
    Returns:
        eigvals (d,) descending and clamped at 0 (they equal the singular values of a PSD
        matrix), eigvecs (d, d) with column i belonging to eigvals[i]; float64.
    """
    c = cov.detach().to(torch.float64)
    c = 0.5 * (c + c.T)
    if not torch.isfinite(c).all():
        raise FloatingPointError("covariance holds non-finite values; cannot split")
    vals, vecs = torch.linalg.eigh(c)
    vals = vals.flip(0).clamp_min(0.0)
    vecs = vecs.flip(1)
    return vals, vecs


def split_criterion(eigvals: Tensor, num_tasks: int, alpha: float) -> Tensor:
    """The quantity minimised by the split rule, for i = 0..d-1.

    ``num_tasks * (1 - c_i) - alpha * (d - i) / d`` with ``c_i`` the cumulative share of
    the spectrum held by the leading i+1 directions.

    Args:
        eigvals: (d,) sorted descending, non-negative.
    Returns:
        (d,) float64.
    """
    s = eigvals.detach().to(torch.float64)
    d = s.numel()
    total = s.sum()
    if total > 0 and torch.isfinite(total):
        cum = torch.cumsum(s / total, dim=0)
    else:  # an all-zero spectrum leaves no old-task energy anywhere: no interference term
        cum = torch.ones_like(s)
    i = torch.arange(d, dtype=torch.float64)
    return num_tasks * (1.0 - cum) - alpha * (d - i) / d


def split_point(eigvals: Tensor, num_tasks: int, alpha: float) -> int:
    """Number of leading directions kept frozen: ``max(i*, 1) + 1``.

    ``i* = argmin_i  n (1 - c_i) - alpha (d - i) / d`` (first minimiser), exactly the rule
    and index convention of the official code.

    Args:
        eigvals: (d,) eigenvalues of the old tasks' feature covariance, sorted descending.
        num_tasks: n, the number of tasks learned so far (t + 1 after task t).
        alpha: weight of the room-left term.
    """
    if eigvals.ndim != 1 or eigvals.numel() < 1:
        raise ValueError(f"eigvals must be a non-empty 1-D tensor, got shape {tuple(eigvals.shape)}")
    i_star = int(torch.argmin(split_criterion(eigvals, num_tasks, alpha)).item())
    return max(i_star, 1) + 1


def threshold_split_point(eigvals: Tensor, threshold: float) -> int:
    """Fewest leading directions holding a share ``threshold`` of the spectrum (GPM / InfLoRA
    style): the smallest k with c_{k-1} >= threshold; 0 for an all-zero spectrum.

    Args:
        eigvals: (d,) sorted descending, non-negative.
        threshold: in (0, 1].
    """
    s = eigvals.detach().to(torch.float64)
    total = s.sum()
    if not (total > 0 and torch.isfinite(total)):
        return 0
    cum = torch.cumsum(s / total, dim=0)
    reached = torch.nonzero(cum >= threshold - 1e-9)
    return int(reached[0]) + 1 if reached.numel() else s.numel()


def interference(eigvals: Tensor, frozen: int) -> float:
    """Share of the old tasks' spectrum left in the free subspace: ``1 - c_{frozen-1}``."""
    s = eigvals.detach().to(torch.float64)
    total = float(s.sum())
    if total <= 0 or not math.isfinite(total):
        return 0.0
    return max(0.0, 1.0 - float(s[:frozen].sum()) / total)


def free_basis_from_spectrum(eigvecs: Tensor, frozen: int) -> Tensor:
    """Columns ``frozen..d-1`` of the eigenvectors; at least the last one.

    When the rule freezes every direction (possible only for degenerate spectra) there is
    no free room: the least-energy direction is kept free rather than returning an empty
    basis (the official code would divide by a zero norm there).

    Args:
        eigvecs: (d, d) columns sorted by descending eigenvalue.
    Returns:
        (d, m) orthonormal basis, m = max(d - frozen, 1).
    """
    d = eigvecs.shape[1]
    if frozen >= d:
        log.warning("split rule froze all %d directions; keeping the last one free", d)
        frozen = d - 1
    return eigvecs[:, frozen:]


def free_basis(cov: Tensor, num_tasks: int, alpha: float) -> Tensor:
    """Orthonormal basis of the free subspace of a covariance.

    Args:
        cov: (d, d) accumulated feature second moment of the old tasks.
        num_tasks: tasks learned so far (t + 1).
        alpha: split hyperparameter.
    Returns:
        (d, m) float64, columns = eigenvectors after the frozen leading ``split_point``.
    """
    vals, vecs = spectrum(cov)
    return free_basis_from_spectrum(vecs, split_point(vals, num_tasks, alpha))


def kaiming_uniform_A(rank: int, dim: int, generator: Optional[torch.Generator] = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """PyTorch's default Linear init (Kaiming-uniform, a = sqrt(5)) for an (rank, dim) A.

    gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in) = 1 / sqrt(dim).

    Returns:
        (rank, dim) tensor.
    """
    bound = 1.0 / math.sqrt(dim)
    return torch.empty(rank, dim, dtype=dtype).uniform_(-bound, bound, generator=generator)


def init_lora_A(free_basis: Tensor, rank: int, task_index: int,
                generator: Optional[torch.Generator] = None, decay: bool = True) -> Tensor:
    """A for task ``task_index`` >= 1, with every row in the span of ``free_basis``.

    Draws A_ref (Kaiming-uniform, only its Frobenius norm is used), then G ~ N(0, 1) of
    shape (m, r); M = U_free G; A = (M / ||M||_F * ||A_ref||_F / (t + 1))^T, or without
    the 1 / (t + 1) factor when ``decay`` is False (see docs/protocol.md: the two public
    versions of the official code differ in this factor).

    Args:
        free_basis: (d, m) orthonormal columns.
        rank: r.
        task_index: t (0-based index of the task about to be learned).
    Returns:
        (r, d) float32 tensor with Frobenius norm ||A_ref||_F / (t + 1) (or ||A_ref||_F).
    """
    if free_basis.ndim != 2 or free_basis.shape[1] < 1:
        raise ValueError(f"free_basis must be (d, m) with m >= 1, got {tuple(free_basis.shape)}")
    d, m = free_basis.shape
    ref_norm = torch.linalg.matrix_norm(kaiming_uniform_A(rank, d, generator), ord="fro")
    g = torch.randn(m, rank, generator=generator, dtype=torch.float64)
    mat = free_basis.to(torch.float64) @ g
    norm = torch.linalg.matrix_norm(mat, ord="fro")
    if norm <= 0 or not torch.isfinite(norm):
        raise FloatingPointError("degenerate random draw for LoRA A (zero norm)")
    scale = ref_norm.to(torch.float64) / ((task_index + 1) if decay else 1)
    a = (mat / norm * scale).T
    return a.to(torch.float32).contiguous()
