"""Fused CPU selective scan (numba) == naive loop: outputs, final state and every gradient."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from helpers import assert_close, linear_loss_grads  # noqa: E402
from longssm.ops import selective_scan as scan_module  # noqa: E402
from longssm.ops.selective_scan import (  # noqa: E402
    apply_gate,
    scan_path,
    selective_scan,
    selective_scan_fused,
    selective_scan_naive,
)
from tests.ops.test_selective_scan import NAMES, grads_of, make_inputs, run  # noqa: E402

# Channel counts below, at and across the kernel's 16-channel blocks; T across its 32-step
# checkpoints (T=500: 15 full blocks and a partial one).
SHAPES = [(2, 1, 3, 4), (2, 7, 16, 4), (1, 63, 37, 3), (2, 500, 5, 2)]
SHAPE_IDS = [f"T{s[1]}-d{s[2]}" for s in SHAPES]


def check_against_naive(inp, **tol):
    y, h = run(selective_scan_fused, inp)
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert y.dtype == y_ref.dtype and h.dtype == h_ref.dtype
    assert_close(y, y_ref, name="y", **tol)
    assert_close(h, h_ref, name="final_state", **tol)
    names = [k for k in NAMES if inp[k] is not None and inp[k].requires_grad]
    leaves = [inp[k] for k in names]
    grads, grads_ref = linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves)
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close(g, g_ref, name=f"d loss / d {name}", **tol)


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_naive_outputs_state_and_grads(shape, with_h0):
    check_against_naive(make_inputs(*shape, with_h0=with_h0))


@pytest.mark.parametrize(
    "shape",
    [(40, 5, 50, 3), (3, 6, 200, 2), (9, 4, 70, 2), (33, 70, 40, 3)],
    ids=["one-group-of-4-blocks", "groups-of-2-blocks", "groups-of-1-and-empty",
         "one-group-of-3-blocks-3-checkpoint-blocks"],
)
def test_block_groups_of_the_backward_sum_dB_dC_over_every_channel(shape):
    """The backward's tasks run groups of channel blocks and add their ∂B, ∂C into one row per
    group (``backward_groups``): one group of several blocks per batch row, groups of two blocks,
    and more groups than blocks (empty groups) all give the naive loop's gradients."""
    from longssm.ops._common import backward_groups

    batch, _, d_inner, _ = shape
    n_blocks = -(-d_inner // 16)
    groups = backward_groups(batch, n_blocks)
    assert groups == {40: 1, 3: 11, 9: 4, 33: 1}[batch]
    check_against_naive(make_inputs(*shape, with_h0=True))


def test_gradient_through_y_only_and_final_state_only():
    inp = make_inputs(2, 40, 5, 3)
    leaves = [inp[k] for k in NAMES]
    for use in ("y", "final"):
        grads = []
        for fn in (selective_scan_fused, selective_scan_naive):
            y, h = run(fn, inp)
            loss = (y * y).sum() if use == "y" else (h * h).sum()
            got = torch.autograd.grad(loss, leaves, allow_unused=True)
            # The final state does not depend on C: no gradient is a zero gradient.
            grads.append([torch.zeros_like(t) if g is None else g for t, g in zip(leaves, got)])
        for name, g, g_ref in zip(NAMES, *grads):
            assert_close(g, g_ref, name=f"{use} only: d loss / d {name}")


def test_some_inputs_without_grad_and_d_none():
    inp = make_inputs(2, 33, 4, 3)
    inp["A"].requires_grad_(False)
    inp["D"] = None
    inp["h0"] = inp["h0"].detach()
    check_against_naive(inp)
    y, h = selective_scan_fused(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"])
    assert h is None
    y_ref, _ = selective_scan_naive(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"])
    assert_close(y, y_ref, name="y (no final state)")


def scan_of(names):
    """fused scan as a function of the tensors named ``names``, in that order."""

    def fn(*args):
        kw = dict(zip(names, args))
        return selective_scan_fused(
            kw["x"],
            kw["dt"],
            kw["A"],
            kw["B"],
            kw["C"],
            kw["D"],
            initial_state=kw.get("h0"),
            output_final_state=True,
        )

    return fn


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
def test_gradcheck_fused(with_h0):
    tiny = make_inputs(1, 5, 2, 2, with_h0=with_h0)
    names = [k for k in NAMES if tiny[k] is not None]
    assert torch.autograd.gradcheck(scan_of(names), tuple(tiny[k] for k in names))
    # 35 steps: a full 32-step checkpoint block and a partial one; 17 channels: two blocks.
    # fast_mode checks random projections of the Jacobian: a few calls instead of one per element.
    inp = make_inputs(1, 35, 17, 2, with_h0=with_h0)
    assert torch.autograd.gradcheck(scan_of(names), tuple(inp[k] for k in names), fast_mode=True)


def test_float32_close_to_float64_reference():
    inp = make_inputs(2, 300, 20, 4)
    inp32 = {k: v.detach().float().requires_grad_(True) for k, v in inp.items()}
    y, h = run(selective_scan_fused, inp32)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, atol=1e-4, rtol=1e-4, name="y fp32")
    assert_close(h, h_ref, atol=1e-4, rtol=1e-4, name="final_state fp32")
    grads = linear_loss_grads(y, h, [inp32[k] for k in NAMES])
    grads_ref = linear_loss_grads(y_ref, h_ref, [inp[k] for k in NAMES])
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert g.dtype == torch.float32
        # Gradients sum up to 300 steps of products: a looser bound than the outputs'.
        assert_close(g, g_ref, atol=2e-3, rtol=2e-3, name=f"fp32 d loss / d {name}")


def test_half_precision_inputs_run_in_float32():
    inp = make_inputs(2, 9, 3, 4)
    x16 = inp["x"].detach().bfloat16()
    y, h = selective_scan_fused(
        x16,
        inp["dt"].detach().float(),
        inp["A"].detach().float(),
        inp["B"].detach().float(),
        inp["C"].detach().float(),
        output_final_state=True,
    )
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, h_ref = selective_scan_naive(
        x16.double(), inp["dt"], inp["A"], inp["B"], inp["C"], output_final_state=True
    )
    assert_close(h, h_ref.float(), atol=1e-4, rtol=1e-4, name="final_state")


def test_non_contiguous_inputs():
    base = make_inputs(2, 50, 6, 3)
    g = torch.Generator().manual_seed(5)
    inp = {}
    for k, v in base.items():
        # A strided view: every other element of a tensor twice as large along the last axis.
        wide = torch.randn(*v.shape[:-1], 2 * v.shape[-1], generator=g, dtype=v.dtype)
        with torch.no_grad():
            wide[..., ::2] = v
        inp[k] = wide.requires_grad_(True)
    views = {k: v[..., ::2] for k, v in inp.items()}
    views["x"] = views["x"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not any(v.is_contiguous() for k, v in views.items() if k != "x")
    y, h = run(selective_scan_fused, views)
    y_ref, h_ref = run(selective_scan_naive, base)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    grads = grads_of(y, h, views)
    for name, g_view, g_ref in zip(NAMES, grads, grads_of(y_ref, h_ref, base)):
        assert_close(g_view, g_ref, name=f"d loss / d {name}")


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
def test_empty_sequence(with_h0):
    inp = make_inputs(2, 0, 3, 4, with_h0=with_h0)
    y, h = run(selective_scan_fused, inp)
    assert y.shape == (2, 0, 3) and h.shape == (2, 3, 4)
    if with_h0:
        assert_close(h, inp["h0"], name="final_state == initial_state")
        (g,) = torch.autograd.grad(h.sum(), inp["h0"])
        assert_close(g, torch.ones_like(g), name="d final / d h0")
    else:
        assert not h.any()


def test_strong_decay_and_exp_edge_values():
    """Log-decays of -600 per step: the kernel's exp underflows to 0 exactly as torch.exp does."""
    inp = make_inputs(2, 70, 4, 3, dtype=torch.float32)
    with torch.no_grad():
        inp["dt"].mul_(0).add_(20.0)
        inp["A"].mul_(0).add_(-30.0)
    check_against_naive(inp, atol=1e-5, rtol=1e-5)
    inp64 = make_inputs(1, 40, 3, 3)
    with torch.no_grad():
        # Some steps far past float64's exp underflow (-745), some tiny: both ends of the range.
        inp64["dt"][:, ::2] = 1e3
        inp64["dt"][:, 1::4] = 1e-12
    check_against_naive(inp64)


def kernel_exp(z):
    """The kernel's exp of each element of the 1-d tensor z (in z's dtype)."""
    # A scan with h0 = 1, x = 0, C = 1 in the one state and T = 1 returns y = exp(Δ A).
    n, dtype = z.numel(), z.dtype
    y, _ = selective_scan_fused(
        torch.zeros(1, 1, n, dtype=dtype),
        torch.ones(1, 1, n, dtype=dtype),
        z[:, None],
        torch.zeros(1, 1, 1, dtype=dtype),
        torch.ones(1, 1, 1, dtype=dtype),
        initial_state=torch.ones(1, n, 1, dtype=dtype),
    )
    return y[0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_kernel_exp_matches_torch(dtype):
    """The kernel's vectorisable exp against torch.exp, over the whole range and its edges."""
    finfo = torch.finfo(dtype)
    # Documented range: finite up to `top`, +inf from `inf_from` on (within a factor 1.5 of the
    # overflow), 0 below -87.7 / -708.8 and subnormals from there to the smallest normal; the scan
    # itself only sees exponents <= 0.
    top, inf_from = (88.3, 88.4) if dtype == torch.float32 else (709.3, 709.5)
    z = torch.cat(
        [
            torch.linspace(-800.0, top, 20001, dtype=dtype),
            torch.tensor([-87.9, -87.6, -87.5, -87.3365, -87.0, 88.0], dtype=dtype),
            torch.tensor([-708.9, -708.6, -708.5, -708.3964, 709.0, 0.0, -0.0], dtype=dtype),
            torch.tensor([float("-inf"), float("nan")], dtype=dtype),
        ]
    )
    got, want = kernel_exp(z), torch.exp(z)
    assert got[-2] == 0.0  # exp(-inf)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    keep = torch.isfinite(want)
    # Below the smallest normal the kernel returns 0 where torch.exp may give a subnormal.
    assert_close(
        got[keep], want[keep], atol=float(finfo.tiny), rtol=4 * float(finfo.eps), name="exp"
    )
    assert torch.isposinf(
        kernel_exp(torch.tensor([inf_from, 1e4, float("inf")], dtype=dtype))
    ).all()


def test_dispatcher_picks_fused_on_cpu_and_falls_back(monkeypatch):
    inp = make_inputs(2, 9, 3, 4)
    assert scan_path(inp["x"], inp["h0"]) == "fused"
    meta = torch.empty(2, 9, 3, device="meta")
    assert scan_path(meta) == "chunk"
    with pytest.raises(ValueError, match="CPU tensors only"):
        selective_scan_fused(
            meta,
            meta,
            torch.empty(3, 4, device="meta"),
            torch.empty(2, 9, 4, device="meta"),
            torch.empty(2, 9, 4, device="meta"),
        )
    calls = []
    monkeypatch.setattr(
        scan_module,
        "selective_scan_chunk",
        lambda *a, **k: calls.append("chunk") or selective_scan_naive(*a[:8]),
    )
    monkeypatch.setattr(scan_module, "numba_available", lambda: False)
    assert scan_path(inp["x"]) == "chunk"
    y, h = run(selective_scan, inp)
    assert calls == ["chunk"]
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, name="y (fallback)")


def gated_run(fn, inp, gate):
    """fn's scan times silu(gate): the kernel's gate for the fused scan, ``apply_gate`` (the
    reference y ⊙ silu(z) in torch) after the naive one."""
    args = (inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["h0"], True)
    if fn is selective_scan_fused:
        return fn(*args, gate=gate)
    y, h = fn(*args)
    return apply_gate(y, gate), h


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
@pytest.mark.parametrize("shape", SHAPES + [(33, 70, 40, 3)],
                         ids=SHAPE_IDS + ["one-group-of-3-blocks"])
def test_gate_matches_naive_times_silu(shape, with_h0):
    """gate=z: y ⊙ silu(z) in the kernel == naive y ⊙ silu(z): outputs, state, every gradient
    including ∂/∂z and ∂/∂h0 (float64; z spread over (-9, 9): both tails of the sigmoid)."""
    inp = make_inputs(*shape, with_h0=with_h0)
    z = (3 * torch.randn(inp["x"].shape, dtype=torch.float64)).requires_grad_(True)
    y, h = gated_run(selective_scan_fused, inp, z)
    y_ref, h_ref = gated_run(selective_scan_naive, inp, z)
    assert_close(y, y_ref, name="gated y")
    assert_close(h, h_ref, name="final_state")
    names = [k for k in NAMES if inp[k] is not None and inp[k].requires_grad]
    leaves = [inp[k] for k in names] + [z]
    grads, grads_ref = linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves)
    for name, g, g_ref in zip(names + ["z"], grads, grads_ref):
        assert_close(g, g_ref, name=f"gated: d loss / d {name}")


def test_gate_gradcheck_and_float32():
    tiny = make_inputs(1, 35, 17, 2)
    z = torch.randn(tiny["x"].shape, dtype=torch.float64, requires_grad=True)
    names = [k for k in NAMES if tiny[k] is not None]

    def fn(*args):
        kw = dict(zip(names + ["z"], args))
        return selective_scan_fused(
            *(kw[k] for k in ("x", "dt", "A", "B", "C", "D")), kw["h0"], True, gate=kw["z"]
        )

    leaves = tuple(tiny[k] for k in names) + (z,)
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)
    # float32 kernel vs the float64 reference
    inp32 = {k: v.detach().float().requires_grad_(True) for k, v in tiny.items()}
    y, _ = selective_scan_fused(
        *(inp32[k] for k in ("x", "dt", "A", "B", "C", "D")), inp32["h0"], gate=z.float()
    )
    y_ref, _ = gated_run(selective_scan_naive, tiny, z)
    assert_close(y, y_ref, atol=1e-4, rtol=1e-4, name="gated y fp32")


def test_gate_of_the_wrong_shape_is_one_line():
    inp = make_inputs(2, 5, 3, 2)
    with pytest.raises(ValueError, match="gate must have the shape of x"):
        selective_scan(*(inp[k] for k in ("x", "dt", "A", "B", "C")), gate=inp["x"][:, :4])
