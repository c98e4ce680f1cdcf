"""Causal depthwise convolution with carried history: the fused (numba) and torch (F.conv1d)
forms == the naive loop in float64 (outputs, new history, gradients to x, weight, bias and the
history), gradcheck, a sequence in pieces == one pass, steps == one pass, and dispatch."""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import assert_close, linear_loss_grads
from longssm.ops import causal_conv as conv_module
from longssm.ops.causal_conv import (
    causal_conv,
    causal_conv_fused,
    causal_conv_naive,
    causal_conv_step,
    causal_conv_torch,
)

needs_numba = pytest.mark.skipif(
    not conv_module.numba_available(), reason="the fused form needs numba"
)
FAST_FORMS = {
    "fused": pytest.param(causal_conv_fused, marks=needs_numba, id="fused"),
    "torch": pytest.param(causal_conv_torch, id="torch"),
}
# T across the kernels' 32-step tasks and shorter than the history (T=1 < K-1); odd channels.
SHAPES = [(3, T, C, K) for T, C, K in itertools.product([1, 7, 33], [5, 13], [2, 3, 4])]
SHAPE_IDS = [f"T{s[1]}-C{s[2]}-K{s[3]}" for s in SHAPES]
VARIANTS = list(itertools.product([True, False], [True, False], [None, "silu"]))
VARIANT_IDS = [f"{'h' if h else 'noh'}-{'b' if b else 'nob'}-{a or 'id'}" for h, b, a in VARIANTS]


def make_inputs(batch, T, C, K, history=True, bias=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    return {
        "x": rand(batch, T, C),
        "weight": rand(C, K),
        "bias": rand(C) if bias else None,
        "initial_state": rand(batch, C, K - 1) if history else None,
    }


def run(fn, inp, activation):
    return fn(inp["x"], inp["weight"], inp["bias"], inp["initial_state"], True, activation)


def check_against_naive(fn, inp, activation, **tol):
    y, h = run(fn, inp, activation)
    y_ref, h_ref = run(causal_conv_naive, inp, activation)
    assert y.dtype == y_ref.dtype and h.dtype == h_ref.dtype
    assert_close(y, y_ref, name="y", **tol)
    assert_close(h, h_ref, name="new history", **tol)
    names = [k for k, t in inp.items() if t is not None]
    leaves = [inp[k] for k in names]
    grads, grads_ref = linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves)
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close(g, g_ref, name=f"d loss / d {name}", **tol)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("fn", FAST_FORMS.values())
def test_matches_naive_outputs_history_and_grads(fn, shape, variant):
    history, bias, activation = variant
    check_against_naive(fn, make_inputs(*shape, history=history, bias=bias), activation)


@needs_numba
@pytest.mark.parametrize("activation", [None, "silu"])
def test_fused_matches_torch_form_in_float32(activation):
    """The fused kernels against the F.conv1d path the layers used before, at a size across
    several tasks and channel counts past a vector width."""
    inp = make_inputs(2, 100, 40, 4, dtype=torch.float32)
    y, h = run(causal_conv_fused, inp, activation)
    y_ref, h_ref = run(causal_conv_torch, inp, activation)
    assert_close(y, y_ref, name="y", atol=1e-5, rtol=1e-5)
    assert torch.equal(h, h_ref)
    leaves = list(t for t in inp.values())
    for i, (g, g_ref) in enumerate(
        zip(linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves))
    ):
        assert_close(g, g_ref, name=f"grad {i}", atol=1e-4, rtol=1e-4)


@needs_numba
@pytest.mark.parametrize("activation", [None, "silu"])
def test_fused_gradcheck_including_history(activation):
    inp = make_inputs(2, 9, 5, 4)

    def fn(x, weight, bias, history):
        return causal_conv_fused(x, weight, bias, history, True, activation)

    assert torch.autograd.gradcheck(fn, tuple(inp.values()))


@pytest.mark.parametrize("fn", FAST_FORMS.values())
@pytest.mark.parametrize("activation", [None, "silu"])
def test_pieces_with_carried_history_equal_one_pass(fn, activation):
    """Cuts of length 1 and 2 (shorter than the history, K-1 = 3) and longer ones."""
    inp = make_inputs(3, 40, 13, 4)
    x, w, b, h0 = inp["x"], inp["weight"], inp["bias"], inp["initial_state"]
    y_full, h_full = fn(x, w, b, h0, True, activation)
    pieces, h = [], h0
    for lo, hi in [(0, 1), (1, 3), (3, 20), (20, 40)]:
        y, h = fn(x[:, lo:hi], w, b, h, True, activation)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), y_full, name="pieces y")
    assert_close(h, h_full, name="pieces history")
    leaves = list(inp.values())
    got = linear_loss_grads(torch.cat(pieces, 1), h, leaves)
    want = linear_loss_grads(y_full, h_full, leaves)
    for i, (g, g_ref) in enumerate(zip(got, want)):
        assert_close(g, g_ref, name=f"pieces grad {i}")


def test_steps_equal_one_pass():
    inp = make_inputs(2, 6, 5, 3)
    x, w, b, h = (t.detach() for t in inp.values())
    y_full, h_full = causal_conv_naive(x, w, b, h, True, "silu")
    ys = []
    for t in range(x.shape[1]):
        y_t, h = causal_conv_step(x[:, t], w, b, h, "silu")
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y_full, name="steps y")
    assert_close(h, h_full, name="steps history")


@pytest.mark.parametrize("fn", FAST_FORMS.values())
def test_width_one_and_empty_sequence(fn):
    """K = 1 (no history) and T = 0 (the history passes through)."""
    check_against_naive(fn, make_inputs(2, 5, 3, 1, history=False), "silu")
    inp = make_inputs(2, 0, 3, 4)
    y, h = run(fn, inp, None)
    assert y.shape == (2, 0, 3)
    assert_close(h, inp["initial_state"], name="history through an empty segment")


def test_bad_inputs_are_value_errors():
    inp = make_inputs(2, 5, 3, 4)
    x, w = inp["x"], inp["weight"]
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv(x, w[:2])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        causal_conv(x, w, None, torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv(x, w, activation="relu")
    with pytest.raises(ValueError, match="path must be one of auto"):
        causal_conv(x, w, path="fastest")


def test_auto_path_and_unavailable_fused(monkeypatch):
    x = torch.zeros(2, 3, 4)
    expected = "fused" if conv_module.numba_available() else "torch"
    assert conv_module.resolve_path("auto", x) == conv_module.conv_path(x) == expected
    meta = torch.empty(2, 3, 4, device="meta")
    assert conv_module.resolve_path("auto", meta) == "torch"
    with pytest.raises(ValueError, match="'fused' is not available.*CPU tensors only"):
        conv_module.resolve_path("fused", meta)
    monkeypatch.setattr(conv_module, "numba_available", lambda: False)
    assert conv_module.resolve_path("auto", x) == "torch"
    with pytest.raises(ValueError, match="numba is not installed"):
        causal_conv(x, torch.zeros(4, 2), path="fused")


@needs_numba
def test_fused_runs_on_its_thread_count_and_restores_the_callers(monkeypatch):
    """THREADS None keeps the caller's numba setting; a cap lowers it inside the call only."""
    import numba

    from longssm.ops.causal_conv import fused_cpu

    inp = make_inputs(2, 40, 5, 4)
    before = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    try:
        for cap in (None, 1):
            monkeypatch.setattr(fused_cpu, "THREADS", cap)
            y, _ = run(causal_conv_fused, inp, "silu")
            y.sum().backward()
            assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
            seen = []
            with fused_cpu._numba_threads(fused_cpu.THREADS):
                seen.append(numba.get_num_threads())
            want = numba.config.NUMBA_NUM_THREADS if cap is None else 1
            assert seen == [want]
    finally:
        numba.set_num_threads(before)
