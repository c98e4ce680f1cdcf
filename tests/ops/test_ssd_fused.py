"""Fused CPU SSD (numba kernels) against the naive recurrence: outputs, final state and every
gradient, in float64 at odd shapes (T across the checkpoint interval, headdim across the 16-lane
blocks), a gradcheck, float32 against float64, pieces with the state carried, T = 0, bad inputs."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, assert_same_bits_on_one_numba_thread
from longssm.ops._common import numba_available
from longssm.ops.ssd import ssd, ssd_fused, ssd_naive

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
F64 = torch.float64
NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


def make_inputs(
    batch, T, nheads, headdim, ngroups, d_state, dtype=F64, with_state=True, with_D=True, seed=0
):
    """Random SSD inputs (Δ > 0, a < 0); every given leaf requires grad."""
    g = torch.Generator().manual_seed(seed + 97 * T + headdim)
    x = torch.randn(batch, T, nheads, headdim, generator=g, dtype=dtype)
    dt = torch.rand(batch, T, nheads, generator=g, dtype=dtype) * 0.6 + 0.05
    A = -(torch.rand(nheads, generator=g, dtype=dtype) + 0.1)
    B = torch.randn(batch, T, ngroups, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, T, ngroups, d_state, generator=g, dtype=dtype)
    D = torch.randn(nheads, generator=g, dtype=dtype) if with_D else None
    h0 = torch.randn(batch, nheads, headdim, d_state, generator=g, dtype=dtype)
    inp = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, initial_state=h0 if with_state else None)
    for v in inp.values():
        if v is not None:
            v.requires_grad_(True)
    return inp


def weighted_loss(y, h, with_gh, seed=5):
    """Σ y ⊙ wy (+ Σ h_T ⊙ wh when ``with_gh``: else ∂L/∂h_T is None for the fused backward)."""
    g = torch.Generator().manual_seed(seed)  # weights drawn in float64 whatever the dtype
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64).to(y.dtype)).sum()
    if with_gh:
        loss = loss + (h * torch.randn(h.shape, generator=g, dtype=F64).to(h.dtype)).sum()
    return loss


# (batch, T, nheads, headdim, ngroups, d_state)
SHAPES = [
    pytest.param(2, 1, 2, 5, 1, 3, id="T1-P5"),
    pytest.param(3, 5, 4, 16, 2, 4, id="T5-P16-g2"),
    pytest.param(2, 37, 2, 20, 1, 8, id="T37-P20"),
    pytest.param(2, 70, 4, 33, 2, 5, id="T70-P33-g2"),
    pytest.param(3, 64, 3, 17, 1, 6, id="T64-P17"),
]


@pytest.mark.parametrize("with_gh", [True, False], ids=["gh", "no-gh"])
@pytest.mark.parametrize(
    "with_state,with_D",
    [(True, True), (False, True), (True, False)],
    ids=["h0-D", "noh0-D", "h0-noD"],
)
@pytest.mark.parametrize("batch,T,nheads,headdim,ngroups,d_state", SHAPES)
def test_fused_matches_naive_float64(
    batch, T, nheads, headdim, ngroups, d_state, with_state, with_D, with_gh
):
    inp = make_inputs(
        batch, T, nheads, headdim, ngroups, d_state, with_state=with_state, with_D=with_D
    )
    leaves = {k: v for k, v in inp.items() if v is not None}
    y, h = ssd_fused(**inp, output_final_state=True)
    y_ref, h_ref = ssd_naive(**inp, output_final_state=True)
    assert y.dtype == F64 and h.dtype == F64
    assert_close(y, y_ref, rtol=1e-10, atol=1e-10, name="y")
    assert_close(h, h_ref, rtol=1e-10, atol=1e-10, name="final state")
    got = torch.autograd.grad(weighted_loss(y, h, with_gh), list(leaves.values()))
    want = torch.autograd.grad(weighted_loss(y_ref, h_ref, with_gh), list(leaves.values()))
    for name, a, b in zip(leaves, got, want):
        assert_close(a, b, rtol=1e-10, atol=1e-10, name=f"grad {name}")


def test_no_gradient_to_initial_state_and_final_state_only_loss():
    """h_0 given but not requiring grad; a loss on the final state alone (∂L/∂y is None)."""
    inp = make_inputs(2, 40, 2, 18, 1, 4)
    inp["initial_state"] = inp["initial_state"].detach()
    leaves = [v for k, v in inp.items() if k != "initial_state"]
    _, h = ssd_fused(**inp, output_final_state=True)
    _, h_ref = ssd_naive(**inp, output_final_state=True)
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    got = torch.autograd.grad((h * w).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((h_ref * w).sum(), leaves, allow_unused=True)
    for leaf, a, b in zip(leaves, got, want):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b  # C and D do not reach h_T
        assert_close(a, b, rtol=1e-10, atol=1e-10, name="grad")


def test_gradcheck_tiny():
    inp = make_inputs(2, 4, 2, 3, 1, 2)

    def fn(*args):
        y, h = ssd_fused(**dict(zip(NAMES, args)), output_final_state=True)
        return y, h

    assert torch.autograd.gradcheck(fn, tuple(inp[k] for k in NAMES))


def test_float32_against_float64_naive():
    inp64 = make_inputs(2, 100, 4, 40, 2, 16)
    inp32 = {k: v.detach().float().requires_grad_() for k, v in inp64.items()}
    y, h = ssd_fused(**inp32, output_final_state=True)
    y_ref, h_ref = ssd_naive(**inp64, output_final_state=True)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    scale = y_ref.abs().max().item()
    assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4 * scale, name="y")
    assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-4 * h_ref.abs().max().item(), name="h")
    got = torch.autograd.grad(weighted_loss(y, h, True), list(inp32.values()))
    want = torch.autograd.grad(weighted_loss(y_ref, h_ref, True), list(inp64.values()))
    for name, a, b in zip(NAMES, got, want):
        tol = 1e-4 * b.abs().max().item()
        assert_close(a.double(), b, rtol=1e-4, atol=tol, name=f"grad {name}")


@pytest.mark.parametrize("split", [1, 32, 45])
def test_pieces_with_state_carried_equal_one_pass(split):
    inp = {k: v.detach() for k, v in make_inputs(2, 77, 2, 20, 2, 4).items()}
    y_all, h_all = ssd_fused(**inp, output_final_state=True)
    first = dict(
        inp,
        x=inp["x"][:, :split],
        dt=inp["dt"][:, :split],
        B=inp["B"][:, :split],
        C=inp["C"][:, :split],
    )
    y1, h1 = ssd_fused(**first, output_final_state=True)
    second = dict(
        inp,
        x=inp["x"][:, split:],
        dt=inp["dt"][:, split:],
        B=inp["B"][:, split:],
        C=inp["C"][:, split:],
        initial_state=h1,
    )
    y2, h2 = ssd_fused(**second, output_final_state=True)
    assert_close(torch.cat([y1, y2], 1), y_all, rtol=1e-12, atol=1e-12, name="y")
    assert_close(h2, h_all, rtol=1e-12, atol=1e-12, name="final state")


def test_zero_length_and_no_final_state_unless_asked():
    inp = make_inputs(2, 0, 2, 5, 1, 3)
    y, h = ssd_fused(**inp, output_final_state=True)
    assert y.shape == (2, 0, 2, 5)
    assert_close(h, inp["initial_state"], name="state through T = 0")
    y, h = ssd_fused(**dict(inp, initial_state=None), output_final_state=True)
    assert torch.count_nonzero(h) == 0 and h.shape == (2, 2, 5, 3)
    inp = make_inputs(1, 6, 2, 5, 1, 3)
    y, h = ssd_fused(**inp)
    assert h is None
    assert_close(y, ssd_naive(**inp)[0], rtol=1e-10, atol=1e-10, name="y")
    assert_close(ssd(**inp, path="fused")[0], y, rtol=0, atol=0, name="ssd(path='fused')")


def test_mixed_dtypes_follow_naive():
    """Compute dtype from x (as ssd_naive): float32 x with float64 parameters runs in float32."""
    inp = {k: v.detach() for k, v in make_inputs(1, 9, 2, 4, 1, 3).items()}
    inp["x"] = inp["x"].float()
    y, h = ssd_fused(**inp, output_final_state=True)
    y_ref, h_ref = ssd_naive(**inp, output_final_state=True)
    assert y.dtype == y_ref.dtype == torch.float32 and h.dtype == h_ref.dtype
    assert_close(y, y_ref, rtol=1e-5, atol=1e-5, name="y")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(dict(initial_state=torch.zeros(1, 2, 2, 4)), id="state-shape"),
        pytest.param(dict(A=torch.zeros(3)), id="A-shape"),
        pytest.param(
            dict(B=torch.zeros(1, 5, 3, 3), C=torch.zeros(1, 5, 3, 3)), id="heads-not-divisible"
        ),
        pytest.param(dict(dt=torch.zeros(1, 4, 2)), id="dt-shape"),
        pytest.param(dict(x=torch.zeros(1, 5, 4)), id="x-ndim"),
        pytest.param(dict(D=torch.zeros(3)), id="D-shape"),
        pytest.param(dict(x=torch.zeros(1, 5, 2, 2, device="meta")), id="not-cpu"),
    ],
)
def test_bad_inputs_raise_value_error(change):
    inp = {k: v.detach() for k, v in make_inputs(1, 5, 2, 2, 1, 3).items()}
    inp.update(change)
    with pytest.raises(ValueError):
        ssd_fused(**inp)


def test_results_do_not_depend_on_the_thread_count():
    """Bit-identical outputs and gradients with numba on 1 thread and on all of them."""
    inp = make_inputs(3, 45, 4, 20, 2, 5, dtype=torch.float32)
    leaves = list(inp.values())

    def run():
        y, h = ssd_fused(**inp, output_final_state=True)
        return (y, h, *torch.autograd.grad(weighted_loss(y, h, True), leaves))

    assert_same_bits_on_one_numba_thread(run)
