"""Block-State Transformer and block attention: a token-by-token reference written from the paper's
description (float64: outputs, final state, gradients incl. the initial state), causal attention
at W = T, context states == the SSM scan at block boundaries, streaming in pieces, causality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from longssm.layers.attention import BlockAttention, BlockAttentionState
from longssm.layers.bst import BST, BSTState
from longssm.ops.diag_scan import diag_scan_naive

D, HEADS, W = 8, 2, 4
VARIANTS = ["sh", "mh", "mf"]


def make(variant="sh", block_size=W, **kw):
    torch.manual_seed(0)
    return BST(D, 4, variant=variant, block_size=block_size, heads=HEADS, filters=3, **kw).double()


def random_state(layer, batch, p0):
    """Every field random (the SSM state complex), ``pos`` = p0 in every row."""
    zeros = layer.initial_state(batch, dtype=torch.float64)
    fields = [torch.randn_like(t) for t in zeros[:-1]]
    return type(zeros)(*fields, torch.full((batch,), float(p0), dtype=torch.float64))


def rotate(x, slot):
    """RoPE as complex rotation: channel pairs (j, j + d/2) as z_j, times exp(i slot 10000^(-2j/d))."""
    half = x.shape[-1] // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    z = torch.complex(x[..., :half], x[..., half:]) * torch.exp(1j * slot * theta)
    return torch.cat([z.real, z.imag], -1)


def heads(t):
    return t.reshape(*t.shape[:-1], HEADS, D // HEADS)


def softmax_attend(q, K, V):
    """q (B, h, dh); K, V (B, n, h, dh): softmax(q·K / sqrt(dh)) V, by the formula."""
    scores = torch.einsum("bhd,bnhd->bhn", q, K) / math.sqrt(q.shape[-1])
    return torch.einsum("bhn,bnhd->bhd", torch.softmax(scores, -1), V)


def cross_attend_naive(layer, x_t, ctx):
    """x_t (B, D); ctx (B, L, G, D). Head j attends to context group j (mh) or 0 (sh, mf)."""
    if layer.variant == "mf":
        ctx = ctx + layer.context_id[:, None, :]
    Wk, Wv = layer.cross_kv.weight.chunk(2, 0)  # (D, D) each
    q = heads(x_t @ layer.cross_q.weight.T)  # (B, h, dh)
    outs = []
    for j in range(HEADS):
        g = ctx[:, :, j if layer.variant == "mh" else 0]  # (B, L, D)
        K = heads(g @ Wk.T)[:, :, j : j + 1]  # (B, L, 1, dh)
        V = heads(g @ Wv.T)[:, :, j : j + 1]
        outs.append(softmax_attend(q[:, j : j + 1], K, V))
    return torch.cat(outs, 1).reshape(x_t.shape)  # (B, D)


def bst_naive(layer, x, state):
    """The layer token by token from the equations of ``longssm.layers.bst``."""
    batch, T = x.shape[:2]
    lam_bar, B_bar, C = layer.discretize(torch.complex128)
    v = B_bar * x.to(torch.complex128)[:, :, None, :, None]  # (B, T, S, D, n)
    h_all, h = diag_scan_naive(v, lam_bar, state.ssm, True)
    c = 2 * (h_all * C).real.sum(-1)  # (B, T, S, D)
    Wq, Wk, Wv = layer.attn.qkv.weight.chunk(3, 0)
    p0, Wb, rope = int(state.pos[0]), layer.block_size, layer.attn.use_rope
    keys, vals = [state.k[:, i] for i in range(p0)], [state.v[:, i] for i in range(p0)]
    cur = [state.cur[:, i] for i in range(p0)] if layer.variant != "mf" else []
    ctx, ys = state.ctx, []
    for t in range(T):
        slot = (p0 + t) % Wb
        if slot == 0 and t > 0:
            ctx = torch.stack(cur, 1) if layer.variant != "mf" else c[:, t - 1, :, None, :]
            keys, vals, cur = [], [], []
        q, k = heads(x[:, t] @ Wq.T), heads(x[:, t] @ Wk.T)  # (B, h, dh)
        if rope:
            q, k = rotate(q, slot), rotate(k, slot)
        keys.append(k)
        vals.append(heads(x[:, t] @ Wv.T))
        if layer.variant != "mf":
            cur.append(c[:, t])  # (B, G, D)
        o = softmax_attend(q, torch.stack(keys, 1), torch.stack(vals, 1)).reshape(batch, D)
        oc = cross_attend_naive(layer, x[:, t], ctx)
        ys.append(o @ layer.attn.out_proj.weight.T + oc @ layer.cross_out.weight.T)
    if (p0 + T) % Wb == 0:
        ctx = torch.stack(cur, 1) if layer.variant != "mf" else c[:, T - 1, :, None, :]
        keys, vals, cur = [], [], []

    def pad(items, like):
        if like.shape[1] == 0:
            return like
        full = items + [torch.zeros_like(like[:, 0])] * (like.shape[1] - len(items))
        return torch.stack(full, 1)

    final = BSTState(
        h, ctx, pad(cur, state.cur), pad(keys, state.k), pad(vals, state.v),
        torch.full_like(state.pos, (p0 + T) % Wb),
    )
    return torch.stack(ys, 1), final


def leaves_of(layer, x, state):
    params = [layer.A_log_re, layer.log_dt, layer.C, layer.attn.qkv.weight, layer.cross_kv.weight]
    if layer.variant == "mf":
        params.append(layer.context_id)
    return [x, *state[:-1], *params]


def loss_of(y, state, seed=1):
    g = torch.Generator().manual_seed(seed)
    total = 0
    for t in (y, *state[:-1]):
        t = torch.view_as_real(t) if t.is_complex() else t
        total = total + (t * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum()
    return total


@pytest.mark.parametrize("mode", ["auto", "conv", "recurrent"])
@pytest.mark.parametrize("p0,T", [(0, 13), (3, 13), (1, 2), (2, 6), (0, 1)], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_equals_token_by_token_reference(variant, p0, T, mode):
    layer = make(variant, mode=mode)
    x = torch.randn(2, T, D, dtype=torch.float64, requires_grad=True)
    s0 = random_state(layer, 2, p0)
    for t in s0[:-1]:
        t.requires_grad_(True)
    y, s = layer(x, s0)
    y_ref, s_ref = bst_naive(layer, x, s0)
    assert_close(y, y_ref, name="y")
    for field, a, b in zip(BSTState._fields, s, s_ref):
        assert_close(a, b, name=f"final state.{field}")
    leaves = leaves_of(layer, x, s0)
    grads = torch.autograd.grad(loss_of(y, s), leaves, allow_unused=True)
    grads_ref = torch.autograd.grad(loss_of(y_ref, s_ref), leaves, allow_unused=True)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        if g_ref is None:
            assert g is None or not g.any(), f"leaf {i}: gradient where the reference has none"
            continue
        assert_close(g, g_ref, name=f"grad of leaf {i}")
    # the initial state reaches the output: the SSM state and the carried context at least
    assert grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_sequence_block_without_context_is_causal_attention(variant):
    T = 11
    layer = make(variant, block_size=T, rope=False)
    if variant == "mf":
        # with zero context states the context IDs are the cross-attention's only input
        layer.context_id.data.zero_()
    x = torch.randn(3, T, D, dtype=torch.float64)
    y, _ = layer(x)  # fresh state: the only block's context is zeros, so cross-attention gives 0
    q, k, v = (heads(t).transpose(1, 2) for t in layer.attn.qkv(x).chunk(3, -1))  # (B, h, T, dh)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(x.shape)
    assert_close(y, layer.attn.out_proj(o), name="BST(W=T, no context) vs causal attention")
    with_context = random_state(layer, 3, 0)._replace(ssm=layer.initial_state(3).ssm)
    y_ctx, _ = layer(x, with_context)
    assert (y_ctx - y).abs().max() > 1e-3, "a carried context must change the output"


@pytest.mark.parametrize("use_rope", [False, True], ids=["no_rope", "rope"])
def test_block_attention_at_full_length_is_causal_attention(use_rope):
    T = 9
    torch.manual_seed(0)
    layer = BlockAttention(D, HEADS, block_size=T, rope=use_rope).double()
    x = torch.randn(2, T, D, dtype=torch.float64)
    q, k, v = (heads(t) for t in layer.qkv(x).chunk(3, -1))  # (B, T, h, dh)
    if use_rope:
        slots = torch.arange(T, dtype=torch.float64)[:, None, None]  # (T, 1, 1)
        q, k = rotate(q, slots), rotate(k, slots)
    o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    y, _ = layer(x)
    assert_close(y, layer.out_proj(o.transpose(1, 2).reshape(x.shape)), name="y")


@pytest.mark.parametrize("mode", ["auto", "conv", "recurrent"])
@pytest.mark.parametrize("variant", ["sh", "mf"])
def test_context_states_are_the_ssm_scan_at_block_boundaries(variant, mode):
    layer, T = make(variant, mode=mode), 14
    x = torch.randn(2, T, D, dtype=torch.float64)
    lam_bar, B_bar, C = layer.discretize(torch.complex128)
    h_all, _ = diag_scan_naive(B_bar * x.to(torch.complex128)[:, :, None, :, None], lam_bar)
    c = 2 * (h_all * C).real.sum(-1)  # (B, T, S, D) the read-out of the scanned state
    out, _ = layer.ssm_outputs(x, layer.initial_state(2).ssm)
    ctx, _, _ = layer.context_blocks(out, layer.initial_state(2), 0)
    assert ctx.shape[1] == math.ceil(T / W)
    assert not ctx[:, 0].any(), "the first block of a fresh stream has zero context"
    for k in range(1, ctx.shape[1]):
        if variant == "sh":
            want = c[:, (k - 1) * W : k * W]  # (B, W, 1, D): the W outputs of the block before
        else:
            want = c[:, k * W - 1, :, None, :]  # (B, S, 1, D): each filter's last output
        assert_close(ctx[:, k], want, name=f"context of block {k}")


@pytest.mark.parametrize("mode", ["auto", "conv", "recurrent"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_in_pieces_and_step_equal_one_pass(variant, mode):
    layer = make(variant, mode=mode)
    x = torch.randn(2, 23, D, dtype=torch.float64)
    s0 = random_state(layer, 2, 1)
    y, s = layer(x, s0)
    for cuts in ([3, 7, 11, 15, 19], [2, 5, 6, 13], [1]):  # block edges are at 3, 7, 11, ...
        state, ys = s0, []
        for a, b in zip([0, *cuts], [*cuts, 23]):
            y_piece, state = layer(x[:, a:b], state)
            ys.append(y_piece)
        assert_close(torch.cat(ys, 1), y, name=f"pieces {cuts}")
        for field, got, want in zip(BSTState._fields, state, s):
            assert_close(got, want, name=f"pieces {cuts}: state.{field}")
    y_p, state = layer(x[:, :10], s0)
    steps = []
    for t in range(10, 23):
        y_t, state = layer.step(x[:, t], state)
        steps.append(y_t)
    assert_close(torch.cat([y_p, torch.stack(steps, 1)], 1), y, name="prefill + step")


def jacobian_by_token(layer, T):
    x = torch.randn(1, T, D, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda u: layer(u)[0], x)  # (1, T, D, 1, T, D)
    return J[0, :, :, 0].abs().sum((1, 3))  # (T, T): |d y_t / d x_s|


@pytest.mark.parametrize("mode", ["auto", "conv", "recurrent"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_and_context_crosses_blocks(variant, mode):
    T = 12
    J = jacobian_by_token(make(variant, mode=mode), T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    # the scan is exactly causal; the FFT convolution leaks rounding noise (~1e-17) only
    tol = 0.0 if mode == "recurrent" else 1e-12 * J.max()
    assert J[future].max() <= tol, "d y_t / d x_s must vanish for s > t"
    # token 8 (block 2) sees token 1 (block 0) only through the SSM context states
    assert J[8, 1] > 1e-8


def test_block_attention_is_causal_and_block_local():
    T = 12
    torch.manual_seed(0)
    J = jacobian_by_token(BlockAttention(D, HEADS, block_size=W).double(), T)
    block = torch.arange(T) // W
    allowed = (block[:, None] == block[None, :]) & torch.tril(torch.ones(T, T, dtype=torch.bool))
    assert J[~allowed].max() == 0
    assert (J[allowed] > 0).all()


def test_block_attention_pieces_and_state():
    torch.manual_seed(0)
    layer = BlockAttention(D, HEADS, block_size=5).double()
    x = torch.randn(2, 17, D, dtype=torch.float64)
    y, s = layer(x)
    y1, s1 = layer(x[:, :7])
    y2, s2 = layer(x[:, 7:], s1)
    assert_close(torch.cat([y1, y2], 1), y, name="pieces")
    for field, a, b in zip(BlockAttentionState._fields, s2, s):
        assert_close(a, b, name=f"state.{field}")
    assert float(s.pos[0]) == 17 % 5


def test_rope_scores_depend_on_the_offset_only():
    q, k = torch.randn(2, 1, 1, 8, dtype=torch.float64).unbind(0)
    from longssm.layers.attention import rope

    def score(i, j):
        qi = rope(q, torch.tensor([i]))
        kj = rope(k, torch.tensor([j]))
        return (qi * kj).sum()

    assert_close(score(5, 2), score(3, 0), name="offset 3")
    assert (score(5, 2) - score(5, 0)).abs() > 1e-6


def test_bad_options_and_states_are_clear_errors():
    with pytest.raises(ValueError, match="variant must be one of"):
        BST(D, 4, variant="xx")
    with pytest.raises(ValueError, match="mode must be one of"):
        BST(D, 4, mode="fft")
    with pytest.raises(ValueError, match="heads must divide"):
        BlockAttention(D, heads=3)
    layer = make("sh")
    state = layer.initial_state(2, dtype=torch.float64)
    bad = state._replace(pos=torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="shared by every row"):
        layer(torch.randn(2, 3, D, dtype=torch.float64), bad)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        layer(torch.randn(2, 3, D, dtype=torch.float64), state._replace(pos=state.pos + 4))
