"""Calibration gradients shared by the Taylor pruning scores (d_state and heads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weight_grads(model, calibration: torch.Tensor, weights: list) -> tuple[list, list]:
    """g = mean_i g_i and F = mean_i g_i² of ∂L_i/∂W for each W of ``weights``, L_i the mean
    next-token loss of calibration window i (one backward pass per window)."""
    flags = [w.requires_grad for w in weights]
    grads = [torch.zeros_like(w) for w in weights]
    squares = [torch.zeros_like(w) for w in weights]
    n = len(calibration)
    try:
        for w in weights:
            w.requires_grad_(True)
        for row in calibration:
            logits, _ = model(row[None, :-1])
            loss = F.cross_entropy(logits.transpose(1, 2), row[None, 1:])
            for g, g2, gi in zip(grads, squares, torch.autograd.grad(loss, weights)):
                g += gi / n
                g2 += gi.square() / n
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    return grads, squares
