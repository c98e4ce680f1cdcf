"""Fused CPU RMSNorm: numba kernels with a hand-written backward; also
the residual add before it (``add_rms_norm_fused``: s = x + res, then RMSNorm(s)) and Mamba-2's
gate (``gated_rms_norm_fused``: RMSNorm(y ⊙ silu(z))).

Same results as ``rms_norm_naive`` up to rounding (see there for the formula). The forward writes
y and keeps r = 1 / sqrt(mean(x²) + eps) per row; the backward writes ∂L/∂x in one pass over
each row and per-task partial sums of ∂L/∂w (summed in the kernel, in float64 and task order:
``sum_partials``). One pass each way where
torch's autograd of the naive form runs about a dozen element-wise ops (README.md, timings).

The kernels live in ``_fused_kernels.py``, imported (with numba) on the first call. CPU tensors in
float32 or float64 only, x and weight of one dtype: ``rms_norm`` (the dispatcher in
``__init__.py``) runs the naive form otherwise.
"""

from __future__ import annotations

import torch

from longssm.ops._common import differentiable_once, numba_available, numpy_view, torch_threads_kept
from longssm.ops.rms_norm.naive import check_add_inputs, check_gate_inputs, check_rms_norm_inputs

DTYPES = (torch.float32, torch.float64)


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.rms_norm import _fused_kernels

    return _fused_kernels


def _forward(ctx, x, res, w, eps):
    """Run the forward kernel: y (rows, D), and s = x + res (rows, D) when res is given (else
    None); saves what the backward needs when a gradient is wanted."""
    save = any(ctx.needs_input_grad)
    y = torch.empty_like(x)  # (rows, D)
    s = None if res is None else torch.empty_like(x)  # (rows, D)
    rstd = x.new_empty(x.shape[0] if save else 0)  # (rows,)
    none = x.new_empty(0, 0)
    with torch_threads_kept():
        _kernels().rms_norm_forward(
            numpy_view(x), numpy_view(none if res is None else res), numpy_view(w), eps,
            numpy_view(y), numpy_view(none if s is None else s), numpy_view(rstd), save,
        )  # fmt: skip
    if save:
        ctx.save_for_backward(x if s is None else s, w, rstd)
    return y, s


def _backward(ctx, gy, gs):
    """∂L/∂(normalised rows) (rows, D) and ∂L/∂w (D,); gs (rows, D) or None is added to the first
    (in the kernel: the residual stream's gradient, which autograd would add in a pass of its own)."""
    kern = _kernels()
    x, w, rstd = ctx.saved_tensors
    gy = torch.zeros_like(x) if gy is None else gy.to(x.dtype).contiguous()
    gs = x.new_empty(0, 0) if gs is None else gs.to(x.dtype).contiguous()
    dx = torch.empty_like(x)  # (rows, D)
    dw_part = x.new_empty(-(-x.shape[0] // kern.ROWS), x.shape[1])  # (tasks, D)
    dw_sum = torch.empty(x.shape[1], dtype=torch.float64)  # (D,): Σ over the tasks
    with torch_threads_kept():
        kern.rms_norm_backward(
            *(numpy_view(t) for t in (x, w, rstd, gy, gs, dx, dw_part, dw_sum))
        )
    dw = dw_sum.to(x.dtype)  # (D,)
    return dx, dw


class _FusedRMSNorm(torch.autograd.Function):
    """Autograd wrapper; x (rows, D) and w (D,) contiguous, of one dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, x, w, eps):
        return _forward(ctx, x, None, w, eps)[0]

    @staticmethod
    @differentiable_once
    def backward(ctx, gy):
        return (*_backward(ctx, gy, None), None)


class _FusedAddRMSNorm(torch.autograd.Function):
    """Autograd wrapper of s = x + res, y = RMSNorm(s); x, res (rows, D) and w (D,) contiguous,
    of one dtype. The backward gets ∂L/∂s from the residual stream and ∂L/∂y, and returns their
    total ∂L/∂s (one tensor, for both x and res) from one kernel pass."""

    @staticmethod
    def forward(ctx, x, res, w, eps):
        ctx.set_materialize_grads(False)
        y, s = _forward(ctx, x, res, w, eps)
        return s, y

    @staticmethod
    @differentiable_once
    def backward(ctx, gs, gy):
        ds, dw = _backward(ctx, gy, gs)
        return ds, ds, dw, None


class _FusedGatedRMSNorm(torch.autograd.Function):
    """Autograd wrapper of out = RMSNorm(y ⊙ silu(z)) ⊙ w; y, z (rows, D) and w (D,) contiguous,
    of one dtype. Keeps y, z and r per row; the backward recomputes the gated rows."""

    @staticmethod
    def forward(ctx, y, z, w, eps):
        save = any(ctx.needs_input_grad)
        out = torch.empty_like(y)  # (rows, D)
        rstd = y.new_empty(y.shape[0] if save else 0)  # (rows,)
        with torch_threads_kept():
            _kernels().gated_rms_norm_forward(
                numpy_view(y), numpy_view(z), numpy_view(w), eps, numpy_view(out),
                numpy_view(rstd), save,
            )  # fmt: skip
        if save:
            ctx.save_for_backward(y, z, w, rstd)
        return out

    @staticmethod
    @differentiable_once
    def backward(ctx, g):
        kern = _kernels()
        y, z, w, rstd = ctx.saved_tensors
        g = g.to(y.dtype).contiguous()
        dy, dz = torch.empty_like(y), torch.empty_like(y)  # (rows, D) each
        dw_part = y.new_empty(-(-y.shape[0] // kern.ROWS), y.shape[1])  # (tasks, D)
        dw_sum = torch.empty(y.shape[1], dtype=torch.float64)  # (D,): Σ over the tasks
        with torch_threads_kept():
            kern.gated_rms_norm_backward(
                *(numpy_view(t) for t in (y, z, w, rstd, g, dy, dz, dw_part, dw_sum))
            )
        dw = dw_sum.to(y.dtype)  # (D,)
        return dy, dz, dw, None


def why_not_fused(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why the fused form cannot run on these tensors, or None when it can."""
    if not numba_available():
        return "numba is not installed"
    if x.device.type != "cpu" or weight.device.type != "cpu":
        return "it runs on CPU tensors only"
    if x.dtype not in DTYPES or weight.dtype != x.dtype:
        return (
            f"it needs x and weight both float32 or both float64, got {x.dtype} and {weight.dtype}"
        )
    return None


def _check_fused_call(op: str, x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """The fused forms' input checks: shapes and eps, numba installed, ``why_not_fused``."""
    check_rms_norm_inputs(x, weight, eps)
    if not numba_available():
        raise ImportError(f"{op}_fused needs numba (pip install numba)")
    reason = why_not_fused(x, weight)
    if reason:
        raise ValueError(f"{op}_fused cannot run: {reason}; use {op}_naive")


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis by fused numba kernels. Args: x (..., D); weight (D,) of x's
    dtype (float32 or float64), both on the CPU; eps. Returns y (..., D).

    Raises:
        ValueError: on a mismatched shape or eps, other dtypes or tensors off the CPU
            (``why_not_fused``).
        ImportError: when numba is not installed.
    """
    _check_fused_call("rms_norm", x, weight, eps)
    shape = x.shape
    if x.numel() == 0:
        return x * weight
    y = _FusedRMSNorm.apply(x.reshape(-1, shape[-1]).contiguous(), weight.contiguous(), float(eps))
    return y.reshape(shape)


def add_rms_norm_fused(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """s = x + residual and RMSNorm(s) in one pass each way (fused numba kernels). Args: x,
    residual (..., D) of one shape; weight (D,); all one dtype (float32 or float64), on the CPU.
    Returns (s, y), both (..., D); the same bits as ``x + residual`` then ``rms_norm_fused``,
    gradients included.

    Raises:
        ValueError: as ``rms_norm_fused``, or when residual's shape or dtype differs from x's.
        ImportError: when numba is not installed.
    """
    check_add_inputs(x, residual)
    _check_fused_call("add_rms_norm", x, weight, eps)
    shape = x.shape
    if x.numel() == 0:
        s = x + residual
        return s, s * weight
    s, y = _FusedAddRMSNorm.apply(
        x.reshape(-1, shape[-1]).contiguous(), residual.reshape(-1, shape[-1]).contiguous(),
        weight.contiguous(), float(eps),
    )  # fmt: skip
    return s.reshape(shape), y.reshape(shape)


def gated_rms_norm_fused(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """RMSNorm(y ⊙ silu(z)) ⊙ w over the last axis in one pass each way (fused numba kernels;
    the gated rows are recomputed in the backward, not kept). Args: y, z (..., D) of one shape;
    weight (D,); all one dtype (float32 or float64), on the CPU. Returns (..., D). Equal to
    ``gated_rms_norm_naive`` up to rounding (the SiLU's exp is ``fast_exp``, not torch's).

    Raises:
        ValueError: as ``rms_norm_fused``, or when z's shape or dtype differs from y's.
        ImportError: when numba is not installed.
    """
    check_gate_inputs(y, z)
    _check_fused_call("gated_rms_norm", y, weight, eps)
    shape = y.shape
    if y.numel() == 0:
        return y * weight
    out = _FusedGatedRMSNorm.apply(
        y.reshape(-1, shape[-1]).contiguous(), z.reshape(-1, shape[-1]).contiguous(),
        weight.contiguous(), float(eps),
    )  # fmt: skip
    return out.reshape(shape)
