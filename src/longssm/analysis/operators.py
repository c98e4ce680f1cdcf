"""Hidden attention: a linear recurrence written as the matrix it applies to its input.

Derived from the recurrences (not from any released code). With 0-based t and h_{-1} = h_0 the
carried state, a diagonal selective scan (Mamba-1, S6) per channel d is
    h_t = exp(Δ_t A_d) ⊙ h_{t-1} + Δ_t B_t x_t,   y_t = C_t · h_t + D x_t,
and unrolling it, with S_t = Σ_{k<=t} Δ_k (per channel, inclusive of step t),
    y_t = Σ_{j<=t} α_{t,j} x_j + D x_t + C_t · (exp(A S_t) ⊙ h_0),
    α_{t,j} = Σ_n C_{t,n} exp(A_{d,n} (S_t - S_j)) Δ_j B_{j,n}.
The product of decays runs over k = j+1 .. t: the query step t is included, the key step j is not
(one public implementation drops the query step's decay; we follow the recurrence).

Other forms (same unrolling):
    Longhorn    decay (1 - ε_k k_k²) per (d, n), input ε_j k_j, query q_t (``longhorn_attention``)
    Mamba-2     one matrix per head: α_{t,j} = (C_t · B_j) exp(a_h (S_t - S_j)) Δ_j
                (``ssd_attention``); state term (exp(a_h S_t) h_0) C_t
    S4D/S5/LRU  time-invariant: α_{t,j} = K_{t-j}, K_k = s Re(C diag(λ̄^k) B̄) (s = 2 for the
                conjugate-pair layers S4D/S5, 1 for LRU); state term s Re(C (λ̄^{t+1} ⊙ h_0))
                (``lti_kernel``, ``lti_attention``)

Glossary (symbol -> code name, shape):
    Δ_t      dt              (batch, T, d_inner) selective; (batch, T, nheads) SSD
    A        A               (d_inner, d_state) selective; (nheads,) SSD
    B_t, C_t B, C            (batch, T, d_state) selective; (batch, T, ngroups, d_state) SSD
    h_0      initial_state   the op's state layout
    α        alpha           (batch, channels, P, T): rows = the P query positions ``positions``
    t rows   positions       LongTensor of query positions (default all T)

Memory: α for every channel is (batch, d_inner, T, T). Every function here takes ``positions`` (only
those rows) and ``channels`` (only those channels, default all); ``iter_selective_attention`` yields
channel blocks so that callers can aggregate without holding all channels. Everything is computed in
float64 (complex128 for the LTI forms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

_F64 = torch.float64


def _rows(T: int, positions, device) -> torch.Tensor:
    """Query positions as a LongTensor; ValueError when one lies outside [0, T)."""
    if positions is None:
        return torch.arange(T, device=device)
    pos = torch.as_tensor(positions, dtype=torch.long, device=device).reshape(-1)
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= T):
        raise ValueError(f"positions must lie in [0, {T}), got range [{int(pos.min())}, {int(pos.max())}]")
    return pos


def _channels(n: int, channels) -> torch.Tensor:
    if channels is None:
        return torch.arange(n)
    ch = torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    if ch.numel() and (int(ch.min()) < 0 or int(ch.max()) >= n):
        raise ValueError(f"channels must lie in [0, {n}), got {ch.tolist()}")
    return ch


def _decay_rows(
    log_decay: torch.Tensor, W: torch.Tensor, C: torch.Tensor, h0: torch.Tensor | None, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Core of the diagonal forms for one block of channels.

    Args:
        log_decay: (b, T, c, N) log of the per-step decay (<= 0).
        W: (b, T, c, N) the key-side input weight (Δ_j B_j or ε_j k_j).
        C: (b, T, N) the query.
        h0: (b, c, N) or None.
        pos: (P,) query rows.
    Returns:
        alpha (b, c, P, T) and state term (b, P, c).
    """
    L = torch.cumsum(log_decay, dim=1)  # (b, T, c, N)  L_t = Σ_{k<=t} log decay_k
    T = L.shape[1]
    Lq, Cq = L[:, pos], C[:, pos]  # (b, P, c, N), (b, P, N)
    causal = pos[:, None] >= torch.arange(T, device=pos.device)[None, :]  # (P, T)
    alpha = L.new_zeros(L.shape[0], L.shape[2], len(pos), T)  # (b, c, P, T)
    for n in range(L.shape[-1]):
        diff = Lq[:, :, None, :, n] - L[:, None, :, :, n]  # (b, P, T, c)
        diff = diff.masked_fill(~causal[None, :, :, None], float("-inf"))
        term = torch.exp(diff) * W[:, None, :, :, n] * Cq[:, :, None, None, n]  # (b, P, T, c)
        alpha += term.permute(0, 3, 1, 2)
    return alpha, _decay_state(Lq, Cq, h0)


def _decay_state(Lq: torch.Tensor, Cq: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """C_t · (exp(L_t) ⊙ h_0): Lq (b, P, c, N) cumulative log decay, Cq (b, P, N) -> (b, P, c)."""
    if h0 is None:
        return Lq.new_zeros(Lq.shape[:3])
    return torch.einsum("bpcn,bpn->bpc", torch.exp(Lq) * h0[:, None].to(_F64), Cq)


def selective_state_term(dt, A, C, initial_state, positions=None) -> torch.Tensor:
    """Only the state term C_t · (exp(A S_t) ⊙ h_0) of ``selective_attention``: (batch, P, d_inner).

    Costs batch * T * d_inner * d_state, never T²."""
    pos = _rows(dt.shape[1], positions, dt.device)
    S = torch.cumsum(dt.to(_F64), dim=1)[:, pos]  # (b, P, d)
    return _decay_state(S[..., None] * A.to(_F64), C.to(_F64)[:, pos], initial_state)


def longhorn_state_term(beta, k, q, initial_state, positions=None) -> torch.Tensor:
    """Only the state term of ``longhorn_attention``: (batch, P, d_inner)."""
    pos = _rows(beta.shape[1], positions, beta.device)
    betad, kd = beta.to(_F64), k.to(_F64)
    eps = betad / (1 + betad * (kd * kd).sum(-1, keepdim=True))  # (b, T, d)
    L = torch.cumsum(torch.log1p(-eps[..., None] * (kd * kd)[:, :, None, :]), dim=1)[:, pos]
    return _decay_state(L, q.to(_F64)[:, pos], initial_state)


def ssd_state_term(dt, A, C, initial_state, positions=None) -> torch.Tensor:
    """Only the state term of ``ssd_attention``: (batch, P, nheads, headdim)."""
    pos = _rows(dt.shape[1], positions, dt.device)
    H = dt.shape[-1]
    Ch = C.to(_F64).repeat_interleave(H // C.shape[2], dim=2)[:, pos]  # (b, P, H, N)
    S = (torch.cumsum(dt.to(_F64), dim=1) * A.to(_F64))[:, pos]  # (b, P, H)
    state = torch.einsum("bhpn,bthn->bthp", initial_state.to(_F64), Ch)
    return state * torch.exp(S)[..., None]


def _iter_decay(
    make: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    C: torch.Tensor,
    h0: torch.Tensor | None,
    n_channels: int,
    positions,
    channels,
    block: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    pos = _rows(C.shape[1], positions, C.device)
    ch = _channels(n_channels, channels)
    Cd = C.to(_F64)
    for i in range(0, len(ch), max(1, block)):
        idx = ch[i : i + max(1, block)].to(C.device)
        log_decay, W = make(idx)
        h = None if h0 is None else h0[:, idx]
        alpha, state = _decay_rows(log_decay, W, Cd, h, pos)
        yield idx, alpha, state


def iter_selective_attention(
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    positions=None,
    channels=None,
    block: int = 16,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(channel ids (c,), alpha (b, c, P, T), state_term (b, P, c))`` per channel block."""
    d_inner = A.shape[0]
    if dt.dim() != 3 or dt.shape[-1] != d_inner or B.shape != C.shape or B.shape[:2] != dt.shape[:2]:
        raise ValueError(
            f"selective_attention: need dt (b, T, d_inner), A (d_inner, N), B, C (b, T, N); got "
            f"dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    dtd, Ad, Bd = dt.to(_F64), A.to(_F64), B.to(_F64)

    def make(idx):
        d = dtd[:, :, idx]  # (b, T, c)
        return d[..., None] * Ad[idx], d[..., None] * Bd[:, :, None, :]  # (b, T, c, N) each

    yield from _iter_decay(make, C, initial_state, d_inner, positions, channels, block)


def _collect(blocks) -> tuple[torch.Tensor, torch.Tensor]:
    alphas, states = zip(*[(a, s) for _, a, s in blocks])
    return torch.cat(alphas, dim=1), torch.cat(states, dim=2)


def selective_attention(
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    positions=None,
    channels=None,
    block: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden attention of a selective scan (Mamba-1) on the op's own inputs.

    Args:
        dt: (batch, T, d_inner) positive Δ; A: (d_inner, d_state); B, C: (batch, T, d_state).
        initial_state: (batch, d_inner, d_state) h_0, or None.
        positions: query rows (default all T); channels: channel ids (default all).
        block: channels computed at once (memory ~ batch * block * P * T doubles).
    Returns:
        alpha (batch, c, P, T) with ``y = alpha @ x + state_term + D x`` on the chosen rows and
        channels, and state_term (batch, P, c); float64.
    """
    return _collect(iter_selective_attention(dt, A, B, C, initial_state, positions, channels, block))


def iter_longhorn_attention(
    beta: torch.Tensor,
    k: torch.Tensor,
    q: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    positions=None,
    channels=None,
    block: int = 16,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Longhorn in the same form: decay 1 - ε_t k_t², input ε_j k_j, query q_t."""
    betad, kd = beta.to(_F64), k.to(_F64)
    eps = betad / (1 + betad * (kd * kd).sum(-1, keepdim=True))  # (b, T, d_inner)

    def make(idx):
        e = eps[:, :, idx, None]  # (b, T, c, 1)
        return torch.log1p(-e * (kd * kd)[:, :, None, :]), e * kd[:, :, None, :]

    yield from _iter_decay(make, q, initial_state, beta.shape[-1], positions, channels, block)


def longhorn_attention(beta, k, q, initial_state=None, positions=None, channels=None, block=16):
    """Hidden attention of Longhorn: ``y = alpha @ x + state_term + D x`` (shapes as selective)."""
    return _collect(iter_longhorn_attention(beta, k, q, initial_state, positions, channels, block))


def ssd_attention(
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    positions=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden attention of Mamba-2 (SSD): one (P, T) matrix per head.

    Args:
        dt: (batch, T, nheads); A: (nheads,); B, C: (batch, T, ngroups, d_state).
        initial_state: (batch, nheads, headdim, d_state) or None.
    Returns:
        alpha (batch, nheads, P, T) with y[..., h, :] = alpha[:, h] @ x[..., h, :] + state_term + D_h x,
        and state_term (batch, P, nheads, headdim) (None without an initial state); float64.
    """
    b, T, H = dt.shape
    if A.shape != (H,) or B.dim() != 4 or B.shape != C.shape or H % B.shape[2]:
        raise ValueError(
            f"ssd_attention: need dt (b, T, H), A (H,), B, C (b, T, G, N) with G | H; got dt "
            f"{tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    pos = _rows(T, positions, dt.device)
    rep = H // B.shape[2]
    Bh = B.to(_F64).repeat_interleave(rep, dim=2)  # (b, T, H, N)
    Ch = C.to(_F64).repeat_interleave(rep, dim=2)[:, pos]  # (b, P, H, N)
    S = torch.cumsum(dt.to(_F64), dim=1) * A.to(_F64)  # (b, T, H)  a_h S_t
    diff = S[:, pos, None, :] - S[:, None, :, :]  # (b, P, T, H)
    causal = pos[:, None] >= torch.arange(T, device=dt.device)[None, :]  # (P, T)
    decay = torch.exp(diff.masked_fill(~causal[None, :, :, None], float("-inf")))
    CB = torch.einsum("bphn,bthn->bpth", Ch, Bh)  # (b, P, T, H)
    alpha = (CB * decay * dt.to(_F64)[:, None]).permute(0, 3, 1, 2)  # (b, H, P, T)
    if initial_state is None:
        return alpha, None
    return alpha, ssd_state_term(dt, A, C, initial_state, pos)


def lti_kernel(lam: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, T: int, scale: float = 2.0) -> torch.Tensor:
    """Convolution kernel K_k = scale · Re(C diag(λ̄^k) B̄), k = 0 .. T-1.

    Args:
        lam: (H, n) per-channel modes (S4D, SISO) or (n,) shared modes (S5, LRU: MIMO).
        B_bar: (H, n) SISO or (n, H_in) MIMO; C: (H, n) SISO or (H_out, n) MIMO.
        scale: 2 for conjugate-pair layers (S4D, S5), 1 for LRU.
    Returns:
        (T, H) SISO or (T, H_out, H_in) MIMO, float64.
    """
    lam, B_bar, C = (t.to(torch.complex128) for t in (lam, B_bar, C))
    k = torch.arange(T, dtype=_F64, device=lam.device)
    powers = torch.exp(k.to(torch.complex128)[:, None] * torch.log(lam).reshape(1, -1))  # (T, H*n|n)
    if lam.dim() == 2:
        powers = powers.reshape(T, *lam.shape)  # (T, H, n)
        return scale * (powers * (B_bar * C)).sum(-1).real
    return scale * torch.einsum("on,kn,ni->koi", C, powers, B_bar).real


def lti_state_term(
    lam: torch.Tensor, C: torch.Tensor, h0: torch.Tensor, pos: torch.Tensor, scale: float = 2.0
) -> torch.Tensor:
    """scale · Re(C (λ̄^{t+1} ⊙ h_0)) at rows ``pos``: (batch, P, H)."""
    lam, C, h0 = (t.to(torch.complex128) for t in (lam, C, h0))
    powers = torch.exp((pos.to(_F64) + 1).to(torch.complex128)[:, None] * torch.log(lam).reshape(1, -1))
    if lam.dim() == 2:
        powers = powers.reshape(len(pos), *lam.shape)  # (P, H, n)
        return scale * torch.einsum("phn,bhn,hn->bph", powers, h0, C).real
    return scale * torch.einsum("pn,bn,on->bpo", powers, h0, C).real


def toeplitz_rows(kernel: torch.Tensor, T: int, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``pos`` of the causal Toeplitz matrix of ``kernel`` (T, ...): (P, T, ...)."""
    lag = pos[:, None] - torch.arange(T, device=kernel.device)[None, :]  # (P, T)
    rows = kernel[lag.clamp(min=0)]  # (P, T, ...)
    mask = (lag >= 0).reshape(*lag.shape, *([1] * (kernel.dim() - 1)))
    return rows * mask


def lti_attention(
    lam: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    T: int,
    initial_state: torch.Tensor | None = None,
    scale: float = 2.0,
    positions=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden attention of an LTI diagonal layer: the causal Toeplitz matrix of its kernel.

    Returns:
        alpha (H, P, T) for SISO (S4D) or (H_out, H_in, P, T) for MIMO (S5, LRU), the same for every
        batch row, and state_term (batch, P, H_out) (None without an initial state), so that
        ``y_t = Σ_j alpha[..., t, j] x_j + state_term_t + D x_t``.
    """
    pos = _rows(T, positions, lam.device)
    K = lti_kernel(lam, B_bar, C, T, scale)  # (T, H) | (T, Ho, Hi)
    rows = toeplitz_rows(K, T, pos)  # (P, T, H) | (P, T, Ho, Hi)
    alpha = rows.permute(2, 0, 1) if K.dim() == 2 else rows.permute(2, 3, 0, 1)
    state = None if initial_state is None else lti_state_term(lam, C, initial_state, pos, scale)
    return alpha, state
