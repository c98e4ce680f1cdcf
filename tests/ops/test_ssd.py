"""SSD (Mamba-2) op: chunked form and step loop against the naive recurrence, in float64."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.ops._common import numba_available, torch_forms
from longssm.ops.ssd import ssd, ssd_chunk, ssd_naive, ssd_path, ssd_step

F64 = torch.float64


def make_inputs(batch, T, nheads, headdim, ngroups, d_state, dtype=F64, with_state=True,
                dt_scale=1.0):
    """Random SSD inputs with dt > 0 and A < 0; all leaves require grad."""
    g = torch.Generator().manual_seed(1234 + T)
    x = torch.randn(batch, T, nheads, headdim, generator=g, dtype=dtype)
    dt = dt_scale * (torch.rand(batch, T, nheads, generator=g, dtype=dtype) + 0.05)
    A = -(torch.rand(nheads, generator=g, dtype=dtype) + 0.1)
    B = torch.randn(batch, T, ngroups, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, T, ngroups, d_state, generator=g, dtype=dtype)
    D = torch.randn(nheads, generator=g, dtype=dtype)
    h0 = None
    if with_state:
        h0 = torch.randn(batch, nheads, headdim, d_state, generator=g, dtype=dtype)
    leaves = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, initial_state=h0)
    for v in leaves.values():
        if v is not None:
            v.requires_grad_(True)
    return leaves


def loss_of(y, final):
    """A loss that mixes y and the final state with fixed random weights."""
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    wh = torch.randn(final.shape, generator=g, dtype=final.dtype)
    return (y * wy).sum() + (final * wh).sum()


# (T, chunk_size, nheads, ngroups): lengths 1, 7, 63, a chunk-multiple and a long one.
CASES = [
    pytest.param(1, 16, 2, 1, id="T1"),
    pytest.param(7, 4, 4, 2, id="T7-chunk4-g2"),
    pytest.param(63, 16, 4, 1, id="T63-chunk16"),
    pytest.param(64, 16, 2, 2, id="T64-chunk16-g2"),
    pytest.param(63, 64, 2, 1, id="T63-onechunk"),
    pytest.param(500, 64, 4, 2, id="T500-chunk64-g2"),
]


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("T,chunk,nheads,ngroups", CASES)
def test_chunk_matches_naive_forward_and_grad(T, chunk, nheads, ngroups, with_state):
    inp = make_inputs(2, T, nheads, 3, ngroups, 5, with_state=with_state)
    y_ref, h_ref = ssd_naive(**inp, output_final_state=True)
    y, h = ssd_chunk(**inp, output_final_state=True, chunk_size=chunk)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    leaves = {k: v for k, v in inp.items() if v is not None}
    g_ref = torch.autograd.grad(loss_of(y_ref, h_ref), list(leaves.values()))
    g = torch.autograd.grad(loss_of(y, h), list(leaves.values()))
    for name, a, e in zip(leaves, g, g_ref):
        assert_close(a, e, atol=1e-9, rtol=1e-8, name=f"d/d{name}")


@pytest.mark.parametrize("T", [1, 7, 63], ids=lambda t: f"T{t}")
def test_step_loop_matches_naive(T):
    inp = make_inputs(2, T, 4, 3, 2, 5)
    y_ref, h_ref = ssd_naive(**inp, output_final_state=True)
    h = inp["initial_state"]
    ys = []
    for t in range(T):
        y_t, h = ssd_step(inp["x"][:, t], inp["dt"][:, t], inp["A"], inp["B"][:, t],
                          inp["C"][:, t], inp["D"], state=h)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    g_ref = torch.autograd.grad(loss_of(y_ref, h_ref), inp["initial_state"])[0]
    g = torch.autograd.grad(loss_of(torch.stack(ys, 1), h), inp["initial_state"])[0]
    assert_close(g, g_ref, name="d/dinitial_state")


def test_step_without_state_equals_zero_state():
    inp = make_inputs(2, 1, 4, 3, 1, 5, with_state=False)
    args = (inp["x"][:, 0], inp["dt"][:, 0], inp["A"], inp["B"][:, 0], inp["C"][:, 0], inp["D"])
    y1, h1 = ssd_step(*args)
    y2, h2 = ssd_step(*args, state=torch.zeros(2, 4, 3, 5, dtype=F64))
    assert_close(y1, y2, name="y")
    assert_close(h1, h2, name="state")


@pytest.mark.parametrize("split", [1, 17, 40], ids=lambda s: f"split{s}")
def test_chunk_split_with_state_carried(split):
    inp = make_inputs(2, 41, 4, 3, 2, 5)
    y_all, h_all = ssd_chunk(**inp, output_final_state=True, chunk_size=8)
    first = {k: (v[:, :split] if k in ("x", "dt", "B", "C") else v) for k, v in inp.items()}
    second = {k: (v[:, split:] if k in ("x", "dt", "B", "C") else v) for k, v in inp.items()}
    y1, h1 = ssd_chunk(**first, output_final_state=True, chunk_size=8)
    second["initial_state"] = h1
    y2, h2 = ssd_chunk(**second, output_final_state=True, chunk_size=8)
    assert_close(torch.cat([y1, y2], 1), y_all, name="y")
    assert_close(h2, h_all, name="final_state")


def test_no_final_state_unless_asked_and_ssd_dispatches_on_cpu():
    """path="auto" on CPU runs the fused kernels when numba is installed, else the chunked form;
    inside ``torch_forms()`` always the chunked form."""
    inp = make_inputs(1, 5, 2, 2, 1, 3)
    y, h = ssd(**inp)
    assert h is None
    want = "fused" if numba_available() else "chunk"
    assert ssd_path(*inp.values()) == want
    assert_close(y, ssd_chunk(**inp)[0], name="ssd == ssd_chunk on CPU")
    with torch_forms():
        assert ssd_path(*inp.values()) == "chunk"
    assert ssd_naive(**inp)[1] is None


def test_without_D_and_zero_length():
    inp = make_inputs(1, 9, 2, 2, 1, 3)
    inp["D"] = None
    y_ref, h_ref = ssd_naive(**inp, output_final_state=True)
    y, h = ssd_chunk(**inp, output_final_state=True, chunk_size=4)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    empty = make_inputs(1, 0, 2, 2, 1, 3)
    y0, h0 = ssd_chunk(**empty, output_final_state=True)
    assert y0.shape == (1, 0, 2, 2)
    assert_close(h0, empty["initial_state"], name="state through T=0")


def test_strong_decay_stays_finite():
    # Δ·a down to about -500 per step: exp underflows to 0 inside a chunk; no inf or NaN anywhere.
    inp = make_inputs(1, 37, 2, 2, 1, 3, dt_scale=400.0)
    y_ref, h_ref = ssd_naive(**inp, output_final_state=True)
    y, h = ssd_chunk(**inp, output_final_state=True, chunk_size=16)
    assert_close(y, y_ref, atol=1e-8, rtol=1e-8, name="y")
    assert_close(h, h_ref, atol=1e-8, rtol=1e-8, name="final_state")
    wrt = [inp["x"], inp["dt"], inp["A"], inp["initial_state"]]
    grads = torch.autograd.grad(loss_of(y, h), wrt)
    assert all(torch.isfinite(g).all() for g in grads)


def test_float32_matches_float64_reference():
    inp = make_inputs(2, 70, 4, 3, 2, 5)
    ref = ssd_naive(**inp, output_final_state=True)
    inp32 = {k: v.detach().float() for k, v in inp.items()}
    y, h = ssd_chunk(**inp32, output_final_state=True, chunk_size=16)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_close(y, ref[0].float(), atol=1e-4, rtol=1e-4, name="y fp32")
    assert_close(h, ref[1].float(), atol=1e-4, rtol=1e-4, name="state fp32")


def test_gradcheck_chunk_and_step():
    inp = make_inputs(1, 5, 2, 2, 1, 2)
    names = list(inp)

    def chunk_fn(*args):
        y, h = ssd_chunk(**dict(zip(names, args)), output_final_state=True, chunk_size=2)
        return y, h

    assert torch.autograd.gradcheck(chunk_fn, tuple(inp.values()))

    def step_fn(x, dt, A, B, C, D, state):
        return ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, state)

    assert torch.autograd.gradcheck(step_fn, tuple(inp.values()))


@pytest.mark.parametrize(
    "change,err",
    [
        pytest.param(dict(initial_state=torch.zeros(1, 2, 2, 4)), ValueError, id="state-shape"),
        pytest.param(dict(A=torch.zeros(3)), ValueError, id="A-shape"),
        pytest.param(dict(B=torch.zeros(1, 5, 3, 3), C=torch.zeros(1, 5, 3, 3)), ValueError,
                     id="heads-not-divisible"),
        pytest.param(dict(dt=torch.zeros(1, 4, 2)), ValueError, id="dt-shape"),
        pytest.param(dict(x=torch.zeros(1, 5, 4)), ValueError, id="x-ndim"),
        pytest.param(dict(x=torch.zeros(1, 5, 2, 2, dtype=torch.long)), TypeError, id="x-int"),
        pytest.param(dict(chunk_size=0), ValueError, id="chunk-size"),
    ],
)
def test_bad_inputs_raise(change, err):
    inp = {k: v.detach() for k, v in make_inputs(1, 5, 2, 2, 1, 3).items()}
    inp.update(change)
    with pytest.raises(err):
        ssd_chunk(**inp)
