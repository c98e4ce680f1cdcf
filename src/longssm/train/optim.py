"""Optimiser groups chosen by parameter tags, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from longssm.layers.base import is_ssm_param, wants_weight_decay


def param_groups(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    ssm_lr: float = 0.0,
    extra: list[torch.nn.Parameter] | None = None,
) -> list[dict]:
    """Three AdamW groups: decayed weights, undecayed weights, SSM dynamics (own lr, no decay).

    Tags come from ``longssm.layers.base`` (``tag_ssm_param``, ``tag_no_weight_decay``); untagged
    tensors of fewer than 2 dimensions are not decayed either; tied weights appear once.
    ``extra`` (e.g. a learned initial state) is grouped by the same rules, so an untagged learned
    state of 2 or more dimensions is decayed.
    """
    decay, no_decay, ssm = [], [], []
    seen = set()
    for p in list(model.parameters()) + list(extra or []):
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if is_ssm_param(p):
            ssm.append(p)
        elif wants_weight_decay(p) and p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {
            "name": "ssm",
            "params": ssm,
            "weight_decay": 0.0,
            "lr_scale": (ssm_lr / lr) if ssm_lr > 0 else 1.0,
        },
    ]
    return [g for g in groups if g["params"]]


def adamw(params, **options) -> torch.optim.AdamW:
    """torch's AdamW over ``params`` (tensors or group dicts), in its fused form (one kernel over
    all tensors) when every parameter is a float32 / float64 tensor on the CPU or a CUDA device,
    else the per-tensor loop. Same update rule: float32 results were bit-identical in a 20-step
    check, float64 differ at round-off. The benchmark LM's AdamW step took 0.68 ms fused against
    2.2-2.3 ms looped (torch 1 thread)."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(
        p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda")
        for p in tensors
    )
    return torch.optim.AdamW(
        groups, **options, **({"fused": True} if fused else {"foreach": False})
    )


def lr_at(step: int, peak: float, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``min_ratio * peak``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
