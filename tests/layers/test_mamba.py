"""Mamba layer: chunk == fused == naive scan, pieces with carried state == one pass, prefill + step == forward."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from longssm.layers.base import is_ssm_param
from longssm.layers.mamba import Mamba, MambaState
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer
from longssm.ops.selective_scan import scan_path

D_MODEL = 16


def make_layer(d_conv=4, scan="chunk", **options):
    cfg = ModelConfig(
        d_model=D_MODEL,
        d_state=4,
        expand=2,
        d_conv=d_conv,
        mixer_options={"scan": scan, "chunk_size": 8, **options},
    )
    layer = build_mixer(cfg, 0).double()
    # Larger Δ than the init's so the state carries real signal across the split points.
    with torch.no_grad():
        layer.dt_proj.bias.add_(2.0)
    return layer


def random_state(layer, batch, seed=3):
    g = torch.Generator().manual_seed(seed)
    zeros = layer.initial_state(batch, dtype=torch.float64)
    return MambaState(*(torch.randn(t.shape, generator=g, dtype=t.dtype) for t in zeros))


CONVS = [0, 2, 4]
CONV_IDS = [f"conv{k}" for k in CONVS]


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zero-state"])
@pytest.mark.parametrize("T", [1, 7, 63], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("d_conv", CONVS, ids=CONV_IDS)
@pytest.mark.parametrize("scan", ["chunk", "fused"])
def test_fast_scan_matches_naive_with_grads(scan, d_conv, T, with_state):
    if scan == "fused":
        pytest.importorskip("numba")
    layer = make_layer(d_conv)
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64, requires_grad=True)
    state = random_state(layer, 2) if with_state else None
    if state is not None:
        state = MambaState(*(t.requires_grad_(True) for t in state))
    leaves = [x, *layer.parameters(), *(state or ())]
    w = torch.randn(2, T, D_MODEL, dtype=torch.float64)

    results = []
    for layer.scan in (scan, "naive"):
        y, final = layer(x, state)
        loss = (y * w).sum() + final.ssm.pow(2).sum() + final.conv.sum()
        results.append((y, final, torch.autograd.grad(loss, leaves, allow_unused=True)))
    (y, final, grads), (y_ref, final_ref, grads_ref) = results
    assert_close(y, y_ref, name="y")
    assert_close(final.ssm, final_ref.ssm, name="state.ssm")
    assert_close(final.conv, final_ref.conv, name="state.conv")
    names = ["x", *(n for n, _ in layer.named_parameters()), "state.ssm", "state.conv"]
    for name, g, g_ref in zip(names, grads, grads_ref):
        if g_ref is None:
            assert g is None, name
            continue
        assert_close(g, g_ref, name=f"d loss / d {name}")


@pytest.mark.parametrize("T", [7, 63, 200], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("d_conv", CONVS, ids=CONV_IDS)
def test_pieces_with_carried_state_equal_one_pass(d_conv, T):
    layer = make_layer(d_conv)
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    h0 = random_state(layer, 2)
    y_full, final_full = layer(x, h0)
    g = torch.Generator().manual_seed(T)
    # Random cut points, including pieces shorter than the conv kernel and than a chunk.
    cuts = sorted(set(torch.randint(1, T, (4,), generator=g).tolist()))
    state, ys = h0, []
    for lo, hi in zip([0, *cuts], [*cuts, T]):
        y, state = layer(x[:, lo:hi], state)
        ys.append(y)
    assert_close(torch.cat(ys, dim=1), y_full, name="y")
    assert_close(state.ssm, final_full.ssm, name="state.ssm")
    assert_close(state.conv, final_full.conv, name="state.conv")


@pytest.mark.parametrize("d_conv", CONVS, ids=CONV_IDS)
def test_prefill_then_step_equals_forward(d_conv):
    layer = make_layer(d_conv)
    x = torch.randn(3, 20, D_MODEL, dtype=torch.float64)
    y_full, final_full = layer(x)
    y_pre, state = layer(x[:, :6])
    ys = [y_pre]
    for t in range(6, 20):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t[:, None])
    assert_close(torch.cat(ys, dim=1), y_full, name="y")
    assert_close(state.ssm, final_full.ssm, name="state.ssm")
    assert_close(state.conv, final_full.conv, name="state.conv")
    y0, _ = layer.step(x[:, 0], None)
    assert_close(y0, y_full[:, 0], name="step from no state")


def test_gradcheck_tiny_layer():
    cfg = ModelConfig(d_model=4, d_state=2, expand=1, d_conv=3, mixer_options={"chunk_size": 2})
    layer = build_mixer(cfg, 0).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    ssm = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    conv = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, ssm, conv):
        y, state = layer(x, MambaState(ssm, conv))
        return y, state.ssm

    assert torch.autograd.gradcheck(fn, (x, ssm, conv))


def test_init_shapes_and_tags():
    layer = Mamba(d_model=40, d_state=8, expand=2, d_conv=4, dt_min=1e-3, dt_max=0.1)
    assert layer.dt_rank == math.ceil(40 / 16)
    assert layer.A_log.shape == (80, 8) and layer.D.shape == (80,)
    assert_close(layer.A_log[3], torch.log(torch.arange(1, 9).float()), name="A_log")
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert layer.x_proj.weight.shape == (layer.dt_rank + 16, 80)
    assert layer.conv1d.weight.shape == (80, 1, 4)
    for p in (layer.A_log, layer.D, layer.dt_proj.bias):
        assert is_ssm_param(p)
    assert not is_ssm_param(layer.in_proj.weight)
    assert Mamba(d_model=8, d_conv=0).conv1d is None
    state = layer.initial_state(3)
    assert state.ssm.shape == (3, 80, 8) and state.conv.shape == (3, 80, 3)
    assert not state.ssm.any()


def test_unknown_option_names_valid_ones():
    cfg = ModelConfig(d_model=8, mixer_options={"dt_rnak": 2})
    with pytest.raises(ValueError, match="dt_rnak.*valid options.*dt_rank"):
        build_mixer(cfg, 0)
    with pytest.raises(ValueError, match="scan must be one of"):
        build_mixer(ModelConfig(d_model=8, mixer_options={"scan": "fast"}), 0)


def test_bad_state_and_input_raise():
    layer = make_layer(4)
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    good = layer.initial_state(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"state.ssm must have shape \(2, 32, 4\)"):
        layer(x, MambaState(good.ssm[:, :, :3], good.conv))
    with pytest.raises(ValueError, match=r"state.conv must have shape \(2, 32, 3\)"):
        layer(x, MambaState(good.ssm, good.conv[:, :, :2]))
    with pytest.raises(TypeError, match="state.ssm must have a dtype"):
        layer(x, MambaState(good.ssm.long(), good.conv))
    with pytest.raises(TypeError, match="MambaState"):
        layer(x, (good.ssm,))
    with pytest.raises(ValueError, match="d_model=16"):
        layer(torch.randn(2, 5, 15, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 5, D_MODEL, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, d_model\)"):
        layer.step(x, good)


def test_auto_scan_is_default_and_logs_its_path_once(monkeypatch, caplog):
    from longssm.layers import base

    monkeypatch.setattr(base, "_ANNOUNCED", set())
    layer = build_mixer(ModelConfig(d_model=8, d_state=2), 0)
    assert layer.scan == "auto"
    x = torch.randn(1, 3, 8)
    with caplog.at_level(logging.INFO, logger="longssm"):
        layer(x)
        layer(x)
    lines = [r.getMessage() for r in caplog.records if "Mamba scan" in r.getMessage()]
    expected = "fused" if scan_path(x) == "fused" else "chunk"
    assert lines == [f"Mamba scan: {expected} path (scan='auto')"]


def call_with_shape_hook(module, fn, *args):
    """fn(*args) with a forward hook on ``module`` recording its output shapes: (result, shapes)."""
    seen = []
    handle = module.register_forward_hook(lambda mod, inputs, out: seen.append(out.shape))
    try:
        return fn(*args), seen
    finally:
        handle.remove()


@pytest.mark.parametrize("bias", [False, True])
def test_project_in_equals_one_projection_split_in_two(bias):
    """project_in's two half-weight matmuls == in_proj(x).chunk(2): outputs, and the gradients of
    the input, weight and bias (float64); with a forward hook on in_proj it calls in_proj once."""
    torch.manual_seed(0)
    layer = make_layer(bias=bias)
    x = torch.randn(3, 7, D_MODEL, dtype=torch.float64, requires_grad=True)
    gx, gz = torch.randn(2, 3, 7, layer.d_inner, dtype=torch.float64)

    def grads(xs, z):
        params = [x, layer.in_proj.weight] + ([layer.in_proj.bias] if bias else [])
        return torch.autograd.grad((xs * gx).sum() + (z * gz).sum(), params)

    split = layer.project_in(x)
    whole = layer.in_proj(x).chunk(2, dim=-1)
    assert all(t.is_contiguous() for t in split)
    for got, want in zip(split, whole):
        assert_close(got, want, rtol=1e-14, atol=1e-14)
    for got, want in zip(grads(*split), grads(*whole)):
        assert_close(got, want, rtol=1e-13, atol=1e-13)

    hooked, seen = call_with_shape_hook(layer.in_proj, layer.project_in, x)
    assert seen == [(3, 7, 2 * layer.d_inner)]
    for got, want in zip(hooked, whole):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("wanted", ["both", "x only", "z only"])
def test_projection_node_keeps_the_bits_of_two_linear_calls(dtype, wanted):
    """``layers.project_in`` (one autograd node) == F.linear on each half of the weight: outputs
    and the gradients of the input and weight, bit for bit, at E = 256 (the benchmark's width) and
    E = 24; with one of x, z not reaching the loss (its gradient None: zero rows of ∂L/∂W)."""
    from longssm.layers import project_in

    for rows, d, half in ((2048, 128, 256), (35, 16, 24)):
        torch.manual_seed(0)
        u = torch.randn(rows, d, dtype=dtype, requires_grad=True)
        weight = torch.randn(2 * half, d, dtype=dtype, requires_grad=True)
        gx, gz = torch.randn(2, rows, half, dtype=dtype)
        assert project_in.fusable(weight, None, u)

        def grads(x, z, gx=gx, gz=gz, inputs=(u, weight)):
            loss = (x * gx).sum() if wanted != "z only" else 0
            loss = loss + ((z * gz).sum() if wanted != "x only" else 0)
            return torch.autograd.grad(loss, inputs)

        node = project_in.project_in(u, weight)
        plain = (F.linear(u, weight[:half]), F.linear(u, weight[half:]))
        for got, want in zip(node, plain):
            assert got.is_contiguous() and torch.equal(got, want)
        for got, want in zip(grads(*node), grads(*plain)):
            assert torch.equal(got, want)
    with torch.no_grad():
        assert not project_in.fusable(weight, None, u)  # no gradient wanted: plain calls
    assert not project_in.fusable(weight, torch.zeros(2 * half), u)  # a bias: plain calls


def test_step_sizes_equal_softplus_of_dt_proj_and_respect_hooks():
    """The layer's Δ (the ``step_size`` op: fused on CPU) == F.softplus(dt_proj(u)) in float64,
    with the gradients of u, dt_proj.weight and dt_proj.bias; a hooked dt_proj is called as a
    module (the hook sees its output)."""
    torch.manual_seed(0)
    layer = make_layer().double()
    u = torch.randn(3, 7, layer.dt_rank, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, layer.d_inner, dtype=torch.float64)
    params = [u, layer.dt_proj.weight, layer.dt_proj.bias]
    got = layer._step_sizes(u)
    want = F.softplus(layer.dt_proj(u))
    assert_close(got, want, rtol=1e-13, atol=1e-300)
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        assert_close(a, b, rtol=1e-12, atol=1e-12)
    hooked, seen = call_with_shape_hook(layer.dt_proj, layer._step_sizes, u)
    assert seen == [(3, 7, layer.d_inner)]
    assert torch.equal(hooked, want)


@pytest.mark.skipif(scan_path(torch.zeros(1)) != "fused", reason="the inner node needs numba")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zero-state"])
def test_inner_node_keeps_the_bits_of_the_separate_calls(dtype, with_state):
    """``layers.mamba_inner`` (x_proj, step sizes and gated scan as one autograd node) == the
    layer's separate calls, which run when x_proj has a forward hook: output, final state and
    the gradients of the input, the initial state and every parameter, bit for bit (T = 45
    crosses a checkpoint)."""
    from longssm.layers import mamba_inner

    torch.manual_seed(0)
    layer = make_layer(scan="fused").to(dtype)
    x = torch.randn(3, 45, D_MODEL, dtype=dtype, requires_grad=True)
    state = random_state(layer, 3) if with_state else None
    if state is not None:
        state = MambaState(*(t.to(dtype).requires_grad_() for t in state))
    inputs = [x] + ([] if state is None else list(state)) + list(layer.parameters())
    assert mamba_inner.fusable(layer, x.new_zeros(3, 45, layer.d_inner), None, x)

    def run():
        y, final = layer(x, state)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
        grads = torch.autograd.grad((y * g).sum() + final.ssm.square().sum(), inputs)
        return [y, final.ssm, *grads]

    fused, (separate, seen) = run(), call_with_shape_hook(layer.x_proj, run)
    assert seen, "the hooked x_proj was not called: the separate path did not run"
    assert all(torch.equal(a, b) for a, b in zip(fused, separate))


def test_inner_node_is_not_used_where_it_does_not_apply():
    from longssm.layers.mamba_inner import fusable

    layer = make_layer(scan="fused")
    xs = torch.zeros(2, 5, layer.d_inner, dtype=torch.float64)
    assert not fusable(layer, xs, None, None)  # no gate
    assert not fusable(layer, xs.float(), None, xs.float())  # dtypes differ from the weights
    layer.dt_proj.register_forward_hook(lambda *a: None)
    assert not fusable(layer, xs, None, xs)  # a hooked dt_proj must be called as a module
