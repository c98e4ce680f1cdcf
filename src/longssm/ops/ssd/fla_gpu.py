"""GPU SSD (Mamba-2 scan) through flash-linear-attention's chunked simple-GLA Triton kernels.

SSD is simple gated linear attention with one scalar log-decay per head and step:
    h_t = exp(Δ_t A_h) h_{t-1} + (Δ_t x_t) B_tᵀ,   y_t = h_t C_t + D_h x_t
so with q = C_t, k = B_t (each head given its group's), v = Δ_t x_t, g = Δ_t A_h and scale 1,
``fla.ops.simple_gla.chunk_simple_gla`` computes y and h_T, and takes h_0; its state layout with
``state_v_first=True`` is (batch, heads, headdim, d_state), ours. Gradients reach Δ and A through
g and v (plain torch around the kernel), and h_0 through the kernel's own backward.

Optional: needs CUDA tensors and an importable ``fla`` (``pip install fla-core``, which brings
Triton kernels); ``ssd`` (the dispatcher in ``__init__.py``) picks this form for inference only.
Its backward (fla's own) is used when asked for explicitly; fla 0.6 refuses it on Hopper GPUs with
Triton < 3.7.1 (``fla_backward_supported``), so it is untested here. fla's
kernels multiply in TF32 on recent GPUs, so float32 results agree with the reference to about
1e-3 relative, not to the last bit; float64 inputs are refused (use ``ssd_chunk``).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch

from longssm.ops.ssd.naive import check_ssd_inputs


@lru_cache(maxsize=1)
def fla_available() -> bool:
    """Whether flash-linear-attention's ops can be imported (checked without importing them)."""
    try:
        return importlib.util.find_spec("fla") is not None and (
            importlib.util.find_spec("triton") is not None
        )
    except (ImportError, ValueError):
        return False


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def fla_backward_supported(device: torch.device) -> bool:
    """Whether fla's SSD backward runs on ``device``: fla refuses it on Hopper GPUs (compute
    capability 9.x) with Triton 3.4.0 .. 3.7.0, which miscompile one of its kernels (fla #640)."""
    if not fla_available():
        return False
    from importlib.metadata import version

    if torch.cuda.get_device_capability(device)[0] != 9:
        return True
    return not (3, 4, 0) <= _version_tuple(version("triton")) < (3, 7, 1)


def ssd_fla(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD by fla's chunked Triton kernels; the arguments and returns of ``ssd_naive``.

    Args:
        x: (batch, T, nheads, headdim); dt: (batch, T, nheads) positive; A: (nheads,) negative;
        B, C: (batch, T, ngroups, d_state); D: (nheads,) or None;
        initial_state: (batch, nheads, headdim, d_state) or None; output_final_state: return h_T.

    Returns:
        y: (batch, T, nheads, headdim) in x's dtype; final_state: (batch, nheads, headdim,
        d_state) in float32, or None.

    Raises:
        ValueError: on mismatched shapes, float64 inputs or tensors not on one CUDA device.
        ImportError: when fla is not installed.
    """
    _, nheads, _, ngroups, _ = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    tensors = [t for t in (x, dt, A, B, C, D, initial_state) if t is not None]
    if any(t.device != x.device for t in tensors) or x.device.type != "cuda":
        raise ValueError("ssd_fla runs on CUDA tensors on one device; use ssd_chunk")
    if any(t.dtype == torch.float64 for t in tensors):
        raise ValueError("ssd_fla does not take float64 inputs; use ssd_chunk")
    if not fla_available():
        raise ImportError("ssd_fla needs flash-linear-attention (pip install fla-core)")
    from fla.ops.simple_gla import chunk_simple_gla

    heads_per_group = nheads // ngroups
    # Half-precision inputs run in their dtype (fla accumulates in float32), others in float32.
    common = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
    q = C.to(common).repeat_interleave(heads_per_group, dim=2)  # (b, T, H, N)
    k = B.to(common).repeat_interleave(heads_per_group, dim=2)  # (b, T, H, N)
    dtf = dt.float()
    v = (x.float() * dtf[..., None]).to(common)  # (b, T, H, P)
    g = dtf * A.float()  # (b, T, H) log decay
    h0 = None if initial_state is None else initial_state.float().contiguous()
    y, hT = chunk_simple_gla(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        g=g.contiguous(),
        scale=1.0,
        initial_state=h0,
        output_final_state=output_final_state,
        state_v_first=True,
    )  # (b, T, H, P), (b, H, P, N)
    if D is not None:
        y = y.float() + D.float()[:, None] * x.float()
    return y.to(x.dtype), (hT.float() if output_final_state else None)
