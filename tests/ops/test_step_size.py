"""Step sizes Δ = softplus(u Wᵀ + b): the fused (numba) form == the formula in float64 (output and
the gradients to u, W and b) at odd shapes, across the 64-row tasks and the 16-lane blocks, with and
without a bias, on both sides of softplus's threshold (20); gradcheck of the hand-written backward;
float32 against float64; dispatch; one-line errors for bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close, assert_same_bits_on_one_numba_thread
from longssm.ops import numba_available
from longssm.ops.step_size import (
    resolve_path,
    step_size,
    step_size_fused,
    step_size_naive,
    step_size_path,
)

needs_numba = pytest.mark.skipif(not numba_available(), reason="the fused form needs numba")
# (leading shape, R, D): one element; widths below, at and across 16 lanes; rows across 64
CASES = [((1,), 1, 1), ((3, 5), 4, 7), ((2, 33), 8, 256), ((130,), 3, 17), ((2, 70), 16, 40)]


def formula(low, weight, bias):
    """softplus(u Wᵀ + b) written out in float64 (torch's threshold: z itself above 20)."""
    z = low.double() @ weight.double().t()
    if bias is not None:
        z = z + bias.double()
    return torch.where(z > 20, z, torch.log1p(torch.exp(z)))


def inputs(shape, R, D, dtype=torch.float64, seed=0, with_bias=True, shift=-2.0):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(*shape, R, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(D, R, generator=g, dtype=dtype) * 2).requires_grad_()
    bias = (torch.randn(D, generator=g, dtype=dtype) * 3 + shift).requires_grad_()
    gy = torch.randn(*shape, D, generator=g, dtype=dtype)
    return low, weight, (bias if with_bias else None), gy


def grads(y, low, weight, bias, gy):
    params = [low, weight] + ([bias] if bias is not None else [])
    return torch.autograd.grad(y, params, gy.to(y.dtype))


@needs_numba
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_equals_the_formula_in_float64(case, with_bias):
    shape, R, D = case
    low, weight, bias, gy = inputs(shape, R, D, with_bias=with_bias)
    y = step_size_fused(low, weight, bias)
    y_ref = formula(low, weight, bias)
    assert y.shape == (*shape, D) and y.dtype == torch.float64
    assert_close(y, y_ref, rtol=1e-13, atol=1e-300, name="delta")
    names = ("dlow", "dweight", "dbias")
    for name, got, want in zip(
        names, grads(y, low, weight, bias, gy), grads(y_ref, low, weight, bias, gy)
    ):
        assert_close(got, want, rtol=1e-12, atol=1e-12, name=name)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_both_sides_of_the_threshold_and_far_tails(dtype):
    """z from -100 to 60 (underflow of exp(z), the threshold at 20, softplus(z) = z above it):
    output and slope as F.softplus's, within a few ulp."""
    z = torch.cat(
        [torch.linspace(-100, 60, 1601, dtype=dtype), torch.tensor([20.0, 19.9999, 20.0001])]
    ).to(dtype)
    low = z[:, None].clone().requires_grad_()  # R = 1, W = 1, b = 0: Δ = softplus(z)
    weight = torch.ones(1, 1, dtype=dtype, requires_grad=True)
    y = step_size_fused(low, weight, None)
    want = F.softplus(z)
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    assert_close(y[:, 0], want, rtol=4 * eps, atol=tiny, name="softplus")
    (slope,) = torch.autograd.grad(y.sum(), low)
    zz = z.clone().requires_grad_()
    (want_slope,) = torch.autograd.grad(F.softplus(zz).sum(), zz)
    assert_close(slope[:, 0], want_slope, rtol=4 * eps, atol=tiny, name="slope")


@needs_numba
@pytest.mark.parametrize("case", [((3, 5), 4, 7), ((70,), 2, 18)], ids=str)
def test_fused_backward_passes_gradcheck(case):
    shape, R, D = case
    low, weight, bias, _ = inputs(shape, R, D, shift=0.0)
    assert torch.autograd.gradcheck(step_size_fused, (low, weight, bias))


@needs_numba
def test_fused_float32_is_close_to_float64():
    low64, w64, b64, gy = inputs((64, 32), 8, 256)
    low32, w32, b32 = (t.detach().float().requires_grad_() for t in (low64, w64, b64))
    y32 = step_size_fused(low32, w32, b32)
    y64 = formula(low64, w64, b64)
    assert y32.dtype == torch.float32
    assert_close(y32, y64.float(), rtol=1e-5, atol=1e-6, name="delta")
    got = grads(y32, low32, w32, b32, gy)
    want = grads(y64, low64, w64, b64, gy)
    for name, a, b in zip(("dlow", "dweight", "dbias"), got, want):
        assert_close(a, b.float(), rtol=1e-4, atol=1e-4, name=name)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_the_thread_count(dtype):
    """Bit-identical Δ and gradients (∂L/∂u's per-row sums in the kernel, ∂L/∂W's and ∂L/∂b's
    per-task partials) on one numba thread and on all of them; rows across several tasks, R with
    a remainder past the four-row groups, D with columns past the last 16-lane block."""
    low, weight, bias, gy = inputs((3, 70), 7, 37, dtype=dtype)

    def run():
        y = step_size_fused(low, weight, bias)
        return (y, *grads(y, low, weight, bias, gy))

    assert_same_bits_on_one_numba_thread(run)


def test_naive_equals_the_formula():
    low, weight, bias, _ = inputs((3, 9), 5, 21)
    assert_close(step_size_naive(low, weight, bias), formula(low, weight, bias), rtol=1e-14)


@needs_numba
def test_no_grad_call_and_empty_input():
    low, weight, bias, _ = inputs((5, 3), 4, 12)
    with torch.no_grad():
        y = step_size_fused(low, weight, bias)
    assert_close(y, formula(low, weight, bias), rtol=1e-13, atol=1e-300)
    empty = torch.zeros(0, 3, 4, dtype=torch.float64)
    assert step_size_fused(empty, weight, bias).shape == (0, 3, 12)


@needs_numba
def test_auto_path():
    low, weight, bias = torch.randn(2, 3, 4), torch.randn(8, 4), torch.randn(8)
    assert step_size_path(low, weight, bias) == "fused"
    assert step_size_path(low.bfloat16(), weight.bfloat16(), bias.bfloat16()) == "naive"
    assert step_size_path(low, weight.double(), bias) == "naive"  # mixed dtypes: naive
    half = (low.bfloat16(), weight.bfloat16(), bias.bfloat16())
    assert torch.equal(step_size(*half), step_size_naive(*half))
    assert_close(step_size(low, weight, bias), step_size_naive(low, weight, bias), rtol=1e-5)


def test_bad_input_gives_one_line_errors():
    low = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"weight must be \(d_inner, R\)"):
        step_size(low, torch.ones(8), None)
    with pytest.raises(ValueError, match=r"last axis must be R = 5"):
        step_size(low, torch.ones(8, 5), None)
    with pytest.raises(ValueError, match=r"bias must be \(8,\)"):
        step_size(low, torch.ones(8, 4), torch.ones(7))
    with pytest.raises(ValueError, match="path must be one of"):
        resolve_path("fast", low, torch.ones(8, 4), None)
    if numba_available():
        with pytest.raises(ValueError, match="all float32 or all float64"):
            step_size(low, torch.ones(8, 4, dtype=torch.float64), None, path="fused")
