"""Hidden attention of a trained model: per layer, aggregated over channels, rolled out across layers,
and weighted by gradients (Mamba-Attr).

Aggregation over the units of a layer (channels; heads for Mamba-2's scan view; for S5 / LRU all
(output, input) channel pairs of the MIMO kernel): ``mean`` and ``max`` of |M_{t,j}|; figures
min-max normalise each map (``minmax``).

Rollout (Abnar & Zuidema, as used for Mamba by Ali et al.): with Ā_l the layer's mean |M|, rows
normalised to sum 1, R = Π_l (½ I + ½ Ā_l) (last layer on the left), rows normalised again; the
identity stands for the residual path.

Gradient-weighted attribution (Mamba-Attr, after Chefer et al.): for the scalar target L (the log
probability of a chosen next token at the last position, default the model's own prediction) and the
block view, ∂L/∂M_{t,i,c} = g_{t,c} x̂_{i,c} with g = ∂L/∂(block output); the layer map is the mean over
units of (M ⊙ ∂L/∂M)^+, and the rollout R = Π_l (I + Ā_l) with rows normalised, Ā_l the row-normalised
layer map.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from longssm.analysis.layers import KINDS, LayerOperator, layer_operator

F64 = torch.float64


def _mixers(model) -> list:
    return [block.mixer for block in model.blocks]


def check_layer(model, layer: int) -> int:
    n = len(model.blocks)
    if not isinstance(layer, int) or isinstance(layer, bool) or not -n <= layer < n:
        raise ValueError(f"layer must be an integer in [0, {n}) (the model has {n} layers), got {layer!r}")
    return layer % n


@contextmanager
def _capture(model, keep_grad: bool = False):
    """Record every mixer's input and state, and its block output (the input of ``out_proj`` where
    the layer has one, else the mixer's output)."""
    records = [dict() for _ in model.blocks]
    handles = []
    for i, mixer in enumerate(_mixers(model)):
        def pre(module, args, i=i):
            records[i]["u"] = args[0].detach()
            records[i]["state"] = args[1] if len(args) > 1 else None

        def keep(t, i=i):
            if keep_grad and t.requires_grad:
                t.retain_grad()
            records[i]["out"] = t

        handles.append(mixer.register_forward_pre_hook(pre))
        if hasattr(mixer, "out_proj"):
            handles.append(mixer.out_proj.register_forward_pre_hook(lambda m, a, k=keep: k(a[0])))
        else:
            handles.append(mixer.register_forward_hook(lambda m, a, o, k=keep: k(o[0])))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def layer_operators(model, tokens: torch.Tensor, state=None, kind: str = "scan", layers=None):
    """``LayerOperator`` of the chosen layers (default all) for ``tokens`` (b, T) from ``state``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    chosen = range(len(model.blocks)) if layers is None else [check_layer(model, k) for k in layers]
    with torch.no_grad(), _capture(model) as rec:
        model(tokens, state)
    mixers = _mixers(model)
    return {k: layer_operator(mixers[k], rec[k]["u"], rec[k]["state"], kind, rec[k]["out"]) for k in chosen}


def _row_blocks(T: int, positions, size: int):
    pos = torch.arange(T) if positions is None else torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    for i in range(0, len(pos), size):
        yield pos[i : i + size]


def aggregate(op: LayerOperator, positions=None, row_block: int = 64, unit_block: int = 16,
              weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Mean and max over units of |M| (or of (M ⊙ g x̂)^+ with ``weights`` = (g, x)), by row blocks.

    Returns {"mean": (b, P, T), "max": (b, P, T)} float64.
    """
    T, means, maxes = op.x.shape[1], [], []
    for pos in _row_blocks(T, positions, row_block):
        if op.mimo:
            M = op.rows(pos)  # (b, o, i, P, T)
            if weights is not None:
                g, x = weights
                M = (M * g[:, pos].permute(0, 2, 1)[:, :, None, :, None]
                     * x.permute(0, 2, 1)[:, None, :, None, :]).clamp(min=0)
            M = M.abs().flatten(1, 2)  # (b, o*i, P, T)
            means.append(M.mean(1))
            maxes.append(M.amax(1))
            continue
        total, top = 0.0, None
        for u0 in range(0, op.units, unit_block):
            units = torch.arange(u0, min(u0 + unit_block, op.units))
            M = op.rows(pos, units)  # (b, u, P, T)
            if weights is not None:
                g, x = weights
                M = (M * g[:, pos][:, :, units].permute(0, 2, 1)[..., None]
                     * x[:, :, units].permute(0, 2, 1)[:, :, None, :]).clamp(min=0)
            M = M.abs()
            total = total + M.sum(1)
            top = M.amax(1) if top is None else torch.maximum(top, M.amax(1))
        means.append(total / op.units)
        maxes.append(top)
    return {"mean": torch.cat(means, dim=1), "max": torch.cat(maxes, dim=1)}


def minmax(a: torch.Tensor) -> torch.Tensor:
    """Scale each map (last two dims) to [0, 1]."""
    lo = a.amin(dim=(-2, -1), keepdim=True)
    hi = a.amax(dim=(-2, -1), keepdim=True)
    return (a - lo) / (hi - lo).clamp(min=1e-30)


def state_share(op: LayerOperator, positions=None) -> torch.Tensor:
    """‖state term_t‖ / ‖output_t‖ over channels, (b, P): the carried-state column of a figure."""
    pos = torch.arange(op.x.shape[1]) if positions is None else torch.as_tensor(positions).reshape(-1)
    return op.state[:, pos].norm(dim=-1) / op.output[:, pos].norm(dim=-1).clamp(min=1e-30)


def hidden_attention(model, tokens: torch.Tensor, layer: int, state=None, kind: str = "scan",
                     positions=None, channels=(), row_block: int = 64) -> dict:
    """The hidden attention of one layer of ``model`` on ``tokens`` (b, T) from ``state``.

    Args:
        layer: block index (negative counts from the end).
        kind: "scan" (the recurrence alone) or "block" (gate and convolution folded in).
        positions: query rows to compute (default all T): memory ~ b * units * P * T per block.
        channels: unit ids whose own matrices are returned (diagonal layers; for MIMO layers the
            self-channel kernel M[c, c]).
    Returns:
        {"mean", "max": (b, P, T) |M| aggregated over units; "channels": {c: (b, P, T)};
         "state_share": (b, P); "positions": list}, float64.
    """
    layer = check_layer(model, layer)
    op = layer_operators(model, tokens, state, kind, [layer])[layer]
    out = aggregate(op, positions, row_block)
    pos = torch.arange(tokens.shape[1]) if positions is None else torch.as_tensor(positions).reshape(-1)
    chosen = {}
    for c in channels:
        if not 0 <= c < op.units:
            raise ValueError(f"channel {c} out of range: layer {layer} has {op.units} units")
        chosen[c] = op.rows(pos)[:, c, c] if op.mimo else op.rows(pos, [c])[:, 0]
    out.update(channels=chosen, state_share=state_share(op, pos), positions=pos.tolist(),
               units=op.units, mimo=op.mimo)
    return out


def _normalise_rows(a: torch.Tensor) -> torch.Tensor:
    return a / a.sum(-1, keepdim=True).clamp(min=1e-30)


def rollout(maps: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """R = Π_l ((1 - w) I + w Ā_l) with Ā_l row-normalised, last layer on the left; (b, T, T).

    ``residual`` = w: ½ for attention rollout, and ``None`` for the Mamba-Attr form I + Ā_l.
    """
    T = maps[0].shape[-1]
    eye = torch.eye(T, dtype=F64)
    R = eye.expand_as(maps[0]).clone()
    for A in maps:
        A = _normalise_rows(A)
        step = eye + A if residual is None else (1 - residual) * eye + residual * A
        R = _normalise_rows(step) @ R
    return R


def attention_rollout(model, tokens, state=None, kind: str = "scan") -> dict:
    """Per-layer mean |M| maps and their rollout: {"layers": [(b, T, T)], "rollout": (b, T, T)}."""
    ops = layer_operators(model, tokens, state, kind)
    maps = [aggregate(ops[k])["mean"] for k in sorted(ops)]
    return {"layers": maps, "rollout": rollout(maps)}


def _block_output_grad(mixer, out: torch.Tensor) -> torch.Tensor:
    """∂L/∂(block output) from the gradient kept on the captured tensor."""
    if out.grad is None:
        raise ValueError("no gradient reached a layer's block output (is the target constant?)")
    return out.grad.to(F64)


def attribution(model, tokens: torch.Tensor, state=None, target: int | None = None) -> dict:
    """Mamba-Attr: gradient-weighted hidden attention per layer (block view) and its rollout.

    The target is the sum over rows of log p(next token | tokens) at the last position; ``target``
    None = each row's own most likely next token.
    Returns {"layers": [(b, T, T)], "rollout": (b, T, T), "target": [ids]}.
    """
    with _capture(model, keep_grad=True) as rec:
        logits, _ = model(tokens, state)
        logp = F.log_softmax(logits[:, -1].double(), dim=-1)  # (b, V)
        ids = logp.argmax(-1) if target is None else torch.full_like(logp[:, 0], target, dtype=torch.long)
        model.zero_grad(set_to_none=True)
        logp.gather(1, ids[:, None]).sum().backward()
    maps = []
    for k, mixer in enumerate(_mixers(model)):
        g = _block_output_grad(mixer, rec[k]["out"])
        op = layer_operator(mixer, rec[k]["u"], rec[k]["state"], "block", rec[k]["out"].detach())
        maps.append(aggregate(op, weights=(g, op.x))["mean"])
    model.zero_grad(set_to_none=True)
    return {"layers": maps, "rollout": rollout(maps, residual=None), "target": ids.tolist()}
