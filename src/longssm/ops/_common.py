"""Helpers every op folder shares: the compute dtype, input and path checks, what is installed,
and the glue of the hand-written backwards (numpy views, output gradients).

Op folders (``selective_scan``, ``longhorn``, ``ssd``, ``diag_scan``) import this module and
``_numba.py`` (numba primitives of the fused CPU kernels), never each other.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether numba can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("numba") is not None


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether triton can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype a scan runs in: the given tensors' common dtype, at least float32."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_shapes(expected: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]]) -> None:
    """Raise a ValueError naming the first given tensor whose shape is not the expected one.

    Args:
        expected: argument name -> (tensor or None, expected shape); None tensors are skipped.
    """
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def device_types(*tensors: torch.Tensor | None) -> set[str]:
    """The device types ("cpu", "cuda", ...) of the given tensors, None skipped."""
    return {t.device.type for t in tensors if t is not None}


def check_path(op: str, path: str, paths: tuple[str, ...]) -> None:
    """Raise a ValueError unless ``path`` is one of the op's ``paths``."""
    if path not in paths:
        raise ValueError(f"{op}: path must be one of {', '.join(paths)}, got {path!r}")


def path_unavailable(op: str, path: str, reason: str, fallback: str = "chunk") -> ValueError:
    """The error for an explicitly requested path that cannot run here (raise it)."""
    return ValueError(
        f"{op}: path {path!r} is not available: {reason}; use path='auto' or {fallback!r}"
    )


def backward_groups(batch: int, n_blocks: int, tasks: int = 32) -> int:
    """Channel-block groups per batch row in a fused backward (the selective scan's and
    Longhorn's): enough for about ``tasks`` parallel tasks, and one per row once the batch gives
    that many. A function of the shapes only, so the summation order of the gradients summed over
    the channels (∂L/∂B, ∂L/∂C; ∂L/∂k, ∂L/∂q) does not depend on the thread count."""
    return max(1, min(n_blocks, -(-tasks // batch)))


def sum_groups(*parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each (batch, n_groups, ...) partial of a fused backward summed over its groups (axis 1);
    a single group is returned as a view, without a sum."""
    return tuple(p[:, 0] if p.shape[1] == 1 else p.sum(1) for p in parts)


def output_grads(gy, gh, x: torch.Tensor, state_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """∂L/∂y and ∂L/∂h_T as contiguous tensors in x's dtype and device, for a hand-written
    backward; an output that does not reach the loss has no gradient (None) and gets zeros."""
    gy = torch.zeros_like(x) if gy is None else gy.to(x.dtype).contiguous()
    if gh is None:
        gh = torch.zeros(state_shape, dtype=x.dtype, device=x.device)
    return gy, gh.to(x.dtype).contiguous()


def numpy_view(t: torch.Tensor):
    """A zero-copy numpy view of a contiguous CPU tensor."""
    return t.detach().numpy()


__all__ = [
    "backward_groups",
    "check_path",
    "check_shapes",
    "compute_dtype",
    "device_types",
    "numba_available",
    "numpy_view",
    "output_grads",
    "path_unavailable",
    "sum_groups",
    "triton_available",
]


@contextmanager
def torch_threads_kept():
    """Run a numba parallel kernel without changing torch's thread count.

    numba's OpenMP threading layer shares libgomp with torch: a parallel kernel leaves OpenMP's
    thread count at numba's, which silently became torch's own (``torch.set_num_threads(1)``
    then ran torch ops on 2 threads after the first fused scan, and on 1 after a 1-thread conv).
    """
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
