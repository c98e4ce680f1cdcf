"""Longhorn op: naive == chunk == step loop (outputs, final state, gradients), numerical guards."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.ops.longhorn import (
    longhorn_chunk,
    longhorn_eps,
    longhorn_log_decay,
    longhorn_naive,
    longhorn_step,
)

BATCH, D_INNER, D_STATE = 2, 3, 4


def make_inputs(T, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, T, D_INNER, generator=g, dtype=dtype)
    beta = torch.sigmoid(torch.randn(BATCH, T, D_INNER, generator=g, dtype=dtype))
    k = torch.randn(BATCH, T, D_STATE, generator=g, dtype=dtype)
    q = torch.randn(BATCH, T, D_STATE, generator=g, dtype=dtype)
    D = torch.randn(D_INNER, generator=g, dtype=dtype)
    h0 = torch.randn(BATCH, D_INNER, D_STATE, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, beta, k, q, D, h0)]


def step_loop(x, beta, k, q, D, h0, output_final_state=True):
    """The op signature, built from ``longhorn_step`` one token at a time."""
    ys, state = [], h0
    for t in range(x.shape[1]):
        y_t, state = longhorn_step(x[:, t], beta[:, t], k[:, t], q[:, t], D, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


FORMS = {
    "chunk8": lambda *a: longhorn_chunk(*a, output_final_state=True, chunk_size=8),
    "chunk32": lambda *a: longhorn_chunk(*a, output_final_state=True),
    "step": step_loop,
}


@pytest.mark.parametrize("T", [1, 7, 63, 500])
@pytest.mark.parametrize("form", list(FORMS))
def test_forms_match_naive_with_gradients(form, T):
    inputs = make_inputs(T)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(BATCH, T, D_INNER, generator=g, dtype=torch.float64)
    gs = torch.randn(BATCH, D_INNER, D_STATE, generator=g, dtype=torch.float64)
    names = ["x", "beta", "k", "q", "D", "initial_state"]

    y_ref, s_ref = longhorn_naive(*inputs, output_final_state=True)
    # the loss reaches the inputs through y and through the final state
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (s_ref * gs).sum(), inputs)
    y, s = FORMS[form](*inputs)
    grads = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), inputs)

    assert_close(y, y_ref, name="y")
    assert_close(s, s_ref, name="final_state")
    for name, got, want in zip(names, grads, grads_ref):
        assert_close(got, want, name=f"d/d{name}")


def test_naive_matches_an_independent_per_channel_loop():
    """The specification written entry by entry: S[d, n] and ε for one channel at a time."""
    x, beta, k, q, D, h0 = (t.detach() for t in make_inputs(5))
    y, s = longhorn_naive(x, beta, k, q, D, h0, output_final_state=True)
    for b in range(BATCH):
        for d in range(D_INNER):
            S = h0[b, d].clone()
            for t in range(5):
                eps = beta[b, t, d] / (1 + beta[b, t, d] * (k[b, t] @ k[b, t]))
                S = (1 - eps * k[b, t] ** 2) * S + eps * x[b, t, d] * k[b, t]
                want = S @ q[b, t] + D[d] * x[b, t, d]
                assert abs(y[b, t, d].item() - want.item()) < 1e-12
            assert_close(s[b, d], S, name="state")


def test_zero_initial_state_and_no_final_state():
    x, beta, k, q, D, _ = (t.detach() for t in make_inputs(9))
    y0, none = longhorn_chunk(x, beta, k, q, D, chunk_size=4)
    assert none is None
    zeros = torch.zeros(BATCH, D_INNER, D_STATE, dtype=torch.float64)
    y1, _ = longhorn_naive(x, beta, k, q, D, zeros)
    assert_close(y0, y1, name="y")
    # without D there is no skip term: the difference is exactly D * x
    y2, _ = longhorn_chunk(x, beta, k, q, None, chunk_size=4)
    assert_close(y0 - y2, x * D, name="skip")


def test_log_decay_is_log1p_minus_eps_k2_and_finite_where_it_rounds_to_one():
    _, beta, k, _, _, _ = (t.detach() for t in make_inputs(6))
    eps = longhorn_eps(beta, k)  # (B, T, D)
    direct = torch.log1p(-eps[..., None] * (k * k)[..., None, :])
    assert_close(longhorn_log_decay(beta, k), direct, name="log-decay")

    # float32, β k² = 1e8 on one entry: ε k² rounds to 1 and log1p(-ε k²) is -inf
    beta32 = torch.ones(1, 1, 1)
    k32 = torch.tensor([[[1e4, 0.0, 0.0]]])
    eps32 = longhorn_eps(beta32, k32)
    assert torch.isinf(torch.log1p(-eps32[..., None] * (k32 * k32)[..., None, :])).any()
    ours = longhorn_log_decay(beta32, k32)
    assert torch.isfinite(ours).all()
    assert (
        abs(ours[0, 0, 0, 0].item() + torch.log1p(torch.tensor(1e8, dtype=torch.float64)).item())
        < 1e-5
    )


def test_chunk_stays_finite_where_exp_minus_cumsum_overflows():
    """Large dt (β = sigmoid(20) ≈ 1) and |k| = 30 on one entry: the log-decay is ≈ -6.8 per step,
    so a 64-step chunk accumulates ≈ -435, far beyond float32's exp limit of ~88."""
    T, chunk = 128, 64
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, T, D_INNER, generator=g)
    beta = torch.sigmoid(torch.full((1, T, D_INNER), 20.0))
    k = torch.randn(1, T, D_STATE, generator=g) * 0.1
    k[..., 0] = 30.0
    q = torch.randn(1, T, D_STATE, generator=g)
    h0 = torch.randn(1, D_INNER, D_STATE, generator=g)

    # the closed form exp(cum) Σ exp(-cum) u would need exp(-cum): it overflows
    log_decay = longhorn_log_decay(beta[:, :chunk], k[:, :chunk])  # (1, L, D, N)
    cum = torch.cumsum(log_decay, dim=1)
    assert cum.min().item() < -400
    assert torch.isinf(torch.exp(-cum)).any()

    y, s = longhorn_chunk(x, beta, k, q, None, h0, output_final_state=True, chunk_size=chunk)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    y_ref, s_ref = longhorn_naive(
        *(t.double() for t in (x, beta, k, q)), None, h0.double(), output_final_state=True
    )
    assert_close(y, y_ref.float(), atol=1e-4, rtol=1e-3, name="y")
    assert_close(s, s_ref.float(), atol=1e-4, rtol=1e-3, name="state")


def test_half_inputs_run_in_float32_and_empty_sequences():
    x, beta, k, q, D, h0 = (t.detach().float() for t in make_inputs(10))
    y, s = longhorn_chunk(x.bfloat16(), beta, k, q, D, h0, output_final_state=True, chunk_size=4)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    empty = [t[:, :0] for t in (x, beta, k, q)]
    y0, s0 = longhorn_chunk(*empty, D, h0, output_final_state=True)
    assert y0.shape == (BATCH, 0, D_INNER)
    assert torch.equal(s0, h0)


def test_bad_shapes_are_named():
    x, beta, k, q, D, h0 = (t.detach() for t in make_inputs(4))
    with pytest.raises(ValueError, match="beta"):
        longhorn_naive(x, beta[:, :, :2], k, q)
    with pytest.raises(ValueError, match="q must"):
        longhorn_chunk(x, beta, k, q[..., :2])
    with pytest.raises(ValueError, match="initial_state"):
        longhorn_chunk(x, beta, k, q, D, h0[:, :, :2])
    with pytest.raises(ValueError, match="chunk_size"):
        longhorn_chunk(x, beta, k, q, chunk_size=0)
    with pytest.raises(ValueError, match="state must"):
        longhorn_step(x[:, 0], beta[:, 0], k[:, 0], q[:, 0], D, h0[:1])
