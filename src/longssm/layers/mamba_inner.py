"""Mamba's inner path as one autograd node on the CPU: x_proj, the step sizes and the gated scan.

    x_dbl = xs W_xᵀ                       (rows, R + 2N)   split into u (R), B (N), C (N)
    Δ = softplus(u W_Δᵀ + b_Δ)            ``ops.step_size``'s fused kernels
    y = scan(xs, Δ, A, B, C, D, h0) ⊙ silu(z)   ``ops.selective_scan``'s fused kernels

The same operations as the layer's separate calls (``Mamba._ssm_inputs`` then ``selective_scan``),
in the same order and on the same kernels: the same bits, forward and backward (tests), as long
as MKL forms ``addmm_``'s product in one block over K = R + 2N and then adds (measured bit-equal
up to K = 256, not at 512: past that the two differ at round-off). What the
one node saves is autograd's glue around them: ∂L/∂xs reaches xs from the scan and from x_proj,
and autograd added the two in a pass of its own (2 MB per layer at the benchmark size); here
x_proj's part is accumulated into the scan's ∂L/∂xs by the matmul itself (``addmm_``). Also gone:
the split, the linear layer's and the step sizes' nodes (∂L/∂x_dbl is still one concatenation of
its three parts, as the split's backward made it).

Used by ``layers.mamba.Mamba`` when ``fusable`` says so: CPU tensors in float32 or float64 with
numba, plain ``nn.Linear`` x_proj (no bias) and dt_proj (``layers.gated.is_plain_linear``), the
fused scan path and no readout offset (negative eigenvalues run here too since session 10).
Otherwise the layer runs the separate calls.
"""

from __future__ import annotations

import torch

from longssm.layers.gated import is_plain_linear
from longssm.ops._common import differentiable_once, numba_available
from longssm.ops.selective_scan import fused_cpu as scan_kernels
from longssm.ops.step_size import fused_cpu as step_kernels

DTYPES = (torch.float32, torch.float64)


class _MambaInner(torch.autograd.Function):
    """xs, z (B, T, Di); W_x (R + 2N, Di); W_dt (Di, R); b_dt (Di,); AT (N, Di); D (Di,); h0
    (B, Di, N) or a (0, 0, 0) array (zeros) -> y (B, T, Di) (gated), h_T (B, Di, N). All of one
    dtype, xs, z, AT, D contiguous."""

    @staticmethod
    def forward(ctx, xs, z, W_x, W_dt, b_dt, AT, D, h0, sizes, neg):
        ctx.set_materialize_grads(False)
        R, N = sizes
        batch, T, d_inner = xs.shape
        # x_proj: xs W_xᵀ with Wᵀ made contiguous first (a (Di, R + 2N) copy): MKL's kernel for
        # a transposed operand of 40 columns ran at ~100 GFLOP/s, this one at ~130 (same bits)
        x_dbl = xs.reshape(-1, d_inner).mm(W_x.t().contiguous()).reshape(batch, T, -1)
        low = x_dbl[..., :R].reshape(-1, R).contiguous()  # (rows, R)
        WT = W_dt.t().contiguous()  # (R, Di)
        dt = step_kernels.run_forward(low, WT, b_dt).reshape(batch, T, d_inner)  # (B, T, Di)
        Bm = x_dbl[..., R : R + N].contiguous()  # (B, T, N)
        Cm = x_dbl[..., R + N :].contiguous()  # (B, T, N)
        save = any(ctx.needs_input_grad)
        y, hT, ckpt = scan_kernels.run_forward(xs, dt, AT, Bm, Cm, D, h0, z, save, neg)
        if save:
            ctx.sizes, ctx.neg = sizes, neg
            ctx.save_for_backward(xs, z, W_x, W_dt, b_dt, AT, D, low, WT, dt, Bm, Cm, ckpt)
        return y, hT

    @staticmethod
    @differentiable_once
    def backward(ctx, gy, gh):
        xs, z, W_x, W_dt, b_dt, AT, D, low, WT, dt, Bm, Cm, ckpt = ctx.saved_tensors
        want_dh0 = ctx.needs_input_grad[7]
        dxs, ddt, dAT, dB, dC, dD, dh0, dz = scan_kernels.run_backward(
            xs, dt, AT, Bm, Cm, D, ckpt, z, gy, gh, want_dh0, ctx.neg
        )
        dlow, dWT, db_dt = step_kernels.run_backward(low, WT, b_dt, ddt.reshape(low.shape[0], -1))
        dlow = dlow.reshape(*xs.shape[:2], -1)  # (B, T, R)
        g_dbl = torch.cat([dlow, dB, dC], dim=-1)  # (B, T, R + 2N): ∂L/∂x_dbl
        rows = g_dbl.reshape(-1, g_dbl.shape[-1])  # (rows, R + 2N)
        dW_x = rows.t().mm(xs.reshape(-1, xs.shape[-1]))  # (R + 2N, Di), as Linear's backward
        dxs.reshape(-1, dxs.shape[-1]).addmm_(rows, W_x)  # + x_proj's part of ∂L/∂xs, in place
        return dxs, dz, dW_x, dWT.t(), db_dt, dAT, dD, dh0, None, None


def fusable(layer, xs: torch.Tensor, h0: torch.Tensor | None, gate: torch.Tensor | None) -> bool:
    """Whether ``mamba_inner`` can run ``layer``'s (a ``Mamba``) inner path on these inputs."""
    if not (
        gate is not None
        and xs.dtype in DTYPES
        and is_plain_linear(layer.x_proj)  # first: a wrapper (LoRA) may have no .weight
        and layer.x_proj.bias is None
        and is_plain_linear(layer.dt_proj)
        and layer.dt_proj.bias is not None
        and numba_available()
    ):
        return False
    tensors = [xs, gate, layer.x_proj.weight, layer.dt_proj.weight, layer.dt_proj.bias, layer.D]
    tensors += [layer.A_raw] + ([] if h0 is None else [h0])
    return all(t.device.type == "cpu" and t.dtype == xs.dtype for t in tensors)


def mamba_inner(layer, xs: torch.Tensor, z: torch.Tensor, A: torch.Tensor, h0, neg=False):
    """y, h_T of ``layer``'s inner path (see the module docstring) as one autograd node: xs, z
    (B, T, Di); A (Di, N) its eigenvalues; h0 (B, Di, N) or None for zeros; ``neg``: the
    transition 2 exp(Δ_t A) - 1 (negative eigenvalues). Check ``fusable`` first."""
    h0 = xs.new_empty(0, 0, 0) if h0 is None else h0.contiguous()
    sizes = (layer.dt_rank, layer.d_state)
    return _MambaInner.apply(
        xs.contiguous(), z.contiguous(), layer.x_proj.weight, layer.dt_proj.weight,
        layer.dt_proj.bias.contiguous(), A.t().contiguous(), layer.D.contiguous(), h0, sizes,
        bool(neg),
    )  # fmt: skip
