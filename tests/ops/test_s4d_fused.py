"""Fused CPU S4D scan (numba kernels) against a float64 reference loop written from the recurrence
and against ``s4d_conv``: outputs, final state and every gradient at odd shapes (T across the
checkpoint interval, H across the 16-lane blocks), a gradcheck, float32 against float64, thread
count independence, pieces with the state carried, T = 0, bad inputs, the dispatcher
``s4d_scan`` and the S4D layer's ``mode="auto"``."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, assert_same_bits_on_one_numba_thread
from longssm.ops import diag_scan as diag_scan_op
from longssm.ops import torch_forms
from longssm.ops._common import numba_available
from longssm.ops.diag_scan import s4d_conv, s4d_scan, s4d_scan_fused

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
F64, C128 = torch.float64, torch.complex128
NAMES = ("u", "lam_bar", "B_bar", "C", "D", "initial_state")


def reference(u, lam_bar, B_bar, C, D=None, initial_state=None):
    """h_t = λ̄ h_{t-1} + B̄ u_t, y_t = 2 Re(Σ_n C h_t) + D u_t as a plain loop over t, complex."""
    batch, T, H = u.shape
    h = torch.zeros(batch, *lam_bar.shape, dtype=lam_bar.dtype)
    if initial_state is not None:
        h = initial_state
    ys = []
    for t in range(T):
        h = lam_bar * h + B_bar * u[:, t, :, None]  # (B, H, N)
        y = 2 * (C * h).sum(-1).real  # (B, H)
        ys.append(y if D is None else y + D * u[:, t])
    return torch.stack(ys, 1), h


def make_inputs(batch, T, H, N, dtype=F64, with_state=True, with_D=True, seed=0):
    """Random S4D inputs, |λ̄| in (0.7, 1): every given leaf requires grad."""
    g = torch.Generator().manual_seed(seed + 101 * T + 7 * H + N)
    cdtype = C128 if dtype == F64 else torch.complex64

    def crandn(*shape):
        return torch.randn(*shape, 2, generator=g, dtype=F64).mul(0.7).to(dtype)

    u = torch.randn(batch, T, H, generator=g, dtype=F64).to(dtype)
    log_lam = torch.complex(
        -torch.rand(H, N, generator=g, dtype=F64) * 0.35 - 0.002,
        torch.randn(H, N, generator=g, dtype=F64) * 2,
    )
    lam_bar = torch.exp(log_lam).to(cdtype)
    B_bar, C = torch.view_as_complex(crandn(H, N)), torch.view_as_complex(crandn(H, N))
    D = torch.randn(H, generator=g, dtype=F64).to(dtype) if with_D else None
    h0 = torch.view_as_complex(crandn(batch, H, N)) if with_state else None
    inp = dict(u=u, lam_bar=lam_bar, B_bar=B_bar, C=C, D=D, initial_state=h0)
    for v in inp.values():
        if v is not None:
            v.requires_grad_(True)
    return inp


def weighted_loss(y, h, with_gh, seed=5):
    """Σ y ⊙ wy (+ Σ view_as_real(h_T) ⊙ wh when ``with_gh``: else ∂L/∂h_T is None)."""
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64).to(y.dtype)).sum()
    if with_gh:
        hr = torch.view_as_real(h)
        loss = loss + (hr * torch.randn(hr.shape, generator=g, dtype=F64).to(hr.dtype)).sum()
    return loss


def compare(got, want, tol, what):
    """assert_close with a tolerance relative to the largest entry of ``want``."""
    scale = max(want.abs().max().item(), 1e-30)
    assert_close(got, want, rtol=tol, atol=tol * scale, name=what)


def check_against(form, inp, with_gh, tol=1e-10):
    """Outputs, final state and gradients of the fused scan == ``form``'s (same inputs)."""
    leaves = {k: v for k, v in inp.items() if v is not None}
    y, h = s4d_scan_fused(**inp, output_final_state=True)
    y_ref, h_ref = form(**inp)
    assert y.dtype == F64 and h.dtype == C128
    compare(y, y_ref, tol, "y")
    compare(h, h_ref, tol, "final state")
    got = torch.autograd.grad(weighted_loss(y, h, with_gh), list(leaves.values()))
    want = torch.autograd.grad(weighted_loss(y_ref, h_ref, with_gh), list(leaves.values()))
    for name, a, b in zip(leaves, got, want):
        compare(a, b, tol, f"grad {name}")


# (batch, T, H, N): T across the checkpoint interval (32), H across the 16-lane blocks
SHAPES = [
    pytest.param(1, 1, 1, 1, id="b1-T1-H1-N1"),
    pytest.param(3, 5, 5, 3, id="b3-T5-H5-N3"),
    pytest.param(3, 31, 16, 32, id="b3-T31-H16-N32"),
    pytest.param(1, 32, 17, 3, id="b1-T32-H17-N3"),
    pytest.param(3, 33, 40, 1, id="b3-T33-H40-N1"),
    pytest.param(3, 70, 17, 32, id="b3-T70-H17-N32"),
    pytest.param(1, 70, 40, 3, id="b1-T70-H40-N3"),
    pytest.param(3, 1, 16, 32, id="b3-T1-H16-N32"),
]
VARIANTS = [(True, True), (False, True), (True, False)]
VARIANT_IDS = ["h0-D", "noh0-D", "h0-noD"]


@pytest.mark.parametrize("with_gh", [True, False], ids=["gh", "no-gh"])
@pytest.mark.parametrize("with_state,with_D", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("batch,T,H,N", SHAPES)
def test_fused_matches_reference_loop_float64(batch, T, H, N, with_state, with_D, with_gh):
    inp = make_inputs(batch, T, H, N, with_state=with_state, with_D=with_D)
    check_against(reference, inp, with_gh)


@pytest.mark.parametrize("with_state,with_D", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("batch,T,H,N", [(3, 70, 17, 32), (1, 33, 5, 3), (2, 1, 40, 1)])
def test_fused_matches_conv_float64(batch, T, H, N, with_state, with_D):
    inp = make_inputs(batch, T, H, N, with_state=with_state, with_D=with_D, seed=1)
    check_against(lambda **a: s4d_conv(**a, output_final_state=True), inp, with_gh=True)


def test_gradients_wanted_for_some_inputs_only():
    """h_0 without requires_grad, only u and C wanted; a loss on the final state alone (∂L/∂y is
    None for the fused backward) and one on y alone."""
    inp = make_inputs(2, 40, 18, 4)
    inp = {k: (v if k in ("u", "C") else v.detach()) for k, v in inp.items()}
    leaves = [inp["u"], inp["C"]]
    y, h = s4d_scan_fused(**inp, output_final_state=True)
    y_ref, h_ref = reference(**inp)
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=C128)
    got = torch.autograd.grad((h * w).real.sum(), inp["u"], retain_graph=True)
    want = torch.autograd.grad((h_ref * w).real.sum(), inp["u"], retain_graph=True)
    compare(got[0], want[0], 1e-10, "grad u from h_T only")
    got = torch.autograd.grad(weighted_loss(y, h, False), leaves)
    want = torch.autograd.grad(weighted_loss(y_ref, h_ref, False), leaves)
    for name, a, b in zip(("u", "C"), got, want):
        compare(a, b, 1e-10, f"grad {name}")


def test_gradcheck_tiny():
    inp = make_inputs(2, 4, 3, 2)

    def fn(*args):
        y, h = s4d_scan_fused(*args, output_final_state=True)
        return y, torch.view_as_real(h)

    assert torch.autograd.gradcheck(fn, tuple(inp[k] for k in NAMES))


def test_float32_against_float64_reference():
    inp64 = make_inputs(2, 100, 40, 32)
    inp32 = make_inputs(2, 100, 40, 32, dtype=torch.float32)
    y, h = s4d_scan_fused(**inp32, output_final_state=True)
    y_ref, h_ref = reference(**inp64)
    assert y.dtype == torch.float32 and h.dtype == torch.complex64
    compare(y.double(), y_ref, 2e-5, "y")
    compare(h.to(C128), h_ref, 2e-5, "final state")
    got = torch.autograd.grad(weighted_loss(y, h, True), list(inp32.values()))
    want = torch.autograd.grad(weighted_loss(y_ref, h_ref, True), list(inp64.values()))
    for name, a, b in zip(NAMES, got, want):
        compare(a.to(b.dtype), b, 1e-4, f"grad {name}")


@pytest.mark.parametrize("split", [1, 32, 45])
def test_pieces_with_state_carried_equal_one_pass(split):
    inp = {k: v.detach() for k, v in make_inputs(2, 77, 20, 4).items()}
    y_all, h_all = s4d_scan_fused(**inp, output_final_state=True)
    u = inp.pop("u")
    y1, h1 = s4d_scan_fused(u[:, :split], **inp, output_final_state=True)
    y2, h2 = s4d_scan_fused(u[:, split:], **dict(inp, initial_state=h1), output_final_state=True)
    compare(torch.cat([y1, y2], 1), y_all, 1e-12, "y")
    compare(h2, h_all, 1e-12, "final state")


def test_zero_length_and_no_final_state_unless_asked():
    inp = make_inputs(2, 0, 5, 3)
    y, h = s4d_scan_fused(**inp, output_final_state=True)
    assert y.shape == (2, 0, 5) and y.dtype == F64
    assert_close(h, inp["initial_state"], name="state through T = 0")
    y2, h2 = s4d_conv(**inp, output_final_state=True)
    assert y2.shape == y.shape and torch.equal(h2, h)
    _, h = s4d_scan_fused(**dict(inp, initial_state=None), output_final_state=True)
    assert torch.count_nonzero(h) == 0 and h.shape == (2, 5, 3) and h.dtype == C128
    inp = make_inputs(1, 6, 5, 3)
    y, h = s4d_scan_fused(**inp)
    assert h is None
    compare(y, reference(**inp)[0], 1e-10, "y")


def test_dtypes_follow_conv():
    """float32 u with complex128 parameters runs in float32 / complex64 (as s4d_conv); half
    precision u gives float32 y."""
    inp = {k: v.detach() for k, v in make_inputs(1, 9, 5, 3).items()}
    for u in (inp["u"].float(), inp["u"].half()):
        args = dict(inp, u=u)
        y, h = s4d_scan_fused(**args, output_final_state=True)
        y_ref, h_ref = s4d_conv(**args, output_final_state=True)
        assert y.dtype == y_ref.dtype == torch.float32 and h.dtype == h_ref.dtype
        compare(y, y_ref, 1e-4, "y")


def _bad_inputs():
    u = torch.randn(2, 5, 3)
    lam = torch.full((3, 4), 0.5 + 0.1j)
    return [
        pytest.param(dict(lam_bar=lam[:2]), id="lam-shape"),
        pytest.param(dict(B_bar=lam.real), id="B-real"),
        pytest.param(dict(C=lam[:, :2]), id="C-modes"),
        pytest.param(dict(D=torch.zeros(4)), id="D-shape"),
        pytest.param(dict(u=u[0]), id="u-ndim"),
        pytest.param(dict(u=u.long()), id="u-int"),
        pytest.param(dict(initial_state=torch.zeros(2, 3, 4)), id="state-real"),
        pytest.param(dict(initial_state=torch.zeros(1, 3, 4, dtype=lam.dtype)), id="state-shape"),
    ]


@pytest.mark.parametrize("change", _bad_inputs())
def test_bad_inputs_raise_as_conv(change):
    lam = torch.full((3, 4), 0.5 + 0.1j)
    inp = dict(u=torch.randn(2, 5, 3), lam_bar=lam, B_bar=lam, C=lam, D=None, initial_state=None)
    inp.update(change)
    with pytest.raises((ValueError, TypeError)) as conv_err:
        s4d_conv(**inp)
    for form in (s4d_scan_fused, s4d_scan):
        with pytest.raises(conv_err.type, match="^s4d_conv: ") as err:
            form(**inp)
        assert str(err.value) == str(conv_err.value)


def test_results_do_not_depend_on_the_thread_count():
    """Bit-identical outputs and gradients with numba on 1 thread and on all of them."""
    inp = make_inputs(3, 45, 40, 5, dtype=torch.float32)
    leaves = list(inp.values())

    def run():
        y, h = s4d_scan_fused(**inp, output_final_state=True)
        return (y, h, *torch.autograd.grad(weighted_loss(y, h, True), leaves))

    assert_same_bits_on_one_numba_thread(run)


def test_dispatcher_picks_fused_on_cpu_and_conv_inside_torch_forms(monkeypatch):
    inp = {k: v.detach() for k, v in make_inputs(2, 7, 5, 3).items()}
    tensors = list(inp.values())
    assert diag_scan_op.resolve_s4d_path("auto", *tensors) == "fused"
    assert diag_scan_op.resolve_s4d_path("auto", inp["u"].half()) == "conv"
    with torch_forms():
        assert diag_scan_op.resolve_s4d_path("auto", *tensors) == "conv"
        assert diag_scan_op.resolve_s4d_path("fused", *tensors) == "fused"  # named: still runs
    y, h = s4d_scan(**inp, output_final_state=True)
    y_f, h_f = s4d_scan_fused(**inp, output_final_state=True)
    assert torch.equal(y, y_f) and torch.equal(h, h_f)
    y_c, h_c = s4d_scan(**inp, output_final_state=True, path="conv")
    compare(y_c, y, 1e-10, "conv path y")
    with pytest.raises(ValueError, match="path must be one of auto"):
        s4d_scan(**inp, path="fft")
    meta = torch.empty(2, 5, 3, device="meta")
    with pytest.raises(ValueError, match="'fused' is not available.*CPU tensors only"):
        diag_scan_op.resolve_s4d_path("fused", meta)
    assert diag_scan_op.resolve_s4d_path("auto", meta) == "conv"
    monkeypatch.setattr(diag_scan_op, "numba_available", lambda: False)
    with pytest.raises(ValueError, match="numba is not installed"):
        s4d_scan(**inp, path="fused")
    assert diag_scan_op.resolve_s4d_path("auto", *tensors) == "conv"


@pytest.mark.parametrize("smr", [0, 3])
def test_s4d_layer_auto_equals_conv_with_state_carried(smr):
    """The S4D layer with ``mode="auto"`` (the fused kernels here) == ``mode="conv"`` in float64:
    two segments with the returned state fed back in, outputs, states and every gradient."""
    from longssm.layers.s4d import S4D

    torch.manual_seed(0)
    layers = {mode: S4D(20, 8, mode=mode, smr=smr).double() for mode in ("auto", "conv")}
    layers["conv"].load_state_dict(layers["auto"].state_dict())
    x = torch.randn(3, 45, 20, dtype=F64)
    results = {}
    for mode, layer in layers.items():
        x_leaf = x.clone().requires_grad_()
        y1, state = layer(x_leaf[:, :33])
        y2, state = layer(x_leaf[:, 33:], state)
        loss = weighted_loss(torch.cat([y1, y2], 1), state.ssm, True)
        params = [p for p in layer.parameters()]
        results[mode] = (y1, y2, *state, *torch.autograd.grad(loss, [x_leaf, *params]))
    for i, (a, b) in enumerate(zip(results["auto"], results["conv"])):
        compare(a, b, 1e-10, f"output/state/grad {i}")
