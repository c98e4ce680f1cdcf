"""Chunked Longhorn recurrence: the pure-torch training form.

Glossary as in ``naive.py`` (x_t -> x, β_t -> beta, k_t -> k, q_t -> q, D, S_t -> state), plus
    L (chunk length)                            chunk_size
    log(1 - ε_t k_t²) (log-decay, <= 0)          log_decay     (L, batch, n_chunks, d_inner, d_state)
    Σ_{s<=t in chunk} log-decay (from start)    cum           same shape, <= 0
    S_t with a zero state at the chunk start    s_local       same shape
    S at the start of each chunk                chunk_start   (batch, n_chunks, d_inner, d_state)

As for the selective scan: (1) every chunk is scanned from a zero state, all chunks at once, in L
vectorised steps; (2) the chunk-boundary states are passed from chunk to chunk starting at
``initial_state``; (3) each step adds its chunk's start state decayed by exp(cum), cum <= 0. The
log-decay is formed as log1p(β(||k||² - k²)) - log1p(β||k||²), which equals log1p(-ε k²) but
stays finite and accurate when ε k² rounds to 1. See README.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longssm.ops._common import compute_dtype
from longssm.ops.longhorn.naive import check_longhorn_inputs, longhorn_eps

DEFAULT_CHUNK_SIZE = 32


def _to_chunks(t: torch.Tensor, pad: int, chunk_size: int) -> torch.Tensor:
    """(batch, T, C) -> (L, batch, n_chunks, C), zero-padded at the end of time."""
    if pad:
        t = F.pad(t, (0, 0, 0, pad))
    batch, T, channels = t.shape
    return t.reshape(batch, T // chunk_size, chunk_size, channels).permute(2, 0, 1, 3)


def longhorn_log_decay(beta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log(1 - ε k²) <= 0; beta (..., d_inner), k (..., d_state) -> (..., d_inner, d_state).

    1 - ε k[n]² = (1 + β (||k||² - k[n]²)) / (1 + β ||k||²): a difference of two log1p terms,
    finite even where ε k[n]² rounds to 1 (large β, k concentrated on one entry).
    """
    k2 = k * k  # (..., N)
    k_norm2 = k2.sum(-1, keepdim=True)  # (..., 1)
    b = beta[..., None]  # (..., D, 1)
    rest = (k_norm2 - k2).clamp(min=0)[..., None, :]  # (..., 1, N)
    log_decay = torch.log1p(b * rest) - torch.log1p(b * k_norm2[..., None, :])  # (..., D, N)
    return log_decay.clamp(max=0)


def _combine_chunks(
    s_local: torch.Tensor, log_decay: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every state and the final one, from the states each chunk reaches from zero (L, B, nc,
    D, N), the per-step log-decays (same shape) and S_0 (B, D, N)."""
    n_chunks = s_local.shape[2]
    cum = torch.cumsum(log_decay, dim=0)  # (L, B, nc, D, N), <= 0
    chunk_decay = torch.exp(cum[-1])  # (B, nc, D, N)
    starts = []
    for c in range(n_chunks):
        starts.append(state)
        state = chunk_decay[:, c] * state + s_local[-1, :, c]  # (B, D, N)
    chunk_start = torch.stack(starts, dim=1)  # (B, nc, D, N)
    return s_local + torch.exp(cum) * chunk_start, state  # (L, B, nc, D, N), (B, D, N)


def longhorn_chunk(
    x: torch.Tensor,
    beta: torch.Tensor,
    k: torch.Tensor,
    q: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Longhorn recurrence computed chunk-wise; same result as ``longhorn_naive``.

    Args:
        x: (batch, T, d_inner) input.
        beta: (batch, T, d_inner) step sizes β in [0, 1] (after the sigmoid).
        k, q: (batch, T, d_state) keys and queries.
        D: (d_inner,) skip weight, or None.
        initial_state: (batch, d_inner, d_state) S_0, or None for zeros.
        output_final_state: also return S_T.
        chunk_size: chunk length L.

    Returns:
        y: (batch, T, d_inner) in x's dtype; final_state: (batch, d_inner, d_state) or None.
    """
    check_longhorn_inputs(x, beta, k, q, D, initial_state)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    batch, T, d_inner = x.shape
    d_state = k.shape[2]
    dtype = compute_dtype(x, beta, k, q, initial_state)
    xc, bc, kc, qc = (t.to(dtype) for t in (x, beta, k, q))
    if initial_state is None:
        state = xc.new_zeros(batch, d_inner, d_state)  # (B, D, N)
    else:
        state = initial_state.to(dtype)  # (B, D, N)
    if T == 0:
        return x.new_zeros(batch, 0, d_inner), (state if output_final_state else None)

    L = min(chunk_size, T)
    # Padding steps have β = 0: ε = 0, decay 1 and no input, so the final state is S_T exactly.
    pad = (-T) % L
    x_ch = _to_chunks(xc, pad, L)  # (L, B, nc, D)
    b_ch = _to_chunks(bc, pad, L)  # (L, B, nc, D)
    k_ch = _to_chunks(kc, pad, L)  # (L, B, nc, N)
    q_ch = _to_chunks(qc, pad, L)  # (L, B, nc, N)
    n_chunks = x_ch.shape[2]

    eps = longhorn_eps(b_ch, k_ch)  # (L, B, nc, D)
    if n_chunks > 1:
        log_decay = longhorn_log_decay(b_ch, k_ch)  # (L, B, nc, D, N)
        decay = torch.exp(log_decay)  # (L, B, nc, D, N)
    else:
        # one chunk needs no cumulative decay: the plain decay, as in the naive loop
        decay = 1 - eps[..., None] * (k_ch * k_ch)[..., None, :]  # (L, B, nc, D, N)
    inp = (eps * x_ch)[..., None] * k_ch[..., None, :]  # (L, B, nc, D, N)

    # One chunk (T <= L, the training case at T = 32): scan from the initial state directly,
    # which skips the cumulative decays and the combine step.
    # unbind, not decay[i]: the backward of L index ops would zero-fill L full-size tensors
    decay_steps, inp_steps = decay.unbind(0), inp.unbind(0)  # L x (B, nc, D, N)
    s = inp_steps[0] if n_chunks > 1 else decay_steps[0] * state[:, None] + inp_steps[0]
    s_list = [s]
    for i in range(1, L):
        s = decay_steps[i] * s + inp_steps[i]  # (B, nc, D, N)
        s_list.append(s)
    s_local = torch.stack(s_list, dim=0)  # (L, B, nc, D, N)

    if n_chunks > 1:
        s_full, state = _combine_chunks(s_local, log_decay, state)  # (L, B, nc, D, N), (B, D, N)
    else:
        # padding steps (β = 0) leave the state unchanged, so the last row is S_T
        state = s_local[-1, :, 0]  # (B, D, N)
        s_full = s_local  # (L, B, 1, D, N)
    y = torch.einsum("lbcdn,lbcn->bcld", s_full, q_ch)  # (B, nc, L, D)
    y = y.reshape(batch, n_chunks * L, d_inner)[:, :T]  # (B, T, D)
    if D is not None:
        y = y + xc * D.to(dtype)
    return y.to(x.dtype), (state if output_final_state else None)
