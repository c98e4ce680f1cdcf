"""Fused CPU Longhorn (numba) == naive loop: outputs, final state and every gradient."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from helpers import assert_close, linear_loss_grads  # noqa: E402
from longssm.ops import longhorn as longhorn_module  # noqa: E402
from longssm.ops.longhorn import (  # noqa: E402
    longhorn,
    longhorn_fused,
    longhorn_naive,
    longhorn_path,
)

NAMES = ("x", "beta", "k", "q", "D", "h0")
# Channel counts below, at and across the kernel's 16-channel blocks; T across its 32-step
# checkpoints (T=500: 15 full blocks and a partial one).
SHAPES = [(2, 1, 3, 4), (2, 7, 16, 4), (1, 63, 37, 3), (2, 500, 5, 2)]
SHAPE_IDS = [f"T{s[1]}-d{s[2]}" for s in SHAPES]


def make_inputs(batch, T, d_inner, d_state, dtype=torch.float64, with_h0=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    inp = {
        "x": torch.randn(batch, T, d_inner, generator=g, dtype=dtype),
        "beta": torch.sigmoid(torch.randn(batch, T, d_inner, generator=g, dtype=dtype)),
        "k": torch.randn(batch, T, d_state, generator=g, dtype=dtype),
        "q": torch.randn(batch, T, d_state, generator=g, dtype=dtype),
        "D": torch.randn(d_inner, generator=g, dtype=dtype),
        "h0": torch.randn(batch, d_inner, d_state, generator=g, dtype=dtype) if with_h0 else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in inp.items()}


def run(fn, inp):
    return fn(
        inp["x"], inp["beta"], inp["k"], inp["q"], inp["D"], inp["h0"], output_final_state=True
    )


def check_against_naive(inp, **tol):
    y, h = run(longhorn_fused, inp)
    y_ref, h_ref = run(longhorn_naive, inp)
    assert y.dtype == y_ref.dtype and h.dtype == h_ref.dtype
    assert_close(y, y_ref, name="y", **tol)
    assert_close(h, h_ref, name="final_state", **tol)
    names = [k for k in NAMES if inp[k] is not None and inp[k].requires_grad]
    leaves = [inp[k] for k in names]
    grads, grads_ref = linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves)
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close(g, g_ref, name=f"d loss / d {name}", **tol)


@pytest.mark.parametrize(
    "shape",
    [(40, 5, 50, 3), (3, 6, 200, 2), (9, 4, 70, 2)],
    ids=["one-group-of-4-blocks", "groups-of-2-blocks", "groups-of-1-and-empty"],
)
def test_block_groups_of_the_backward_sum_dk_dq_over_every_channel(shape):
    """The backward's tasks run groups of channel blocks and add their ∂k, ∂q into one row per
    group (``ops._common.backward_groups``: 1, 11 and 4 groups here): the naive loop's gradients."""
    check_against_naive(make_inputs(*shape))


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_naive_outputs_state_and_grads(shape, with_h0):
    check_against_naive(make_inputs(*shape, with_h0=with_h0))


def test_k_gradient_paths_separately():
    """dk through the kernel's input path (ε x k) and decay path (1 - ε k²), with ε held fixed."""
    inp = make_inputs(2, 40, 18, 3)
    # The kernel Function with ε as a leaf, against a torch loop: dk here is the kernel's own
    # (input + decay path), without the ε -> k path that autograd adds in longhorn_fused.
    from longssm.ops.longhorn.fused_cpu import _FusedLonghorn

    eps = longhorn_module.longhorn_eps(inp["beta"], inp["k"]).detach().requires_grad_()
    k = inp["k"].detach().requires_grad_()
    x, q, D, h0 = (inp[n].detach() for n in ("x", "q", "D", "h0"))
    y, h = _FusedLonghorn.apply(x, eps, k, q, D, h0)
    S, ys = h0, []
    for t in range(x.shape[1]):
        e = eps[:, t, :, None]
        S = (1 - e * (k[:, t] ** 2)[:, None, :]) * S + e * x[:, t, :, None] * k[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", S, q[:, t]) + D * x[:, t])
    y_ref = torch.stack(ys, 1)
    got = linear_loss_grads(y, h, [eps, k])
    want = linear_loss_grads(y_ref, S, [eps, k])
    assert_close(got[0], want[0], name="d loss / d eps")
    assert_close(got[1], want[1], name="d loss / d k (kernel paths)")


def test_gradient_through_y_only_and_final_state_only():
    inp = make_inputs(2, 40, 5, 3)
    leaves = [inp[k] for k in NAMES]
    for use in ("y", "final"):
        grads = []
        for fn in (longhorn_fused, longhorn_naive):
            y, h = run(fn, inp)
            loss = (y * y).sum() if use == "y" else (h * h).sum()
            got = torch.autograd.grad(loss, leaves, allow_unused=True)
            # The final state does not depend on q or D: no gradient is a zero gradient.
            grads.append([torch.zeros_like(t) if g is None else g for t, g in zip(leaves, got)])
        for name, g, g_ref in zip(NAMES, *grads):
            assert_close(g, g_ref, name=f"{use} only: d loss / d {name}")


def test_some_inputs_without_grad_and_d_none():
    inp = make_inputs(2, 33, 4, 3)
    inp["q"].requires_grad_(False)
    inp["D"] = None
    inp["h0"] = inp["h0"].detach()
    check_against_naive(inp)
    y, h = longhorn_fused(inp["x"], inp["beta"], inp["k"], inp["q"])
    assert h is None
    y_ref, _ = longhorn_naive(inp["x"], inp["beta"], inp["k"], inp["q"])
    assert_close(y, y_ref, name="y (no final state)")


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
def test_gradcheck_fused(with_h0):
    # 35 steps: a full 32-step checkpoint block and a partial one; 17 channels: two blocks.
    inp = make_inputs(1, 35, 17, 2, with_h0=with_h0)
    names = [k for k in NAMES if inp[k] is not None]

    def fn(*args):
        kw = dict(zip(names, args))
        kw.setdefault("h0", None)
        return run(longhorn_fused, kw)

    assert torch.autograd.gradcheck(fn, tuple(inp[k] for k in names), fast_mode=True)


def test_float32_close_to_float64_reference():
    inp = make_inputs(2, 300, 20, 4)
    inp32 = {k: v.detach().float().requires_grad_(True) for k, v in inp.items()}
    y, h = run(longhorn_fused, inp32)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    y_ref, h_ref = run(longhorn_naive, inp)
    assert_close(y, y_ref, atol=1e-4, rtol=1e-4, name="y fp32")
    assert_close(h, h_ref, atol=1e-4, rtol=1e-4, name="final_state fp32")
    grads = linear_loss_grads(y, h, [inp32[k] for k in NAMES])
    grads_ref = linear_loss_grads(y_ref, h_ref, [inp[k] for k in NAMES])
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert g.dtype == torch.float32
        # Gradients sum up to 300 steps of products: a looser bound than the outputs'.
        assert_close(g, g_ref, atol=2e-3, rtol=2e-3, name=f"fp32 d loss / d {name}")


def test_non_contiguous_inputs():
    base = make_inputs(2, 50, 6, 3)
    views = {
        k: v.detach().transpose(0, 1).contiguous().transpose(0, 1) if v.dim() == 3 else v
        for k, v in base.items()
    }
    views = {k: v.detach().requires_grad_() for k, v in views.items()}
    assert not views["x"].is_contiguous()
    check_against_naive(views)
    y, h = run(longhorn_fused, views)
    y_ref, h_ref = run(longhorn_naive, base)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
def test_empty_sequence(with_h0):
    inp = make_inputs(2, 0, 3, 4, with_h0=with_h0)
    y, h = run(longhorn_fused, inp)
    assert y.shape == (2, 0, 3) and h.shape == (2, 3, 4)
    if with_h0:
        assert_close(h, inp["h0"], name="final_state == initial_state")
    else:
        assert not h.any()


def test_bad_inputs_raise():
    inp = make_inputs(2, 5, 3, 4)
    x, beta, k, q, D, h0 = (inp[n].detach() for n in NAMES)
    with pytest.raises(ValueError, match="beta"):
        longhorn_fused(x, beta[:, :4], k, q)
    with pytest.raises(ValueError, match="k must"):
        longhorn_fused(x, beta, k[:1], q)
    with pytest.raises(ValueError, match="q"):
        longhorn_fused(x, beta, k, q[..., :3])
    with pytest.raises(ValueError, match="D"):
        longhorn_fused(x, beta, k, q, D[:2])
    with pytest.raises(ValueError, match="initial_state"):
        longhorn_fused(x, beta, k, q, D, h0[:, :, :2])
    with pytest.raises(ValueError, match="x must"):
        longhorn_fused(x[0], beta, k, q)
    meta = torch.empty(2, 5, 3, device="meta")
    with pytest.raises(ValueError, match="CPU tensors only"):
        longhorn_fused(
            meta, meta, torch.empty(2, 5, 4, device="meta"), torch.empty(2, 5, 4, device="meta")
        )


def test_dispatcher_picks_fused_on_cpu_and_falls_back(monkeypatch):
    inp = make_inputs(2, 9, 3, 4)
    assert longhorn_path(inp["x"], inp["h0"]) == "fused"
    assert longhorn_path(torch.empty(2, 9, 3, device="meta")) == "chunk"
    y, h = run(longhorn, inp)
    y_ref, h_ref = run(longhorn_naive, inp)
    assert_close(y, y_ref, name="y (fused)")
    calls = []
    real_chunk = longhorn_module.longhorn_chunk
    monkeypatch.setattr(
        longhorn_module,
        "longhorn_chunk",
        lambda *a, **k: calls.append("chunk") or real_chunk(*a, **k),
    )
    monkeypatch.setattr(longhorn_module, "numba_available", lambda: False)
    assert longhorn_path(inp["x"]) == "chunk"
    y, h = run(longhorn, inp)
    assert calls == ["chunk"]
    assert_close(y, y_ref, name="y (fallback)")
    assert_close(h, h_ref, name="final_state (fallback)")
