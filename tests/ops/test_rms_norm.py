"""RMSNorm: the fused (numba) form == the formula in float64 (output and the gradients to x and the
weight) at odd widths and row counts, gradcheck of the hand-written backward, float32 against
float64, dispatch, and one-line errors for bad input; the same for the residual add fused into it
(``add_rms_norm``), which also keeps the bits of the add followed by the norm."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.models.norms import RMSNorm
from longssm.ops import numba_available
from longssm.ops.rms_norm import (
    add_rms_norm,
    add_rms_norm_fused,
    add_rms_norm_naive,
    norm_path,
    resolve_path,
    rms_norm,
    rms_norm_fused,
    rms_norm_naive,
)

needs_numba = pytest.mark.skipif(not numba_available(), reason="the fused form needs numba")
# widths below, at and across the 16 lanes; row counts across the kernels' 64-row tasks
SHAPES = [(1, 1), (3, 5), (2, 7, 16), (130, 17), (2, 33, 37), (4, 64, 128)]


def formula(x, w, eps):
    """y = w x / sqrt(mean(x²) + eps), written out in float64 (the specification)."""
    x64, w64 = x.double(), w.double()
    return w64 * x64 / torch.sqrt((x64 * x64).sum(-1, keepdim=True) / x.shape[-1] + eps)


def inputs(shape, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()
    w = torch.randn(shape[-1], generator=g, dtype=dtype).requires_grad_()
    gy = torch.randn(*shape, generator=g, dtype=dtype)
    return x, w, gy


def grads(y, x, w, gy):
    return torch.autograd.grad(y, (x, w), gy.to(y.dtype))


@needs_numba
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("eps", [1e-5, 0.0, 0.5])
def test_fused_equals_the_formula_in_float64(shape, eps):
    x, w, gy = inputs(shape, scale=3.0)
    y = rms_norm_fused(x, w, eps)
    y_ref = formula(x, w, eps)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert_close(y, y_ref, rtol=1e-12, atol=1e-12, name="y")
    for name, got, want in zip(("dx", "dw"), grads(y, x, w, gy), grads(y_ref, x, w, gy)):
        assert_close(got, want, rtol=1e-11, atol=1e-11, name=name)


@needs_numba
@pytest.mark.parametrize("shape", [(3, 5), (2, 7, 16), (70, 19)], ids=str)
def test_fused_backward_passes_gradcheck(shape):
    x, w, _ = inputs(shape)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm_fused(a, b, 1e-5), (x, w))


@needs_numba
@pytest.mark.parametrize("shape", [(4, 64, 128), (130, 17)], ids=str)
def test_fused_float32_is_close_to_float64(shape):
    x64, w64, gy64 = inputs(shape)
    x32, w32 = (t.detach().float().requires_grad_() for t in (x64, w64))
    y32 = rms_norm_fused(x32, w32, 1e-5)
    y64 = formula(x64, w64, 1e-5)
    assert y32.dtype == torch.float32
    assert_close(y32, y64.float(), rtol=2e-6, atol=2e-6, name="y")
    for name, got, want in zip(
        ("dx", "dw"), grads(y32, x32, w32, gy64), grads(y64, x64, w64, gy64)
    ):
        assert_close(got, want.float(), rtol=1e-5, atol=1e-5 * shape[0], name=name)


def test_naive_equals_the_formula():
    x, w, gy = inputs((3, 9, 21))
    y = rms_norm_naive(x, w, 1e-5)
    assert_close(y, formula(x, w, 1e-5), rtol=1e-13, atol=1e-13)


@needs_numba
def test_no_grad_call_and_empty_input():
    x, w, _ = inputs((5, 12))
    with torch.no_grad():
        y = rms_norm_fused(x, w, 1e-5)
    assert_close(y, formula(x, w, 1e-5), rtol=1e-12, atol=1e-12)
    empty = torch.zeros(0, 3, 12, dtype=torch.float64)
    assert rms_norm_fused(empty, w, 1e-5).shape == (0, 3, 12)


@needs_numba
def test_auto_path_and_the_layer():
    x, w = torch.randn(2, 3, 8), torch.randn(8)
    assert norm_path(x, w) == "fused"
    assert norm_path(x.bfloat16(), w) == "naive"
    assert norm_path(x.double(), w) == "naive"  # mixed dtypes run the naive form
    layer = RMSNorm(8)
    with torch.no_grad():
        layer.weight.normal_()
    assert_close(layer(x), rms_norm_naive(x, layer.weight, layer.eps), rtol=1e-6, atol=1e-6)
    half = x.bfloat16()
    assert torch.equal(layer(half), rms_norm_naive(half, layer.weight, layer.eps))


def test_bad_input_gives_one_line_errors():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        rms_norm(x, torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="eps must be a non-negative number"):
        rms_norm(x, torch.ones(8), -1.0)
    with pytest.raises(ValueError, match="path must be one of"):
        resolve_path("fast", x, torch.ones(8))
    if numba_available():
        with pytest.raises(ValueError, match="both float32 or both float64"):
            rms_norm(x, torch.ones(8, dtype=torch.float64), 1e-5, path="fused")


# --- the residual add fused into the norm: s = x + r, y = RMSNorm(s) (add_rms_norm) ---


def add_inputs(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()
    gs = torch.randn(*shape, generator=g, dtype=dtype)
    return r, gs


@needs_numba
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add_fused_equals_the_formula_in_float64(shape):
    x, w, gy = inputs(shape, scale=3.0)
    r, gs = add_inputs(shape, torch.float64)
    s, y = add_rms_norm_fused(x, r, w, 1e-5)
    s_ref = x.detach() + r.detach()
    s_ref.requires_grad_()
    y_ref = formula(s_ref, w, 1e-5)
    assert_close(s, s_ref, rtol=0, atol=0, name="s")
    assert_close(y, y_ref, rtol=1e-12, atol=1e-12, name="y")
    got = torch.autograd.grad((s, y), (x, r, w), (gs, gy))
    ds_ref, dw_ref = torch.autograd.grad((s_ref, y_ref), (s_ref, w), (gs, gy))
    for name, g, want in zip(("dx", "dr", "dw"), got, (ds_ref, ds_ref, dw_ref)):
        assert_close(g, want, rtol=1e-11, atol=1e-11, name=name)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(2, 33, 37), (130, 17)], ids=str)
def test_add_fused_has_the_bits_of_the_add_then_the_norm(shape, dtype):
    """The fused add and the kernel's sum of the two gradients of s round as torch's add and
    autograd's accumulation do: outputs and all gradients equal bit for bit; also through
    ``add_rms_norm``'s auto path and its naive form."""
    x, w, gy = inputs(shape, dtype=dtype)
    r, gs = add_inputs(shape, dtype)
    s_ref = x + r
    y_ref = rms_norm_fused(s_ref, w, 1e-5)
    want = torch.autograd.grad((s_ref, y_ref), (x, r, w), (gs, gy))
    for form in (add_rms_norm_fused, add_rms_norm):
        s, y = form(x, r, w, 1e-5)
        assert torch.equal(s, s_ref) and torch.equal(y, y_ref)
        got = torch.autograd.grad((s, y), (x, r, w), (gs, gy))
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    s, y = add_rms_norm_naive(x, r, w, 1e-5)
    assert torch.equal(s, s_ref)
    assert_close(y, y_ref, rtol=1e-6, atol=1e-6)


@needs_numba
def test_add_fused_gradcheck_and_one_output_used():
    x, w, _ = inputs((3, 20))
    r, _ = add_inputs((3, 20), torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: add_rms_norm_fused(a, b, c, 1e-5), (x, r, w))
    # only y used (no gradient of s arrives), only s used (none of y)
    assert torch.autograd.gradcheck(lambda a, b, c: add_rms_norm_fused(a, b, c, 0.1)[1], (x, r, w))
    assert torch.autograd.gradcheck(lambda a, b: add_rms_norm_fused(a, b, w, 0.1)[0], (x, r))


def test_add_bad_input_gives_one_line_errors():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"residual must have x's shape \(2, 3, 8\)"):
        add_rms_norm(x, torch.randn(2, 3, 7), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="residual must have x's dtype"):
        add_rms_norm_naive(x, x.double(), torch.ones(8), 1e-5)
