"""Helpers every op folder shares: the compute dtype, input and path checks, what is installed,
and the glue of the hand-written backwards (numpy views, output gradients).

Op folders (``selective_scan``, ``longhorn``, ``ssd``, ``diag_scan``) import this module and
``_numba.py`` (numba primitives of the fused CPU kernels), never each other.
"""

from __future__ import annotations

import functools
import importlib.util
from contextlib import contextmanager
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether numba can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("numba") is not None


_TORCH_FORMS_DEPTH = [0]  # nesting depth of ``torch_forms()`` blocks (process-wide)


@contextmanager
def torch_forms():
    """Within the block, every op's ``path="auto"`` runs its plain-torch form: the selective scan
    and Longhorn "chunk", the causal convolution "torch", the step sizes, RMSNorm, the residual
    add-and-norm and the cross-entropy "naive" (Mamba-2's SSD "chunk"). A path named explicitly
    still runs. The hand-written kernels are differentiable once; inside this block a model is
    plain autograd, so second derivatives (``create_graph=True``) work, e.g. Hessian-vector
    products. Process-wide (not per thread); blocks nest.
    """
    _TORCH_FORMS_DEPTH[0] += 1
    try:
        yield
    finally:
        _TORCH_FORMS_DEPTH[0] -= 1


def kernels_allowed() -> bool:
    """False inside a ``torch_forms()`` block: "auto" paths then pick plain-torch forms."""
    return _TORCH_FORMS_DEPTH[0] == 0


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


class _SecondDerivative(torch.autograd.Function):
    """Identity on the first ``n`` tensors (the gradients a hand-written backward returned); the
    rest (the node's saved inputs that require grad) only link it to the graph, so that
    ``torch.autograd.grad(..., inputs)`` reaches it. Its own backward raises."""

    @staticmethod
    def forward(ctx, name, n, *tensors):
        ctx.name = name
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            f"{ctx.name}: its backward is hand-written (kernels, in-place matmuls) and "
            "differentiable once; for a second derivative (create_graph=True) run the model "
            "inside longssm.ops.torch_forms()"
        )


def differentiable_once(backward):
    """Decorate a custom autograd Function's ``backward`` whose gradients come from kernels.

    The backward runs without building a graph. When it runs with ``create_graph=True`` (grad mode
    on inside a backward), its gradients are returned through a node whose backward raises, linked
    to the node's saved inputs: a second derivative through the kernels fails loudly instead of
    treating their gradients as constants, by ``.backward()`` and by ``torch.autograd.grad`` alike
    (torch's ``once_differentiable`` misses the second when the incoming gradients do not require
    grad, the usual case for a loss).
    """

    @functools.wraps(backward)
    def wrapper(ctx, *grad_outputs):
        with torch.no_grad():
            grads = backward(ctx, *grad_outputs)
        if not torch.is_grad_enabled():
            return grads
        single = not isinstance(grads, tuple)
        grads = (grads,) if single else grads
        slots = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
        if not slots:
            return grads[0] if single else grads
        linked = [t for t in ctx.saved_tensors if t is not None and t.requires_grad]
        name = type(ctx).__name__.removesuffix("Backward").lstrip("_")
        marked = _SecondDerivative.apply(
            name, len(slots), *(grads[i].detach().requires_grad_() for i in slots), *linked
        )
        out = list(grads)
        for i, g in zip(slots, marked):
            out[i] = g
        return out[0] if single else tuple(out)

    return wrapper


__all__ = [
    "backward_groups",
    "check_path",
    "check_shapes",
    "compute_dtype",
    "device_types",
    "differentiable_once",
    "kernels_allowed",
    "numba_available",
    "numpy_view",
    "output_grads",
    "path_unavailable",
    "sum_groups",
    "torch_forms",
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
