"""Lanczos and Hutchinson on dense symmetric matrices, against ``torch.linalg.eigh`` and the exact trace."""

from __future__ import annotations

import math
import weakref

import numpy as np
import pytest
import torch

from lightning_landscape.functional import ScaledOperator, hutchinson, lanczos
from lightning_landscape.functional.curvature import estimators
from lightning_landscape.functional.curvature.estimators import default_max_basis, hutchinson_samples
from lightning_landscape.functional.objective import NonFiniteError


def spd_like(n: int, seed: int = 0, spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """A dense symmetric matrix with a given spectrum (default: a few outliers over a bulk, both signs)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    if spectrum is None:
        bulk = torch.randn(n - 4, generator=g, dtype=torch.float64) * 0.3
        spectrum = torch.cat([torch.tensor([25.0, 12.0, 7.0, -3.0], dtype=torch.float64), bulk])
    return (q * spectrum) @ q.T


class Counting:
    """``A v`` that counts its calls."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.calls = a, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.a @ v


def test_lanczos_extremes_match_eigh():
    a = spd_like(60)
    evals = torch.linalg.eigvalsh(a).numpy()
    res = lanczos(Counting(a), 60, k=3, which="both", max_iter=60, tol=1e-12, max_basis=60)
    np.testing.assert_allclose(res.values[:3], evals[::-1][:3], rtol=1e-10)
    np.testing.assert_allclose(res.values[3:], evals[:3], rtol=1e-8, atol=1e-10)
    assert res.converged


def test_lanczos_stops_early_and_its_residuals_are_true():
    a = spd_like(200, seed=1)
    evals = torch.linalg.eigvalsh(a).numpy()
    matvec = Counting(a)
    res = lanczos(matvec, 200, k=1, max_iter=200, tol=1e-8, return_vectors=True)
    assert res.converged and res.iterations < 60 and matvec.calls == res.iterations
    assert res.values[0] == pytest.approx(evals[-1], rel=1e-10)
    y = res.vectors[0]
    assert float(y.norm()) == pytest.approx(1.0, abs=1e-10)
    true = float((a @ y - res.values[0] * y).norm())
    assert true == pytest.approx(float(res.residuals[0]), rel=0.05, abs=1e-12)
    assert len(res.history) == res.iterations and res.history[-1] == pytest.approx(res.values[0])


class Live(Counting):
    """``A v`` that also counts how many of its outputs are alive at each call (Lanczos keeps its basis
    vectors in the outputs it is given)."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__(a)
        self.outputs: list[weakref.ref] = []
        self.most_alive = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.most_alive = max(self.most_alive, sum(r() is not None for r in self.outputs))
        out = super().__call__(v)
        self.outputs.append(weakref.ref(out))
        return out


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_thick_restarts_bound_the_basis_and_keep_the_answer(which):
    a = spd_like(300, seed=9)
    evals = torch.linalg.eigvalsh(a).numpy()
    matvec = Live(a)
    res = lanczos(matvec, 300, k=1, which=which, max_iter=300, tol=1e-10, max_basis=6, return_vectors=True)
    assert res.converged and res.restarts > 0 and res.max_basis == 6
    assert matvec.most_alive <= 6  # the basis never holds more than max_basis vectors
    exact = {"largest": [evals[-1]], "smallest": [evals[0]], "both": [evals[-1], evals[0]]}[which]
    np.testing.assert_allclose(res.values, exact, rtol=1e-10)
    for theta, y, r in zip(res.values, res.vectors, res.residuals):
        assert float(y.norm()) == pytest.approx(1.0, abs=1e-10)
        assert float((a @ y - theta * y).norm()) == pytest.approx(r, rel=0.1, abs=1e-9)
    # Against plain Lanczos (no restart, every vector kept), the products are about as many.
    plain = lanczos(Counting(a), 300, k=1, which=which, max_iter=300, tol=1e-10, max_basis=300)
    assert plain.restarts == 0 and res.iterations <= 2 * plain.iterations
    np.testing.assert_allclose(res.values, plain.values, rtol=1e-10)


def test_the_default_budget_keeps_small_problems_whole_and_bounds_large_ones(monkeypatch):
    assert default_max_basis(1000, torch.float64) == (1 << 26) // 8000  # every vector of a small problem
    assert default_max_basis(4_000_000, torch.float32) == 6  # 16 MB vectors: the minimum
    assert default_max_basis(4_000_000, torch.float32, wanted=4) == 10
    monkeypatch.setattr(estimators, "BASIS_BYTES", 1 << 20)  # as if 200,000 elements were large
    a = spd_like(300, seed=10)
    evals = torch.linalg.eigvalsh(a).numpy()
    matvec = Live(a)
    kron = lambda v: matvec(v.view(300, -1)).reshape(-1)  # noqa: E731  (A kron I: 200,100 elements)
    res = lanczos(kron, 300 * 667, which="largest", max_iter=60, tol=1e-8)
    assert res.max_basis == 6 and res.restarts > 0 and matvec.most_alive <= 6
    assert res.values[0] == pytest.approx(evals[-1], rel=1e-8)


def test_float32_dot_products_of_millions_of_elements_stay_accurate():
    """Float32 BLAS dots of a million elements on the CPU put Ritz values 1e-5 off (1e-4 at 3M)."""
    n = 1_000_000
    d = torch.linspace(-1.0, 2.0, n)
    d[:3] = torch.tensor([5.0, 4.0, -3.0])
    res = lanczos(lambda v: d * v, n, which="both", max_iter=40, tol=1e-6, dtype=torch.float32, max_basis=6)
    assert res.restarts > 0
    np.testing.assert_allclose(res.values, [5.0, -3.0], rtol=2e-6)


def test_max_basis_must_leave_room_for_the_wanted_pairs():
    with pytest.raises(ValueError, match="`max_basis`"):
        lanczos(lambda v: v, 50, k=2, which="both", max_basis=5)


def test_smallest_comes_ascending_and_ritz_values_stay_inside_the_spectrum():
    a = spd_like(80, seed=2)
    evals = torch.linalg.eigvalsh(a).numpy()
    few = lanczos(Counting(a), 80, k=2, which="smallest", max_iter=4, tol=1e-14)
    assert not few.converged and few.iterations == 4
    assert few.values[0] <= few.values[1] and few.values[0] >= evals[0] - 1e-12
    full = lanczos(Counting(a), 80, k=2, which="smallest", max_iter=80, tol=1e-12, max_basis=80)
    np.testing.assert_allclose(full.values, evals[:2], rtol=1e-9)


def test_low_rank_matrix_is_found_invariant_with_exact_values():
    spectrum = torch.zeros(50, dtype=torch.float64)
    spectrum[:3] = torch.tensor([5.0, 2.0, -1.0])
    a = spd_like(50, seed=3, spectrum=spectrum)
    res = lanczos(Counting(a), 50, k=1, which="both", max_iter=50, tol=1e-14)
    assert res.invariant and res.converged and res.iterations <= 4
    np.testing.assert_allclose(res.values, [5.0, -1.0], rtol=1e-12)


def test_float32_basis_gives_float64_values_close_to_the_truth():
    a = spd_like(100, seed=4)
    evals = torch.linalg.eigvalsh(a).numpy()
    a32 = a.float()
    res = lanczos(lambda v: a32 @ v, 100, which="both", max_iter=100, tol=1e-6, dtype=torch.float32)
    assert res.values.dtype == np.float64
    np.testing.assert_allclose(res.values, [evals[-1], evals[0]], rtol=1e-5)


def test_the_seed_fixes_the_start_vector():
    a = spd_like(40, seed=5)
    one = lanczos(Counting(a), 40, max_iter=5, tol=1e-14, seed=7)
    two = lanczos(Counting(a), 40, max_iter=5, tol=1e-14, seed=7)
    other = lanczos(Counting(a), 40, max_iter=5, tol=1e-14, seed=8)
    np.testing.assert_array_equal(one.history, two.history)
    assert not np.array_equal(one.history, other.history)


def test_a_warm_start_near_the_top_eigenvector_converges_in_a_few_products():
    """A start close to the top eigenvector (an earlier Ritz vector at nearby weights) reaches lambda_max in
    3 products; the Rademacher start does not (against eigh)."""
    a = spd_like(60, seed=3, spectrum=torch.linspace(-1.0, 10.0, 60, dtype=torch.float64))
    values, vectors = torch.linalg.eigh(a)
    noise = torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    near = vectors[:, -1] + 0.01 * noise
    warm = lanczos(Counting(a), 60, max_iter=3, tol=1e-14, start=near)
    cold = lanczos(Counting(a), 60, max_iter=3, tol=1e-14)
    assert abs(warm.values[0] - float(values[-1])) < 1e-4 * float(values[-1])
    assert abs(cold.values[0] - float(values[-1])) > 1e-2 * float(values[-1])
    scaled = lanczos(Counting(a), 60, max_iter=3, tol=1e-14, start=near * 1e3)  # normalized
    np.testing.assert_allclose(scaled.values, warm.values, rtol=1e-12)
    with pytest.raises(ValueError, match="`start` must be a vector of 60"):
        lanczos(Counting(a), 60, start=near[:10])
    with pytest.raises(ValueError, match="`start` must be a non-zero, finite vector"):
        lanczos(Counting(a), 60, start=torch.zeros(60, dtype=torch.float64))


def test_non_finite_products_raise():
    def broken(v):
        return v * math.nan

    with pytest.raises(NonFiniteError):
        lanczos(broken, 10)
    with pytest.raises(NonFiniteError):
        hutchinson(broken, 10, samples=3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"k": 0}, "k"), ({"max_iter": 0}, "max_iter"), ({"which": "top"}, "which"), ({"tol": 0}, "tol")],
)
def test_bad_lanczos_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        lanczos(lambda v: v, 5, **kwargs)


def test_hutchinson_within_four_standard_errors_of_the_exact_trace():
    a = spd_like(60, seed=6)
    res = hutchinson(Counting(a), 60, samples=200, seed=1)
    exact = float(torch.trace(a))
    assert res.stderr > 0 and abs(res.trace - exact) <= 4 * res.stderr, (res.trace, exact, res.stderr)
    # The probes are Rademacher: z^T A z = tr(A) + sum_{i != j} z_i z_j a_ij; check one by hand.
    g = torch.Generator().manual_seed(1)
    z = (torch.randint(0, 2, (60,), generator=g, dtype=torch.int8) * 2 - 1).double()
    assert res.samples[0] == pytest.approx(float(z @ a @ z), rel=1e-12)


def test_hutchinson_of_a_diagonal_is_exact_and_subsets_draw_the_same_probes():
    d = torch.tensor([1.0, -2.0, 3.5], dtype=torch.float64)
    res = hutchinson(lambda v: d * v, 3, samples=5)
    assert res.trace == pytest.approx(2.5) and res.stderr == 0
    a = spd_like(30, seed=7)
    every = hutchinson_samples(lambda v: a @ v, 30, 6, seed=3)
    odd = hutchinson_samples(lambda v: a @ v, 30, 6, seed=3, indices=[1, 3, 5])
    np.testing.assert_array_equal(every[1::2], odd)
    with pytest.raises(ValueError, match="`samples`"):
        hutchinson(lambda v: v, 3, samples=1)


def test_scaled_operator_has_the_spectrum_of_the_preconditioned_matrix():
    a = spd_like(30, seed=8)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(30, generator=g, dtype=torch.float64) + 0.1

    class Dense:
        numel, dtype, device = 30, torch.float64, torch.device("cpu")

        def matvec(self, v):
            return a @ v

    op = ScaledOperator(Dense(), p.rsqrt())
    exact = np.sort(np.linalg.eigvals((a / p[:, None]).numpy()).real)
    res = lanczos(op.matvec, 30, which="both", max_iter=30, tol=1e-12)
    np.testing.assert_allclose(res.values, [exact[-1], exact[0]], rtol=1e-9)
    with pytest.raises(ValueError, match="`diagonal`"):
        ScaledOperator(Dense(), -p)
