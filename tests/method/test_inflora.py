"""InfLoRA (splitlora/methods/inflora.py): the design of A, the DualGPM basis and its threshold
schedule (against independent numpy computations of the official formulas), its config
section, the learner, and a run resumed after a crash."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from splitlora.covariance import CovarianceAccumulator, covariance_pass
from splitlora.methods.inflora import (REMOVE, RETAIN, design_A, first_basis, old_dims,
                                       project_free, threshold_schedule, update_basis)
from splitlora.run.fileio import ConfigError
from tests.fault_injection import injected
from tests.helpers import (loader, main_inprocess, make_config, make_learner, make_task, sets,
                           synthetic, task_of, tiny_overrides)


def _orthonormal(d: int, k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q[:, :k]


def _spd(d: int, seed: int) -> np.ndarray:
    """A full-rank second moment with distinct eigenvalues."""
    x = np.random.default_rng(seed).standard_normal((4 * d, d)) * np.linspace(3, 0.5, d)
    return x.T @ x / (4 * d)


def _same_rows_up_to_sign(a: torch.Tensor, expected: np.ndarray, atol: float = 1e-6) -> bool:
    a = a.double().numpy()
    signs = np.sign(np.sum(a * expected, axis=1, keepdims=True))
    return np.allclose(a * signs, expected, atol=atol)


def _projector(basis) -> np.ndarray:
    b = np.asarray(basis, dtype=np.float64)
    return b @ b.T


# --------------------------------------------------------------------------- design of A

def test_first_task_A_is_top_singular_vectors_over_sqrt3():
    c = _spd(12, 0)
    a = design_A(torch.from_numpy(c), 3)
    u = np.linalg.svd(c)[0]
    assert a.shape == (3, 12) and a.dtype == torch.float32
    assert _same_rows_up_to_sign(a, u[:, :3].T / math.sqrt(3))


def test_A_with_remove_basis_equals_official_formula_and_avoids_old_subspace():
    d, r = 12, 3
    c, m = _spd(d, 1), _orthonormal(d, 4, 2)
    expected = np.linalg.svd(c - m @ m.T @ c)[0][:, :r].T / math.sqrt(3)  # official, remove
    a = design_A(torch.from_numpy(c), r, torch.from_numpy(m), REMOVE)
    assert _same_rows_up_to_sign(a, expected)
    assert np.abs(a.double().numpy() @ m).max() < 1e-6  # no component in the old subspace
    assert torch.allclose(a @ a.T, torch.eye(r) / 3, atol=1e-6)


def test_A_with_retain_basis_equals_official_formula_and_avoids_old_subspace():
    d, r = 12, 3
    c = _spd(d, 3)
    q = _orthonormal(d, d, 4)
    old, free = q[:, :7], q[:, 7:]  # old subspace past half the dimension: the free basis is kept
    expected = np.linalg.svd(free @ free.T @ c)[0][:, :r].T / math.sqrt(3)  # official, retain
    a = design_A(torch.from_numpy(c), r, torch.from_numpy(free), RETAIN)
    assert _same_rows_up_to_sign(a, expected)
    assert np.abs(a.double().numpy() @ old).max() < 1e-6
    # the two kinds describe the same split: removing `old` gives the same A
    assert _same_rows_up_to_sign(design_A(torch.from_numpy(c), r, torch.from_numpy(old), REMOVE),
                                 expected)


# --------------------------------------------------------------------------- DualGPM

def _with_energies(q: np.ndarray, energies) -> torch.Tensor:
    """C = Q diag(sqrt(e)) Q^T: its squared singular values are e, on the columns of Q."""
    e = np.asarray(energies, dtype=np.float64)
    return torch.from_numpy(q @ np.diag(np.sqrt(e)) @ q.T)


def test_threshold_schedule_is_infloras():
    # InfLoRA: threshold = (lame - lamb) * cur_task / total_sessions + lamb
    assert threshold_schedule(0, 10, 0.98, 1.0) == pytest.approx(0.98)
    assert threshold_schedule(5, 10, 0.98, 1.0) == pytest.approx(0.99)
    assert threshold_schedule(9, 10, 0.98, 1.0) == pytest.approx(0.998)
    assert threshold_schedule(3, 5, 0.95, 1.0) == pytest.approx(0.98)
    with pytest.raises(ValueError):
        threshold_schedule(10, 10, 0.98, 1.0)


def test_first_basis_counts_directions_below_the_threshold():
    q = _orthonormal(16, 16, 5)
    shares = [0.5, 0.3, 0.1, 0.05, 0.03] + [0.02 / 11] * 11
    basis, kind = first_basis(_with_energies(q, shares), 0.93)
    # cumulative shares 0.5, 0.8, 0.9 are below 0.93: three directions (official: no "+1")
    assert kind == REMOVE and basis.shape == (16, 3)
    assert np.allclose(_projector(basis), _projector(q[:, :3]), atol=1e-8)


def test_remove_update_grows_by_the_threshold_rule_and_stays_orthonormal():
    q = _orthonormal(16, 16, 6)
    old = torch.from_numpy(q[:, :3])
    # the old subspace already holds 0.6 of the new task's energy; new directions 0.25, 0.1, ...
    energies = [0.3, 0.2, 0.1, 0.25, 0.1, 0.03] + [0.02 / 10] * 10
    basis, kind, added = update_basis(_with_energies(q, energies), old, REMOVE, 0.9)
    assert added == 2 and kind == REMOVE  # 0.6 -> 0.85 (< 0.9) -> 0.95: two directions
    assert np.allclose(_projector(basis), _projector(q[:, :5]), atol=1e-8)
    assert torch.allclose(basis[:, :3], old.double())  # old columns kept, new ones appended
    assert torch.allclose(basis.T @ basis, torch.eye(5, dtype=torch.float64), atol=1e-10)
    # nothing is added when the old subspace already captures the threshold
    same, _, none = update_basis(_with_energies(q, energies), old, REMOVE, 0.55)
    assert none == 0 and torch.equal(same, old.double())


def test_remove_basis_past_half_the_dimension_becomes_retain_complement():
    q = _orthonormal(8, 8, 7)
    energies = [0.4, 0.2, 0.1, 0.15, 0.1, 0.03, 0.01, 0.01]
    basis, kind, added = update_basis(_with_energies(q, energies), torch.from_numpy(q[:, :3]),
                                      REMOVE, 0.9)
    assert added == 2  # 0.7 -> 0.85 -> 0.95: five old directions, more than 8 / 2
    assert kind == RETAIN and basis.shape == (8, 3) and old_dims(basis, kind) == 5
    assert np.allclose(_projector(basis), _projector(q[:, 5:]), atol=1e-8)


def test_retain_update_moves_directions_out_of_the_free_basis():
    q = _orthonormal(8, 8, 8)
    free = torch.from_numpy(q[:, 5:])
    energies = [0.5, 0.2, 0.1, 0.05, 0.05, 0.07, 0.02, 0.01]  # free share 0.10
    basis, kind, added = update_basis(_with_energies(q, energies), free, RETAIN, 0.95)
    # free share 0.10 >= 0.05 -> remove the 0.07 direction -> 0.03 < 0.05: stop
    assert added == 1 and kind == RETAIN and basis.shape == (8, 2)
    assert np.allclose(_projector(basis), _projector(q[:, 6:]), atol=1e-8)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-10)


def test_updates_keep_random_bases_orthonormal():
    rng_basis = torch.from_numpy(_orthonormal(24, 5, 9))
    basis, kind = rng_basis, REMOVE
    for seed in range(10, 16):  # six tasks of random, full-rank inputs
        basis, kind, _ = update_basis(torch.from_numpy(_spd(24, seed)), basis, kind, 0.97)
        k = basis.shape[1]
        assert torch.allclose(basis.T @ basis, torch.eye(k, dtype=torch.float64), atol=1e-8)
    assert kind == RETAIN and old_dims(basis, kind) > 12
    assert torch.allclose(project_free(torch.eye(24), basis, kind), basis @ basis.T)


def test_inflora_thresholds_are_validated_in_its_config_section():
    cfg = make_config({})
    assert (cfg.method.inflora.lamb, cfg.method.inflora.lame) == (0.98, 1.0)
    with pytest.raises(ConfigError, match="'method.inflora.lamb' = 1.0 is invalid"):
        make_config({"method": {"name": "inflora", "inflora": {"lamb": 1.0}}})
    with pytest.raises(ConfigError, match="'method.inflora.lame' = 0.9 is invalid"):
        make_config({"method": {"name": "inflora", "inflora": {"lamb": 0.95, "lame": 0.9}}})


# --------------------------------------------------------------------------- learner

def _learner():
    return make_learner("inflora", lamb=0.9)


def _task_covs(model, batches) -> list[torch.Tensor]:
    acc = CovarianceAccumulator(len(model.adapters), 32)
    covariance_pass(model, model.adapters, batches, acc, torch.device("cpu"), None)
    return [acc.covariance(i) for i in range(acc.num_layers)]


def test_learner_designs_A_from_the_new_tasks_inputs_outside_the_old_subspace():
    model, learner = _learner()
    task0, task1 = task_of(0, seed=0), task_of(1, seed=1)
    covs0 = _task_covs(model, loader(0))
    learner.before_task(task0)
    for a, c in zip(model.adapters, covs0):
        expected = np.linalg.svd(c.double().numpy())[0][:, :2].T / math.sqrt(3)
        assert _same_rows_up_to_sign(a.lora_A[0], expected, atol=1e-5)
        assert torch.equal(a.lora_A[0], a.lora_A[1])  # k and v share A
    learner.train_task(task0)
    learner.after_task(task0)
    assert learner.split_dims[0] == [b.shape[1] for b in learner.bases]  # remove bases
    covs1 = _task_covs(model, loader(1, offset=3))  # the model as it is before task 1
    learner.before_task(task1)
    for a, c, m in zip(model.adapters, covs1, learner.bases):
        m = m.double().numpy()
        expected = np.linalg.svd(c.double().numpy() - m @ m.T @ c.double().numpy())[0][:, :2].T
        assert _same_rows_up_to_sign(a.lora_A[0], expected / math.sqrt(3), atol=1e-5)
        assert np.abs(a.lora_A[0].double().numpy() @ m).max() < 1e-5
    learner.train_task(task1)
    for a, m in zip(model.adapters, learner.bases):  # old-subspace inputs: outputs unchanged
        x = (m @ torch.randn(m.shape[1], 20)).T
        with torch.no_grad():
            assert a.lora_B.abs().max() > 0
            assert torch.allclose(a(x), a.base_layer(x), atol=1e-5)


def test_the_last_task_extends_no_basis():
    model, learner = _learner()
    passes = []
    task = make_task(0, lambda: loader(0), last=True,
                     data_pass=lambda: passes.append(1) or loader(0))
    learner.before_task(task)  # designs A from the task's inputs: one pass
    learner.train_task(task)
    learner.after_task(task)  # no task follows: no second pass
    assert len(passes) == 1 and learner.split_dims == [None] and learner.bases == [None, None]


def test_a_state_of_another_model_is_refused():
    _, learner = _learner()
    with pytest.raises(ValueError, match="1 blocks, the model 2"):
        learner.load_state_dict(dict(learner.state_dict(), bases=[None]))


# --------------------------------------------------------------------------- main.py

def _args(out: str) -> list[str]:
    return sets(tiny_overrides(epochs=2) + synthetic(3, 6, 12, 4) + ["method.name=inflora"]) + [
        "--output", out]


def test_inflora_run_resumed_after_a_crash_equals_an_uninterrupted_one(tmp_path):
    ref = main_inprocess(_args("ref"), tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert reference["complete"] and reference["method"] == "inflora"
    assert len(reference["acc_matrix"]) == 3 and reference["forgetting"] is not None
    dims = reference["split_dims"]
    assert dims[2] is None and all(len(d) == 2 and 1 <= min(d) for d in dims[:2])
    assert all(b >= a for a, b in zip(dims[0], dims[1]))  # the old subspace only grows
    with injected("nan_loss:1"):  # task 1 stops; the checkpoint of task 0 stays
        crashed = main_inprocess(_args("run"), tmp_path)
    assert crashed.returncode == 2 and "non-finite training loss" in crashed.stderr
    again = main_inprocess(_args("run"), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == reference
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["learner"]
    assert state["kinds"] == [REMOVE, REMOVE] and len(state["bases"]) == 2
