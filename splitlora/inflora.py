"""The mathematics of InfLoRA (Liang & Li, CVPR 2024): the design of A and the DualGPM basis.

Pure functions, tensors in and tensors out; docs/inflora.md relates each one to the lines of
the official code it follows. Notation: d = input dimension of the adapted layer, r = LoRA
rank, C = (d, d) uncentred second moment of one task's layer inputs.

The old tasks' input subspace is stored as one orthonormal basis per layer, of one of two
kinds (DualGPM):

- ``remove``: the basis M (d, k) spans the old tasks' subspace;
- ``retain``: the basis F (d, k) spans its orthogonal complement (the free subspace); used
  once the old subspace holds more than half the dimension, so the stored basis stays small.

Either way ``project_free(C)`` = (I - M M^T) C = F F^T C keeps only the free part.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

REMOVE = "remove"
RETAIN = "retain"
KINDS = (REMOVE, RETAIN)


def threshold_schedule(task: int, num_tasks: int, lamb: float, lame: float) -> float:
    """DualGPM energy threshold after task ``task`` (0-based) of ``num_tasks``:
    ``lamb + (lame - lamb) * task / num_tasks`` (lamb after the first task, rising toward lame).
    """
    if num_tasks < 1 or not 0 <= task < num_tasks:
        raise ValueError(f"task {task} is not in 0..{num_tasks - 1}")
    return lamb + (lame - lamb) * task / num_tasks


def _check_basis(basis: Tensor, kind: str, dim: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"basis kind must be one of {KINDS}, got {kind!r}")
    if basis.ndim != 2 or basis.shape[0] != dim:
        raise ValueError(f"basis must be ({dim}, k), got {tuple(basis.shape)}")


def project_free(cov: Tensor, basis: Optional[Tensor], kind: str = REMOVE) -> Tensor:
    """Project the old tasks' subspace out of the column space of ``cov``.

    Args:
        cov: (d, d) this task's input second moment.
        basis: (d, k) orthonormal (old subspace for ``remove``, free subspace for
            ``retain``), or None before any task (nothing to project).
    Returns:
        (d, d) float64: ``C - M M^T C`` (remove) or ``F F^T C`` (retain).
    """
    c = cov.detach().to(torch.float64)
    if basis is None:
        return c
    _check_basis(basis, kind, c.shape[0])
    b = basis.to(torch.float64)
    proj = b @ (b.T @ c)
    return c - proj if kind == REMOVE else proj


def design_A(cov: Tensor, rank: int, basis: Optional[Tensor] = None,
             kind: str = REMOVE) -> Tensor:
    """InfLoRA's A for the next task: the top-``rank`` left singular vectors of the projected
    second moment, as rows, divided by sqrt(3).

    Args:
        cov: (d, d) the next task's input second moment (collected before training it).
        rank: r <= d.
        basis, kind: the old tasks' basis (see :func:`project_free`); None for the first task.
    Returns:
        (r, d) float32; its rows are orthogonal (norm 1 / sqrt(3)) and, where the projected
        matrix has rank >= r, orthogonal to the old subspace.
    """
    mat = project_free(cov, basis, kind)
    if not torch.isfinite(mat).all():
        raise FloatingPointError("input second moment holds non-finite values")
    if not 1 <= rank <= mat.shape[0]:
        raise ValueError(f"rank {rank} must be in 1..{mat.shape[0]}")
    u, _, _ = torch.linalg.svd(mat, full_matrices=False)
    return (u[:, :rank].T / math.sqrt(3.0)).to(torch.float32).contiguous()


def _energy(cov: Tensor) -> tuple[Tensor, float]:
    """(squared singular values of ``cov``, their sum): the energies DualGPM compares."""
    s = torch.linalg.svdvals(cov)
    sq = s * s
    return sq, float(sq.sum())


def _numerical_rank(s: Tensor, dim: int) -> int:
    if s.numel() == 0 or float(s[0]) <= 0:
        return 0
    return int((s > s[0] * dim * torch.finfo(s.dtype).eps).sum())


def first_basis(cov: Tensor, threshold: float) -> tuple[Tensor, str]:
    """The old-task basis after the first task.

    ``k = #{i : c_i < threshold}`` with c the cumulative shares of the squared singular
    values of C (the official criterion: the count of directions *below* the threshold),
    basis = the leading max(k, 1) left singular vectors, then :func:`to_compact_kind`.

    Args:
        cov: (d, d) the first task's input second moment (after training it).
        threshold: in (0, 1].
    Returns:
        (basis (d, k') float64, kind).
    """
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

    Then :func:`to_compact_kind`. Counts n never exceed the rank of E (a guard against
    rounding; the official loop has none).

    Args:
        cov: (d, d) the task's input second moment (after training it).
        basis: (d, k) orthonormal; kind: ``remove`` or ``retain``.
        threshold: in (0, 1).
    Returns:
        (new basis float64, new kind, n = directions added to the old subspace).
    """
    c = cov.detach().to(torch.float64)
    d = c.shape[0]
    _check_basis(basis, kind, d)
    b = basis.to(torch.float64)
    _, total = _energy(c)
    if not total > 0:  # a task without tokens adds nothing
        return to_compact_kind(b, kind) + (0,)
    e = project_free(c, b, kind)
    u, s, _ = torch.linalg.svd(e, full_matrices=False)
    ratios = ((s * s) / total).tolist()
    limit = _numerical_rank(s, d)
    n = 0
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
    """A ``remove`` basis of more than d / 2 columns becomes the ``retain`` basis of its
    orthogonal complement (the trailing left singular vectors of M); otherwise unchanged.

    Args:
        basis: (d, k) orthonormal.
    Returns:
        (basis (d, k) or (d, d - k), kind).
    """
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
