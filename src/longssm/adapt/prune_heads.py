"""Head pruning of a trained Mamba-2 (``longssm prune --method heads``).

Glossary (Mamba-2, ``longssm.layers.mamba2``):
    H, P, G        nheads, headdim, ngroups; d_inner = H·P; head h owns channels c ∈ [hP, (h+1)P)
    n, n′          width of a gated-RMSNorm group before and after: d_inner / G and H′P / G
    W_z, W_x, W_dt the rows of in_proj producing z_c, x_c (channel c) and dt_raw_h (head h)
    W_o            the columns of out_proj reading channel c

Head h reaches the output only through y_c·silu(z_c), c in its channels, so zeroing its z rows
removes it. The gated RMSNorm divides by sqrt(mean over the group + eps), the mean taken over n
channels of which the removed ones are now zero; over the n′ kept channels the same quantity is
S/n′ + eps′. With S the sum of squares of the kept channels,

    w_c · h_c / sqrt(S/n + eps) = (w_c·sqrt(n/n′)) · h_c / sqrt(S/n′ + eps·n/n′),

so the smaller layer keeps the kept channels' rows and columns, with the norm weight scaled by
sqrt(n/n′) and its eps by n/n′ (``mixer_options`` ``d_inner`` = H′P and ``norm_eps``): it equals
the unpruned model with the dropped heads' z rows zeroed (tested in float64), and carries a state
of shape (batch, H′, P, N).

Importance of head h (first-order Taylor, Molchanov et al. 2019, in the Taylor-1 form the SSM
pruning paper uses for d_state): the mean of |W ⊙ ∂L/∂W| over the head's entries of W_z, W_x,
W_dt and W_o, ∂L/∂W the mean gradient of the calibration loss. The same number of heads,
round(R·H/G), is dropped from every group of every layer (the config holds one d_inner, and the
groups stay equal in size); at least one head per group stays.
"""

from __future__ import annotations

import math

import torch

from longssm.adapt.errors import AdaptError
from longssm.adapt.grads import weight_grads
from longssm.layers.mamba2 import Mamba2


def mamba2_layers(model) -> list[Mamba2]:
    layers = [block.mixer for block in model.blocks]
    if not all(type(layer) is Mamba2 for layer in layers):
        raise AdaptError("head pruning supports mamba2 models only, got "
                         f"{type(layers[0]).__name__}")
    return layers


def head_rows(layer: Mamba2, h: int) -> torch.Tensor:
    """Rows of in_proj.weight that belong to head h: z (P), x (P), dt (1)."""
    P, Di = layer.headdim, layer.d_inner
    channels = torch.arange(h * P, (h + 1) * P)
    return torch.cat([channels, Di + channels, torch.tensor([Di + layer.conv_dim + h])])


def head_scores(model, calibration: torch.Tensor) -> list[torch.Tensor]:
    """Importance (H,) of each head of each Mamba-2 layer (float64)."""
    layers = mamba2_layers(model)
    weights = [w for layer in layers for w in (layer.in_proj.weight, layer.out_proj.weight)]
    grads, _ = weight_grads(model, calibration, weights)
    scores = []
    for i, layer in enumerate(layers):
        taylor_in = (layer.in_proj.weight.detach() * grads[2 * i]).abs()  # (rows, D)
        taylor_out = (layer.out_proj.weight.detach() * grads[2 * i + 1]).abs()  # (D, d_inner)
        P = layer.headdim
        s = [torch.cat([taylor_in[head_rows(layer, h)].flatten(),
                        taylor_out[:, h * P : (h + 1) * P].flatten()]).mean()
             for h in range(layer.nheads)]
        scores.append(torch.stack(s).double().cpu())
    return scores


def kept_heads(scores: list[torch.Tensor], ratio: float, ngroups: int) -> list[torch.Tensor]:
    """Per layer, sorted indices of the kept heads: round(ratio·H/G) lowest dropped per group."""
    per_group = len(scores[0]) // ngroups
    n_keep = max(1, per_group - int(round(ratio * per_group)))
    keep = []
    for s in scores:
        groups = s.view(ngroups, per_group)
        top = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :n_keep]  # (G, k)
        top = top + per_group * torch.arange(ngroups)[:, None]
        keep.append(torch.sort(top.flatten()).values)
    return keep


@torch.no_grad()
def zero_heads(model, keep: list[torch.Tensor]) -> None:
    """Zero the z rows (and z bias) of every dropped head, in place (the shapes stay)."""
    for layer, k in zip(mamba2_layers(model), keep):
        drop = torch.ones(layer.nheads, dtype=torch.bool)
        drop[k] = False
        rows = torch.arange(layer.d_inner).view(layer.nheads, layer.headdim)[drop].flatten()
        layer.in_proj.weight[rows] = 0
        if layer.in_proj.bias is not None:
            layer.in_proj.bias[rows] = 0


def _layer_tensors(layer: Mamba2, k: torch.Tensor, prefix: str) -> dict:
    """The kept heads' slices of one layer's parameters, keyed by state_dict name."""
    P, Di, G, N = layer.headdim, layer.d_inner, layer.ngroups, layer.d_state
    k = k.to(layer.A_log.device)
    channels = (k[:, None] * P + torch.arange(P, device=k.device)).flatten()  # (H′P,)
    xbc = torch.cat([channels, Di + torch.arange(2 * G * N, device=k.device)])
    rows = torch.cat([channels, Di + xbc, Di + layer.conv_dim + k])
    scale = math.sqrt(Di / len(channels))
    out = {"in_proj.weight": layer.in_proj.weight[rows],
           "out_proj.weight": layer.out_proj.weight[:, channels],
           "dt_bias": layer.dt_bias[k], "A_log": layer.A_log[k], "D": layer.D[k],
           "norm.weight": layer.norm.weight[channels] * scale}
    if layer.in_proj.bias is not None:
        out["in_proj.bias"] = layer.in_proj.bias[rows]
    if layer.conv1d is not None:
        out["conv1d.weight"] = layer.conv1d.weight[xbc]
        if layer.conv1d.bias is not None:
            out["conv1d.bias"] = layer.conv1d.bias[xbc]
    return {f"{prefix}.{name}": t.detach() for name, t in out.items()}


def shrink_heads(model, keep: list[torch.Tensor]):
    """A new model with only the kept heads (d_inner = H′P, norm weight and eps rescaled)."""
    from longssm.models import SSMLanguageModel

    layer = mamba2_layers(model)[0]
    d_inner = len(keep[0]) * layer.headdim
    # every layer has the same widths, so one factor n/n′ = d_inner_before / d_inner_after
    eps = layer.norm.eps * (layer.d_inner / d_inner)
    options = {**model.cfg.mixer_options, "d_inner": d_inner, "norm_eps": eps}
    cfg = type(model.cfg).from_dict({**model.cfg.to_dict(), "mixer_options": options})
    ref = next(model.parameters())
    small = SSMLanguageModel(cfg).to(device=ref.device, dtype=ref.dtype)
    state = dict(model.state_dict())
    for i, (layer, k) in enumerate(zip(mamba2_layers(model), keep)):
        state.update(_layer_tensors(layer, k, f"blocks.{i}.mixer"))
    small.load_state_dict(state)
    return small.eval()


def prune_heads(model, ratio: float, calibration: torch.Tensor):
    """The smaller model and a description (heads before/after, the kept heads per layer)."""
    layers = mamba2_layers(model)
    keep = kept_heads(head_scores(model, calibration), ratio, layers[0].ngroups)
    small = shrink_heads(model, keep)
    return small, {"heads": [layers[0].nheads, len(keep[0])],
                   "d_inner": [layers[0].d_inner, small.cfg.d_inner],
                   "kept_heads": [k.tolist() for k in keep]}
