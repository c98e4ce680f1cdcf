"""diag_scan: chunk == naive == step loop; s4d_conv == the recurrence; gradients incl. h_0."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.ops.diag_scan import (
    diag_scan,
    diag_scan_chunk,
    diag_scan_naive,
    diag_scan_step,
    s4d_conv,
)

C128 = torch.complex128


def crandn(*shape, dtype=C128):
    return torch.randn(*shape, dtype=dtype)


def stable_lam(*shape, max_decay=0.5, dtype=C128):
    """Random λ = exp(Δλ) with Re(Δλ) in (-max_decay, 0): |λ| < 1, as the layers produce."""
    re = -torch.rand(*shape, dtype=torch.float64) * max_decay - 1e-3
    im = torch.randn(*shape, dtype=torch.float64) * 2
    return torch.exp(torch.complex(re, im)).to(dtype)


def real_loss(*tensors, seed=1):
    """A real loss mixing real and imaginary parts of complex tensors with fixed random weights."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in tensors:
        t = torch.view_as_real(t) if t.is_complex() else t
        total = total + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return total


SHAPES = [
    pytest.param(2, 1, (3,), id="T1"),
    pytest.param(2, 7, (2, 3), id="T7"),
    pytest.param(1, 63, (4,), id="T63"),
    pytest.param(2, 500, (2, 2), id="T500"),
]


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64], ids=lambda c: f"L{c}")
@pytest.mark.parametrize("batch,T,S", SHAPES)
def test_chunk_matches_naive(batch, T, S, chunk_size, with_h0):
    v, lam = crandn(batch, T, *S), stable_lam(*S)
    h0 = crandn(batch, *S) if with_h0 else None
    h_ref, f_ref = diag_scan_naive(v, lam, h0, output_final_state=True)
    h, f = diag_scan_chunk(v, lam, h0, output_final_state=True, chunk_size=chunk_size)
    assert_close(h, h_ref, name="h_all")
    assert_close(f, f_ref, name="final_state")
    assert_close(f, h_ref[:, -1], name="final == last state")


@pytest.mark.parametrize("batch,T,S", SHAPES[:3])
def test_step_loop_matches_naive(batch, T, S):
    v, lam, h0 = crandn(batch, T, *S), stable_lam(*S), crandn(batch, *S)
    h_ref, f_ref = diag_scan_naive(v, lam, h0, output_final_state=True)
    state, outs = h0, []
    for t in range(T):
        h_t, state = diag_scan_step(v[:, t], lam, state)
        outs.append(h_t)
    assert_close(torch.stack(outs, 1), h_ref, name="h_all")
    assert_close(state, f_ref, name="final_state")


def test_step_without_state_is_input():
    v, lam = crandn(2, 3), stable_lam(3)
    h, _ = diag_scan_step(v, lam)
    assert_close(h, v)


def test_no_final_state_unless_asked():
    v, lam = crandn(1, 5, 3), stable_lam(3)
    assert diag_scan(v, lam)[1] is None
    assert diag_scan_naive(v, lam)[1] is None


def test_naive_matches_closed_form():
    """Independent check of the reference: h_t = λ^(t+1) h_0 + Σ_s λ^(t-s) v_s."""
    T, S = 9, (3,)
    v, lam, h0 = crandn(2, T, *S), stable_lam(*S), crandn(2, *S)
    h, _ = diag_scan_naive(v, lam, h0)
    for t in range(T):
        want = lam ** (t + 1) * h0 + sum(lam ** (t - s) * v[:, s] for s in range(t + 1))
        assert_close(h[:, t], want, name=f"h[{t}]")


def test_split_sequence_invariance():
    v, lam, h0 = crandn(2, 50, 3), stable_lam(3), crandn(2, 3)
    h_full, f_full = diag_scan_chunk(v, lam, h0, True, chunk_size=8)
    h_a, f_a = diag_scan_chunk(v[:, :17], lam, h0, True, chunk_size=8)
    h_b, f_b = diag_scan_chunk(v[:, 17:], lam, f_a, True, chunk_size=8)
    assert_close(torch.cat([h_a, h_b], 1), h_full, name="h_all")
    assert_close(f_b, f_full, name="final_state")


def test_strong_decay_underflow_is_finite():
    """|λ|^L underflows in float32: the carry works from L·log λ and stays finite and exact."""
    lam = torch.exp(torch.tensor([complex(-60.0, 1.0), complex(-0.01, 3.0)])).to(torch.complex64)
    v = crandn(1, 200, 2, dtype=torch.complex64)
    h0 = crandn(1, 2, dtype=torch.complex64)
    h_ref, f_ref = diag_scan_naive(v, lam, h0, True)
    h, f = diag_scan_chunk(v, lam, h0, True, chunk_size=32)
    assert_close(h, h_ref, atol=1e-4, rtol=1e-4, name="h_all")
    lam0 = torch.tensor([0j, 0.5 + 0j], dtype=torch.complex128)
    v0 = crandn(1, 20, 2)
    assert_close(diag_scan_chunk(v0, lam0, chunk_size=4)[0], diag_scan_naive(v0, lam0)[0])


@pytest.mark.parametrize("chunk_size", [4, 64], ids=lambda c: f"L{c}")
@pytest.mark.parametrize("T", [1, 7, 63], ids=lambda t: f"T{t}")
def test_chunk_gradients_match_naive(T, chunk_size):
    S = (2, 3)
    v0, lam0, h00 = crandn(2, T, *S), stable_lam(*S), crandn(2, *S)
    grads = []
    for fn in (diag_scan_naive, lambda *a: diag_scan_chunk(*a, chunk_size=chunk_size)):
        v, lam, h0 = (t.clone().requires_grad_() for t in (v0, lam0, h00))
        h, f = fn(v, lam, h0, True)
        real_loss(h, f).backward()
        grads.append((v.grad, lam.grad, h0.grad))
    for name, g, g_ref in zip(("v", "lam", "initial_state"), grads[1], grads[0]):
        assert_close(g, g_ref, name=f"d/d{name}")


def test_chunk_gradcheck():
    S = (2,)
    v, lam, h0 = crandn(1, 11, *S), stable_lam(*S), crandn(1, *S)
    inputs = tuple(t.requires_grad_() for t in (v, lam, h0))

    def fn(v, lam, h0):
        h, f = diag_scan_chunk(v, lam, h0, True, chunk_size=4)
        return torch.view_as_real(h), torch.view_as_real(f)

    assert torch.autograd.gradcheck(fn, inputs)


def test_bad_inputs_raise():
    v, lam = crandn(2, 5, 3), stable_lam(3)
    with pytest.raises(TypeError, match="complex"):
        diag_scan_chunk(v.real, lam)
    with pytest.raises(ValueError, match="lam.shape"):
        diag_scan_chunk(v, stable_lam(4))
    with pytest.raises(ValueError, match="initial_state"):
        diag_scan_chunk(v, lam, crandn(3, 3))
    with pytest.raises(TypeError, match="initial_state"):
        diag_scan_naive(v, lam, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        diag_scan_chunk(v, lam, chunk_size=0)


def conv_reference(u, lam_bar, B_bar, C, D, h0):
    """S4D through the naive recurrence: y = 2 Re(Σ_n C h) + D u."""
    v = B_bar * u.to(C.dtype)[..., None]  # (B, T, H, N)
    h, f = diag_scan_naive(v, lam_bar, h0, True)
    y = 2 * torch.einsum("bthn,hn->bth", h, C).real
    if D is not None:
        y = y + D * u
    return y, f


def conv_params(H, N, dtype=C128):
    lam_bar = stable_lam(H, N, dtype=dtype)
    return lam_bar, crandn(H, N, dtype=dtype), crandn(H, N, dtype=dtype)


@pytest.mark.parametrize("with_D", [False, True], ids=["noD", "D"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("batch,T", [(2, 1), (2, 7), (1, 63), (2, 500)], ids=lambda x: str(x))
def test_conv_matches_recurrence(batch, T, with_h0, with_D):
    H, N = 3, 4
    u = torch.randn(batch, T, H, dtype=torch.float64)
    lam_bar, B_bar, C = conv_params(H, N)
    D = torch.randn(H, dtype=torch.float64) if with_D else None
    h0 = crandn(batch, H, N) if with_h0 else None
    y_ref, f_ref = conv_reference(u, lam_bar, B_bar, C, D, h0)
    y, f = s4d_conv(u, lam_bar, B_bar, C, D, h0, output_final_state=True)
    assert y.dtype == torch.float64
    assert_close(y, y_ref, name="y")
    assert_close(f, f_ref, name="final_state")


def test_conv_float32_close_to_float64():
    H, N, T = 4, 8, 300
    u = torch.randn(2, T, H, dtype=torch.float64)
    lam_bar, B_bar, C = conv_params(H, N)
    h0 = crandn(2, H, N)
    y64, f64 = s4d_conv(u, lam_bar, B_bar, C, None, h0, True)
    y32, f32 = s4d_conv(
        u.float(), lam_bar.to(torch.complex64), B_bar.to(torch.complex64),
        C.to(torch.complex64), None, h0.to(torch.complex64), True,
    )
    assert y32.dtype == torch.float32 and f32.dtype == torch.complex64
    assert_close(y32, y64, atol=1e-4, rtol=1e-3, name="y float32")
    assert_close(f32, f64, atol=1e-4, rtol=1e-3, name="final float32")


@pytest.mark.parametrize("T", [1, 7, 63], ids=lambda t: f"T{t}")
def test_conv_gradients_match_recurrence(T):
    H, N = 2, 3
    base = (
        torch.randn(2, T, H, dtype=torch.float64), *conv_params(H, N),
        torch.randn(H, dtype=torch.float64), crandn(2, H, N),
    )
    grads = []
    for fn in (conv_reference, lambda *a: s4d_conv(*a, output_final_state=True)):
        args = tuple(t.clone().requires_grad_() for t in base)
        y, f = fn(*args)
        real_loss(y, f).backward()
        grads.append([a.grad for a in args])
    for name, g, g_ref in zip(("u", "lam_bar", "B_bar", "C", "D", "h0"), grads[1], grads[0]):
        assert_close(g, g_ref, name=f"d/d{name}")


def test_conv_gradcheck():
    H, N = 2, 2
    args = (
        torch.randn(1, 6, H, dtype=torch.float64), *conv_params(H, N),
        torch.randn(H, dtype=torch.float64), crandn(1, H, N),
    )
    args = tuple(t.requires_grad_() for t in args)

    def fn(*a):
        y, f = s4d_conv(*a, output_final_state=True)
        return y, torch.view_as_real(f)

    assert torch.autograd.gradcheck(fn, args)


def test_conv_bad_inputs_raise():
    u = torch.randn(2, 5, 3)
    lam_bar, B_bar, C = conv_params(3, 4, dtype=torch.complex64)
    with pytest.raises(ValueError, match="shape"):
        s4d_conv(u, lam_bar[:2], B_bar, C)
    with pytest.raises(TypeError, match="complex"):
        s4d_conv(u, lam_bar, B_bar.real, C)
    with pytest.raises(TypeError, match="initial_state"):
        s4d_conv(u, lam_bar, B_bar, C, initial_state=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="initial_state"):
        s4d_conv(u, lam_bar, B_bar, C, initial_state=torch.zeros(1, 3, 4, dtype=torch.complex64))
