"""Selective scan with negative eigenvalues (transition 2 exp(ΔA) - 1): fused == chunk == naive ==
an explicit float64 loop (outputs, final state, gradients incl. the initial state and the gate);
the dispatcher runs the fused kernels for it on the CPU and never the Triton ones; the Mamba layer
reaches transitions below 0, and its one-node inner path equals the separate calls."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, linear_loss_grads
from longssm.layers.mamba import Mamba
from longssm.ops import numba_available
from longssm.ops.selective_scan import (
    resolve_path,
    selective_scan,
    selective_scan_chunk,
    selective_scan_fused,
    selective_scan_naive,
    selective_scan_step,
)

needs_numba = pytest.mark.skipif(not numba_available(), reason="needs numba")


def inputs(batch=2, T=13, d=3, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, B, C = r(batch, T, d), r(batch, T, n), r(batch, T, n)
    dt = torch.nn.functional.softplus(r(batch, T, d)) * 2  # large steps: exp(ΔA) near 0
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 3
    return [t.requires_grad_() for t in (x, dt, A, B, C, r(d), r(batch, d, n))]


def explicit(x, dt, A, B, C, D, h0):
    """Elementwise loop straight from h_t = (2 e^{Δ_t A} - 1) h_{t-1} + Δ_t B_t x_t."""
    batch, T, d = x.shape
    h, ys = h0, []
    for t in range(T):
        a = 2 * torch.exp(dt[:, t, :, None] * A) - 1  # (B, d, n)
        h = a * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, 1), h


def assert_matches_reference(y, h, y_ref, h_ref, leaves, names, what, grads_ref=None):
    """y, h_T and the gradient of every leaf (a linear loss of y and h_T) equal the reference's
    (``grads_ref``: the reference's gradients when already taken; its graph is then freed)."""
    assert_close(y, y_ref, name=f"{what} y")
    assert_close(h, h_ref, name=f"{what} h_T")
    grads = linear_loss_grads(y, h, leaves)
    grads_ref = grads_ref if grads_ref is not None else linear_loss_grads(y_ref, h_ref, leaves)
    for g, gr, name in zip(grads, grads_ref, names):
        assert_close(g, gr, name=f"{what} d/d{name}")


@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (13, 32), (40, 8)])
def test_chunk_and_naive_equal_explicit_loop(T, chunk):
    args = inputs(T=T)
    y_ref, h_ref = explicit(*args)
    forms = {
        "naive": selective_scan_naive(*args, True, negative_eigenvalues=True),
        "chunk": selective_scan_chunk(*args, True, chunk, negative_eigenvalues=True),
    }
    ref_grads = linear_loss_grads(y_ref, h_ref, args)
    for name, (y, h) in forms.items():
        assert_matches_reference(y, h, y_ref, h_ref, args, "x dt A B C D h0".split(), name,
                                 ref_grads)  # fmt: skip


def test_step_equals_loop_and_transitions_go_negative():
    x, dt, A, B, C, D, h0 = inputs(T=6)
    y_ref, h_ref = explicit(x, dt, A, B, C, D, h0)
    h = h0
    for t in range(6):
        y_t, h = selective_scan_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, h, True)
        assert_close(y_t, y_ref[:, t], name=f"step {t}")
    assert_close(h, h_ref, name="h")
    assert (2 * torch.exp(dt[..., None] * A) - 1).min() < -0.5


@needs_numba
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
@pytest.mark.parametrize(
    "shape", [(2, 1, 3, 4), (2, 13, 3, 4), (1, 70, 37, 3), (33, 40, 40, 2)],
    ids=["T1", "T13", "T70-3-blocks", "one-group-of-3-blocks"],
)
def test_fused_equals_explicit_loop(shape, with_h0):
    """The fused kernels (T across the 32-step checkpoints; channels across 16-lane blocks, and
    a group of several blocks) against the explicit loop: y, h_T and every gradient, float64."""
    batch, T, d, n = shape
    *args, h0 = inputs(batch, T, d, n)
    h0 = h0 if with_h0 else None
    h0_ref = h0 if with_h0 else torch.zeros(batch, d, n, dtype=torch.float64)
    y_ref, h_ref = explicit(*args, h0_ref)
    y, h = selective_scan_fused(*args, h0, True, negative_eigenvalues=True)
    leaves = args + ([h0] if with_h0 else [])
    assert_matches_reference(y, h, y_ref, h_ref, leaves, "x dt A B C D h0".split(), "fused")


@needs_numba
def test_fused_gate_equals_explicit_loop_times_silu():
    args = inputs(33, 40, 40, 2)
    z = (3 * torch.randn(33, 40, 40, dtype=torch.float64)).requires_grad_()
    y_ref, h_ref = explicit(*args)
    y_ref = y_ref * torch.nn.functional.silu(z)
    y, h = selective_scan_fused(*args, True, gate=z, negative_eigenvalues=True)
    assert_matches_reference(y, h, y_ref, h_ref, args + [z], "x dt A B C D h0 z".split(), "gated")


@needs_numba
def test_fused_positive_path_unchanged_by_the_flag():
    """negative_eigenvalues=False through the new argument: the same bits as before (the
    default path), and different from the negative transition."""
    args = [t.detach().float() for t in inputs(4, 37, 20, 4)]
    y0, h0 = selective_scan_fused(*args, True)
    y1, h1 = selective_scan_fused(*args, True, negative_eigenvalues=False)
    assert torch.equal(y0, y1) and torch.equal(h0, h1)
    y2, _ = selective_scan_fused(*args, True, negative_eigenvalues=True)
    assert (y2 - y0).abs().max() > 1e-3


def test_dispatcher_runs_negative_eigenvalues_fused_on_cpu_never_triton():
    x = torch.zeros(1, 2, 3)
    assert resolve_path("auto", x, negative_eigenvalues=True) == (
        "fused" if numba_available() else "chunk"
    )
    assert resolve_path("naive", x, negative_eigenvalues=True) == "naive"
    assert resolve_path("chunk", x, negative_eigenvalues=True) == "chunk"
    with pytest.raises(ValueError, match="negative_eigenvalues"):
        resolve_path("triton", x, negative_eigenvalues=True)
    from longssm.ops import torch_forms

    with torch_forms():
        assert resolve_path("auto", x, negative_eigenvalues=True) == "chunk"
    args = [t.detach() for t in inputs(T=9)]
    y_auto, _ = selective_scan(*args, negative_eigenvalues=True)
    y_ref, _ = explicit(*args)
    assert_close(y_auto, y_ref, name="auto")


def test_mamba_layer_reaches_negative_transitions_and_differs_from_positive():
    torch.manual_seed(0)
    neg = Mamba(8, 4, d_conv=2, negative_eigenvalues=True).double()
    torch.manual_seed(0)
    pos = Mamba(8, 4, d_conv=2).double()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    # at init Δ <= 0.1 keeps 2 e^{ΔA} - 1 > 0; a trained Δ of about 2 (bias 2) reaches below 0
    with torch.no_grad():
        neg.dt_proj.bias.fill_(2.0)
        pos.dt_proj.bias.fill_(2.0)
    xs = torch.nn.functional.silu(neg.conv1d(neg.in_proj(x).chunk(2, -1)[0].transpose(1, 2)))
    dt, _, _ = neg._ssm_inputs(xs.transpose(1, 2))
    a = 2 * torch.exp(dt[..., None] * neg.eigenvalues()) - 1
    assert a.min() < -0.9 and a.max() < 1
    neg_naive = Mamba(8, 4, d_conv=2, negative_eigenvalues=True, scan="naive").double()
    neg_naive.load_state_dict(neg.state_dict())
    assert_close(neg(x)[0], neg_naive(x)[0], name="layer: auto (fused) == naive")
    y_neg, _ = neg(x)
    y_pos, _ = pos(x)
    assert (y_neg - y_pos).abs().max() > 1e-3
    with pytest.raises(ValueError, match="negative_eigenvalues"):
        Mamba(8, 4, negative_eigenvalues=True, scan="triton")(x.float())


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_mamba_inner_node_with_negative_eigenvalues_equals_separate_calls(dtype):
    """The layer's one-node inner path (``mamba_inner``) with negative eigenvalues: output, final
    state and every parameter gradient equal the separate calls (a hooked x_proj makes the layer
    take them), as for positive ones."""
    torch.manual_seed(0)
    layer = Mamba(16, 4, d_conv=4, negative_eigenvalues=True).to(dtype)
    with torch.no_grad():
        layer.dt_proj.bias.fill_(2.0)  # transitions below 0
    x = torch.randn(3, 37, 16, dtype=dtype)

    def run():
        layer.zero_grad()
        y, _ = layer(x)
        y.square().sum().backward()
        return y.detach(), {k: p.grad.clone() for k, p in layer.named_parameters()}

    y_node, g_node = run()
    handle = layer.x_proj.register_forward_hook(lambda m, a, o: None)
    try:
        y_sep, g_sep = run()
    finally:
        handle.remove()
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    assert_close(y_node, y_sep, name="y", **tol)
    for k in g_node:
        assert_close(g_node[k], g_sep[k], name=f"grad {k}", **tol)
