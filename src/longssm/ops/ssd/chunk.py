"""SSD (Mamba-2) chunked "state-space duality" form: matmuls inside chunks, a scan across them.

The sequence is cut into chunks of length L (the last one zero-padded with Δ = 0, which leaves the
state untouched). Within a chunk the output is an attention-like masked matmul; across chunks the
state is carried by a short recurrence seeded with ``initial_state``. See README.md for the
derivation of the four terms.

Glossary (paper symbol -> code name, shape):
    x_t   (input, per head)                   x        (batch, T, nheads, headdim)
    Δ_t   (step size, positive)               dt       (batch, T, nheads)
    a_h   (scalar decay rate per head, < 0)   A        (nheads,)
    B_t   (input matrix, shared per group)    B        (batch, T, ngroups, d_state)
    C_t   (output matrix, shared per group)   C        (batch, T, ngroups, d_state)
    D_h   (skip connection)                   D        (nheads,) or None
    h_t   (hidden state)                      state    (batch, nheads, headdim, d_state)
    L     (chunk length)                      chunk_size
    Λ_t   (cumulative log-decay in a chunk)   acum     (..., L)
    G     (groups), R = nheads / G heads per group, P = headdim, N = d_state
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longssm.ops._common import compute_dtype

from .naive import check_ssd_inputs


def segment_decay(acum: torch.Tensor) -> torch.Tensor:
    """Causal decay matrix exp(Λ_i - Λ_j) for i >= j, 0 above the diagonal.

    The log-decays are non-positive, so the cumulative sum is non-increasing (also after rounding)
    and every difference kept is <= 0; the anti-causal entries become -inf before ``exp``, so exp
    never sees a positive argument and no inf * 0 reaches the backward pass.

    Args:
        acum: (..., L) cumulative log-decays Λ.

    Returns:
        (..., L, L) lower-triangular decay matrix.
    """
    L = acum.shape[-1]
    diff = acum[..., :, None] - acum[..., None, :]  # (..., L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=acum.device).tril()
    return torch.exp(diff.masked_fill(~causal, float("-inf")))  # (..., L, L)


def _carry_across_chunks(
    chunk_decay: torch.Tensor, chunk_states: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The state entering every chunk and the final state, from h_0 (b, G, R, P, N), each
    chunk's decay over its length (b, c, G, R) and own end state (b, c, G, R, P, N)."""
    starts = []
    # unbind rather than indexing: its backward writes one stacked gradient, not one per chunk.
    for decay_c, state_c in zip(chunk_decay.unbind(1), chunk_states.unbind(1)):
        starts.append(h)
        h = decay_c[..., None, None] * h + state_c  # (b, G, R, P, N)
    return torch.stack(starts, dim=1), h  # (b, c, G, R, P, N), (b, G, R, P, N)


def _read_out(states: torch.Tensor, Cc: torch.Tensor) -> torch.Tensor:
    """C_i h for every position i of a chunk and every head: states (b, c, G, R, P, N), Cc
    (b, c, G, 1, L, N) -> (b, c, G, R, L, P). One matmul per (b, c, G) with the R heads' rows
    stacked, (R·P, N) @ (N, L), rather than C broadcast over the heads (a copy R times, and R
    products summed in the backward)."""
    b, c, G, R, P, N = states.shape
    out = states.reshape(b, c, G, R * P, N) @ Cc[:, :, :, 0].transpose(-1, -2)  # (b,c,G,R·P,L)
    return out.view(b, c, G, R, P, -1).transpose(-1, -2)  # (b, c, G, R, L, P)


def ssd_chunk(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD in its chunked matmul form; same arguments and results as ``ssd_naive``.

    Args:
        x: (batch, T, nheads, headdim) inputs.
        dt: (batch, T, nheads) positive step sizes Δ.
        A: (nheads,) negative decay rates.
        B, C: (batch, T, ngroups, d_state); nheads must be divisible by ngroups.
        D: (nheads,) skip weights, or None.
        initial_state: (batch, nheads, headdim, d_state) h_0, or None for zeros.
        output_final_state: also return h_T.
        chunk_size: chunk length L; T need not be a multiple of it.

    Returns:
        y: (batch, T, nheads, headdim) in x's dtype.
        final_state: (batch, nheads, headdim, d_state) in the compute dtype (float32 or float64),
            or None when ``output_final_state`` is False.
    """
    batch, nheads, headdim, ngroups, d_state = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"ssd_chunk: chunk_size must be a positive integer, got {chunk_size!r}")
    T = x.shape[1]
    dtype = compute_dtype(x)
    if T == 0:
        # Nothing to scan: the state passes through unchanged.
        h0 = x.new_zeros(batch, nheads, headdim, d_state, dtype=dtype)
        h0 = h0 if initial_state is None else initial_state.to(dtype)
        return x.new_zeros(x.shape), (h0 if output_final_state else None)
    G, R, P, N = ngroups, nheads // ngroups, headdim, d_state
    L = min(chunk_size, T)
    nchunks = -(-T // L)
    pad = nchunks * L - T

    xc, dtc = x.to(dtype), dt.to(dtype)
    # Zero padding: Δ = 0 means decay 1 and no input, so the padded steps leave the state as is.
    xbar = F.pad(xc * dtc[..., None], (0, 0, 0, 0, 0, pad))  # (b, T', H, P)
    logdecay = F.pad(dtc * A.to(dtype), (0, 0, 0, pad))  # (b, T', H)
    Bp = F.pad(B.to(dtype), (0, 0, 0, 0, 0, pad))  # (b, T', G, N)
    Cp = F.pad(C.to(dtype), (0, 0, 0, 0, 0, pad))  # (b, T', G, N)

    # (b, c, G, R, L, P), contiguous once here rather than copied inside the matmuls that read it
    xbar = xbar.view(batch, nchunks, L, G, R, P).permute(0, 1, 3, 4, 2, 5).contiguous()
    logdecay = logdecay.view(batch, nchunks, L, G, R).permute(0, 1, 3, 4, 2)  # (b, c, G, R, L)
    Bc = Bp.view(batch, nchunks, L, G, N).permute(0, 1, 3, 2, 4)[:, :, :, None]  # (b,c,G,1,L,N)
    Cc = Cp.view(batch, nchunks, L, G, N).permute(0, 1, 3, 2, 4)[:, :, :, None]  # (b,c,G,1,L,N)
    acum = torch.cumsum(logdecay, dim=-1)  # (b, c, G, R, L)

    # Term 1, within a chunk: y_i += Σ_{j<=i} (C_i·B_j) exp(Λ_i - Λ_j) Δ_j x_j.
    scores = Cc @ Bc.transpose(-1, -2)  # (b, c, G, 1, L, L)
    y = (scores * segment_decay(acum)) @ xbar  # (b, c, G, R, L, P)

    # Term 2, each chunk's own contribution to the state at its end.
    to_end = torch.exp(acum[..., -1:] - acum)  # (b, c, G, R, L)
    chunk_states = (xbar * to_end[..., None]).transpose(-1, -2) @ Bc  # (b, c, G, R, P, N)

    # Term 3, carry the state across chunks, seeded with h_0: a short scan over nchunks.
    if initial_state is None:
        h = xc.new_zeros(batch, G, R, P, N)  # (b, G, R, P, N)
    else:
        h = initial_state.to(dtype).reshape(batch, G, R, P, N)  # (b, G, R, P, N)
    start_states, h = _carry_across_chunks(torch.exp(acum[..., -1]), chunk_states, h)

    # Term 4, the state entering each chunk read out at every position: exp(Λ_i) C_i h_start.
    y = y + torch.exp(acum)[..., None] * _read_out(start_states, Cc)  # (b, c, G, R, L, P)

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, nchunks * L, nheads, P)[:, :T]  # (b, T, H, P)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xc  # (b, T, H, P)
    final_state = h.reshape(batch, nheads, P, N) if output_final_state else None
    return y.to(x.dtype), final_state
