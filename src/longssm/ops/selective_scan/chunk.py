"""Chunked selective scan (Mamba-1 / S6): the pure-torch training form.

Glossary as in ``naive.py`` (x_t -> x, Δ_t -> dt, A, B_t -> B, C_t -> C, D, h_t -> state), plus
    L (chunk length)                           chunk_size
    Δ_t A (log-decay, <= 0)                    log_decay      (L, batch, n_chunks, d_inner, d_state)
    Σ_{s<=t in chunk} Δ_s A (from chunk start) cum            same shape, <= 0
    h_t with a zero state at the chunk start   h_local        same shape
    h at the start of each chunk               chunk_start    (batch, n_chunks, d_inner, d_state)

The sequence is cut into chunks of L steps. (1) Every chunk is scanned from a zero state, all chunks at
once, in L vectorised steps. (2) The states at the chunk boundaries are passed from chunk to chunk,
starting at ``initial_state``. (3) Each chunk adds its start state decayed by exp(cum), with cum the
log-decay accumulated from the chunk start: cum <= 0, so exp never overflows. See README.md.
With ``negative_eigenvalues`` the transitions a_t = 2 exp(Δ_t A) - 1 may be negative, so there is
no log; the products from the chunk start are a cumulative product instead (|a_t| <= 1: bounded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longssm.ops._common import compute_dtype
from longssm.ops.selective_scan.naive import check_scan_inputs, transition

DEFAULT_CHUNK_SIZE = 32


def _to_chunks(t: torch.Tensor, pad: int, chunk_size: int) -> torch.Tensor:
    """(batch, T, C) -> (L, batch, n_chunks, C), zero-padded at the end of time."""
    if pad:
        t = F.pad(t, (0, 0, 0, pad))
    batch, T, channels = t.shape
    return t.reshape(batch, T // chunk_size, chunk_size, channels).permute(2, 0, 1, 3)


def selective_scan_chunk(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan computed chunk-wise; same result as ``selective_scan_naive``.

    Args:
        x: (batch, T, d_inner) input.
        dt: (batch, T, d_inner) positive step sizes Δ (after softplus and bias).
        A: (d_inner, d_state) real, negative.
        B, C: (batch, T, d_state) input-dependent input and output maps.
        D: (d_inner,) skip weight, or None.
        initial_state: (batch, d_inner, d_state) h_0, or None for zeros.
        output_final_state: also return h_T.
        chunk_size: chunk length L (32 measured best on CPU; see README.md).
        negative_eigenvalues: transition 2 exp(Δ_t A) - 1 instead of exp(Δ_t A).

    Returns:
        y: (batch, T, d_inner) in x's dtype; final_state: (batch, d_inner, d_state) or None.
    """
    check_scan_inputs(x, dt, A, B, C, D, initial_state)
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    batch, T, d_inner = x.shape
    d_state = A.shape[1]
    dtype = compute_dtype(x, dt, A, B, C, initial_state)
    xc, dtc, Ac, Bc, Cc = (t.to(dtype) for t in (x, dt, A, B, C))
    zeros = x.new_zeros(batch, d_inner, d_state, dtype=dtype)  # (B, D, N)
    h0 = zeros if initial_state is None else initial_state.to(dtype)  # (B, D, N)
    if T == 0:
        return x.new_zeros(batch, 0, d_inner), (h0 if output_final_state else None)

    L = min(chunk_size, T)
    # Padding steps have Δ = 0: decay 1 and no input, so the final state is h_T exactly.
    pad = (-T) % L
    dt_ch = _to_chunks(dtc, pad, L)  # (L, B, nc, D)
    x_ch = _to_chunks(xc, pad, L)  # (L, B, nc, D)
    B_ch = _to_chunks(Bc, pad, L)  # (L, B, nc, N)
    C_ch = _to_chunks(Cc, pad, L)  # (L, B, nc, N)
    n_chunks = dt_ch.shape[2]

    log_decay = dt_ch[..., None] * Ac  # (L, B, nc, D, N)
    decay = transition(log_decay, negative_eigenvalues)  # (L, B, nc, D, N)
    inp = (dt_ch * x_ch)[..., None] * B_ch[:, :, :, None, :]  # (L, B, nc, D, N)

    h = inp[0]  # (B, nc, D, N)
    h_list = [h]
    for i in range(1, L):
        h = decay[i] * h + inp[i]  # (B, nc, D, N)
        h_list.append(h)
    h_local = torch.stack(h_list, dim=0)  # (L, B, nc, D, N)

    if negative_eigenvalues:
        prods = torch.cumprod(decay, dim=0)  # (L, B, nc, D, N)
    else:
        prods = torch.exp(torch.cumsum(log_decay, dim=0))  # (L, B, nc, D, N)
    chunk_decay = prods[-1]  # (B, nc, D, N)
    state = h0  # (B, D, N)
    starts = []
    for c in range(n_chunks):
        starts.append(state)
        state = chunk_decay[:, c] * state + h_local[-1, :, c]  # (B, D, N)
    chunk_start = torch.stack(starts, dim=1)  # (B, nc, D, N)

    h_full = h_local + prods * chunk_start  # (L, B, nc, D, N)
    y = torch.einsum("lbcdn,lbcn->bcld", h_full, C_ch)  # (B, nc, L, D)
    y = y.reshape(batch, n_chunks * L, d_inner)[:, :T]  # (B, T, D)
    if D is not None:
        y = y + xc * D.to(dtype)
    return y.to(x.dtype), (state if output_final_state else None)
