"""Fused CPU selective scan (Mamba-1 / S6): numba kernels with a hand-written backward.

Glossary as in ``naive.py`` (x_t -> x, Δ_t -> dt, A, B_t -> B, C_t -> C, D, h_t -> state), plus
    K (checkpoint interval)          CHECKPOINT (32)   states stored every K steps for the backward
    h_0, h_K, h_2K, ...              ckpt              (batch, ceil(T / K), d_state, d_inner)
    ∂L/∂y, ∂L/∂h_T                   gy, gh            (batch, T, d_inner), (batch, d_inner, d_state)

The forward keeps the state of a block of 16 channels in a small local array and runs over time once,
parallel over the (batch row, channel block) pairs; it never materialises (batch, T, d_inner,
d_state). The backward runs time in reverse, recomputing the states of each K-step block from its
checkpoint. Derivation and timings in README.md ("Fused CPU kernel").

The kernels live in ``_fused_kernels.py``, imported (with numba) on the first call; numba compiles
each dtype (float32, float64) on its first use and caches the machine code on disk. Half-precision
inputs run in float32. CPU tensors only: ``selective_scan`` (the dispatcher in ``__init__.py``)
falls back to the chunked form on other devices or without numba.
"""

from __future__ import annotations

import torch

from longssm.ops._common import (
    backward_groups,
    compute_dtype,
    differentiable_once,
    numba_available,
    numpy_view,
    sum_groups,
    torch_threads_kept,
)
from longssm.ops.selective_scan.naive import check_gate, check_scan_inputs

# ``numba_available`` lives in ``longssm.ops._common``; re-exported here for train/loop.py.
__all__ = ["numba_available", "selective_scan_fused"]


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.selective_scan import _fused_kernels

    return _fused_kernels


def run_forward(x, dt, AT, B, C, D, h0, z, save: bool, neg: bool = False):
    """The forward kernel on prepared tensors (all contiguous, one dtype, A transposed; h0 a
    (0, 0, 0) array for h_0 = 0; z the gate or None): returns y (B, T, Di), h_T (B, Di, N) and
    the checkpoints (B, ceil(T / K), N, Di), empty along axis 1 unless ``save``. ``neg``: the
    transition 2 exp(Δ_t A) - 1 (negative eigenvalues).
    Shapes: x, dt, z (B, T, Di); AT (N, Di); B, C (B, T, N); D (Di,); h0 (B, Di, N)."""
    kern = _kernels()
    batch, T, d_inner = x.shape
    d_state = AT.shape[0]
    gated = z is not None
    n_ckpt = -(-T // kern.CHECKPOINT) if save else 0
    y = torch.empty_like(x)  # (B, T, Di)
    hT = torch.empty(batch, d_inner, d_state, dtype=x.dtype)  # (B, Di, N)
    ckpt = torch.empty(batch, n_ckpt, d_state, d_inner, dtype=x.dtype)  # (B, nK, N, Di)
    tensors = (x, dt, AT, B, C, D, h0, z if gated else _unused(x), y, hT, ckpt)
    with torch_threads_kept():
        kern.scan_forward(*(numpy_view(t) for t in tensors), save, gated, neg)
    return y, hT, ckpt


def run_backward(x, dt, AT, B, C, D, ckpt, z, gy, gh, want_dh0: bool, neg: bool = False):
    """The backward kernel given the forward's tensors (as ``run_forward`` took them, z None when
    ungated), its checkpoints, ∂L/∂y and ∂L/∂h_T (None: not reaching the loss). Returns ∂L/∂x,
    ∂L/∂Δ (B, T, Di), ∂L/∂Aᵀ (N, Di), ∂L/∂B, ∂L/∂C (B, T, N), ∂L/∂D (Di,), ∂L/∂h_0 (B, Di, N)
    or None (not ``want_dh0``), ∂L/∂z (B, T, Di) or None (ungated). ``neg`` as the forward's."""
    kern = _kernels()
    gated = z is not None
    z = z if gated else _unused(x)
    batch, T, d_inner = x.shape
    d_state = AT.shape[0]
    n_groups = backward_groups(batch, -(-d_inner // kern.LANES))
    # ∂L/∂h_T = 0 when h_T does not reach the loss (the usual case): the kernels take a
    # (0, 0, 0) array for it rather than a zero-filled (B, Di, N) one (a fill of 1 MB per
    # layer at the benchmark size), and for dh0 when h_0 = 0 was not an input.
    gy = torch.zeros_like(x) if gy is None else gy.to(x.dtype).contiguous()
    gh = _unused(x) if gh is None else gh.to(x.dtype).contiguous()
    dx = torch.empty_like(x)  # (B, T, Di)
    ddt = torch.empty_like(x)  # (B, T, Di)
    dz = torch.empty_like(x) if gated else _unused(x)  # (B, T, Di)
    dB_part = torch.zeros(batch, n_groups, T, d_state, dtype=x.dtype)  # (B, groups, T, N)
    dC_part = torch.zeros(batch, n_groups, T, d_state, dtype=x.dtype)  # (B, groups, T, N)
    dA_part = torch.empty(batch, d_state, d_inner, dtype=torch.float64)  # (B, N, Di)
    dD_part = torch.empty(batch, d_inner, dtype=torch.float64)  # (B, Di)
    dh0 = torch.empty(batch, d_inner, d_state, dtype=x.dtype) if want_dh0 else _unused(x)
    dA_sum = torch.empty(d_state * d_inner, dtype=torch.float64)  # (N * Di,): Σ_b dA_part
    dD_sum = torch.empty(d_inner, dtype=torch.float64)  # (Di,): Σ_b dD_part
    parts = tuple(numpy_view(t) for t in (dB_part, dC_part, dA_part, dD_part))
    with torch_threads_kept():
        kern.scan_backward(
            *(numpy_view(t) for t in (x, dt, AT, B, C, D, ckpt, z, gy, gh, dx, ddt, dz)),
            parts,
            (numpy_view(dA_sum), numpy_view(dD_sum)),
            numpy_view(dh0),
            gated,
            neg,
        )
    dAT = dA_sum.to(x.dtype).reshape(d_state, d_inner)  # (N, Di)
    dD = dD_sum.to(x.dtype)  # (Di,)
    dB, dC = sum_groups(dB_part, dC_part)  # (B, T, N) each
    return dx, ddt, dAT, dB, dC, dD, (dh0 if want_dh0 else None), (dz if gated else None)


class _FusedScan(torch.autograd.Function):
    """Autograd wrapper; all inputs contiguous, in one dtype (float32 or float64), A transposed;
    z (the gate) or None."""

    @staticmethod
    def forward(ctx, x, dt, AT, B, C, D, h0, z, neg):
        # an output that does not reach the loss (the final state, usually) comes to the backward
        # as None, not as a zero-filled tensor that autograd would allocate for it
        ctx.set_materialize_grads(False)
        # x, dt, z: (B, T, Di); AT: (N, Di); B, C: (B, T, N); D: (Di,); h0: (B, Di, N), or a
        # (0, 0, 0) array for h_0 = 0
        save = any(ctx.needs_input_grad)
        y, hT, ckpt = run_forward(x, dt, AT, B, C, D, h0, z, save, neg)
        if save:
            ctx.gated, ctx.neg = z is not None, neg
            ctx.save_for_backward(x, dt, AT, B, C, D, ckpt, *((z,) if ctx.gated else ()))
        return y, hT

    @staticmethod
    @differentiable_once
    def backward(ctx, gy, gh):
        x, dt, AT, B, C, D, ckpt, *gate = ctx.saved_tensors
        z = gate[0] if ctx.gated else None
        grads = run_backward(x, dt, AT, B, C, D, ckpt, z, gy, gh, ctx.needs_input_grad[6], ctx.neg)
        return (*grads, None)


def _unused(x: torch.Tensor) -> torch.Tensor:
    """A (0, 0, 0) array in x's dtype: the kernels' stand-in for z and dz when ungated, and for
    h_0, ∂L/∂h_T and ∂L/∂h_0 when they are zero or not wanted."""
    return x.new_empty(0, 0, 0)


def selective_scan_fused(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    gate: torch.Tensor | None = None,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan by fused numba kernels on CPU; same results as ``selective_scan_naive``
    (times silu(gate) when a gate is given; with ``negative_eigenvalues``, the transition
    2 exp(Δ_t A) - 1 of Grazzi et al. 2025, as the naive loop's).

    Args:
        x: (batch, T, d_inner) input.
        dt: (batch, T, d_inner) positive step sizes Δ (after softplus and bias).
        A: (d_inner, d_state) real, negative.
        B, C: (batch, T, d_state) input-dependent input and output maps.
        D: (d_inner,) skip weight, or None.
        initial_state: (batch, d_inner, d_state) h_0, or None for zeros.
        output_final_state: also return h_T.
        gate: (batch, T, d_inner) z, or None: y becomes y ⊙ silu(z) inside the kernels (Mamba's
            output gate; the backward writes ∂L/∂z in the same pass).

    Returns:
        y: (batch, T, d_inner) in x's dtype; final_state: (batch, d_inner, d_state) in the compute
        dtype (float32 or float64), or None.

    Raises:
        ValueError: on mismatched shapes or tensors not on the CPU.
        ImportError: when numba is not installed.
    """
    check_scan_inputs(x, dt, A, B, C, D, initial_state)
    check_gate(gate, x)
    tensors = [t for t in (x, dt, A, B, C, D, initial_state, gate) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("selective_scan_fused runs on CPU tensors only; use selective_scan_chunk")
    if not numba_available():
        raise ImportError("selective_scan_fused needs numba (pip install numba)")
    batch, T, d_inner = x.shape
    d_state = A.shape[1]
    dtype = compute_dtype(x, dt, A, B, C, initial_state, gate)
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    if T == 0:
        final = (
            initial_state
            if initial_state is not None
            else x.new_zeros(batch, d_inner, d_state, dtype=dtype)
        )
        return x.new_zeros(batch, 0, d_inner), (final if output_final_state else None)

    # (B, Di, N); h_0 = 0 goes in as a (0, 0, 0) array: the kernel starts from zeros unread
    h0 = x.new_empty(0, 0, 0, dtype=dtype) if initial_state is None else initial_state.contiguous()
    Dc = x.new_zeros(d_inner, dtype=dtype) if D is None else D.to(dtype).contiguous()  # (Di,)
    y, hT = _FusedScan.apply(
        x.to(dtype).contiguous(),
        dt.to(dtype).contiguous(),
        A.to(dtype).t().contiguous(),  # (N, Di)
        B.to(dtype).contiguous(),
        C.to(dtype).contiguous(),
        Dc,
        h0,
        None if gate is None else gate.to(dtype).contiguous(),
        bool(negative_eigenvalues),
    )
    return y.to(x.dtype), (hT if output_final_state else None)
