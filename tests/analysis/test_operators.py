"""Hidden-attention operators against the naive scans of ``longssm.ops`` and a triple loop, in float64.

``alpha @ x + state_term + D x`` must equal each op's reference loop with a non-zero initial state.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_close
from longssm.analysis.operators import (
    iter_selective_attention,
    longhorn_attention,
    lti_attention,
    selective_attention,
    ssd_attention,
)
from longssm.ops.diag_scan.naive import diag_scan_naive
from longssm.ops.longhorn.naive import longhorn_naive
from longssm.ops.selective_scan.naive import selective_scan_naive
from longssm.ops.ssd.naive import ssd_naive

F64 = torch.float64


def scan_inputs(batch=2, T=23, d=5, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, d, generator=g, dtype=F64)
    dt = torch.rand(batch, T, d, generator=g, dtype=F64) * 0.5 + 0.05
    A = -(torch.rand(d, n, generator=g, dtype=F64) * 2 + 0.1)
    B = torch.randn(batch, T, n, generator=g, dtype=F64)
    C = torch.randn(batch, T, n, generator=g, dtype=F64)
    D = torch.randn(d, generator=g, dtype=F64)
    h0 = torch.randn(batch, d, n, generator=g, dtype=F64)
    return x, dt, A, B, C, D, h0


def triple_loop_alpha(dt, A, B, C):
    """α_{t,j} = Σ_n C_{t,n} Π_{k=j+1..t} exp(Δ_k A_n) Δ_j B_{j,n}, by explicit loops."""
    batch, T, d = dt.shape
    out = torch.zeros(batch, d, T, T, dtype=F64)
    for b in range(batch):
        for c in range(d):
            for t in range(T):
                for j in range(t + 1):
                    total = 0.0
                    for n in range(A.shape[1]):
                        decay = 1.0
                        for k in range(j + 1, t + 1):
                            decay *= math.exp(float(dt[b, k, c] * A[c, n]))
                        total += float(C[b, t, n]) * decay * float(dt[b, j, c] * B[b, j, n])
                    out[b, c, t, j] = total
    return out


@pytest.mark.parametrize("T", [1, 23])
def test_selective_attention_reproduces_naive_scan(T):
    x, dt, A, B, C, D, h0 = scan_inputs(T=T)
    alpha, state = selective_attention(dt, A, B, C, h0, block=2)
    y = torch.einsum("bdtj,bjd->btd", alpha, x) + state + D * x
    ref, _ = selective_scan_naive(x, dt, A, B, C, D, h0)
    assert state.abs().max() > 1e-3  # the initial state matters in this test
    assert_close(y, ref, atol=1e-10, rtol=0, name="alpha @ x + state + D x")


def test_selective_alpha_equals_triple_loop():
    x, dt, A, B, C, D, h0 = scan_inputs(batch=1, T=7, d=2, n=3, seed=3)
    alpha, _ = selective_attention(dt, A, B, C)
    assert_close(alpha, triple_loop_alpha(dt, A, B, C), atol=1e-12, rtol=0, name="alpha")


def test_positions_and_channels_select_rows_and_blocks():
    x, dt, A, B, C, D, h0 = scan_inputs()
    full, full_state = selective_attention(dt, A, B, C, h0)
    pos, ch = [0, 5, 22], [4, 1]
    part, part_state = selective_attention(dt, A, B, C, h0, positions=pos, channels=ch, block=1)
    assert_close(part, full[:, ch][:, :, pos], name="rows and channels")
    assert_close(part_state, full_state[:, pos][:, :, ch], name="state rows")
    blocks = list(iter_selective_attention(dt, A, B, C, h0, block=2))
    assert [len(i) for i, _, _ in blocks] == [2, 2, 1]
    with pytest.raises(ValueError, match="positions"):
        selective_attention(dt, A, B, C, positions=[23])


def test_longhorn_attention_reproduces_naive():
    x, _, _, k, q, D, h0 = scan_inputs(seed=5)
    beta = torch.rand(x.shape, dtype=F64)
    alpha, state = longhorn_attention(beta, k, q, h0, block=3)
    y = torch.einsum("bdtj,bjd->btd", alpha, x) + state + D * x
    ref, _ = longhorn_naive(x, beta, k, q, D, h0)
    assert_close(y, ref, atol=1e-10, rtol=0, name="longhorn")


@pytest.mark.parametrize("ngroups", [1, 2])
def test_ssd_attention_reproduces_naive(ngroups):
    g = torch.Generator().manual_seed(7)
    b, T, H, P, N = 2, 19, 4, 3, 5
    x = torch.randn(b, T, H, P, generator=g, dtype=F64)
    dt = torch.rand(b, T, H, generator=g, dtype=F64) + 0.05
    A = -(torch.rand(H, generator=g, dtype=F64) + 0.1)
    B = torch.randn(b, T, ngroups, N, generator=g, dtype=F64)
    C = torch.randn(b, T, ngroups, N, generator=g, dtype=F64)
    D = torch.randn(H, generator=g, dtype=F64)
    h0 = torch.randn(b, H, P, N, generator=g, dtype=F64)
    alpha, state = ssd_attention(dt, A, B, C, h0)
    y = torch.einsum("bhtj,bjhp->bthp", alpha, x) + state + D[:, None] * x
    ref, _ = ssd_naive(x, dt, A, B, C, D, h0)
    assert_close(y, ref, atol=1e-10, rtol=0, name="ssd")
    # the per-head formula (C_t·B_j) exp(a (S_t - S_j)) Δ_j at one entry, by hand
    hd, t, j = 1, 10, 4
    S = dt[0, :, hd].cumsum(0)
    grp = hd // (H // ngroups)
    want = (C[0, t, grp] @ B[0, j, grp]) * torch.exp(A[hd] * (S[t] - S[j])) * dt[0, j, hd]
    assert abs(float(alpha[0, hd, t, j] - want)) < 1e-12
    assert float(alpha[0, hd, j, t]) == 0.0


def lti_inputs(mimo, seed=11):
    g = torch.Generator().manual_seed(seed)
    H, n = 3, 4
    shape = (n,) if mimo else (H, n)
    r = torch.rand(shape, generator=g, dtype=F64) * 0.5 + 0.45
    lam = torch.polar(r, torch.rand(shape, generator=g, dtype=F64) * 3)
    cplx = lambda *s: torch.complex(torch.randn(*s, generator=g, dtype=F64), torch.randn(*s, generator=g, dtype=F64))
    B_bar = cplx(n, H) if mimo else cplx(H, n)
    C = cplx(H, n)
    return lam, B_bar, C, H, n, g, cplx


@pytest.mark.parametrize("mimo", [False, True], ids=["siso-s4d", "mimo-s5"])
def test_lti_attention_reproduces_diag_scan(mimo):
    lam, B_bar, C, H, n, g, cplx = lti_inputs(mimo)
    b, T = 2, 17
    u = torch.randn(b, T, H, generator=g, dtype=F64)
    h0 = cplx(b, *lam.shape)
    v = u.to(torch.complex128) @ B_bar.T if mimo else B_bar * u.to(torch.complex128)[..., None]
    h_all, _ = diag_scan_naive(v, lam, h0)
    ref = 2 * (h_all @ C.T).real if mimo else 2 * (h_all * C).sum(-1).real  # (b, T, H)
    alpha, state = lti_attention(lam, B_bar, C, T, h0)
    if mimo:
        y = torch.einsum("oitj,bji->bto", alpha, u)
    else:
        y = torch.einsum("htj,bjh->bth", alpha, u)
    assert_close(y + state, ref, atol=1e-10, rtol=0, name="lti")
    # time invariance: every diagonal of the Toeplitz matrix is constant
    assert_close(alpha[..., 5, 2], alpha[..., 9, 6], name="toeplitz")
