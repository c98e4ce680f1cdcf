"""Causal multi-head attention inside blocks of W tokens (``mixer="block-attention"``), a baseline.

The stream is cut into consecutive blocks of W tokens at absolute positions 0, W, 2W, ...; a token
attends to the tokens of its own block up to itself (nothing crosses a block boundary):
    q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t          split into heads of d_head = d_model / heads
    q_t, k_t <- RoPE(q_t, i), RoPE(k_t, i)             i = t mod W, the position inside the block
    o_t = softmax(q_t · [k_s]_{s in block, s <= t} / sqrt(d_head)) [v_s]
    y_t = W_o o_t
A whole call runs as one batched ``F.scaled_dot_product_attention(is_causal=True)`` over all its
blocks. The carried state is the current partial block: its keys and values and its length, so a
sequence cut anywhere (also inside a block) gives the same outputs as one pass.

Glossary (paper symbol -> code name, shape):
    W        block_size                    h        heads; d_head = d_model / heads
    K, V     BlockAttentionState.k / .v    (batch, W, heads, d_head), zeros beyond ``pos``
    i0       BlockAttentionState.pos       (batch,) tokens already in the current block, an
                                           integer in [0, W) that is the same in every row

The helpers below (``block_phase``, ``extend_blocks``, ``tail_buffer``, ``rope``,
``block_positions``) are shared with the Block-State Transformer (``longssm.layers.bst``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm.layers.base import check_input, check_state, empty_sequence


class BlockAttentionState(NamedTuple):
    """Block-attention state: the current partial block."""

    k: torch.Tensor
    """(batch, W, heads, d_head) keys (RoPE applied) of the block's first ``pos`` tokens, else 0."""
    v: torch.Tensor
    """(batch, W, heads, d_head) values of the block's first ``pos`` tokens, else 0."""
    pos: torch.Tensor
    """(batch,) number of tokens already in the current block (integer-valued, same every row)."""


def block_phase(pos: torch.Tensor, block_size: int, layer: str) -> int:
    """The position inside the current block that ``pos`` (batch,) holds, as a Python int.

    Raises:
        ValueError: ``pos`` is not one integer in [0, block_size) shared by every row (all rows of
            a batch advance through their blocks together).
    """
    if pos.numel() == 0:
        return 0
    p = pos.detach().reshape(-1)
    p0 = float(p[0])
    if not (p0.is_integer() and 0 <= p0 < block_size) or bool((p != p[0]).any()):
        raise ValueError(
            f"{layer}: state.pos must be one integer in [0, {block_size}) shared by every row, "
            f"got values in [{float(p.min())}, {float(p.max())}]"
        )
    return int(p0)


def extend_blocks(prefix: torch.Tensor, new: torch.Tensor, block_size: int) -> torch.Tensor:
    """Carried ``prefix`` (batch, p0, *R) then ``new`` (batch, T, *R), zero-padded to whole
    blocks: (batch, n_blocks, W, *R) with n_blocks = ceil((p0 + T) / W)."""
    ext = torch.cat([prefix, new], 1) if prefix.shape[1] else new  # (B, p0 + T, *R)
    batch, total, rest = ext.shape[0], ext.shape[1], ext.shape[2:]
    n_blocks = -(-total // block_size)
    pad = n_blocks * block_size - total
    if pad:
        ext = torch.cat([ext, ext.new_zeros(batch, pad, *rest)], 1)
    return ext.reshape(batch, n_blocks, block_size, *rest)


def tail_buffer(blocks: torch.Tensor, total: int, block_size: int) -> torch.Tensor:
    """The new partial block of ``blocks`` (batch, n_blocks, W, *R) holding ``total`` tokens:
    (batch, W, *R), zeros where the block is empty (all zeros if the last block is complete)."""
    if total % block_size == 0:
        return torch.zeros_like(blocks[:, -1])
    return blocks[:, -1]


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding by the position inside the block.

    Args: x (batch, T, heads, d_head), d_head even; positions (T,) the slot of each token in its
    block. Slot i is rotated by the angles i·base^(-2j/d_head), j < d_head/2, pairing channel j
    with channel j + d_head/2.
    """
    d_head = x.shape[-1]
    half = d_head // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / d_head)
    angle = positions.to(torch.float64)[:, None] * inv_freq  # (T, half)
    cos = angle.cos().to(x.dtype)[:, None, :]  # (T, 1, half)
    sin = angle.sin().to(x.dtype)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def block_positions(p0: int, T: int, block_size: int, device=None) -> torch.Tensor:
    """(T,) the slot inside its block of each of T tokens that follow p0 carried ones."""
    return (p0 + torch.arange(T, device=device)) % block_size


class BlockAttention(nn.Module):
    """Causal multi-head attention within blocks: ``forward(x, state=None) -> (y, state)``.

    Args:
        d_model: channels of x and y.
        heads: attention heads; d_model must be a multiple of it.
        block_size: W, tokens per block.
        rope: rotary position embedding by the position inside the block (needs an even d_head).
    """

    def __init__(self, d_model: int, heads: int = 4, block_size: int = 16, rope: bool = True) -> None:
        super().__init__()
        if not isinstance(heads, int) or heads < 1 or d_model % heads:
            raise ValueError(f"attention: heads must divide d_model={d_model}, got {heads!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"attention: block_size must be a positive integer, got {block_size!r}")
        if rope and (d_model // heads) % 2:
            raise ValueError(f"attention: rope needs an even d_head, got {d_model // heads}")
        self.d_model, self.heads, self.block_size, self.use_rope = d_model, heads, block_size, rope
        self.d_head = d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, heads={self.heads}, block_size={self.block_size}"

    def initial_state(self, batch_size: int, device=None, dtype=None) -> BlockAttentionState:
        """Zeros: an empty current block."""
        device = self.qkv.weight.device if device is None else device
        dtype = self.qkv.weight.dtype if dtype is None else dtype
        kv = torch.zeros(batch_size, self.block_size, self.heads, self.d_head, device=device, dtype=dtype)
        return BlockAttentionState(kv, kv.clone(), torch.zeros(batch_size, device=device, dtype=dtype))

    def heads_view(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, T, d_model) -> (batch, T, heads, d_head)."""
        return x.reshape(*x.shape[:-1], self.heads, self.d_head)

    def self_attend(self, x: torch.Tensor, state: BlockAttentionState | None, layer: str):
        """The attention heads' outputs for x (batch, T, d_model) after the carried block.

        Returns: o (batch, T, heads, d_head) before ``out_proj``, the new state, p0 (the carried
        block length) and the block count; the blocks start p0 tokens before x.
        """
        batch, T = x.shape[:2]
        if state is None:
            state = self.initial_state(batch, x.device, x.dtype)
        check_state(state, self.initial_state(batch, x.device, x.dtype), layer)
        p0 = block_phase(state.pos, self.block_size, layer)
        W, total = self.block_size, p0 + T
        q, k, v = (self.heads_view(t) for t in self.qkv(x).chunk(3, -1))  # (B, T, h, dh) each
        if self.use_rope:
            positions = block_positions(p0, T, W, x.device)
            q, k = rope(q, positions), rope(k, positions)
        q = extend_blocks(q.new_zeros(batch, p0, self.heads, self.d_head), q, W)  # (B, nb, W, h, dh)
        k = extend_blocks(state.k[:, :p0].to(x.dtype), k, W)
        v = extend_blocks(state.v[:, :p0].to(x.dtype), v, W)
        o = F.scaled_dot_product_attention(
            q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), is_causal=True
        ).transpose(2, 3)  # (B, nb, W, h, dh)
        o = o.reshape(batch, -1, self.heads, self.d_head)[:, p0:total]  # (B, T, h, dh)
        pos = torch.full_like(state.pos, total % W, dtype=x.dtype)
        new = BlockAttentionState(tail_buffer(k, total, W), tail_buffer(v, total, W), pos)
        return o, new, p0, k.shape[1]

    def forward(
        self, x: torch.Tensor, state: BlockAttentionState | None = None
    ) -> tuple[torch.Tensor, BlockAttentionState]:
        """Args: x (batch, T, d_model); state or None. Returns (y (batch, T, d_model), state)."""
        check_input(x, self.d_model)
        if x.shape[1] == 0:
            if state is not None:
                check_state(state, self.initial_state(x.shape[0], x.device, x.dtype), "BlockAttention")
            return empty_sequence(self, x, state)
        o, new, _, _ = self.self_attend(x, state, "BlockAttention")
        return self.out_proj(o.reshape(*x.shape)), new

    def step(
        self, x_t: torch.Tensor, state: BlockAttentionState | None
    ) -> tuple[torch.Tensor, BlockAttentionState]:
        """One token: the forward pass on a length-1 sequence. Args: x_t (batch, d_model)."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        y, state = self.forward(x_t[:, None], state)
        return y[:, 0], state

