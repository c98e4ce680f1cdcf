"""The gated blocks' input projection as one autograd node: u (rows, D) -> x, z (rows, E) each.

    x = u W_xᵀ,  z = u W_zᵀ          W = [W_x; W_z] (2E, D), in_proj's weight (no bias)
    ∂L/∂u = ∂L/∂x W_x + ∂L/∂z W_z    one matmul, then the second accumulated into it (``addmm_``)
    ∂L/∂W = [∂L/∂xᵀ u; ∂L/∂zᵀ u]     two matmuls written into the halves of one (2E, D) gradient

The same two matmuls as ``F.linear`` on each half of the weight (the layer's separate calls):
the same bits forward; backward, ∂L/∂W equal and ∂L/∂u equal as long as MKL forms ``addmm_``'s
product in one block over K = E and then adds (bit-equal at E = 256 here, as ``mamba_inner``'s
``addmm_`` up to 256; tests). What the node saves is autograd's glue: the add of the two input
gradients (a pass over (rows, D)), the zero-filled weight gradient its halves were copied into,
and four nodes (two slices of the weight, two matmuls).

Used by ``layers.gated.GatedBlock.project_in`` for a plain ``nn.Linear`` in_proj without a bias
whose weight and input are CPU tensors of one dtype (float32 or float64) while a gradient is
wanted, outside ``ops.torch_forms()``; otherwise the block runs the two ``F.linear`` calls.
"""

from __future__ import annotations

import torch

from longssm.ops._common import differentiable_once, kernels_allowed

DTYPES = (torch.float32, torch.float64)


class _ProjectIn(torch.autograd.Function):
    """u (rows, D), W (2E, D) -> x, z (rows, E), both contiguous."""

    @staticmethod
    def forward(ctx, u, weight):
        ctx.set_materialize_grads(False)
        half = weight.shape[0] // 2
        ctx.save_for_backward(u, weight)
        return u.mm(weight[:half].t()), u.mm(weight[half:].t())

    @staticmethod
    @differentiable_once
    def backward(ctx, gx, gz):
        u, weight = ctx.saved_tensors
        half = weight.shape[0] // 2
        du = dW = None
        parts = [(g, weight[i * half : (i + 1) * half]) for i, g in enumerate((gx, gz))]
        given = [(g, w) for g, w in parts if g is not None]
        if ctx.needs_input_grad[0] and given:
            du = given[0][0].mm(given[0][1])  # (rows, D)
            for g, w in given[1:]:
                du.addmm_(g, w)  # + ∂L/∂z W_z, accumulated by the matmul
        if ctx.needs_input_grad[1]:
            dW = weight.new_empty(weight.shape)  # (2E, D)
            for i, (g, _) in enumerate(parts):
                rows = dW[i * half : (i + 1) * half]
                if g is None:
                    rows.zero_()
                else:
                    torch.mm(g.t(), u, out=rows)
        return du, dW


def fusable(weight: torch.Tensor, bias: torch.Tensor | None, u: torch.Tensor) -> bool:
    """Whether ``project_in`` applies: no bias, CPU tensors of one float32 / float64 dtype, a
    gradient wanted (else the two plain matmuls cost the same), and not inside
    ``ops.torch_forms()`` (its backward is differentiable once)."""
    return (
        kernels_allowed()
        and bias is None
        and u.dtype in DTYPES
        and weight.dtype == u.dtype
        and u.device.type == "cpu"
        and weight.device.type == "cpu"
        and torch.is_grad_enabled()
        and (u.requires_grad or weight.requires_grad)
    )


def project_in(u: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x, z = u W_xᵀ, u W_zᵀ (see the module docstring): u (..., D), weight (2E, D) -> two
    contiguous (..., E). Check ``fusable`` first."""
    lead = u.shape[:-1]
    x, z = _ProjectIn.apply(u.reshape(-1, u.shape[-1]), weight)
    half = weight.shape[0] // 2
    return x.view(*lead, half), z.view(*lead, half)
