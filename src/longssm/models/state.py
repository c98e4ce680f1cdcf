"""The model state: a tuple with one layer state (a small ``NamedTuple`` of tensors) per block.

Helpers here let the trainer and the checkpoint code treat any model's state generically:
detach it (truncated BPTT), flatten it to named tensors (safetensors) and rebuild it.
"""

from __future__ import annotations

import torch

ModelState = tuple
"""``tuple[NamedTuple, ...]``: ``state[i]`` is the state of block ``i``."""


def map_state(state: ModelState, fn) -> ModelState:
    """Apply ``fn`` to every tensor of ``state``, keeping its structure."""
    return tuple(type(layer)(*(fn(t) for t in layer)) for layer in state)


def detach_state(state: ModelState) -> ModelState:
    """Cut the graph: the carry of truncated BPTT (``state = detach(final_state)``)."""
    return map_state(state, lambda t: t.detach())


def flatten_state(state: ModelState, prefix: str = "state") -> dict[str, torch.Tensor]:
    """Named tensors ``{prefix}.{layer}.{field}`` (complex tensors stored as real views)."""
    flat = {}
    for i, layer in enumerate(state):
        for field, tensor in zip(layer._fields, layer):
            t = tensor.detach()
            if t.is_complex():
                flat[f"{prefix}.{i}.{field}.complex"] = torch.view_as_real(t).contiguous()
            else:
                flat[f"{prefix}.{i}.{field}"] = t.contiguous()
    return flat


def unflatten_state(flat: dict[str, torch.Tensor], like: ModelState, prefix: str = "state"):
    """Rebuild a state with the structure of ``like`` from ``flatten_state`` output.

    Raises ValueError naming the first missing tensor or mismatched shape.
    """
    layers = []
    for i, layer in enumerate(like):
        fields = []
        for field, ref in zip(layer._fields, layer):
            key = f"{prefix}.{i}.{field}" + (".complex" if ref.is_complex() else "")
            if key not in flat:
                raise ValueError(f"saved state lacks tensor {key!r}")
            t = flat[key]
            if ref.is_complex():
                t = torch.view_as_complex(t.contiguous())
            if tuple(t.shape) != tuple(ref.shape):
                raise ValueError(
                    f"saved state {key!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
                )
            fields.append(t.to(device=ref.device, dtype=ref.dtype))
        layers.append(type(layer)(*fields))
    return tuple(layers)


def select_rows(state: ModelState, index: torch.Tensor) -> ModelState:
    """The state of the batch rows ``index`` (every tensor's first dimension is the batch)."""
    return map_state(state, lambda t: t.index_select(0, index.to(t.device)))


def state_norms(state: ModelState) -> list[float]:
    """Per-layer max absolute value over all state tensors (a stability diagnostic)."""
    norms = []
    for layer in state:
        values = [t.detach().abs().max().item() for t in layer if t.numel()]
        norms.append(max(values) if values else 0.0)
    return norms


__all__ = [
    "ModelState",
    "map_state",
    "detach_state",
    "flatten_state",
    "unflatten_state",
    "select_rows",
    "state_norms",
]
