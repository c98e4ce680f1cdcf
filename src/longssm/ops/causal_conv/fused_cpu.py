"""Fused CPU causal depthwise convolution: numba kernels with a hand-written backward.

Glossary as in ``naive.py`` (u_t -> x, w_k -> weight[:, k], b -> bias, history -> initial_state),
plus the kernels' channels-last copies wT (K, C) and hist (batch, K-1, C).

The forward writes y_t = act(b + Σ_k w_k ⊙ u_{t-K+1+k}) row by row, parallel over (batch row,
block of 32 steps); the backward recomputes v_t where the SiLU needs it and writes ∂L/∂x, ∂L/∂hist
and per-task partial sums of ∂L/∂w, ∂L/∂b, summed over the tasks in float64 at the kernel's end
(``sum_partials``). The final state (the last K-1 inputs) is copied out in the forward; its
gradient is added to the last rows of ∂L/∂x (and to ∂L/∂history when T < K-1) in the backward,
without a (batch, T, C) zero tensor. Derivation and timings in README.md.

The kernels live in ``_fused_kernels.py``, imported (with numba) on the first call; numba compiles
each dtype (float32, float64) on its first use and caches the machine code on disk. Half-precision
inputs run in float32. CPU tensors only: ``causal_conv`` (the dispatcher in ``__init__.py``) falls
back to the torch form on other devices or without numba.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from longssm.ops._common import (
    compute_dtype,
    differentiable_once,
    numba_available,
    numpy_view,
    torch_threads_kept,
)
from longssm.ops.causal_conv.naive import check_conv_inputs, start_history

# numba threads of the conv kernels: None = the caller's numba setting (as the scans), or a cap.
# Measured on the 2-core machine at load 1.3 (benchmarks/causal_conv.py, docs/results/
# causal_conv.md; medians, fwd+bwd with the SiLU): 2 threads 5.4 ms vs 1 thread 9.6 ms at
# (16, 256, 512, 4), 1.9 vs 2.7 ms at (64, 32, 256, 4); the benchmark LM's step 2-5 ms faster.
# At load 3-4 (an earlier run) the second worker waited for a busy core and 1 thread won: a cap
# of 1 is the switch for a crowded machine. README.md, "Threads".
THREADS: int | None = None


@contextmanager
def _numba_threads(n: int | None):
    """Run the block with at most ``n`` numba threads (None: as set), then restore the caller's
    setting."""
    import numba

    if n is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.causal_conv import _fused_kernels

    return _fused_kernels


class _FusedConv(torch.autograd.Function):
    """Autograd wrapper; all inputs contiguous, channels last, in one dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, x, wT, bias, hist, silu):
        # an output that does not reach the loss (the final state, usually) comes to the backward
        # as None, not as a zero-filled tensor that autograd would allocate for it
        ctx.set_materialize_grads(False)
        # x: (B, T, C); wT: (K, C); bias: (C,); hist: (B, K-1, C)
        y = torch.empty_like(x)  # (B, T, C)
        with torch_threads_kept(), _numba_threads(THREADS):
            _kernels().conv_forward(*(numpy_view(t) for t in (x, wT, bias, hist, y)), silu)
        ctx.silu = silu
        ctx.save_for_backward(x, wT, bias, hist)
        width, T = hist.shape[1], x.shape[1]
        # the last K-1 inputs of [history, x]: x's alone once T >= K-1 (one copy, no concatenation),
        # copied in the kernels' layout (B, K-1, C) and returned as its transposed view (B, C, K-1):
        # a copy of contiguous rows, where a transposing copy took 0.065 ms at (64, 3, 256); the
        # next segment's ``initial_state.transpose(1, 2).contiguous()`` is then no copy at all
        final = x[:, T - width :].contiguous() if T >= width else torch.cat([hist[:, T:], x], 1)
        return y, final.transpose(1, 2)  # (B, T, C), (B, C, K-1)

    @staticmethod
    @differentiable_once
    def backward(ctx, gy, gh):
        kern = _kernels()
        x, wT, bias, hist = ctx.saved_tensors
        batch, T, _ = x.shape
        n_tasks = batch * -(-T // kern.ROWS)
        gy = torch.zeros_like(x) if gy is None else gy.to(x.dtype).contiguous()
        dx = torch.empty_like(x)  # (B, T, C)
        dhist = torch.empty_like(hist)  # (B, K-1, C)
        dw_part = torch.empty(n_tasks, *wT.shape, dtype=x.dtype)  # (tasks, K, C)
        db_part = torch.empty(n_tasks, wT.shape[1], dtype=x.dtype)  # (tasks, C)
        dw_sum = torch.empty(wT.numel(), dtype=torch.float64)  # (K * C,): Σ over the tasks
        db_sum = torch.empty(wT.shape[1], dtype=torch.float64)  # (C,)
        with torch_threads_kept(), _numba_threads(THREADS):
            kern.conv_backward(
                *(numpy_view(t) for t in (x, wT, bias, hist, gy)),
                ctx.silu,
                *(numpy_view(t) for t in (dx, dhist, dw_part, db_part, dw_sum, db_sum)),
            )
        if gh is not None:
            # the final state is inputs T-K+1 .. T-1 of [history, x]: its first max(K-1-T, 0)
            # columns are history columns T.., the rest the last inputs of x
            ghT = gh.to(x.dtype).transpose(1, 2)  # (B, K-1, C)
            split = max(hist.shape[1] - T, 0)
            dhist[:, T : T + split] += ghT[:, :split]
            dx[:, T - hist.shape[1] + split :] += ghT[:, split:]
        dwT = dw_sum.to(x.dtype).reshape(wT.shape)  # (K, C)
        db = db_sum.to(x.dtype)  # (C,)
        return dx, dwT, db, dhist, None


def causal_conv_fused(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution by fused numba kernels on CPU; same results as
    ``causal_conv_naive`` (see there for the arguments and results).

    Raises:
        ValueError: on mismatched shapes or tensors not on the CPU.
        ImportError: when numba is not installed.
    """
    check_conv_inputs(x, weight, bias, initial_state, activation)
    tensors = [t for t in (x, weight, bias, initial_state) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("causal_conv_fused runs on CPU tensors only; use causal_conv_torch")
    if not numba_available():
        raise ImportError("causal_conv_fused needs numba (pip install numba)")
    batch, T, channels = x.shape
    if T == 0:
        hist = start_history(x, weight, bias, initial_state)[1]  # (B, C, K-1)
        return x.new_zeros(batch, 0, channels), (hist if output_final_state else None)
    dtype = compute_dtype(x, weight, bias, initial_state)
    if initial_state is None:  # zeros, made in the kernels' layout (no transposed copy)
        hist = x.new_zeros(batch, weight.shape[1] - 1, channels, dtype=dtype)  # (B, K-1, C)
    else:
        hist = initial_state.to(dtype).transpose(1, 2).contiguous()  # (B, K-1, C)
    b = x.new_zeros(channels, dtype=dtype) if bias is None else bias.to(dtype)
    y, final = _FusedConv.apply(
        x.to(dtype).contiguous(),
        weight.to(dtype).t().contiguous(),  # (K, C)
        b.contiguous(),
        hist,
        activation == "silu",
    )
    return y.to(x.dtype), (final if output_final_state else None)
