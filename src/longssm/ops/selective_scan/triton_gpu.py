"""GPU selective scan (Mamba-1 / S6): Triton kernels with a hand-written backward.

Glossary as in ``naive.py`` (x_t -> x, Δ_t -> dt, A, B_t -> B, C_t -> C, D, h_t -> state), plus
    K (checkpoint interval)          CHUNK (32)       states stored every K steps for the backward
    h_0, h_K, h_2K, ...              ckpt             (batch, ceil(T / K), d_inner, d_state)

One Triton program scans one batch row and a block of channels over all T steps with the state in
registers; it never materialises (batch, T, d_inner, d_state). The backward runs time in reverse,
recomputing each K-step block's states from its checkpoint. Same algorithm as the fused CPU kernel
(``fused_cpu.py``); the kernels are in ``_triton_kernels.py``, imported on the first call.

Optional: needs CUDA tensors and an importable ``triton``; ``selective_scan`` (the dispatcher in
``__init__.py``) picks this form only then. Half-precision inputs run in float32.
"""

from __future__ import annotations

import os

import torch

from longssm.ops._common import compute_dtype, differentiable_once, output_grads, triton_available
from longssm.ops.selective_scan.naive import check_scan_inputs

CHUNK = 32
BLOCK_D = 8  # channels per program (fastest of 4, 8, 16, 32 on an H100; see README.md)
INT32_LIMIT = 2**31  # offsets inside one batch row must stay below this
MAX_BACKWARD_BLOCKS = 64  # channel blocks per batch row in the backward (memory of dB, dC partials)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, for tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels():
    """The Triton kernels module, imported on first use."""
    from longssm.ops.selective_scan import _triton_kernels

    return _triton_kernels


def _block_n(d_state: int) -> int:
    return max(2, 1 << (d_state - 1).bit_length())


def backward_block_d(d_inner: int, block_d: int) -> int:
    """Channels per backward program: ``block_d``, widened so that at most MAX_BACKWARD_BLOCKS
    programs share a batch row. Each program writes its own (T, d_state) partial sums of dB and dC,
    so this bounds their memory at 2 x MAX_BACKWARD_BLOCKS x (batch, T, d_state)."""
    needed = -(-d_inner // MAX_BACKWARD_BLOCKS)
    return max(block_d, 1 << (needed - 1).bit_length())


def piece_length(T: int, d_inner: int, d_state: int) -> int:
    """The longest piece of the sequence whose in-row offsets (time x channels, time x state,
    checkpoints x channels x state) stay below INT32_LIMIT; T itself when it fits."""
    piece = T
    while piece > CHUNK and (
        piece * max(d_inner, d_state) >= INT32_LIMIT
        or -(-piece // CHUNK) * d_inner * d_state >= INT32_LIMIT
    ):
        piece = max(CHUNK, (piece // 2) // CHUNK * CHUNK)
    return piece


def _num_warps(block_d: int, block_n: int) -> int:
    return max(1, min(8, block_d * block_n // 256))


class _TritonScan(torch.autograd.Function):
    """Autograd wrapper; all inputs contiguous CUDA tensors in one dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0, block_d):
        # x, dt: (B, T, Di); A: (Di, N); B, C: (B, T, N); D: (Di,) or None; h0: (B, Di, N) or None
        kern = _kernels()
        batch, T, d_inner = x.shape
        d_state = A.shape[1]
        save = any(ctx.needs_input_grad)
        n_ckpt = -(-T // CHUNK)
        y = torch.empty_like(x)  # (B, T, Di)
        hT = torch.empty(batch, d_inner, d_state, dtype=x.dtype, device=x.device)  # (B, Di, N)
        ckpt = torch.empty(
            (batch, n_ckpt, d_inner, d_state) if save else (1,), dtype=x.dtype, device=x.device
        )  # (B, nK, Di, N)
        block_n = _block_n(d_state)
        grid = (-(-d_inner // block_d), batch)
        kern.scan_forward_kernel[grid](
            x, dt, A, B, C, x if D is None else D, x if h0 is None else h0, y, hT, ckpt,
            T, d_inner, d_state, n_ckpt,
            HAS_D=D is not None, HAS_H0=h0 is not None, SAVE=save,
            CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n,
            num_warps=_num_warps(block_d, block_n),
        )  # fmt: skip
        if save:
            ctx.save_for_backward(x, dt, A, B, C, D, ckpt)
            ctx.block_d = block_d
            ctx.has_h0 = h0 is not None
        return y, hT

    @staticmethod
    @differentiable_once
    def backward(ctx, gy, gh):
        kern = _kernels()
        x, dt, A, B, C, D, ckpt = ctx.saved_tensors
        batch, T, d_inner = x.shape
        block_d = backward_block_d(d_inner, ctx.block_d)
        d_state = A.shape[1]
        n_ckpt = ckpt.shape[1]
        n_blocks = -(-d_inner // block_d)
        block_n = _block_n(d_state)
        kw = {"dtype": x.dtype, "device": x.device}
        gy, gh = output_grads(gy, gh, x, (batch, d_inner, d_state))
        scratch = torch.empty(batch * n_blocks * CHUNK * block_d * block_n, **kw)
        dx = torch.empty_like(x)  # (B, T, Di)
        ddt = torch.empty_like(x)  # (B, T, Di)
        dB_part = torch.empty(batch, n_blocks, T, d_state, **kw)  # (B, nblk, T, N)
        dC_part = torch.empty(batch, n_blocks, T, d_state, **kw)  # (B, nblk, T, N)
        dA_part = torch.empty(batch, d_inner, d_state, **kw)  # (B, Di, N)
        dD_part = torch.empty(batch, d_inner, **kw)  # (B, Di)
        dh0 = torch.empty(batch, d_inner, d_state, **kw)  # (B, Di, N)
        kern.scan_backward_kernel[(n_blocks, batch)](
            x, dt, A, B, C, x if D is None else D, ckpt, gy, gh, scratch,
            dx, ddt, dB_part, dC_part, dA_part, dD_part, dh0,
            T, d_inner, d_state, n_ckpt, n_blocks,
            HAS_D=D is not None, CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n,
            num_warps=_num_warps(block_d, block_n),
        )  # fmt: skip
        dD = None if D is None else dD_part.sum(0)
        dh0 = dh0 if ctx.has_h0 else None
        return dx, ddt, dA_part.sum(0), dB_part.sum(1), dC_part.sum(1), dD, dh0, None


def selective_scan_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    block_d: int = BLOCK_D,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan by Triton kernels on the GPU; same results as ``selective_scan_naive``.

    Args:
        x: (batch, T, d_inner) input.
        dt: (batch, T, d_inner) positive step sizes Δ (after softplus and bias).
        A: (d_inner, d_state) real, negative.
        B, C: (batch, T, d_state) input-dependent input and output maps.
        D: (d_inner,) skip weight, or None.
        initial_state: (batch, d_inner, d_state) h_0, or None for zeros.
        output_final_state: also return h_T.
        block_d: channels per Triton program (a power of two).

    Returns:
        y: (batch, T, d_inner) in x's dtype; final_state: (batch, d_inner, d_state) in the compute
        dtype (float32 or float64), or None.

    Raises:
        ValueError: on mismatched shapes or tensors not on one CUDA device (CPU tensors are
            accepted under Triton's interpreter, ``TRITON_INTERPRET=1``).
        ImportError: when triton is not installed.
    """
    check_scan_inputs(x, dt, A, B, C, D, initial_state)
    tensors = [t for t in (x, dt, A, B, C, D, initial_state) if t is not None]
    on_gpu = x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())
    if any(t.device != x.device for t in tensors) or not on_gpu:
        raise ValueError(
            "selective_scan_triton runs on CUDA tensors on one device; use selective_scan_chunk"
        )
    if not triton_available():
        raise ImportError("selective_scan_triton needs triton (pip install triton)")
    if block_d < 1 or block_d & (block_d - 1):
        raise ValueError(f"block_d must be a power of two, got {block_d}")
    batch, T, d_inner = x.shape
    d_state = A.shape[1]
    dtype = compute_dtype(x, dt, A, B, C, initial_state)
    if T == 0:
        final = (
            initial_state.to(dtype)
            if initial_state is not None
            else x.new_zeros(batch, d_inner, d_state, dtype=dtype)
        )
        return x.new_zeros(batch, 0, d_inner), (final if output_final_state else None)
    xc, dtc, Bc, Cc = (t.to(dtype) for t in (x, dt, B, C))
    Ac = A.to(dtype).contiguous()
    Dc = None if D is None else D.to(dtype).contiguous()
    h = None if initial_state is None else initial_state.to(dtype).contiguous()
    # The kernels index one batch row with 32-bit offsets: longer sequences run in pieces, the
    # state carried from one to the next (the same results; autograd links the pieces).
    piece = piece_length(T, d_inner, d_state)
    ys = []
    for start in range(0, T, piece):
        rows = slice(start, start + piece)
        y, h = _TritonScan.apply(
            xc[:, rows].contiguous(), dtc[:, rows].contiguous(), Ac,
            Bc[:, rows].contiguous(), Cc[:, rows].contiguous(), Dc, h, block_d,
        )  # fmt: skip
        ys.append(y)
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
    return y.to(x.dtype), (h if output_final_state else None)

