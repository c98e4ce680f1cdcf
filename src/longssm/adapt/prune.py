"""Pruning a trained SSM (Ghattas, Hassid & Schwartz 2025): unstructured masks and d_state pruning.

Unstructured (every ``nn.Linear`` inside the blocks: in_proj, x_proj, dt_proj, out_proj, MLPs;
the pruned weights are stored as zeros, shapes unchanged):
    magnitude   drop the fraction R of the smallest |W_ij| of each matrix.
    wanda       score S_ij = |W_ij| · ‖X_j‖₂, X_j the j-th input feature of that linear over the
                calibration tokens (the unpruned model's activations); drop the lowest R of each
                output row i (Sun et al. 2024, as the SSM paper applies it).
Structured, Mamba-2 heads: see ``longssm.adapt.prune_heads``.
Structured, Mamba only: the state dimension n of layer l is read in by B_t[n] (row R+n of x_proj)
and out by C_t[n] (row R+N+n) and decays with A[:, n]. Dropping state n removes those two rows and
that column of A, so N -> N' = N - round(R·N) in every layer; the result is exactly the unpruned
model with the dropped B/C rows zeroed (tested in float64). Importance of state n:
    dstate-magnitude   Σ_j |W_B[n, j]| + |W_C[n, j]|
    dstate-taylor1     mean over the B/C row entries of |W ⊙ ∂L/∂W|, the gradient of the
                       calibration loss (first-order Taylor estimate of the loss change)
    dstate-taylor2     mean over the B/C row entries of |−g W + ½ F W²|, the second-order Taylor
                       estimate of the loss change when W → 0, with the Hessian diagonal
                       approximated by the empirical Fisher F = mean_i g_i² over the calibration
                       windows i (g = mean_i g_i, g_i the gradient of window i's mean loss)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from longssm.adapt.errors import AdaptError
from longssm.adapt.grads import weight_grads
from longssm.adapt.prune_heads import prune_heads
from longssm.layers.mamba import Mamba

UNSTRUCTURED = ("magnitude", "wanda")
STRUCTURED = ("dstate-magnitude", "dstate-taylor1", "dstate-taylor2", "heads")
PRUNE_METHODS = UNSTRUCTURED + STRUCTURED


def check_prune(method: str, ratio: float) -> None:
    """AdaptError unless ``method`` is known and ``ratio`` lies in [0, 1)."""
    if method not in PRUNE_METHODS:
        raise AdaptError(f"unknown pruning method {method!r}; expected one of "
                         f"{', '.join(PRUNE_METHODS)}")
    if not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise AdaptError(f"--ratio must lie in [0, 1), got {ratio}")


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules inside the blocks (not the embedding or the head)."""
    return {f"blocks.{name}": m for name, m in model.blocks.named_modules()
            if isinstance(m, nn.Linear)}


def input_norms(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> dict:
    """‖X_j‖₂ of every prunable linear's input feature j over the calibration rows (B, T)."""
    linears = prunable_linears(model)
    sums = {name: 0.0 for name in linears}
    hooks = []
    for name, module in linears.items():
        def hook(mod, args, out, name=name):
            x = args[0].detach().double()
            sums[name] = sums[name] + x.reshape(-1, x.shape[-1]).square().sum(0)
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for i in range(0, len(calibration), batch_size):
                model(calibration[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {name: s.sqrt() for name, s in sums.items()}


def row_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep mask: the ``floor(ratio · cols)`` lowest scores of each row are dropped."""
    k = int(ratio * score.shape[1])
    mask = torch.ones_like(score, dtype=torch.bool)
    if k:
        drop = torch.argsort(score, dim=1, stable=True)[:, :k]  # (rows, k)
        mask.scatter_(1, drop, False)
    return mask


def matrix_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep mask: the ``floor(ratio · numel)`` lowest scores of the whole matrix are dropped."""
    k = int(ratio * score.numel())
    mask = torch.ones(score.numel(), dtype=torch.bool)
    if k:
        mask[torch.argsort(score.flatten(), stable=True)[:k]] = False
    return mask.view_as(score)


def unstructured_masks(model, method: str, ratio: float, calibration=None) -> dict:
    """name -> keep mask of each prunable linear's weight."""
    linears = prunable_linears(model)
    if method == "magnitude":
        return {n: matrix_mask(m.weight.detach().abs().cpu(), ratio) for n, m in linears.items()}
    norms = input_norms(model, calibration)
    return {n: row_mask((m.weight.detach().abs().double() * norms[n][None, :]).cpu(), ratio)
            for n, m in linears.items()}


@torch.no_grad()
def apply_masks(model, masks: dict) -> None:
    """Zero the dropped weights (in place)."""
    linears = prunable_linears(model)
    for name, mask in masks.items():
        weight = linears[name].weight
        weight.mul_(mask.to(weight.device, weight.dtype))


def mamba_layers(model) -> list[Mamba]:
    layers = [block.mixer for block in model.blocks]
    if not all(type(layer) is Mamba for layer in layers):
        raise AdaptError("d_state pruning supports mamba models only, got "
                         f"{type(layers[0]).__name__}")
    if any(layer.eigen_param != "exp" for layer in layers):
        raise AdaptError("d_state pruning needs eigen_param='exp' (A_log)")
    return layers


def bc_rows(layer: Mamba) -> tuple[slice, slice]:
    """Rows of x_proj.weight holding B_t (N rows) and C_t (N rows)."""
    R, N = layer.dt_rank, layer.d_state
    return slice(R, R + N), slice(R + N, R + 2 * N)


def calibration_grads(model, calibration: torch.Tensor) -> tuple[list, list]:
    """``weight_grads`` of every Mamba layer's x_proj.weight."""
    return weight_grads(model, calibration, [layer.x_proj.weight for layer in mamba_layers(model)])


def dstate_scores(model, method: str, calibration=None) -> list[torch.Tensor]:
    """Importance (N,) of each state of each Mamba layer."""
    layers = mamba_layers(model)
    if method in ("dstate-taylor1", "dstate-taylor2"):
        grads, fisher = calibration_grads(model, calibration)
    scores = []
    for i, layer in enumerate(layers):
        W = layer.x_proj.weight.detach()
        if method == "dstate-taylor1":
            W = W * grads[i]
        elif method == "dstate-taylor2":
            W = -grads[i] * W + 0.5 * fisher[i] * W.square()
        b, c = bc_rows(layer)
        scores.append((W[b].abs().mean(1) + W[c].abs().mean(1)).double().cpu())
    return scores


def kept_states(scores: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Per layer, the sorted indices of the N' = N - round(ratio·N) most important states."""
    N = len(scores[0])
    n_keep = max(1, N - int(round(ratio * N)))
    return [torch.sort(torch.argsort(s, descending=True, stable=True)[:n_keep]).values
            for s in scores]


@torch.no_grad()
def zero_states(model, keep: list[torch.Tensor]) -> None:
    """Zero the B/C rows of x_proj of every dropped state (the shapes stay)."""
    for layer, k in zip(mamba_layers(model), keep):
        drop = torch.ones(layer.d_state, dtype=torch.bool)
        drop[k] = False
        b, c = bc_rows(layer)
        layer.x_proj.weight[b][drop] = 0
        layer.x_proj.weight[c][drop] = 0


def shrink_states(model, keep: list[torch.Tensor]):
    """A new model with d_state N' holding only the kept states' B/C rows and A columns."""
    from longssm.models import SSMLanguageModel

    n_keep = len(keep[0])
    cfg = type(model.cfg).from_dict({**model.cfg.to_dict(), "d_state": n_keep})
    ref = next(model.parameters())
    small = SSMLanguageModel(cfg).to(device=ref.device, dtype=ref.dtype)
    state = {k: v for k, v in model.state_dict().items()}
    for i, (layer, k) in enumerate(zip(mamba_layers(model), keep)):
        b, c = bc_rows(layer)
        W = layer.x_proj.weight.detach()
        k = k.to(W.device)
        state[f"blocks.{i}.mixer.x_proj.weight"] = torch.cat([W[: layer.dt_rank], W[b][k], W[c][k]])
        state[f"blocks.{i}.mixer.A_log"] = layer.A_log.detach()[:, k]
    small.load_state_dict(state)
    return small.eval()


def prune_model(model, method: str, ratio: float, calibration: torch.Tensor | None = None):
    """The pruned model (``model`` itself, masked in place, for unstructured methods; a new,
    smaller model for d_state methods) and a description of what was dropped."""
    check_prune(method, ratio)
    if method in ("wanda", "dstate-taylor1", "dstate-taylor2", "heads") and calibration is None:
        raise AdaptError(f"{method} needs calibration tokens")
    if method in UNSTRUCTURED:
        masks = unstructured_masks(model, method, ratio, calibration)
        apply_masks(model, masks)
        dropped = int(sum((~m).sum().item() for m in masks.values()))
        return model, {"weights_zeroed": dropped}
    if method == "heads":
        return prune_heads(model, ratio, calibration)
    keep = kept_states(dstate_scores(model, method, calibration), ratio)
    small = shrink_states(model, keep)
    return small, {"d_state": [model.cfg.d_state, small.cfg.d_state],
                   "kept_states": [k.tolist() for k in keep]}


def count_parameters(model) -> dict:
    """Parameters and non-zero parameters (tied weights counted once)."""
    params = list({id(p): p for p in model.parameters()}.values())
    return {"parameters": int(sum(p.numel() for p in params)),
            "nonzero": int(sum((p != 0).sum().item() for p in params))}


def calibration_rows(tokens, n: int, length: int, seed: int = 0) -> torch.Tensor:
    """``n`` random windows of ``length`` + 1 tokens (B, length + 1) from a token stream."""
    if n < 1:
        raise AdaptError(f"--calibration must be >= 1, got {n}")
    if len(tokens) < length + 2:
        raise AdaptError(f"calibration stream of {len(tokens)} tokens is shorter than {length}")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - length - 1, n)
    idx = starts[:, None] + np.arange(length + 1)
    return torch.as_tensor(np.asarray(tokens[idx], dtype=np.int64))
