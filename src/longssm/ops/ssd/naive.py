"""SSD (Mamba-2) reference: the recurrence written as a plain loop over time.

This is the specification the chunked form is tested against; it is slow (one step per token).

Glossary (paper symbol -> code name, shape):
    x_t   (input, per head)                   x      (batch, T, nheads, headdim)
    Δ_t   (step size, positive)               dt     (batch, T, nheads)
    a_h   (scalar decay rate per head, < 0)   A      (nheads,)
    B_t   (input matrix, shared per group)    B      (batch, T, ngroups, d_state)
    C_t   (output matrix, shared per group)   C      (batch, T, ngroups, d_state)
    D_h   (skip connection)                   D      (nheads,) or None
    h_t   (hidden state)                      state  (batch, nheads, headdim, d_state)

Recurrence (head h uses the B, C of its group h // (nheads // ngroups)):
    h_t = exp(Δ_t a_h) h_{t-1} + Δ_t x_t B_tᵀ
    y_t = h_t C_t + D_h x_t
"""

from __future__ import annotations

import torch

from longssm.ops._common import compute_dtype


def check_ssd_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    time_dim: bool = True,
) -> tuple[int, int, int, int, int]:
    """Validate SSD argument shapes; return (batch, nheads, headdim, ngroups, d_state).

    With ``time_dim=False`` the tensors are single steps (no T axis), as for ``ssd_step``.
    """
    lead = "(batch, T, " if time_dim else "(batch, "
    xdim = 4 if time_dim else 3
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ssd: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"ssd: {name} must be floating point, got {t.dtype}")
    if x.dim() != xdim:
        raise ValueError(f"ssd: x must have shape {lead}nheads, headdim), got {tuple(x.shape)}")
    batch, nheads, headdim = x.shape[0], x.shape[-2], x.shape[-1]
    if tuple(dt.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"ssd: dt must have shape {tuple(x.shape[:-1])} {lead}nheads), got {tuple(dt.shape)}"
        )
    if tuple(A.shape) != (nheads,):
        raise ValueError(f"ssd: A must have shape (nheads,) = ({nheads},), got {tuple(A.shape)}")
    if B.dim() != xdim or tuple(B.shape[:-2]) != tuple(x.shape[:-2]):
        raise ValueError(
            f"ssd: B must have shape {lead}ngroups, d_state) matching x's leading dims "
            f"{tuple(x.shape[:-2])}, got {tuple(B.shape)}"
        )
    if tuple(C.shape) != tuple(B.shape):
        raise ValueError(f"ssd: C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}")
    ngroups, d_state = B.shape[-2], B.shape[-1]
    if ngroups == 0 or nheads % ngroups != 0:
        raise ValueError(f"ssd: nheads ({nheads}) must be divisible by ngroups ({ngroups})")
    if D is not None and tuple(D.shape) != (nheads,):
        raise ValueError(f"ssd: D must have shape (nheads,) = ({nheads},), got {tuple(D.shape)}")
    if initial_state is not None:
        want = (batch, nheads, headdim, d_state)
        if not isinstance(initial_state, torch.Tensor) or not initial_state.is_floating_point():
            raise TypeError("ssd: initial_state must be a floating-point tensor")
        if tuple(initial_state.shape) != want:
            raise ValueError(
                f"ssd: initial_state must have shape (batch, nheads, headdim, d_state) = {want}, "
                f"got {tuple(initial_state.shape)}"
            )
    return batch, nheads, headdim, ngroups, d_state


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the SSD recurrence token by token.

    Args:
        x: (batch, T, nheads, headdim) inputs.
        dt: (batch, T, nheads) positive step sizes Δ.
        A: (nheads,) negative decay rates.
        B, C: (batch, T, ngroups, d_state); nheads must be divisible by ngroups.
        D: (nheads,) skip weights, or None.
        initial_state: (batch, nheads, headdim, d_state) h_0, or None for zeros.
        output_final_state: also return h_T.

    Returns:
        y: (batch, T, nheads, headdim) in x's dtype.
        final_state: (batch, nheads, headdim, d_state) in the compute dtype (float32 or float64),
            or None when ``output_final_state`` is False.
    """
    batch, nheads, headdim, ngroups, d_state = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    T = x.shape[1]
    dtype = compute_dtype(x)
    heads_per_group = nheads // ngroups
    # Give every head its group's B and C.
    Bh = B.to(dtype).repeat_interleave(heads_per_group, dim=2)  # (b, T, H, N)
    Ch = C.to(dtype).repeat_interleave(heads_per_group, dim=2)  # (b, T, H, N)
    xc, dtc, Ac = x.to(dtype), dt.to(dtype), A.to(dtype)
    if initial_state is None:
        h = x.new_zeros(batch, nheads, headdim, d_state, dtype=dtype)  # (b, H, P, N)
    else:
        h = initial_state.to(dtype)  # (b, H, P, N)
    ys = []
    for t in range(T):
        decay = torch.exp(dtc[:, t] * Ac)  # (b, H)
        # Outer product Δ_t x_t B_tᵀ, one (headdim x d_state) matrix per head.
        inject = (dtc[:, t, :, None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]  # (b, H, P, N)
        h = decay[..., None, None] * h + inject  # (b, H, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))  # (b, H, P)
    if T > 0:
        y = torch.stack(ys, dim=1)  # (b, T, H, P)
    else:
        y = xc.new_zeros(batch, 0, nheads, headdim)  # (b, 0, H, P)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xc  # (b, T, H, P)
    return y.to(x.dtype), (h if output_final_state else None)
