"""Mamba-2's gated norm, RMSNorm(y ⊙ silu(z)) ⊙ w: the fused (numba) form == the formula in
float64 (output and the gradients to y, z and the weight) at odd widths and row counts, gradcheck
of the hand-written backward, float32 against float64, the same bits on 1 and 2 numba threads,
dispatch (also inside ``torch_forms()``), the Mamba-2 layer's norm, and one-line errors."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, assert_same_bits_on_one_numba_thread
from longssm.layers.mamba2 import RMSNormGated
from longssm.ops import numba_available, torch_forms
from longssm.ops.rms_norm import (
    gated_rms_norm,
    gated_rms_norm_fused,
    gated_rms_norm_naive,
    norm_path,
)

pytestmark = pytest.mark.skipif(not numba_available(), reason="the fused form needs numba")
# widths below, at and across the 16 lanes; row counts across the kernels' 64-row tasks
SHAPES = [(1, 1), (3, 5), (2, 7, 16), (130, 17), (2, 33, 37), (4, 64, 128)]


def formula(y, z, w, eps):
    """w h / sqrt(mean(h²) + eps), h = y z / (1 + exp(-z)), written out in float64."""
    y64, z64, w64 = y.double(), z.double(), w.double()
    h = y64 * z64 / (1 + torch.exp(-z64))
    return w64 * h / torch.sqrt((h * h).sum(-1, keepdim=True) / y.shape[-1] + eps)


def inputs(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()
    z = (4 * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()  # both σ tails
    w = torch.randn(shape[-1], generator=g, dtype=dtype).requires_grad_()
    gout = torch.randn(*shape, generator=g, dtype=dtype)
    return y, z, w, gout


def grads(out, y, z, w, gout):
    return torch.autograd.grad(out, (y, z, w), gout.to(out.dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_fused_equals_the_formula_in_float64(shape, eps):
    y, z, w, gout = inputs(shape)
    out, ref = gated_rms_norm_fused(y, z, w, eps), formula(y, z, w, eps)
    assert out.shape == y.shape and out.dtype == torch.float64
    assert_close(out, ref, rtol=1e-12, atol=1e-12, name="out")
    pairs = zip(("dy", "dz", "dw"), grads(out, y, z, w, gout), grads(ref, y, z, w, gout))
    for name, got, want in pairs:
        assert_close(got, want, rtol=1e-11, atol=1e-11, name=name)
    naive = gated_rms_norm_naive(y, z, w, eps)
    assert_close(naive, ref, rtol=1e-12, atol=1e-12, name="naive")


def test_fused_backward_passes_gradcheck():
    y, z, w, _ = inputs((70, 19))
    assert torch.autograd.gradcheck(lambda *a: gated_rms_norm_fused(*a, 1e-5), (y, z, w))


@pytest.mark.parametrize("shape", [(4, 64, 128), (130, 17)], ids=str)
def test_fused_float32_is_close_to_float64(shape):
    y, z, w, gout = inputs(shape)
    y32, z32, w32 = (t.detach().float().requires_grad_() for t in (y, z, w))
    out32, out64 = gated_rms_norm_fused(y32, z32, w32, 1e-5), gated_rms_norm_fused(y, z, w, 1e-5)
    assert out32.dtype == torch.float32
    assert_close(out32, out64, rtol=1e-5, atol=1e-5, name="out")
    pairs = zip(grads(out32, y32, z32, w32, gout), grads(out64, y, z, w, gout))
    for name, got, want in zip(("dy", "dz", "dw"), *zip(*pairs)):
        assert_close(got.double(), want, rtol=1e-4, atol=1e-4, name=name)


def test_same_bits_on_one_and_two_numba_threads():
    y, z, w, gout = inputs((300, 40), dtype=torch.float32)

    def run():
        out = gated_rms_norm_fused(y, z, w, 1e-5)
        return (out, *grads(out, y, z, w, gout))

    assert_same_bits_on_one_numba_thread(run)


def test_no_grad_call_and_empty_input():
    y, z, w, _ = inputs((3, 8))
    with torch.no_grad():
        out = gated_rms_norm_fused(y, z, w, 1e-5)
    assert_close(out, formula(y, z, w, 1e-5), rtol=1e-12, atol=1e-12)
    empty = torch.empty(0, 8, dtype=torch.float64)
    assert gated_rms_norm_fused(empty, empty, w, 1e-5).shape == (0, 8)


def test_dispatch_and_the_mamba2_norm():
    y, z, w, gout = inputs((2, 5, 16))
    norm = RMSNormGated(16, 16).double()
    with torch.no_grad():
        norm.weight.copy_(w)
    assert norm_path(y, w) == "fused"
    want = gated_rms_norm_fused(y, z, w, norm.eps)
    assert torch.equal(gated_rms_norm(y, z, w, norm.eps), want)
    assert torch.equal(norm(y, z), want)
    with torch_forms():
        assert norm_path(y, w) == "naive"
        assert torch.equal(norm(y, z), gated_rms_norm_naive(y, z, w, norm.eps))
    two_groups = RMSNormGated(16, 8).double()  # several groups: torch ops, against the formula
    ones = torch.ones(8, dtype=torch.float64)
    halves = [formula(y[..., i : i + 8], z[..., i : i + 8], ones, 1e-5) for i in (0, 8)]
    assert_close(two_groups(y, z), torch.cat(halves, -1), rtol=1e-12, atol=1e-12)


def test_bad_input_gives_one_line_errors():
    y = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"z must have y's shape \(2, 3, 8\)"):
        gated_rms_norm(y, torch.randn(2, 3, 7), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="z must have y's dtype"):
        gated_rms_norm(y, y.double(), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        gated_rms_norm(y, y, torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="both float32 or both float64"):
        gated_rms_norm(y, y, torch.ones(8, dtype=torch.float64), 1e-5, path="fused")
