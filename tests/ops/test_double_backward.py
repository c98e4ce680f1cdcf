"""The hand-written backwards (numba kernels, one autograd node each) are differentiable once: a
second derivative through them (``create_graph=True``, then a backward of the gradient) must raise,
not silently treat their gradients as constants. And a first backward with ``create_graph=True``
still gives the same gradients as without it (the guard changes nothing else)."""

from __future__ import annotations

import pytest
import torch

from longssm.layers.mamba import Mamba
from longssm.ops import numba_available
from longssm.ops.causal_conv import causal_conv_fused
from longssm.ops.cross_entropy import cross_entropy_fused
from longssm.ops.diag_scan import s4d_scan_fused
from longssm.ops.longhorn import longhorn_fused
from longssm.ops.rms_norm import add_rms_norm_fused, gated_rms_norm_fused, rms_norm_fused
from longssm.ops.selective_scan import selective_scan_fused
from longssm.ops.ssd import ssd_fused
from longssm.ops.step_size import step_size_fused

pytestmark = pytest.mark.skipif(not numba_available(), reason="the fused forms need numba")

B, T, D, N = 2, 5, 7, 3


def _rand(*shape, positive=False):
    g = torch.rand if positive else torch.randn
    return g(*shape, dtype=torch.float64) * (0.5 if positive else 1) + (0.1 if positive else 0)


def _scan():
    x, dt, Bm, Cm = _rand(B, T, D), _rand(B, T, D, positive=True), _rand(B, T, N), _rand(B, T, N)
    A = -_rand(D, N, positive=True)
    ins = [x, dt, A, Bm, Cm]
    return ins, lambda: selective_scan_fused(*ins, gate=_gate)[0]


_gate = _rand(B, T, D)


def _conv():
    x, w, b = _rand(B, T, D), _rand(D, 4), _rand(D)
    return [x, w, b], lambda: causal_conv_fused(x, w, b, activation="silu")[0]


def _norm():
    x, w = _rand(B, T, D), _rand(D)
    return [x, w], lambda: rms_norm_fused(x, w, 1e-5)


def _add_norm():
    x, r, w = _rand(B, T, D), _rand(B, T, D), _rand(D)
    return [x, r, w], lambda: add_rms_norm_fused(x, r, w, 1e-5)[1]


def _gated_norm():
    y, z, w = _rand(B, T, D), _rand(B, T, D), _rand(D)
    return [y, z, w], lambda: gated_rms_norm_fused(y, z, w, 1e-5)


def _step_size():
    low, w, b = _rand(B, T, 2), _rand(D, 2), _rand(D)
    return [low, w, b], lambda: step_size_fused(low, w, b)


def _cross_entropy():
    logits, targets = _rand(B * T, 11), torch.randint(0, 11, (B * T,))
    return [logits], lambda: cross_entropy_fused(logits, targets)


def _longhorn():
    x, beta, k, q = (
        _rand(B, T, D),
        torch.rand(B, T, D, dtype=torch.float64),
        _rand(B, T, N),
        _rand(B, T, N),
    )
    return [x, beta, k, q], lambda: longhorn_fused(x, beta, k, q)[0]


def _ssd():
    x, dt, Bm, Cm = (
        _rand(B, T, 2, 5),
        _rand(B, T, 2, positive=True),
        _rand(B, T, 1, N),
        _rand(B, T, 1, N),
    )
    A, Dv, h0 = -_rand(2, positive=True), _rand(2), _rand(B, 2, 5, N)
    ins = [x, dt, A, Bm, Cm, Dv, h0]
    return ins, lambda: ssd_fused(*ins)[0]


def _s4d_scan():
    """Real (..., 2) views as the leaves (the check's sum of squared gradients must be real)."""
    u, D = _rand(B, T, D_S4D), _rand(D_S4D)
    lam = torch.exp(torch.complex(-_rand(D_S4D, N, positive=True), _rand(D_S4D, N)))
    lam, B_bar, C, h0 = (
        torch.view_as_real(lam),
        _rand(D_S4D, N, 2),
        _rand(D_S4D, N, 2),
        _rand(B, D_S4D, N, 2),
    )
    ins = [u, lam, B_bar, C, D, h0]
    c = torch.view_as_complex
    return ins, lambda: s4d_scan_fused(u, c(lam), c(B_bar), c(C), D, c(h0))[0]


D_S4D = 18  # two channel blocks


def _mamba_inner():
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4, d_conv=4, scan="fused").double()
    x = _rand(B, T, 8)
    return [x, layer.A_log, layer.x_proj.weight], lambda: layer(x)[0]


OPS = {
    "selective_scan": _scan,
    "causal_conv": _conv,
    "rms_norm": _norm,
    "add_rms_norm": _add_norm,
    "gated_rms_norm": _gated_norm,
    "step_size": _step_size,
    "cross_entropy": _cross_entropy,
    "longhorn": _longhorn,
    "ssd": _ssd,
    "s4d_scan": _s4d_scan,
    "mamba_inner": _mamba_inner,
}


@pytest.mark.parametrize("name", list(OPS))
def test_second_derivative_raises_and_first_is_unchanged(name):
    torch.manual_seed(1)
    inputs, run = OPS[name]()
    for t in inputs:
        t.requires_grad_(True)
    weights = _rand(*run().shape) if run().dim() else torch.ones((), dtype=torch.float64)
    plain = torch.autograd.grad((run() * weights).sum(), inputs)
    grads = torch.autograd.grad((run() * weights).sum(), inputs, create_graph=True)
    for g, ref in zip(grads, plain):
        assert torch.equal(g, ref)
    second = sum((g * g).sum() for g in grads if g.requires_grad)
    with pytest.raises(RuntimeError, match="differentiable once"):
        second.backward()


def _tiny_lm(mixer):
    from longssm.models import ModelConfig, SSMLanguageModel

    torch.manual_seed(0)
    options = {"mixer_options": {"headdim": 4}} if mixer == "mamba2" else {}
    cfg = ModelConfig(d_model=8, n_layers=2, vocab_size=11, mixer=mixer, d_state=4, **options)
    return SSMLanguageModel(cfg).double()


def _loss(model, tokens):
    from longssm.ops.cross_entropy import cross_entropy

    logits = model(tokens[:, :-1])[0]
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def test_torch_forms_switches_every_auto_path_and_back():
    from longssm.ops import (
        causal_conv,
        cross_entropy,
        diag_scan,
        longhorn,
        rms_norm,
        selective_scan,
        ssd,
        step_size,
        torch_forms,
    )

    x, w = torch.zeros(2, 3, 4), torch.ones(4)
    auto = {
        "scan": lambda: selective_scan.resolve_path("auto", x),
        "longhorn": lambda: longhorn.resolve_path("auto", x),
        "conv": lambda: causal_conv.resolve_path("auto", x),
        "norm": lambda: rms_norm.resolve_path("auto", x, w),
        "step": lambda: step_size.resolve_path("auto", x, w[None].expand(4, 4), w),
        "loss": lambda: cross_entropy.resolve_path("auto", x[0]),
        "ssd": lambda: ssd.resolve_path("auto", x),
        "s4d": lambda: diag_scan.resolve_s4d_path("auto", x),
    }
    fused = {"scan": "fused", "longhorn": "fused", "conv": "fused", "norm": "fused"}
    fused |= {"step": "fused", "loss": "fused", "ssd": "fused", "s4d": "fused"}
    torch_form = {"scan": "chunk", "longhorn": "chunk", "conv": "torch", "norm": "naive"}
    torch_form |= {"step": "naive", "loss": "naive", "ssd": "chunk", "s4d": "conv"}
    assert {k: f() for k, f in auto.items()} == fused
    with torch_forms():
        with torch_forms():  # blocks nest
            pass
        assert {k: f() for k, f in auto.items()} == torch_form
        assert selective_scan.resolve_path("fused", x) == "fused"  # a named path still runs
    assert {k: f() for k, f in auto.items()} == fused


@pytest.mark.parametrize("mixer", ["mamba", "longhorn", "mamba2", "s4d"])
def test_hessian_vector_product_inside_torch_forms_matches_finite_differences(mixer):
    """H v by double backward (inside ``torch_forms``) == the central difference of the gradient
    computed by the default fused path, (g(θ + εv) - g(θ - εv)) / 2ε, in float64 (within 1e-6 of
    the largest entry; the difference shrinks as ε², the check of the formula); and the same
    double backward through the fused path raises."""
    from longssm.ops import torch_forms

    model = _tiny_lm(mixer)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(3))
    v = [torch.randn_like(p) for p in params]
    with torch_forms():
        grads = torch.autograd.grad(_loss(model, tokens), params, create_graph=True)
        hvp = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)

    def grad_at(sign, eps=1e-6):  # truncation error ~ eps^2: 3e-8 of |H v| at 1e-6
        with torch.no_grad():
            for p, u in zip(params, v):
                p.add_(sign * eps * u)
        g = torch.autograd.grad(_loss(model, tokens), params)
        with torch.no_grad():
            for p, u in zip(params, v):
                p.sub_(sign * eps * u)
        return g

    plus, minus = grad_at(1.0), grad_at(-1.0)
    for h, gp, gm in zip(hvp, plus, minus):
        assert (h - (gp - gm) / 2e-6).abs().max() <= 1e-6 * h.abs().max()
    grads = torch.autograd.grad(_loss(model, tokens), params, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
