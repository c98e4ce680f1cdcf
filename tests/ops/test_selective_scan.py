"""Selective scan (Mamba-1): chunk == step loop == naive, incl. gradients w.r.t. the initial state."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.ops.selective_scan import (
    selective_scan,
    selective_scan_chunk,
    selective_scan_naive,
    selective_scan_step,
)

NAMES = ("x", "dt", "A", "B", "C", "D", "h0")


def make_inputs(batch, T, d_inner, d_state, dtype=torch.float64, with_h0=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    inputs = {
        "x": rand(batch, T, d_inner),
        # Δ spread over decades like softplus(...) gives: some steps forget, some barely decay.
        "dt": torch.exp(rand(batch, T, d_inner) - 2.0),
        "A": -torch.exp(rand(d_inner, d_state)),
        "B": rand(batch, T, d_state),
        "C": rand(batch, T, d_state),
        "D": rand(d_inner),
        "h0": rand(batch, d_inner, d_state) if with_h0 else None,
    }
    for t in inputs.values():
        if t is not None:
            t.requires_grad_(True)
    return inputs


def run(fn, inp, **kw):
    return fn(
        inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"],
        initial_state=inp["h0"], output_final_state=True, **kw,
    )


def step_loop(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False):
    state, ys = initial_state, []
    for t in range(x.shape[1]):
        y_t, state = selective_scan_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


def grads_of(y, h, inp, seed=1):
    """Gradients of a random linear loss on both y and the final state."""
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    wh = torch.randn(h.shape, generator=g, dtype=h.dtype)
    loss = (y * wy).sum() + (h * wh).sum()
    leaves = [inp[k] for k in NAMES if inp[k] is not None]
    return torch.autograd.grad(loss, leaves)


SHAPES = [(2, 1, 3, 4), (2, 7, 3, 4), (1, 63, 5, 3), (2, 500, 4, 2)]
SHAPE_IDS = [f"T{s[1]}" for s in SHAPES]


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("form", ["chunk16", "chunk5", "step"])
def test_matches_naive_outputs_state_and_grads(form, shape, with_h0):
    inp = make_inputs(*shape, with_h0=with_h0)
    if form == "step":
        y, h = run(step_loop, inp)
    else:
        y, h = run(selective_scan_chunk, inp, chunk_size=int(form[5:]))
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    names = [k for k in NAMES if inp[k] is not None]
    for name, g, g_ref in zip(names, grads_of(y, h, inp), grads_of(y_ref, h_ref, inp)):
        assert_close(g, g_ref, name=f"d loss / d {name}")


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64], ids=lambda c: f"L{c}")
def test_chunk_size_does_not_change_result(chunk_size):
    inp = make_inputs(2, 37, 3, 4)
    y, h = run(selective_scan_chunk, inp, chunk_size=chunk_size)
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")


def test_default_is_chunk_and_d_none_and_no_final_state():
    inp = make_inputs(2, 9, 3, 4)
    y, h = selective_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"])
    assert h is None
    y_ref, _ = selective_scan_naive(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"])
    assert_close(y, y_ref, name="y (D=None)")


def test_float32_close_to_float64_reference():
    inp = make_inputs(2, 200, 8, 4)
    inp32 = {k: (v.detach().float() if v is not None else None) for k, v in inp.items()}
    y, h = run(selective_scan_chunk, inp32)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref.float(), atol=1e-4, rtol=1e-4, name="y fp32")
    assert_close(h, h_ref.float(), atol=1e-4, rtol=1e-4, name="final_state fp32")


def test_strong_decay_does_not_overflow():
    """Log-decays summing to -1e5 in a chunk: exp(-cum) would overflow; exp(cum_t - cum_s) can't."""
    inp = make_inputs(2, 300, 4, 3, dtype=torch.float32)
    with torch.no_grad():
        inp["dt"].mul_(0).add_(20.0)
        inp["A"].mul_(0).add_(-30.0)
    y, h = run(selective_scan_chunk, inp, chunk_size=64)
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    grads = grads_of(y, h, inp)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
def test_gradcheck_chunk(with_h0):
    inp = make_inputs(1, 5, 2, 2, with_h0=with_h0)
    names = [k for k in NAMES if inp[k] is not None]

    def fn(*args):
        kw = dict(zip(names, args))
        y, h = selective_scan_chunk(
            kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw["D"],
            initial_state=kw.get("h0"), output_final_state=True, chunk_size=2,
        )
        return y, h

    assert torch.autograd.gradcheck(fn, tuple(inp[k] for k in names))


@pytest.mark.parametrize(
    "bad,match",
    [
        ("x", "x must have shape"),
        ("dt", "dt must have shape"),
        ("A", "A must have shape"),
        ("B", "B must have shape"),
        ("h0", "initial_state must have shape"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else "",
)
@pytest.mark.parametrize("fn", [selective_scan_chunk, selective_scan_naive], ids=["chunk", "naive"])
def test_bad_shapes_raise(fn, bad, match):
    inp = {k: (v.detach() if v is not None else None) for k, v in make_inputs(2, 5, 3, 4).items()}
    if bad == "x":
        inp["x"] = inp["x"][0]
    elif bad == "A":
        inp["A"] = inp["A"][:, :, None]
    else:
        inp[bad] = inp[bad][..., :-1]
    with pytest.raises(ValueError, match=match):
        run(fn, inp)


def test_step_bad_state_raises():
    inp = make_inputs(2, 1, 3, 4)
    with pytest.raises(ValueError, match="state must have shape"):
        selective_scan_step(
            inp["x"][:, 0], inp["dt"][:, 0], inp["A"], inp["B"][:, 0], inp["C"][:, 0],
            state=torch.zeros(2, 3, 5, dtype=torch.float64),
        )
