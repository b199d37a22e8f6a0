"""Curvature through attention and recurrent layers, against exact float64 Hessians.

Fused attention kernels (the CPU flash kernel here) have no double backward; the curvature functions
must route around them (math attention, no fused fast path, cuDNN off) without changing anything
outside. The references are computed with ``torch.autograd.functional.hessian`` under the math kernel,
independently of the package.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.exact_hessian import Reference, ce
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_landscape.functional import hessian_eigenvalues, hessian_trace, hessian_vector_product
from lightning_landscape.functional.curvature.operators import SecondOrderError

SEQ, DIM, CLASSES = 5, 6, 3


class TinyViT(nn.Module):
    """Patch embedding, class token, positions, a pre-norm TransformerEncoder with dropout, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, DIM)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, SEQ + 1, DIM) * 0.5)
        layer = nn.TransformerEncoderLayer(
            DIM, 2, 8, dropout=0.1, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], dim=1) + self.pos
        return self.head(self.norm(self.encoder(h))[:, 0])


class CausalBlock(nn.Module):
    """One causal self-attention block calling ``F.scaled_dot_product_attention(is_causal=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        n, t, _ = h.shape
        q, k, v = self.qkv(h).view(n, t, 3, 2, DIM // 2).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, t, DIM)
        return self.head(torch.tanh(h + self.proj(a))[:, -1])


class Attention(nn.Module):
    """``nn.MultiheadAttention`` (self-attention with a key padding mask) between two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, DIM)
        self.attn = nn.MultiheadAttention(DIM, 2, batch_first=True)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x))
        mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        mask[:, -1] = True  # the last position is padding
        a, _ = self.attn(h, h, h, key_padding_mask=mask)
        return self.head(a.mean(dim=1))


class Recurrent(nn.Module):
    """``nn.LSTM`` over the sequence, its last hidden state into a head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.head = nn.Linear(5, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


MODELS = {"vit": TinyViT, "causal": CausalBlock, "mha": Attention, "lstm": Recurrent}


def _setup(name: str):
    torch.manual_seed(0)
    model = MODELS[name]().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, SEQ, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (8,), generator=g)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    return model, batches


@pytest.fixture(scope="module")
def exact():
    out = {}
    for name in MODELS:
        model, batches = _setup(name)
        with sdpa_kernel(SDPBackend.MATH):
            h = Reference(model, batches).hessian()
        out[name] = (h, torch.linalg.eigvalsh(h).numpy())
    return out


def test_the_fused_kernel_really_has_no_double_backward():
    """The premise: without the package's care, the flash kernel stops a Hessian-vector product."""
    model, batches = _setup("causal")
    params = list(model.parameters())
    grads = torch.autograd.grad(ce(model, batches[0]), params, create_graph=True)
    with pytest.raises(RuntimeError, match=r"derivative for .*flash"):
        torch.autograd.grad(grads, params, [torch.ones_like(g) for g in grads])


@pytest.mark.parametrize("name", list(MODELS))
def test_eigenvalues_match_the_exact_hessian(name, exact):
    model, batches = _setup(name)
    model.train()  # dropout on: observed in eval mode all the same
    h, evals = exact[name]
    res = hessian_eigenvalues(model, ce, batches, which="both", max_iter=h.shape[0], tol=1e-10)
    assert res.lambda_max == pytest.approx(evals[-1], rel=1e-5)
    assert res.lambda_min == pytest.approx(evals[0], rel=1e-5, abs=1e-7 * evals[-1])
    assert model.training and torch.backends.cudnn.enabled  # restored
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("name", list(MODELS))
def test_trace_within_four_standard_errors(name, exact):
    model, batches = _setup(name)
    h, _ = exact[name]
    res = hessian_trace(model, ce, batches, samples=64, seed=2)
    assert abs(res.trace - float(torch.trace(h))) <= 4 * res.stderr, (res.trace, float(torch.trace(h)))


def test_hvp_through_the_vit_matches_the_exact_hessian(exact):
    model, batches = _setup("vit")
    h, _ = exact["vit"]
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in model.parameters()]
    hv = torch.cat([t.reshape(-1) for t in hessian_vector_product(model, ce, batches, v)])
    torch.testing.assert_close(hv, h @ torch.cat([t.reshape(-1) for t in v]), rtol=1e-9, atol=1e-11)


def test_a_frozen_encoder_in_eval_mode_works_too():
    """With the encoder frozen only the head is differentiated (PyTorch's fast path would apply)."""
    model, batches = _setup("vit")
    model.eval()
    model.encoder.requires_grad_(False)
    head = list(model.head.parameters())
    res = hessian_eigenvalues(model, ce, batches, params=head, which="both", max_iter=30, tol=1e-12)
    shapes = [p.shape for p in head]

    def loss(flat):
        w, b = flat[: shapes[0].numel()].view(shapes[0]), flat[shapes[0].numel() :].view(shapes[1])
        call = torch.func.functional_call
        return (
            sum(F.cross_entropy(call(model, {"head.weight": w, "head.bias": b}, (x,)), y) for x, y in batches)
            / 2
        )

    dense = torch.autograd.functional.hessian(loss, torch.cat([p.detach().reshape(-1) for p in head]))
    evals = torch.linalg.eigvalsh(dense).numpy()
    assert res.lambda_max == pytest.approx(evals[-1], rel=1e-8)


class _Cube(torch.autograd.Function):
    """``x^3`` with a backward marked ``@once_differentiable``: a second pass silently misses its term."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


class OnceDifferentiable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Cube.apply(x)


class FusedAttention(nn.Module):
    """Self-attention through the fused CPU kernel called directly (as some libraries do)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 1, 4).permute(2, 0, 3, 1, 4)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0].mean(dim=(1, 2))


@pytest.mark.parametrize(
    ("layer", "name"), [(OnceDifferentiable, "OnceDifferentiable"), (FusedAttention, "FusedAttention")]
)
def test_a_module_without_double_backward_is_named(layer, name):
    torch.manual_seed(0)
    shape = (6, 4) if layer is OnceDifferentiable else (6, SEQ, 4)
    model = nn.Sequential(nn.Linear(4, 4), layer(), nn.Linear(4, 3)).double()
    batches = [(torch.randn(*shape, dtype=torch.float64), torch.randint(0, 3, (6,)))]
    with pytest.raises(SecondOrderError, match=f"{name} \\('1'\\)"):
        hessian_eigenvalues(model, ce, batches)
    with pytest.raises(SecondOrderError, match=name):
        hessian_trace(model, ce, batches, samples=2)
    assert torch.backends.cudnn.enabled and model.training
    # Leaving it out (its parameters and everything before it) works.
    res = hessian_eigenvalues(model, ce, batches, params=list(model[2].parameters()))
    assert np.isfinite(res.lambda_max)


def test_kept_gradient_graphs_do_not_keep_the_gradients():
    """Only the graph of each batch's gradient is needed for products: its values' memory is given back."""
    from helpers.exact_hessian import make_batches, mlp

    from lightning_landscape.functional import hessian_operator

    model, batches = mlp(), make_batches("mlp")
    h = Reference(model, batches).hessian()
    with hessian_operator(model, ce, batches) as op:
        kept = [g for graph in op._graphs for g in graph if g is not None]
        assert kept and all(g.untyped_storage().nbytes() == 0 for g in kept)
        v = torch.randn(op.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)  # the graphs are reusable


class _ExpThroughLog(torch.autograd.Function):
    """``exp(x)``, whose backward ends in an ``exp`` that saves its result: the gradient of ``x`` itself."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.exp(x + torch.log(grad))  # = grad * exp(x) for grad > 0 (here grad = 1)


class _ExpSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ExpThroughLog.apply(self.w).sum() + 0 * x.sum()


def test_a_gradient_its_own_graph_saved_is_kept():
    """Where the gradient graph saved the gradient's values (here the ``exp`` that makes it saves its
    result), they are not given back, and products stay exact: H = diag(exp(w))."""
    from lightning_landscape.functional import hessian_operator

    model = _ExpSum()
    batch = (torch.zeros(1, dtype=torch.float64),)
    with hessian_operator(model, lambda m, b: m(b[0]), [batch]) as op:
        (g,) = op._graphs[0]
        assert g is not None and g.untyped_storage().nbytes() > 0
        v = torch.arange(1.0, 6.0, dtype=torch.float64)
        exact = torch.exp(model.w.detach()) * v
        for _ in range(2):
            torch.testing.assert_close(op.matvec(v), exact, rtol=1e-12, atol=1e-14)
