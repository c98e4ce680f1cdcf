"""What every sequence-mixing layer shares: parameter tags and state validation.

Layer protocol (every mixer in ``longssm.layers``):
    forward(x, state=None) -> (y, state)     x, y: (batch, time, d_model)
    step(x_t, state) -> (y_t, state)         x_t, y_t: (batch, d_model)
    initial_state(batch_size, device=None, dtype=None) -> state of zeros
A state is a small ``NamedTuple`` of tensors whose shapes the layer documents.

Readout offset (the extension point of the state adapters, ``longssm.models.adapters``): Mamba,
Mamba-2, S4D and S5 (and Longhorn, through ``GatedBlock``) also have
    forward_offset(x, state=None, offset=None) -> (y, state)
    step_offset(x_t, state, offset=None) -> (y_t, state)
and ``forward`` / ``step`` are exactly these with ``offset=None``. ``offset`` is None or a callable
that takes the layer's readout C and returns a term added to the SSM output y (cast to y's dtype,
``add_offset``) before the layer's gate or output nonlinearity; the recurrence and the returned
state are unchanged. C and y per layer (``...`` = (batch, time) or (batch,)):
    Mamba     C_t (..., N)          y (..., d_inner)          (Longhorn: q_t, same shapes)
    Mamba-2   C_t (..., G, N)       y (..., nheads, headdim)
    S4D       C (H, N/2) complex    y (..., H)
    S5        C̃ (H, P/2) complex    y (..., H)
A learned start state (initial-state tuning) needs no hook: it is the ``state=`` argument.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules import module as _module

# Attribute names set on parameters; the trainer builds optimiser groups from them.
NO_WEIGHT_DECAY = "_no_weight_decay"
SSM_PARAM = "_ssm_param"


def tag_ssm_param(param: nn.Parameter, weight_decay: bool = False) -> nn.Parameter:
    """Mark ``param`` as an SSM dynamics parameter (A_log, dt bias, D, ...): own lr group, no decay."""
    setattr(param, SSM_PARAM, True)
    if not weight_decay:
        setattr(param, NO_WEIGHT_DECAY, True)
    return param


def tag_no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Mark ``param`` as excluded from weight decay (norm weights, biases)."""
    setattr(param, NO_WEIGHT_DECAY, True)
    return param


def is_ssm_param(param: torch.Tensor) -> bool:
    return bool(getattr(param, SSM_PARAM, False))


def wants_weight_decay(param: torch.Tensor) -> bool:
    return not getattr(param, NO_WEIGHT_DECAY, False)


def check_input(x: torch.Tensor, d_model: int, name: str = "x", ndim: int = 3) -> None:
    """Raise a clear error unless ``x`` is a floating tensor of shape (batch, time, d_model)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    layout = "(batch, time, d_model)" if ndim == 3 else "(batch, d_model)"
    if x.dim() != ndim or x.shape[-1] != d_model:
        raise ValueError(
            f"{name} must have shape {layout} with d_model={d_model}, got {tuple(x.shape)}"
        )


def check_state(state: NamedTuple, expected: NamedTuple, layer: str) -> None:
    """Raise a clear error unless every field of ``state`` matches ``expected`` in shape and dtype.

    ``expected`` is typically ``self.initial_state(batch, device, dtype)`` of the calling layer.
    Real dtypes only need to be floating point; complex fields must be complex.
    """
    if not isinstance(state, type(expected)) or len(state) != len(expected):
        raise TypeError(
            f"{layer}: state must be a {type(expected).__name__} with fields "
            f"{list(expected._fields)}, got {type(state).__name__}"
        )
    for field, got, want in zip(expected._fields, state, expected):
        if not isinstance(got, torch.Tensor):
            raise TypeError(f"{layer}: state.{field} must be a tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(
                f"{layer}: state.{field} must have shape {tuple(want.shape)}, got {tuple(got.shape)}"
            )
        if want.is_complex() != got.is_complex() or not (got.is_floating_point() or got.is_complex()):
            raise TypeError(
                f"{layer}: state.{field} must have a dtype like {want.dtype}, got {got.dtype}"
            )


def add_offset(y: torch.Tensor, offset, C: torch.Tensor) -> torch.Tensor:
    """``y + offset(C)`` (the term cast to y's dtype), or ``y`` itself when ``offset`` is None."""
    if offset is None:
        return y
    return y + offset(C).to(y.dtype)


def empty_sequence(layer, x: torch.Tensor, state):
    """The result of a zero-length sequence x (batch, 0, d_model): no output, the state unchanged.

    ``state`` is the (already checked) state given, or None for the layer's zeros.
    """
    if state is None:
        state = layer.initial_state(x.shape[0], x.device, x.dtype)
    return x.new_zeros(x.shape[0], 0, layer.d_model), state


_logger = logging.getLogger("longssm")
_ANNOUNCED: set[tuple[str, str]] = set()  # (layer kind, scan path) pairs already logged


def announce_scan_path(kind: str, path: str, scan: str) -> None:
    """Log once per process which scan path (``path``) a kind of layer runs for option ``scan``."""
    if (kind, path) not in _ANNOUNCED:
        _ANNOUNCED.add((kind, path))
        _logger.info("%s scan: %s path (scan=%r)", kind, path, scan)


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run forward hooks (its own or global ones; torch's
    private hook dictionaries)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(_module, "_global_forward_hooks", None)
        or getattr(_module, "_global_forward_pre_hooks", None)
    )
