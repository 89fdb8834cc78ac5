"""SplitLoRA's mathematics (splitlora/methods/splitlora.py, importable from the package root):
the split rule, the threshold ablation's rule, the free basis and the initialisation of A,
pinned on hand-made spectra and against brute force."""
from __future__ import annotations

import math

import pytest
import torch

from splitlora import (free_basis, free_basis_from_spectrum, init_lora_A, interference,
                       kaiming_uniform_A, spectrum, split_criterion, split_point,
                       threshold_split_point)

# Spectrum of d = 7 with shares p = .40 .25 .15 .10 .05 .03 .02, so c = .40 .65 .80 .90 .95 .98 1.
# Criterion n (1 - c_i) - alpha (7 - i) / 7, e.g. for alpha = 2:
#   n = 1: -1.400 -1.364 -1.229 -1.043 -0.807 -0.551 -0.286  -> i* = 0 -> max(0, 1) + 1 = 2
#   n = 2: -0.800 -1.014 -1.029 -0.943 -0.757 -0.531 -0.286  -> i* = 2 -> 3
#   n = 3: -0.200 -0.664 -0.829 -0.843 -0.707 -0.511 -0.286  -> i* = 3 -> 4
#   n = 8:  2.800  1.086  0.171 -0.343 -0.457 -0.411 -0.286  -> i* = 4 -> 5
#   n = 10: 4.000  1.786  0.571 -0.143 -0.357 -0.371 -0.286  -> i* = 5 -> 6
#   n = 20: 10.00  5.286  2.571  0.857  0.143 -0.171 -0.286  -> i* = 6 -> 7 (all frozen)
SPEC = torch.tensor([40.0, 25.0, 15.0, 10.0, 5.0, 3.0, 2.0])


@pytest.mark.parametrize("num_tasks, expected", [(1, 2), (2, 3), (3, 4), (5, 4), (8, 5), (10, 6), (20, 7)])
def test_split_point_hand_made_spectrum(num_tasks, expected):
    assert split_point(SPEC, num_tasks, 2.0) == expected


@pytest.mark.parametrize("alpha, n, i_star", [(1.5, 1, 1), (2.0, 1, 0), (3.0, 2, 1), (4.0, 2, 0)])
def test_split_point_keeps_at_least_two(alpha, n, i_star):
    # i* = 0 and i* = 1 both give max(i*, 1) + 1 = 2 frozen directions
    assert int(torch.argmin(split_criterion(SPEC, n, alpha))) == i_star
    assert split_point(SPEC, n, alpha) == 2


@pytest.mark.parametrize("alpha, expected", [(0.5, [4, 5, 6]), (1.0, [3, 4, 5]), (3.0, [2, 2, 3])])
def test_split_point_grows_with_tasks_and_shrinks_with_alpha(alpha, expected):
    assert [split_point(SPEC, n, alpha) for n in (1, 2, 3)] == expected


def test_split_point_is_scale_invariant_and_matches_bruteforce():
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        d = int(torch.randint(3, 40, (1,), generator=gen))
        s = torch.rand(d, generator=gen, dtype=torch.float64) ** 4
        s = s.sort(descending=True).values
        n = int(torch.randint(1, 12, (1,), generator=gen))
        alpha = float(torch.rand(1, generator=gen) * 30)
        total, cum, best, arg = float(s.sum()), 0.0, math.inf, -1
        for i in range(d):
            cum += float(s[i]) / total
            val = n * (1 - cum) - alpha * (d - i) / d
            if val < best - 1e-12:
                best, arg = val, i
        assert split_point(s, n, alpha) == max(arg, 1) + 1
        assert split_point(s * 1000.0, n, alpha) == split_point(s, n, alpha)


def test_zero_spectrum_gives_valid_split():
    assert split_point(torch.zeros(8), 3, 20.0) == 2
    basis = free_basis(torch.zeros(8, 8), 3, 20.0)
    assert basis.shape == (8, 6) and torch.isfinite(basis).all()


def _cov_with_spectrum(vals: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    d = vals.numel()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(vals.double()) @ q.T, q


def test_free_basis_is_the_trailing_eigenvectors():
    cov, q = _cov_with_spectrum(SPEC)
    basis = free_basis(cov, 3, 2.0)  # split point 4 -> 3 free directions
    assert basis.shape == (7, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=basis.dtype), atol=1e-10)
    # orthogonal to the 4 leading eigenvectors, spanning the 3 trailing ones
    assert (q[:, :4].T @ basis).abs().max() < 1e-10
    proj = basis @ basis.T
    assert torch.allclose(proj @ q[:, 4:], q[:, 4:], atol=1e-10)


def test_all_frozen_keeps_one_free_direction():
    cov, q = _cov_with_spectrum(SPEC)
    assert split_point(SPEC, 20, 2.0) == 7
    basis = free_basis(cov, 20, 2.0)
    assert basis.shape == (7, 1)
    assert abs(abs(float(basis[:, 0] @ q[:, 6])) - 1.0) < 1e-10


def test_spectrum_sorted_descending_and_nonnegative():
    cov, _ = _cov_with_spectrum(torch.tensor([0.0, 3.0, 1.0, 2.0]))
    vals, vecs = spectrum(cov)
    assert torch.allclose(vals, torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64), atol=1e-10)
    assert (vals >= 0).all()
    assert torch.allclose(vecs @ torch.diag(vals) @ vecs.T, cov, atol=1e-10)


def test_interference_is_the_energy_left_free():
    assert interference(SPEC, 4) == pytest.approx(0.10)
    assert interference(SPEC, 7) == pytest.approx(0.0)
    assert interference(torch.zeros(5), 2) == 0.0


def test_kaiming_uniform_bound_is_one_over_sqrt_fan_in():
    a = kaiming_uniform_A(64, 100, torch.Generator().manual_seed(0))
    assert a.shape == (64, 100)
    assert a.abs().max() <= 1 / math.sqrt(100)
    assert a.abs().max() > 0.95 / math.sqrt(100)  # uses the full range
    # the same draw as PyTorch's default Linear init (kaiming_uniform_, a = sqrt(5)) from the
    # same stream
    ref = torch.empty(64, 100)
    torch.nn.init.kaiming_uniform_(ref, a=math.sqrt(5), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ref, a, rtol=1e-6, atol=0)


@pytest.mark.parametrize("task", [1, 2, 5])
def test_init_lora_A_rows_in_free_span_and_norm_rule(task):
    cov, _ = _cov_with_spectrum(torch.linspace(10, 0.1, 24))
    basis = free_basis(cov, task, 20.0)
    rank = 5
    a = init_lora_A(basis, rank, task, torch.Generator().manual_seed(1))
    assert a.shape == (rank, 24) and a.dtype == torch.float32
    proj = (basis @ basis.T).float()
    assert torch.allclose(a @ proj, a, atol=1e-6)  # every row lies in span(U_free)
    # the norm is ||A_ref||_F / (t + 1), A_ref being the first draw of the same stream
    ref = kaiming_uniform_A(rank, 24, torch.Generator().manual_seed(1))
    expected = float(torch.linalg.matrix_norm(ref)) / (task + 1)
    assert float(torch.linalg.matrix_norm(a)) == pytest.approx(expected, rel=1e-5)
    # method.<name>.a_norm: constant -- the same draw without the 1 / (t + 1) factor
    flat = init_lora_A(basis, rank, task, torch.Generator().manual_seed(1), decay=False)
    assert torch.allclose(flat, a * (task + 1), rtol=1e-5, atol=1e-7)


def test_init_lora_A_orthogonal_to_major_subspace():
    vals = torch.tensor([9.0, 7.0, 5.0] + [0.0] * 13)
    cov, q = _cov_with_spectrum(vals)
    basis = free_basis(cov, 1, 1.0)  # rank-3 data, alpha = 1: the 3 data directions are frozen
    assert basis.shape[1] == 13
    a = init_lora_A(basis, 4, 1, torch.Generator().manual_seed(0))
    x_old = q[:, :3] @ torch.randn(3, 50, dtype=torch.float64)
    assert (a.double() @ x_old).abs().max() < 1e-5


def test_free_basis_from_spectrum_slices():
    vecs = torch.eye(5)
    assert torch.equal(free_basis_from_spectrum(vecs, 2), vecs[:, 2:])
    assert free_basis_from_spectrum(vecs, 9).shape == (5, 1)


@pytest.mark.parametrize("threshold, expected", [(0.3, 1), (0.5, 2), (0.65, 2), (0.9, 4), (0.95, 5),
                                                 (0.97, 6), (0.99, 7), (1.0, 7)])
def test_threshold_rule_picks_fewest_directions_holding_the_share(threshold, expected):
    # c = .40 .65 .80 .90 .95 .98 1.00: the smallest k with c_{k-1} >= threshold
    assert threshold_split_point(SPEC, threshold) == expected
    assert threshold_split_point(SPEC * 7.0, threshold) == expected


def test_threshold_rule_on_zero_spectrum_freezes_nothing():
    assert threshold_split_point(torch.zeros(6), 0.95) == 0


def test_the_package_root_exports_the_mathematics_of_the_method_module():
    import splitlora
    from splitlora.methods import splitlora as method
    for name in splitlora.__all__:
        assert getattr(splitlora, name) is getattr(method, name), name
    from models import kaiming_uniform_A as from_models
    assert kaiming_uniform_A is from_models
    with pytest.raises(AttributeError):
        splitlora.subspace  # noqa: B018 - the old module is gone, not silently aliased


def test_usable_frozen_keeps_one_direction_free():
    from splitlora.methods.splitlora import usable_frozen
    assert [usable_frozen(k, 5) for k in (0, 3, 4, 5, 9)] == [0, 3, 4, 4, 4]
