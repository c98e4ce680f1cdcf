"""S4D as a convolution: the layer's SSM response through an FFT, plus the initial-state response.

For the real-input, conjugate-symmetric S4D system (H channels, N kept complex modes each)
    h_t = λ̄ ⊙ h_{t-1} + B̄ u_t,      y_t = 2 Re(sum_n C h_t) + D u_t,
unrolling from h_{-1} = h_0 gives
    y_t = sum_{s <= t} K_{t-s} u_s + 2 Re(sum_n C λ̄^(t+1) h_0) + D u_t,  K_k = 2 Re(sum_n C B̄ λ̄^k)
    h_T = λ̄^T h_0 + sum_s λ̄^(T-1-s) B̄ u_s     (final state, after the last input)
The convolution runs as an FFT of length 2T (zero padding makes the circular convolution causal);
the powers λ̄^k, 0 <= k <= T, are one Vandermonde tensor ``exp(k log λ̄)`` shared by the kernel,
the initial-state response and the final state (a matmul against the time-reversed powers).
All contractions run as real matmuls (``matmul_re``): complex matmuls are slow on CPU.

Glossary (paper symbol -> code name, shape):
    u_t  (input)                     u              (batch, T, H) real
    λ̄   (discrete eigenvalues Ā)    lam_bar        (H, N) complex, |λ̄| <= 1
    B̄   (discrete input vector)     B_bar          (H, N) complex
    C    (output vector)             C              (H, N) complex
    D    (skip)                      D              (H,) real or None
    h_0  (state before u_0)          initial_state  (batch, H, N) complex
    K    (SSM convolution kernel)    kernel         (T, H) real
"""

from __future__ import annotations

import torch

from .chunk import powers_from_log, safe_log


def matmul_re(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Re(a @ b)`` for complex ``a`` (..., M, K) and ``b`` (..., K, P) as one real matmul.

    Re(a b) = Re a Re b - Im a Im b: complex matmuls (and badly strided real ones) are many
    times slower than a contiguous real matmul on CPU.
    """
    a_r = torch.view_as_real(a).flatten(-2)  # (..., M, 2K): re, im interleaved
    b_r = torch.stack([b.real, -b.imag], dim=-2).flatten(-3, -2)  # (..., 2K, P)
    return torch.matmul(a_r.contiguous(), b_r.contiguous())  # (..., M, P)


def matmul_complex_real(a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``a @ u`` for complex ``a`` (..., M, K) and real ``u`` (..., K, P) as one real matmul."""
    M = a.shape[-2]
    stacked = torch.cat([a.real, a.imag], dim=-2).contiguous()  # (..., 2M, K)
    res = torch.matmul(stacked, u.contiguous())  # (..., 2M, P)
    return torch.complex(res[..., :M, :], res[..., M:, :])  # (..., M, P)


def _check_conv_inputs(u, lam_bar, B_bar, C, D, initial_state) -> None:
    if not isinstance(u, torch.Tensor) or not u.is_floating_point() or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"s4d_conv: u must be a real (batch, T, H) tensor, got {got}")
    H = u.shape[-1]
    for name, t in (("lam_bar", lam_bar), ("B_bar", B_bar), ("C", C)):
        if not isinstance(t, torch.Tensor) or not t.is_complex():
            raise TypeError(f"s4d_conv: {name} must be a complex tensor")
        if t.dim() != 2 or t.shape[0] != H or t.shape != lam_bar.shape:
            raise ValueError(
                f"s4d_conv: {name} must have shape (H, N) with H={H} and N as lam_bar, "
                f"got {tuple(t.shape)}"
            )
    if D is not None and tuple(D.shape) != (H,):
        raise ValueError(f"s4d_conv: D must have shape (H,) = ({H},), got {tuple(D.shape)}")
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor) or not initial_state.is_complex():
            raise TypeError("s4d_conv: initial_state must be a complex tensor")
        want = (u.shape[0], *lam_bar.shape)
        if tuple(initial_state.shape) != want:
            raise ValueError(
                f"s4d_conv: initial_state must have shape (batch, H, N) = {want}, "
                f"got {tuple(initial_state.shape)}"
            )


def s4d_conv(
    u: torch.Tensor,
    lam_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S4D output ``y = K * u + 2 Re(C λ̄^(t+1) h_0) + D u`` by FFT, and the final state.

    Args:
        u: (batch, T, H) real input.
        lam_bar: (H, N) complex discrete eigenvalues, |λ̄| <= 1 and non-zero.
        B_bar: (H, N) complex discrete input vector.
        C: (H, N) complex output vector (the conjugate half; the output takes 2 Re).
        D: (H,) real skip, or None.
        initial_state: (batch, H, N) complex h_0, or None for zeros.
        output_final_state: also return h_T.
    Returns:
        y: (batch, T, H) in u's real dtype (float32 at least); final_state: (batch, H, N) or None.
    """
    _check_conv_inputs(u, lam_bar, B_bar, C, D, initial_state)
    real_dtype = torch.promote_types(u.dtype, torch.float32)
    cdtype = torch.complex(torch.zeros(1, dtype=real_dtype), torch.zeros(1, dtype=real_dtype)).dtype
    u = u.to(real_dtype)
    lam_bar, B_bar, C = lam_bar.to(cdtype), B_bar.to(cdtype), C.to(cdtype)
    T = u.shape[1]
    if T == 0:  # no FFT of length 0: y is empty and the state passes through
        final = None
        if output_final_state:
            zeros = u.new_zeros(u.shape[0], *lam_bar.shape, dtype=cdtype)
            final = zeros if initial_state is None else initial_state.to(cdtype)
        return u.new_zeros(u.shape), final

    # channel-major powers: pw[h, k, n] = λ̄[h, n]^k, k = 0..T
    pw = powers_from_log(safe_log(lam_bar), T + 1).permute(1, 0, 2)  # (H, T + 1, N)
    kernel = 2 * matmul_re(pw[:, :T], (C * B_bar)[..., None])[..., 0].T  # (T, H)
    n_fft = 2 * T
    u_f = torch.fft.rfft(u, n=n_fft, dim=1)  # (B, T + 1, H)
    k_f = torch.fft.rfft(kernel, n=n_fft, dim=0)  # (T + 1, H)
    # irfft along dim 1 returns a channel-major (B, T, H) view (strides (., 1, 2T)): made row-major
    # here, since every element-wise op after it keeps that layout and GELU's backward on it ran
    # 16x slower (13 vs 0.8 ms at (16, 256, 256)); out_proj then copied it too
    y = torch.fft.irfft(u_f * k_f, n=n_fft, dim=1)[:, :T].contiguous()  # (B, T, H)
    if D is not None:
        y = y + D.to(real_dtype) * u  # (B, T, H)

    h0 = None if initial_state is None else initial_state.to(cdtype)
    if h0 is not None:
        Ch0 = (C * h0).permute(1, 2, 0)  # (H, N, B)
        y = y + 2 * matmul_re(pw[:, 1:], Ch0).permute(2, 1, 0)  # (B, T, H)

    final = None
    if output_final_state:
        # h_T = sum_s λ̄^(T-1-s) B̄ u_s: time-reversed powers against u
        reversed_pw = pw[:, :T].flip(1).transpose(1, 2)  # (H, N, T): λ̄^(T-1-s)
        summed = matmul_complex_real(reversed_pw, u.permute(2, 1, 0))  # (H, N, B)
        final = B_bar * summed.permute(2, 0, 1)  # (B, H, N)
        if h0 is not None:
            final = final + pw[:, T] * h0  # (B, H, N)
    return y, final
