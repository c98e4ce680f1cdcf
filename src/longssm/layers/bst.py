"""Block-State Transformer (BST): an SSM over the whole stream gives context states; blocks of W
tokens run causal self-attention inside the block and cross-attention to their context states.

Fathi, Pilault, Firat, Pal, Bacon & Goroshin (2023), "Block-State Transformers". No public code;
this follows the paper's description. The SSM sublayer is an S4D-style complex diagonal LTI
system with S filters per channel (ZOH; ``ops.diag_scan``: ``s4d_scan``'s fused recurrence on
the CPU or FFT convolution, or the chunked scan), read out without a skip term:
    λ̄ = exp(Δ λ),  B̄ = (λ̄ − 1)/λ · B          per filter s, channel d, mode n
    h_t = λ̄ ⊙ h_{t−1} + B̄ x_t,   c_t^(s) = 2 Re(Σ_n C_n h_{t,n})   (c_t^(s) in R^D)
Block k covers stream positions kW .. kW+W−1 (absolute, so a call may start inside a block). Its
context states C_k, by ``variant``:
    sh  single head: the W SSM outputs of the preceding block, c_{(k−1)W} .. c_{kW−1} (S = 1),
        shared by all attention heads
    mh  multi-head: S = heads filters; head h attends to the W outputs of filter h over the
        preceding block
    mf  multi-filter: S = filters; the S outputs c_{kW−1}^(1..S) of the last token before the
        block (the SSM state's read-out at the block start), plus learned context-ID embeddings
The Block Transformer part (the model adds the residual and the optional MLP):
    y_t = W_o SelfAttn_block(x)_t + W_o^c CrossAttn(q = W_q^c x_t, keys/values = W_kv^c C_k)
Self-attention is ``layers.attention.BlockAttention`` (causal inside the block, RoPE by the slot in
the block). Before the first block of a fresh stream the context is zeros (the SSM outputs of an
empty past). Context states only depend on tokens before the block, so the layer is causal.

Glossary (paper symbol -> code name, shape):
    W      block_size          S      filters (mf) | heads (mh) | 1 (sh);  n = d_state / 2 modes
    Δ      exp(log_dt) (S, D)  λ      -exp(A_log_re) + i A_im  (S, D, n)
    B, C   B, C (real views)   (S, D, n, 2)
    C_k    context states      (batch, L, G, D): L = W (sh, mh) or S (mf); G = heads (mh) or 1
State ``BSTState``: ``ssm`` the SSM state h, ``ctx`` the context states of the current block,
``cur`` the SSM outputs of the current block so far (the next block's context; empty for mf),
``k, v, pos`` the self-attention's partial block (``BlockAttentionState``). ``step`` is the forward
pass on one token.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm import hippo
from longssm.layers.attention import BlockAttention, BlockAttentionState, extend_blocks
from longssm.layers.base import (
    check_input,
    check_state,
    empty_sequence,
    tag_no_weight_decay,
    tag_ssm_param,
)
from longssm.ops.diag_scan import diag_scan, s4d_scan

VARIANTS = ("sh", "mh", "mf")
MODES = ("auto", "conv", "recurrent")


class BSTState(NamedTuple):
    """Block-State Transformer state (shapes in the module docstring)."""

    ssm: torch.Tensor
    """(batch, S, d_model, d_state/2) complex SSM state."""
    ctx: torch.Tensor
    """(batch, L, G, d_model) context states of the current block."""
    cur: torch.Tensor
    """(batch, W, G, d_model) SSM outputs of the current block so far (sh, mh); (batch, 0, 1, D) mf."""
    k: torch.Tensor
    """(batch, W, heads, d_head) self-attention keys of the current block so far."""
    v: torch.Tensor
    """(batch, W, heads, d_head) self-attention values of the current block so far."""
    pos: torch.Tensor
    """(batch,) tokens already in the current block (integer-valued, same in every row)."""


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


class BST(nn.Module):
    """Block-State Transformer mixer: ``forward(x, state=None) -> (y, BSTState)``.

    Args:
        d_model: channels D; d_state: N, the SSM state per filter and channel (N/2 complex modes).
        variant: sh | mh | mf (see the module docstring).
        block_size: W; heads: attention heads; filters: S of the mf variant.
        rope: RoPE inside the block for the self-attention.
        init: the diagonal initialisation of λ (``hippo.diag_init``); dt_min, dt_max: Δ ~ logU.
        mode: auto (``s4d_scan(path="auto")``: the fused recurrence on the CPU, else the FFT
            convolution) | conv (always the FFT convolution plus the initial-state response) |
            recurrent (chunked scan).
        chunk_size: of the chunked SSM scan.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        variant: str = "sh",
        block_size: int = 16,
        heads: int = 4,
        filters: int = 4,
        rope: bool = True,
        init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        mode: str = "auto",
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"BST: variant must be one of {list(VARIANTS)}, got {variant!r}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"BST: d_state must be even and >= 2 (conjugate pairs), got {d_state}")
        if mode not in MODES:
            raise ValueError(f"BST: mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"BST: filters must be a positive integer, got {filters!r}")
        if init not in hippo.DIAG_INITS:
            raise ValueError(f"BST: init must be one of {list(hippo.DIAG_INITS)}, got {init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"BST: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.attn = BlockAttention(d_model, heads, block_size, rope)
        self.d_model, self.d_state, self.variant, self.mode = d_model, d_state, variant, mode
        self.chunk_size = chunk_size
        self.block_size, self.heads, self.d_head = block_size, heads, d_model // heads
        self.n_filters = {"sh": 1, "mh": heads, "mf": filters}[variant]
        self.groups = heads if variant == "mh" else 1
        self.ctx_len = filters if variant == "mf" else block_size
        self._init_ssm(d_model, d_state // 2, init, dt_min, dt_max)
        self.cross_q = nn.Linear(d_model, d_model, bias=False)
        self.cross_kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.cross_out = nn.Linear(d_model, d_model, bias=False)
        if variant == "mf":
            self.context_id = tag_no_weight_decay(nn.Parameter(0.02 * torch.randn(filters, d_model)))

    def _init_ssm(self, D: int, n: int, init: str, dt_min: float, dt_max: float) -> None:
        S, dtype = self.n_filters, torch.get_default_dtype()
        lam = hippo.diag_init(init, n).expand(S, D, n)  # (S, D, n)
        B = hippo.s4d_legs_B(n) if init == "legs" else torch.ones(n, dtype=torch.complex128)
        u = torch.rand(S, D, dtype=torch.float64)
        log_dt = math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))  # (S, D)
        self.log_dt = tag_ssm_param(nn.Parameter(log_dt.to(dtype)))
        self.A_log_re = tag_ssm_param(nn.Parameter(torch.log(-lam.real).to(dtype)))
        self.A_im = tag_ssm_param(nn.Parameter(lam.imag.clone().to(dtype)))
        self.B = tag_ssm_param(nn.Parameter(torch.view_as_real(B.expand(S, D, n).clone()).to(dtype)))
        C = torch.randn(S, D, n, dtype=torch.complex128)  # E|C|^2 = 1
        self.C = nn.Parameter(torch.view_as_real(C).to(dtype))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, variant={self.variant}, "
            f"block_size={self.block_size}, filters={self.n_filters}"
        )

    def initial_state(self, batch_size: int, device=None, dtype=None) -> BSTState:
        """Zeros: empty past, empty current block."""
        device = self.log_dt.device if device is None else device
        dtype = self.log_dt.dtype if dtype is None else dtype
        S, D, n = self.n_filters, self.d_model, self.d_state // 2
        ssm = torch.zeros(batch_size, S, D, n, device=device, dtype=complex_dtype_for(dtype))
        ctx = torch.zeros(batch_size, self.ctx_len, self.groups, D, device=device, dtype=dtype)
        cur_len = 0 if self.variant == "mf" else self.block_size
        cur = torch.zeros(batch_size, cur_len, self.groups, D, device=device, dtype=dtype)
        return BSTState(ssm, ctx, cur, *self.attn.initial_state(batch_size, device, dtype))

    def discretize(self, cdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH: λ̄ = exp(Δλ), B̄ = (λ̄ − 1)/λ · B; returns (λ̄, B̄, C), each (S, D, n) in ``cdtype``."""
        lam = torch.complex(-torch.exp(self.A_log_re), self.A_im)  # (S, D, n)
        lam_bar = torch.exp(torch.exp(self.log_dt)[..., None] * lam)
        B_bar = (lam_bar - 1) / lam * torch.view_as_complex(self.B)
        return lam_bar.to(cdtype), B_bar.to(cdtype), torch.view_as_complex(self.C).to(cdtype)

    def ssm_outputs(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The SSM sublayer over x (batch, T, D) from h0: outputs c (batch, T, S, D), final h."""
        cdtype = complex_dtype_for(x.dtype)
        lam_bar, B_bar, C = self.discretize(cdtype)  # (S, D, n)
        if self.mode == "recurrent":
            v = B_bar * x.to(cdtype)[:, :, None, :, None]  # (B, T, S, D, n)
            h_all, h = diag_scan(v, lam_bar, h0.to(cdtype), True, chunk_size=self.chunk_size)
            return (2 * (h_all * C).real.sum(-1)).to(x.dtype), h  # (B, T, S, D)
        # the S filters as S·D single-input channels of one S4D response, each fed its x_d
        (batch, T), (S, D, n) = x.shape[:2], lam_bar.shape
        u = x[:, :, None, :].expand(batch, T, S, D).reshape(batch, T, S * D)
        flat = (t.reshape(S * D, n) for t in (lam_bar, B_bar, C))
        h0 = h0.to(cdtype).reshape(batch, S * D, n)
        c, h = s4d_scan(u, *flat, None, h0, True, path=self.mode)  # (B, T, S·D)
        return c.to(x.dtype).reshape(batch, T, S, D), h.reshape(batch, S, D, n)

    def context_blocks(self, c: torch.Tensor, state: BSTState, p0: int):
        """Context states of every block a call touches.

        Args: c (batch, T, S, D) SSM outputs of the call's tokens; state the carried state; p0 the
        carried block length. Returns (ctx (batch, n_blocks, L, G, D), the new ``ctx`` and ``cur``).
        """
        W, T = self.block_size, c.shape[1]
        total = p0 + T
        ctx0 = state.ctx.to(c.dtype)[:, None]  # (B, 1, L, G, D)
        if self.variant == "mf":
            n_blocks = -(-total // W)
            last = torch.arange(1, n_blocks, device=c.device) * W - 1 - p0  # last token before
            ctx = torch.cat([ctx0, c[:, last, :, None, :]], 1)  # (B, nb, S, 1, D)
            new_ctx = c[:, -1, :, None, :] if total % W == 0 else ctx[:, -1]
            return ctx, new_ctx, state.cur
        blocks = extend_blocks(state.cur[:, :p0].to(c.dtype), c, W)  # (B, nb, W, G, D)
        ctx = torch.cat([ctx0, blocks[:, :-1]], 1)  # (B, nb, W, G, D)
        if total % W == 0:
            return ctx, blocks[:, -1], torch.zeros_like(blocks[:, -1])
        return ctx, ctx[:, -1], blocks[:, -1]

    def _per_head(self, t: torch.Tensor) -> torch.Tensor:
        """Keys or values (batch, nb, L, G, D) -> (batch, nb, heads, L, d_head); for mh (G = heads)
        head h takes its slice of context group h."""
        t = t.reshape(*t.shape[:-1], self.heads, self.d_head)  # (B, nb, L, G, h, dh)
        if self.groups == 1:
            t = t[:, :, :, 0]  # (B, nb, L, h, dh)
        else:
            t = torch.diagonal(t, dim1=3, dim2=4).permute(0, 1, 2, 4, 3)  # (B, nb, L, h, dh)
        return t.transpose(2, 3)

    def cross_attend(self, x: torch.Tensor, ctx: torch.Tensor, p0: int) -> torch.Tensor:
        """Cross-attention of x (batch, T, D) to its blocks' ctx (batch, nb, L, G, D): (B, T, h, dh)."""
        batch, T = x.shape[:2]
        q = self.attn.heads_view(self.cross_q(x))  # (B, T, h, dh)
        q = extend_blocks(q.new_zeros(batch, p0, *q.shape[2:]), q, self.block_size)  # (B, nb, W, h, dh)
        if self.variant == "mf":
            ctx = ctx + self.context_id[:, None, :]  # (B, nb, S, 1, D)
        k, v = (self._per_head(t) for t in self.cross_kv(ctx).chunk(2, -1))  # (B, nb, h, L, dh)
        o = F.scaled_dot_product_attention(q.transpose(2, 3), k, v).transpose(2, 3)
        return o.reshape(batch, -1, self.heads, self.d_head)[:, p0 : p0 + T]  # (B, T, h, dh)

    def forward(self, x: torch.Tensor, state: BSTState | None = None) -> tuple[torch.Tensor, BSTState]:
        """Args: x (batch, T, D); state BSTState or None. Returns (y (batch, T, D), BSTState)."""
        check_input(x, self.d_model)
        batch = x.shape[0]
        zeros = self.initial_state(batch, x.device, x.dtype)
        if state is None:
            state = zeros
        check_state(state, zeros, "BST")
        if x.shape[1] == 0:
            return empty_sequence(self, x, state)
        attn_state = BlockAttentionState(state.k, state.v, state.pos)
        o, attn_new, p0, _ = self.attn.self_attend(x, attn_state, "BST")  # (B, T, h, dh)
        c, h = self.ssm_outputs(x, state.ssm)  # (B, T, S, D)
        ctx, new_ctx, new_cur = self.context_blocks(c, state, p0)
        oc = self.cross_attend(x, ctx, p0)  # (B, T, h, dh)
        y = self.attn.out_proj(o.reshape(x.shape)) + self.cross_out(oc.reshape(x.shape))
        return y, BSTState(h, new_ctx, new_cur, *attn_new)

    def step(self, x_t: torch.Tensor, state: BSTState | None) -> tuple[torch.Tensor, BSTState]:
        """One token: the forward pass on a length-1 sequence. Args: x_t (batch, D)."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        y, state = self.forward(x_t[:, None], state)
        return y[:, 0], state
