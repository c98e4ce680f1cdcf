"""Cross-entropy: the fused (numba) form == the formula in float64 (loss and ∂L/∂logits) at odd
vocabulary sizes and row counts, gradcheck of the hand-written backward, float32 against float64,
NaN propagation, dispatch, and one-line errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_close
from longssm.ops import numba_available
from longssm.ops.cross_entropy import (
    cross_entropy,
    cross_entropy_fused,
    cross_entropy_naive,
    cross_entropy_path,
    resolve_path,
)

needs_numba = pytest.mark.skipif(not numba_available(), reason="the fused form needs numba")
# vocabularies below, at and across the 16 lanes; row counts across the kernels' 64-row tasks
SHAPES = [(1, 1), (3, 5), (7, 16), (130, 17), (65, 257), (200, 40)]


def formula(logits, targets):
    """mean_r (log Σ_v exp(l_r,v) − l_r,t_r), written out in float64 (the specification)."""
    l64 = logits.double()
    m = l64.max(-1, keepdim=True).values
    lse = m.squeeze(-1) + (l64 - m).exp().sum(-1).log()
    return (lse - l64.gather(1, targets[:, None]).squeeze(1)).mean()


def inputs(shape, dtype=torch.float64, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()
    targets = torch.randint(0, shape[1], (shape[0],), generator=g)
    return logits, targets


@needs_numba
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_equals_the_formula_in_float64(shape):
    logits, targets = inputs(shape)
    loss = cross_entropy_fused(logits, targets)
    want = formula(logits, targets)
    assert loss.shape == () and loss.dtype == torch.float64
    assert_close(loss, want, rtol=1e-13, atol=1e-13, name="loss")
    for g_out in (1.0, -2.5):
        got, = torch.autograd.grad(loss * g_out, logits, retain_graph=True)
        ref, = torch.autograd.grad(want * g_out, logits, retain_graph=True)
        assert_close(got, ref, rtol=1e-12, atol=1e-15, name="dlogits")


@needs_numba
def test_fused_backward_passes_gradcheck():
    logits, targets = inputs((70, 19), scale=1.0)
    assert torch.autograd.gradcheck(lambda a: cross_entropy_fused(a, targets), (logits,))


@needs_numba
@pytest.mark.parametrize("shape", [(2048, 257), (33, 50)], ids=str)
def test_fused_float32_is_close_to_float64_and_to_torch(shape):
    logits, targets = inputs(shape, scale=10.0)
    x32 = logits.detach().float().requires_grad_()
    loss = cross_entropy_fused(x32, targets)
    assert loss.dtype == torch.float32
    assert_close(loss.double(), formula(logits, targets), rtol=1e-6, atol=1e-6)
    got, = torch.autograd.grad(loss, x32)
    ref, = torch.autograd.grad(torch.nn.functional.cross_entropy(x32, targets), x32)
    assert_close(got, ref, rtol=1e-5, atol=1e-9)


@needs_numba
def test_a_nan_logit_gives_a_nan_loss_and_large_logits_stay_finite():
    logits, targets = inputs((5, 21))
    with torch.no_grad():
        logits[2, 7] = float("nan")
    assert math.isnan(cross_entropy_fused(logits, targets).item())
    big, targets = inputs((5, 21), scale=1e4)  # exp(l) alone would overflow
    assert_close(cross_entropy_fused(big, targets), formula(big, targets), rtol=1e-12, atol=0)


def test_auto_path_and_the_naive_form():
    logits, targets = inputs((6, 9))
    expected = "fused" if numba_available() else "naive"
    assert cross_entropy_path(logits) == expected
    assert cross_entropy_path(logits.bfloat16()) == "naive"
    assert_close(cross_entropy(logits, targets), formula(logits, targets), rtol=1e-12, atol=1e-12)
    assert_close(cross_entropy_naive(logits, targets), formula(logits, targets), rtol=1e-12,
                 atol=1e-12)  # fmt: skip


def test_bad_input_gives_one_line_errors():
    logits = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"logits must be \(rows, V\)"):
        cross_entropy(logits[None], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must be \(4,\)"):
        cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        cross_entropy(logits, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="integer ids"):
        cross_entropy(logits, torch.zeros(4))
    with pytest.raises(ValueError, match="path must be one of"):
        resolve_path("fast", logits)
    if numba_available():
        with pytest.raises(ValueError, match="float32 or float64 logits"):
            cross_entropy(logits.bfloat16(), torch.zeros(4, dtype=torch.long), path="fused")
