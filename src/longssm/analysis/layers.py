"""The hidden-attention operator of one trained layer, on the layer's own input.

Two views (``kind``):
    scan    the recurrence alone: operand x = the scan's input (Mamba: silu(conv(in_proj x-part));
            Mamba-2: the conv'd x heads; S4D/S5/LRU: the layer input u); output = the scan's output
            y = M x + D x + state term.
    block   the unified implicit-attention view: the gate, the activations and the short
            convolution folded into one data-controlled operator on the block's own linear input
            x̂ (the in_proj x-part; for S4D/S5/LRU the layer input u); output = what the layer
            hands to its output projection (Mamba, Longhorn, Mamba-2: out_proj's input; S4D, LRU:
            GELU(y), the input of their GLU mixing; S5: the layer output GELU(y)).
            silu(c) = σ(c) c and GELU(y) = Φ(y) y make each nonlinearity a diagonal gate that
            depends on the data, so with g_t the output gate (silu(z_t), or w silu(z_t)/rms_t for
            Mamba-2's gated RMSNorm, or Φ(y_t) for GELU) and W the banded convolution matrix,
                M_{t,i} = g_t Σ_j (α_{t,j} + D δ_{tj}) σ(c_j) W_{j,i},
            and offset_t = g_t (state term_t + the scan of σ(c) ⊙ (conv bias + carried conv inputs)).

Every ``LayerOperator`` satisfies ``output = M x + skip x + offset``; ``state`` is the part of
``offset`` that the carried SSM state h_0 contributes. Diagonal layers give M per channel (per head
for Mamba-2: ``group`` = headdim channels share one matrix); S5 and LRU are MIMO: M_{t,j} is an
(H, H) matrix ``gate_t ⊙ K_{t-j}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longssm.analysis import operators as ops
from longssm.layers.conv import causal_conv
from longssm.layers.gated import GatedBlock
from longssm.layers.longhorn import Longhorn
from longssm.layers.lru import LRU
from longssm.layers.mamba import Mamba
from longssm.layers.mamba2 import Mamba2
from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5
from longssm.ops.diag_scan import diag_scan
from longssm.ops.longhorn import longhorn as longhorn_scan
from longssm.ops.selective_scan import selective_scan
from longssm.ops.ssd import ssd

KINDS = ("scan", "block")
F64 = torch.float64


@dataclass
class LayerOperator:
    """The operator of one layer on one batch (see the module docstring); tensors float64.

    Attributes:
        kind: scan | block.
        mimo: True for S5 / LRU (channel-mixing kernel), False for per-channel layers.
        x: (b, T, C) the operand.
        output: (b, T, C) what the layer computes (from the layer's own code path).
        offset: (b, T, C) the part of ``output`` that is not linear in ``x``.
        state: (b, T, C) the carried-state part of ``offset`` (zeros without a state).
        skip: (C,) D applied to x (scan kind), or None (folded into M).
        group: channels sharing one matrix (Mamba-2's headdim; 1 otherwise).
        row_fn: (positions (P,), units (u,)) -> (b, u, P, T) matrices of the chosen units
            (diagonal layers), or positions -> (b, C, C, P, T) (MIMO).
        kernel: unused (None); the kernel is built on first use of ``rows``.
        gate: the row gate (b, T, C) of the LTI layers (ones in the scan view).
    """

    kind: str
    mimo: bool
    x: torch.Tensor
    output: torch.Tensor
    offset: torch.Tensor
    state: torch.Tensor
    skip: torch.Tensor | None
    group: int
    row_fn: Callable
    kernel: torch.Tensor | None = None
    gate: torch.Tensor | None = None

    @property
    def units(self) -> int:
        """Distinct matrices: channels (diagonal), heads (Mamba-2), or output channels (MIMO)."""
        return self.x.shape[-1] // self.group

    def rows(self, positions=None, units=None) -> torch.Tensor:
        """The matrices' rows ``positions`` for ``units`` (default all): see ``row_fn``."""
        pos = ops._rows(self.x.shape[1], positions, self.x.device)
        if self.mimo:
            return self.row_fn(pos)
        return self.row_fn(pos, ops._channels(self.units, units))

    def apply(self, block: int = 8) -> torch.Tensor:
        """M x + skip x + offset, computed from the matrices (a check of the decomposition)."""
        x = self.x
        if self.mimo:
            y = torch.einsum("boipt,bti->bpo", self.rows(), x)
        else:
            parts = []
            for i in range(0, self.units, block):
                units = torch.arange(i, min(i + block, self.units))
                M = self.rows(units=units)  # (b, u, P, T)
                xs = x.unflatten(-1, (self.units, self.group))[:, :, units]  # (b, T, u, g)
                parts.append(torch.einsum("bupt,btug->bpug", M, xs).flatten(-2))
            y = torch.cat(parts, dim=-1)
        if self.skip is not None:
            y = y + self.skip * x
        return y + self.offset


def _conv_fold(M: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """M @ W for the banded causal convolution W of depthwise weights (c, 1, K): (b, c, P, T)."""
    if weight is None:
        return M
    K = weight.shape[-1]
    out = torch.zeros_like(M)
    T = M.shape[-1]
    for m in range(K):
        # x̂_i reaches c_{i+m} with weight w_{K-1-m}
        out[..., : T - m] += M[..., m:] * weight[:, 0, K - 1 - m].to(F64)[None, :, None, None]
    return out


def _split_conv(conv1d, x_hat: torch.Tensor, history) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, c_off): the convolution output and its part not linear in x̂ (bias + carried inputs)."""
    c, _ = causal_conv(conv1d, x_hat, history)
    c_off, _ = causal_conv(conv1d, torch.zeros_like(x_hat), history)
    return c, c_off


def _gated_inputs(layer: GatedBlock, u: torch.Tensor, state):
    """x̂, z, c, c_off and the scan input xs = silu(c) of a Mamba / Longhorn block."""
    x_hat, z = layer.project_in(u)  # (b, T, Di) each
    c, c_off = _split_conv(layer.conv1d, x_hat, None if state is None else state.conv)
    return x_hat, z, c, c_off, F.silu(c)


def _diag_attention(layer, xs: torch.Tensor, h0):
    """(iter over blocks of (ids, alpha, state), state term fn) of a Mamba or Longhorn scan."""
    D = layer.D.to(F64)
    if isinstance(layer, Longhorn):
        beta, k, q = layer._ssm_inputs(xs)
        blocks = lambda pos, ch: ops.iter_longhorn_attention(beta, k, q, h0, pos, ch)
        state = lambda: ops.longhorn_state_term(beta, k, q, h0)
        # the same recurrence (Δ, B, C from xs) applied to another input, from a zero state
        scan_other = lambda v: longhorn_scan(v, beta.to(F64), k.to(F64), q.to(F64), D)[0]
    else:
        dt, B, C = layer._ssm_inputs(xs)
        A = layer.eigenvalues()
        blocks = lambda pos, ch: ops.iter_selective_attention(dt, A, B, C, h0, pos, ch)
        state = lambda: ops.selective_state_term(dt, A, C, h0)
        scan_other = lambda v: selective_scan(v, dt.to(F64), A.to(F64), B.to(F64), C.to(F64), D)[0]
    return blocks, state, scan_other


def _alpha_rows(blocks, pos, ch) -> torch.Tensor:
    return torch.cat([a for _, a, _ in blocks(pos, ch)], dim=1)  # (b, c, P, T)


def _with_skip(alpha: torch.Tensor, D: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """alpha + D δ_{tj} on rows ``pos``: (b, c, P, T) with D (c,)."""
    eye = (pos[:, None] == torch.arange(alpha.shape[-1], device=pos.device)[None, :]).to(F64)
    return alpha + D.to(F64)[None, :, None, None] * eye


def gated_operator(layer: GatedBlock, u: torch.Tensor, state, kind: str, out_in=None) -> LayerOperator:
    """Mamba / Longhorn: ``u`` (b, T, d_model) the mixer's input, ``state`` its carried state."""
    x_hat, z, c, c_off, xs = _gated_inputs(layer, u, state)
    h0 = None if state is None else state.ssm
    blocks, state_fn, scan_other = _diag_attention(layer, xs, h0)
    st = state_fn() if h0 is not None else torch.zeros(xs.shape, dtype=F64)
    y, _ = layer._scan(xs, h0)  # (b, T, Di) the scan's own output
    D = layer.D.detach().to(F64)
    if kind == "scan":
        row_fn = lambda pos, ch: _alpha_rows(blocks, pos, ch)
        return LayerOperator("scan", False, xs.to(F64), y.to(F64), st, st, D, 1, row_fn)
    gate = F.silu(z).to(F64)  # (b, T, Di)
    sig = torch.sigmoid(c).to(F64)
    weight = None if layer.conv1d is None else layer.conv1d.weight.detach()

    def row_fn(pos, ch):
        M = _with_skip(_alpha_rows(blocks, pos, ch), D[ch], pos) * sig[:, :, ch].permute(0, 2, 1)[:, :, None]
        M = _conv_fold(M, None if weight is None else weight[ch])
        return M * gate[:, pos][:, :, ch].permute(0, 2, 1)[..., None]

    y_off = scan_other((torch.sigmoid(c) * c_off).to(F64))  # scan of the non-x̂ conv part
    offset = gate * (y_off + st)
    out = (y * F.silu(z)).to(F64) if out_in is None else out_in.to(F64)
    return LayerOperator("block", False, x_hat.to(F64), out, offset, gate * st, None, 1, row_fn)


def mamba2_operator(layer: Mamba2, u: torch.Tensor, state, kind: str, out_in=None) -> LayerOperator:
    """Mamba-2: per-head matrices; the block view folds the conv, silu and the gated RMSNorm."""
    b, T, _ = u.shape
    H, P, G, N, Di = layer.nheads, layer.headdim, layer.ngroups, layer.d_state, layer.d_inner
    z, xBC_hat, dt_raw = layer.in_proj(u).split([Di, layer.conv_dim, H], dim=-1)
    c, c_off = _split_conv(layer.conv1d, xBC_hat, None if state is None else state.conv)
    xs, B, C = F.silu(c).split([Di, G * N, G * N], dim=-1)
    dt, A = layer._dt(dt_raw), -torch.exp(layer.A_log)
    B, C = B.reshape(b, T, G, N), C.reshape(b, T, G, N)
    h0 = None if state is None else state.ssm
    st = (ops.ssd_state_term(dt, A, C, h0) if h0 is not None else torch.zeros(b, T, H, P, dtype=F64))
    st = st.reshape(b, T, Di)
    D = layer.D.detach().to(F64).repeat_interleave(P)  # (Di,)
    ssd_rows = lambda pos, heads: ops.ssd_attention(dt, A, B, C, None, pos)[0][:, heads]
    y, _ = ssd(xs.reshape(b, T, H, P), dt, A, B, C, layer.D, h0, chunk_size=layer.chunk_size)
    y = y.reshape(b, T, Di).to(F64)  # the scan's own output
    if kind == "scan":
        return LayerOperator("scan", False, xs.to(F64), y, st, st, D, P, ssd_rows)
    # block view: per channel the gate differs, so each channel is its own unit (group 1)
    gated = y * F.silu(z).to(F64)  # (b, T, Di)
    rms = gated.unflatten(-1, (G, Di // G)).pow(2).mean(-1, keepdim=True).add(layer.norm.eps).rsqrt()
    gate = (F.silu(z).to(F64).unflatten(-1, (G, Di // G)) * rms).flatten(-2) * layer.norm.weight.to(F64)
    sig = torch.sigmoid(c[..., :Di]).to(F64)
    weight = None if layer.conv1d is None else layer.conv1d.weight.detach()[:Di]

    def row_fn(pos, ch):
        head_alpha = ssd_rows(pos, ch // P)  # (b, c, P, T)
        M = _with_skip(head_alpha, D[ch], pos) * sig[:, :, ch].permute(0, 2, 1)[:, :, None]
        M = _conv_fold(M, None if weight is None else weight[ch])
        return M * gate[:, pos][:, :, ch].permute(0, 2, 1)[..., None]

    xs_off = (torch.sigmoid(c[..., :Di]) * c_off[..., :Di]).to(F64).reshape(b, T, H, P)
    y_off, _ = ssd(xs_off, dt.to(F64), A.to(F64), B.to(F64), C.to(F64), layer.D.to(F64))
    offset = gate * (y_off.reshape(b, T, Di) + st)
    out = layer.norm(y.to(u.dtype), z).to(F64) if out_in is None else out_in.to(F64)
    x_hat = xBC_hat[..., :Di].to(F64)
    return LayerOperator("block", False, x_hat, out, offset, gate * st, None, 1, row_fn)


def _lti_parts(layer, u: torch.Tensor, state):
    """(lam, B̄, C, scale, h0 or None, y pre-GELU, skip D) of an S4D / S5 / LRU layer."""
    cdtype = torch.complex128
    if isinstance(layer, LRU):
        lam, Bb, C = layer.transition(cdtype)
        scale = 1.0
    else:
        lam, Bb, C = layer.discretize(cdtype)
        scale = 2.0
    h0 = None if state is None else state.ssm.to(cdtype)
    x = u.to(F64)
    if isinstance(layer, S4D):
        v = Bb * x.to(cdtype)[..., None]  # (b, T, H, n)
        h_all, _ = diag_scan(v, lam, h0)
        y = scale * (h_all * C).sum(-1).real
    else:
        h_all, _ = diag_scan(x.to(cdtype) @ Bb.T, lam, h0)  # (b, T, n)
        y = scale * (h_all @ C.T).real
    D = layer.D.detach().to(F64)
    return lam, Bb, C, scale, h0, y + D * x, D


def lti_operator(layer, u: torch.Tensor, state, kind: str, out_in=None) -> LayerOperator:
    """S4D (per channel) and S5 / LRU (MIMO): the Toeplitz kernel, gated by Φ(y) in the block view."""
    lam, Bb, C, scale, h0, y, D = _lti_parts(layer, u, state)
    b, T, H = u.shape
    mimo = not isinstance(layer, S4D)
    pos_all = torch.arange(T)
    st = ops.lti_state_term(lam, C, h0, pos_all, scale) if h0 is not None else torch.zeros(b, T, H, dtype=F64)
    gate = torch.ones(b, T, H, dtype=F64) if kind == "scan" else 0.5 * (1 + torch.erf(y / 2**0.5))
    cache = {}

    def kernel():
        # built on first use: (T, H) | (T, H, H), the block view with D at lag 0
        if "K" not in cache:
            K = ops.lti_kernel(lam, Bb, C, T, scale)
            if kind == "block":
                K = K + torch.cat([torch.diag_embed(D)[None] if mimo else D[None], torch.zeros_like(K[1:])])
            cache["K"] = K
        return cache["K"]

    if mimo:
        row_fn = lambda pos: (ops.toeplitz_rows(kernel(), T, pos).permute(2, 3, 0, 1)[None]
                              * gate[:, pos].permute(0, 2, 1)[:, :, None, :, None])
    else:
        row_fn = lambda pos, ch: (ops.toeplitz_rows(kernel()[:, ch], T, pos).permute(2, 0, 1)[None]
                                  * gate[:, pos][:, :, ch].permute(0, 2, 1)[..., None])
    x = u.to(F64)
    if kind == "scan":
        return LayerOperator("scan", mimo, x, y, st, st, D, 1, row_fn, None, gate)
    out = F.gelu(y) if out_in is None else out_in.to(F64)
    return LayerOperator("block", mimo, x, out, gate * st, gate * st, None, 1, row_fn, None, gate)


def layer_operator(layer, u: torch.Tensor, state=None, kind: str = "scan", out_in=None) -> LayerOperator:
    """The ``LayerOperator`` of a mixer layer for input ``u`` (b, T, d_model) and carried ``state``.

    ``out_in`` (optional): the block output captured from the layer's own forward (the input of
    its output projection), used as ``output`` in the block view.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    with torch.no_grad():
        if isinstance(layer, (Mamba, Longhorn)):
            return gated_operator(layer, u, state, kind, out_in)
        if isinstance(layer, Mamba2):
            return mamba2_operator(layer, u, state, kind, out_in)
        if isinstance(layer, (S4D, S5, LRU)):
            return lti_operator(layer, u, state, kind, out_in)
    raise ValueError(f"hidden attention is defined for S4D, S5, LRU, Mamba, Mamba-2 and Longhorn "
                     f"layers, not {type(layer).__name__}")
