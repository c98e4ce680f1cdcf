"""A block's input projection as one autograd node: u (rows, D) -> one output per row block of
in_proj's weight, each contiguous (x, z for Mamba's gated blocks; z, xBC, Δ for Mamba-2).

    out_i = u W_iᵀ                     W = [W_0; W_1; ...] (Σ sizes, D), in_proj's weight (no bias)
    ∂L/∂u = Σ_i ∂L/∂out_i W_i          one matmul, the others accumulated into it (``addmm_``)
    ∂L/∂W = [∂L/∂out_iᵀ u]_i           one matmul per block, written into one (Σ sizes, D) gradient

The same matmuls as ``F.linear`` on each block of the weight (Mamba's separate calls): the same
bits forward; backward, ∂L/∂W equal and ∂L/∂u equal as long as MKL forms ``addmm_``'s product in
one block over K and then adds (bit-equal at E = 256 here, as ``mamba_inner``'s ``addmm_`` up to
256; tests). What the node saves is autograd's glue: the add of the input gradients (a pass over
(rows, D)) or, against one projection split afterwards, the concatenation of the output gradients
and the copies that make the blocks contiguous; also the zero-filled weight gradient the blocks
were copied into, and the slice and matmul nodes.

Used by ``layers.gated.GatedBlock.project_in`` and ``layers.mamba2.Mamba2`` for a plain
``nn.Linear`` in_proj without a bias whose weight and input are CPU tensors of one dtype (float32
or float64) while a gradient is wanted, outside ``ops.torch_forms()``; otherwise the layers run
their plain calls.
"""

from __future__ import annotations

import torch

from longssm.ops._common import differentiable_once, kernels_allowed

DTYPES = (torch.float32, torch.float64)


class _ProjectIn(torch.autograd.Function):
    """u (rows, D), W (Σ sizes, D), sizes (tuple of ints) -> one contiguous (rows, size) each."""

    @staticmethod
    def forward(ctx, u, weight, sizes):
        ctx.set_materialize_grads(False)
        ctx.sizes = sizes
        ctx.save_for_backward(u, weight)
        return tuple(u.mm(w.t()) for w in weight.split(sizes))

    @staticmethod
    @differentiable_once
    def backward(ctx, *grads):
        u, weight = ctx.saved_tensors
        blocks = weight.split(ctx.sizes)
        du = dW = None
        given = [(g, w) for g, w in zip(grads, blocks) if g is not None]
        if ctx.needs_input_grad[0] and given:
            du = given[0][0].mm(given[0][1])  # (rows, D)
            for g, w in given[1:]:
                du.addmm_(g, w)  # + the next block's ∂L/∂out W, accumulated by the matmul
        if ctx.needs_input_grad[1]:
            dW = weight.new_empty(weight.shape)  # (Σ sizes, D)
            for g, rows in zip(grads, dW.split(ctx.sizes)):
                if g is None:
                    rows.zero_()
                else:
                    torch.mm(g.t(), u, out=rows)
        return du, dW, None


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


def project_in(
    u: torch.Tensor, weight: torch.Tensor, sizes: tuple[int, ...] | None = None
) -> tuple[torch.Tensor, ...]:
    """u W_iᵀ for each block W_i of ``sizes`` rows of weight (see the module docstring): u (..., D),
    weight (Σ sizes, D) -> one contiguous (..., size) per block; sizes None = two equal halves
    (x, z). Check ``fusable`` first."""
    if sizes is None:
        sizes = (weight.shape[0] // 2,) * 2
    lead = u.shape[:-1]
    outs = _ProjectIn.apply(u.reshape(-1, u.shape[-1]), weight, tuple(sizes))
    return tuple(out.view(*lead, size) for out, size in zip(outs, sizes))
