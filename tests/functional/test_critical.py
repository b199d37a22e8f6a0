"""Critical sharpness against the closed forms on a quadratic with known H, and its contract.

On ``L(w) = 1/2 w^T H w - b^T w`` with gradient ``g = H w - b``, a step ``eta`` along ``d`` changes the
loss by ``eta g.d + 1/2 eta^2 d^T H d``: ``eta_c = -2 g.d / d^T H d`` and ``lambda_c = d^T H d / (-g.d)``.
The references below compute that in float64 with NumPy, independently of the search.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.functional import CriticalSharpness, critical_sharpness


class Quadratic(nn.Module):
    """A model whose loss is exactly ``1/2 w^T H w - b^T w``, its weights split over two parameters
    (a vector and a matrix) and a BatchNorm-like buffer that the loss does not use."""

    def __init__(self, H: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("H", torch.tensor(H))
        self.register_buffer("b", torch.tensor(b))
        self.register_buffer("counter", torch.zeros((), dtype=torch.float64))
        self.a = nn.Parameter(torch.tensor(w[:3]))
        self.B = nn.Parameter(torch.tensor(w[3:]).reshape(2, 2))

    def flat(self) -> torch.Tensor:
        return torch.cat([self.a.reshape(-1), self.B.reshape(-1)])

    def forward(self, _: object) -> torch.Tensor:
        w = self.flat()
        self.counter += 1  # a buffer the evaluation changes: must come back
        return 0.5 * w @ self.H @ w - self.b @ w


def loss_fn(model: nn.Module, batch: object) -> torch.Tensor:
    return model(batch)


def problem(seed: int, condition: float = 100.0, indefinite: bool = False):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    eigs = np.geomspace(1.0, condition, 7)
    if indefinite:
        eigs[-1] = -condition
    H = (q * eigs) @ q.T
    b, w = rng.normal(size=7), rng.normal(size=7)
    return H, b, w


def as_direction(model: Quadratic, flat: np.ndarray) -> list[torch.Tensor]:
    t = torch.tensor(flat)
    return [t[:3].clone(), t[3:].reshape(2, 2).clone()]


def expected(H: np.ndarray, g: np.ndarray, d: np.ndarray) -> float:
    return float(d @ H @ d / -(g @ d))


@pytest.mark.parametrize("rtol", [1e-2, 1e-6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_direction_gives_the_rayleigh_quotient(seed: int, rtol: float) -> None:
    H, b, w = problem(seed)
    model = Quadratic(H, b, w)
    g = H @ w - b
    res = critical_sharpness(model, loss_fn, [None], as_direction(model, -g), rtol=rtol)
    truth = float(g @ H @ g / (g @ g))
    assert isinstance(res, CriticalSharpness)
    assert res.converged and res.bracketed
    assert res.lambda_c == pytest.approx(truth, rel=rtol)
    assert res.eta_c == pytest.approx(2 / truth, rel=rtol)
    low, high = res.bracket
    assert low < 2 / truth <= high * (1 + 1e-12)
    if rtol == 1e-2:
        assert res.evaluations <= 10


@pytest.mark.parametrize("rtol", [1e-2, 1e-6])
def test_fixed_diagonal_preconditioner_closed_form(rtol: float) -> None:
    H, b, w = problem(3, condition=1e3)
    model = Quadratic(H, b, w)
    g = H @ w - b
    P = np.random.default_rng(4).uniform(0.1, 10.0, size=7)  # d = -P g
    d = -P * g
    res = critical_sharpness(model, loss_fn, [None], as_direction(model, d), rtol=rtol)
    truth = float((g * P) @ H @ (g * P) / (g @ (P * g)))
    assert truth == pytest.approx(expected(H, g, d), rel=1e-12)
    assert res.lambda_c == pytest.approx(truth, rel=rtol)
    # the Rayleigh quotient of P^1/2 H P^1/2: never above lambda_max(P H)
    assert res.lambda_c <= np.linalg.eigvals(np.diag(P) @ H).real.max() * (1 + rtol)


def test_any_descent_direction_and_a_second_loss() -> None:
    """A momentum-like direction, and a second quadratic searched along the first one's update
    (relative critical sharpness)."""
    H, b, w = problem(5)
    model = Quadratic(H, b, w)
    g = H @ w - b
    d = -(g + 0.3 * np.random.default_rng(6).normal(size=7) * np.abs(g))
    assert g @ d < 0
    res = critical_sharpness(model, loss_fn, [None], as_direction(model, d), rtol=1e-6)
    assert res.lambda_c == pytest.approx(expected(H, g, d), rel=1e-6)

    H2, b2, _ = problem(7)
    g2 = H2 @ w - b2
    if g2 @ d >= 0:
        b2 = b2 + 2 * (g2 @ d) * d / (d @ d) + d  # make d a descent direction of the second loss too
        g2 = H2 @ w - b2
    second = Quadratic(H2, b2, w)
    res2 = critical_sharpness(second, loss_fn, [None], as_direction(second, d), rtol=1e-6)
    assert res2.lambda_c == pytest.approx(expected(H2, g2, d), rel=1e-6)


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 1.0, 1e2, 1e6])
def test_few_evaluations_from_any_first_guess(scale: float) -> None:
    H, b, w = problem(8)
    model = Quadratic(H, b, w)
    g = H @ w - b
    truth = float(g @ H @ g / (g @ g))
    res = critical_sharpness(model, loss_fn, [None], as_direction(model, -g), eta0=scale * 2 / truth)
    assert res.lambda_c == pytest.approx(truth, rel=1e-2)
    assert res.evaluations <= 10 if 1e-2 <= scale <= 1e2 else res.evaluations <= 16


def test_weights_buffers_modes_and_rng_are_left_as_they_were() -> None:
    H, b, w = problem(9)
    model = Quadratic(H, b, w).train()
    g = H @ w - b
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [model.a, model.B]
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    res = critical_sharpness(model, loss_fn, [None], as_direction(model, -g), rtol=1e-6)
    assert res.evaluations > 5
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # bit for bit, the counter buffer included
    assert all(p.requires_grad for p in params) and model.training
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_the_line_holds_every_evaluation() -> None:
    H, b, w = problem(10)
    model = Quadratic(H, b, w)
    g = H @ w - b
    res = critical_sharpness(model, loss_fn, [None, None], as_direction(model, -g))
    etas, losses = res.line()
    assert etas[0] == 0.0 and res.etas[0] == 0.0 and np.all(np.diff(etas) >= 0)
    assert res.forward_passes == 2 * res.evaluations == 2 * len(res.etas)
    L = lambda v: 0.5 * v @ H @ v - b @ v  # noqa: E731
    assert np.allclose(losses, [L(w - e * g) for e in etas], rtol=1e-12, atol=1e-12)
    assert res.loss == pytest.approx(L(w), rel=1e-14)
    assert set(res.scalars()) == {"critical/lambda_c", "critical/eta_c", "critical/evaluations"}


def test_ascent_and_zero_directions_are_refused() -> None:
    H, b, w = problem(12)
    model = Quadratic(H, b, w)
    g = H @ w - b
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="`direction`: the loss does not go down"):
        critical_sharpness(model, loss_fn, [None], as_direction(model, g))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="`direction` must be finite and non-zero"):
        critical_sharpness(model, loss_fn, [None], as_direction(model, 0 * g))
    with pytest.raises(ValueError, match="`direction` has 1 tensors"):
        critical_sharpness(model, loss_fn, [None], as_direction(model, -g)[:1])
    with pytest.raises(ValueError, match="`rtol`"):
        critical_sharpness(model, loss_fn, [None], as_direction(model, -g), rtol=1.0)


def test_loss_that_keeps_going_down_is_not_bracketed() -> None:
    """Negative curvature along d: the loss goes down at every step; lambda_c = 0, bracketed False."""
    H, b, w = problem(13, indefinite=True)
    model = Quadratic(H, b, w)
    _, vecs = np.linalg.eigh(H)
    d = vecs[:, 0] * -np.sign(vecs[:, 0] @ (H @ w - b))  # the negative eigenvector, downhill
    res = critical_sharpness(model, loss_fn, [None], as_direction(model, d), max_evaluations=20)
    assert not res.bracketed and res.lambda_c == 0.0 and res.eta_c == float("inf")
    assert "critical/eta_c" not in res.scalars()


def test_nonquadratic_loss_matches_a_dense_grid() -> None:
    """A small MLP with cross-entropy along minus its gradient: the first grid point where the loss is
    no longer below L(w) brackets the search's eta_c."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))
    ce = lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1])  # noqa: E731
    grads = torch.autograd.grad(ce(net, (x, y)), list(net.parameters()))
    d = [-g for g in grads]
    res = critical_sharpness(net, ce, [(x, y)], d, rtol=1e-4)
    grid = np.linspace(0, 2 * res.eta_c, 4001)[1:]
    base = float(ce(net, (x, y)).detach())
    params = list(net.parameters())
    saved = [p.detach().clone() for p in params]
    ups = []
    with torch.no_grad():
        for eta in grid:
            for p, s, t in zip(params, saved, d):
                p.copy_(s + eta * t)
            ups.append(float(ce(net, (x, y))) >= base)
        for p, s in zip(params, saved):
            p.copy_(s)
    first_up = grid[int(np.argmax(ups))]
    assert first_up == pytest.approx(res.eta_c, abs=2 * (grid[1] - grid[0]))


@pytest.mark.slow
def test_fsdp2_sharded_parameters_two_processes() -> None:
    """FSDP2 (DTensor shards, gloo, 2 processes): the same lambda_c as the unsharded model, on every
    rank, weights bit for bit as before. Forward passes only: no double backward through FSDP."""
    from helpers.two_ranks import run_two_ranks

    rows = run_two_ranks("fsdp_critical.py", timeout=300)
    for r in rows:
        assert r["kinds"] == ["DTensor"] and r["same"]
        assert r["sharded"] == pytest.approx(r["whole"], rel=1e-6)
    assert rows[0]["sharded"] == rows[1]["sharded"]
