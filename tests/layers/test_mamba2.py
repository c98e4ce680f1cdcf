"""Mamba-2 layer: chunked == naive scan, state carry, prefill + step, gradients, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import assert_close
from longssm.layers.base import is_ssm_param
from longssm.layers.mamba2 import Mamba2, Mamba2State
from longssm.models.config import ModelConfig
from longssm.models.mixers import MIXERS, build_mixer

F64 = torch.float64


def make_layer(d_conv=4, dtype=F64, **kw):
    """Tiny layer: d_inner 16, 4 heads of 4, 2 groups, d_state 3, chunks of 8."""
    opts = dict(d_model=8, d_state=3, d_conv=d_conv, expand=2, headdim=4, ngroups=2, chunk_size=8)
    opts.update(kw)
    layer = Mamba2(**opts).to(dtype)
    with torch.no_grad():
        # Larger Δ and random D/norm weights so the state matters and every parameter is exercised.
        layer.dt_bias.add_(1.5)
        layer.D.normal_()
        layer.norm.weight.normal_()
        if layer.conv1d is not None and layer.conv1d.bias is not None:
            layer.conv1d.bias.normal_()
    return layer


def random_state(layer, batch, dtype=F64):
    zero = layer.initial_state(batch, dtype=dtype)
    return Mamba2State(*(torch.randn_like(t) for t in zero))


def naive_twin(layer):
    twin = copy.deepcopy(layer)
    twin.scan = "naive"
    return twin


def loss_of(y, state):
    g = torch.Generator().manual_seed(3)
    total = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for t in state:
        total = total + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return total


@pytest.mark.parametrize("d_conv", [0, 4], ids=["noconv", "conv4"])
@pytest.mark.parametrize("T", [1, 7, 63, 200], ids=lambda t: f"T{t}")
def test_forward_chunk_matches_naive_with_grads(T, d_conv):
    layer = make_layer(d_conv)
    twin = naive_twin(layer)
    x = torch.randn(2, T, 8, dtype=F64, requires_grad=True)
    s0 = random_state(layer, 2)
    s0 = Mamba2State(*(t.requires_grad_(True) for t in s0))
    y, s = layer(x, s0)
    y_ref, s_ref = twin(x, s0)
    assert_close(y, y_ref, name="y")
    assert_close(s.ssm, s_ref.ssm, name="ssm state")
    assert_close(s.conv, s_ref.conv, name="conv state")
    wrt = [x, s0.ssm] + ([s0.conv] if d_conv else [])
    g = torch.autograd.grad(loss_of(y, s), wrt + list(layer.parameters()))
    g_ref = torch.autograd.grad(loss_of(y_ref, s_ref), wrt + list(twin.parameters()))
    names = ["x", "state.ssm", "state.conv"][: len(wrt)] + [n for n, _ in layer.named_parameters()]
    for name, a, e in zip(names, g, g_ref):
        assert_close(a, e, atol=1e-9, rtol=1e-8, name=f"d/d{name}")


@pytest.mark.parametrize("d_conv", [0, 2, 4], ids=["noconv", "conv2", "conv4"])
@pytest.mark.parametrize("cuts", [(1,), (2, 3), (13, 30)], ids=["cut1", "cut2-3", "cut13-30"])
def test_one_pass_equals_pieces_with_state(d_conv, cuts):
    layer = make_layer(d_conv)
    x = torch.randn(3, 41, 8, dtype=F64)
    s0 = random_state(layer, 3)
    y_all, s_all = layer(x, s0)
    ys, s = [], s0
    bounds = (0, *cuts, 41)
    for a, b in zip(bounds[:-1], bounds[1:]):
        y, s = layer(x[:, a:b], s)
        ys.append(y)
    assert_close(torch.cat(ys, 1), y_all, name="y")
    assert_close(s.ssm, s_all.ssm, name="ssm state")
    assert_close(s.conv, s_all.conv, name="conv state")


@pytest.mark.parametrize("d_conv", [0, 4], ids=["noconv", "conv4"])
def test_prefill_then_step_equals_full_forward(d_conv):
    layer = make_layer(d_conv)
    x = torch.randn(2, 20, 8, dtype=F64)
    y_all, s_all = layer(x)
    y, s = layer(x[:, :9])
    ys = [y]
    for t in range(9, 20):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t[:, None])
    assert_close(torch.cat(ys, 1), y_all, name="y")
    assert_close(s.ssm, s_all.ssm, name="ssm state")
    assert_close(s.conv, s_all.conv, name="conv state")
    y0, _ = layer.step(x[:, 0], None)
    assert_close(y0, y_all[:, 0], name="step from None")


def test_no_state_equals_zero_state():
    layer = make_layer()
    x = torch.randn(2, 11, 8, dtype=F64)
    y1, s1 = layer(x)
    y2, s2 = layer(x, layer.initial_state(2))
    assert_close(y1, y2, name="y")
    assert_close(s1.ssm, s2.ssm, name="ssm")


def test_gradcheck_forward_wrt_input_and_state():
    layer = make_layer(chunk_size=2, d_model=4, headdim=2, d_state=2)
    x = torch.randn(1, 5, 4, dtype=F64, requires_grad=True)
    s0 = random_state(layer, 1)
    ssm = s0.ssm.requires_grad_(True)
    conv = s0.conv.requires_grad_(True)

    def fn(x, ssm, conv):
        y, s = layer(x, Mamba2State(ssm, conv))
        return y, s.ssm, s.conv

    assert torch.autograd.gradcheck(fn, (x, ssm, conv), fast_mode=True)


def test_float32_close_to_float64():
    layer = make_layer()
    x = torch.randn(2, 50, 8, dtype=F64)
    y64, s64 = layer(x)
    y32, s32 = copy.deepcopy(layer).float()(x.float())
    assert y32.dtype == torch.float32 and s32.ssm.dtype == torch.float32
    assert_close(y32, y64.float(), atol=1e-4, rtol=1e-3, name="y fp32")


def test_initial_state_shapes_and_tags():
    layer = Mamba2(d_model=32, d_state=16, d_conv=4, expand=2, headdim=16, ngroups=2)
    s = layer.initial_state(3)
    assert s.ssm.shape == (3, 4, 16, 16)
    assert s.conv.shape == (3, 64 + 2 * 2 * 16, 3)
    assert Mamba2(d_model=32, d_conv=0, headdim=16).initial_state(2).conv.shape[-1] == 0
    assert all(is_ssm_param(p) for p in (layer.A_log, layer.dt_bias, layer.D))
    assert not is_ssm_param(layer.in_proj.weight)
    A = -torch.exp(layer.A_log)
    assert ((A <= -1) & (A >= -16)).all()
    dt = torch.nn.functional.softplus(layer.dt_bias)
    assert ((dt >= 1e-4) & (dt <= 0.1 + 1e-6)).all()


def test_dt_limit_clamps():
    layer = make_layer(dt_limit=(0.01, 0.02))
    dt = layer._dt(torch.randn(4, 4, dtype=F64) * 10)
    assert dt.min() >= 0.01 and dt.max() <= 0.02


def test_build_from_config_and_options():
    cfg = ModelConfig(mixer="mamba2", d_model=32, d_state=8, expand=2, d_conv=0,
                      mixer_options={"headdim": 16, "ngroups": 2, "chunk_size": 16})
    layer = build_mixer(cfg, 1)
    assert (layer.nheads, layer.headdim, layer.ngroups, layer.conv1d) == (4, 16, 2, None)
    assert layer.layer_idx == 1 and layer.chunk_size == 16
    assert set(MIXERS["mamba2"].defaults) >= {"headdim", "ngroups", "dt_limit", "scan"}
    bad = ModelConfig(mixer="mamba2", d_model=32, mixer_options={"head_dim": 16})
    with pytest.raises(ValueError, match="valid options"):
        build_mixer(bad, 0)
    with pytest.raises(ValueError, match="headdim"):
        build_mixer(ModelConfig(mixer="mamba2", d_model=24), 0)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(d_model=32, headdim=16, ngroups=3)
    with pytest.raises(ValueError, match="scan"):
        Mamba2(d_model=32, headdim=16, scan="fft")


def test_bad_inputs_raise_clearly():
    layer = make_layer()
    x = torch.randn(2, 5, 8, dtype=F64)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 5, 7, dtype=F64))
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 8, dtype=F64))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(2, 5, 8, dtype=torch.long))
    good = layer.initial_state(2)
    with pytest.raises(ValueError, match="ssm"):
        layer(x, Mamba2State(good.ssm[:1], good.conv))
    with pytest.raises(ValueError, match="conv"):
        layer(x, Mamba2State(good.ssm, good.conv[..., :1]))
    with pytest.raises(TypeError, match="Mamba2State"):
        layer(x, good.ssm)
    with pytest.raises(ValueError, match="batch, d_model"):
        layer.step(x, good)


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gated_norm_equals_its_formula(ngroups, dtype):
    """RMSNormGated == w ⊙ g / sqrt(mean over each group of g² + eps), g = y silu(z), written out
    in float64: output and the gradients of y, z and the weight. One group runs the
    ``gated_rms_norm`` op (fused on CPU), two groups the torch ops."""
    from longssm.layers.mamba2 import RMSNormGated

    torch.manual_seed(0)
    d = 40
    norm = RMSNormGated(d, d // ngroups).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    y = torch.randn(3, 7, d, dtype=dtype, requires_grad=True)
    z = torch.randn(3, 7, d, dtype=dtype, requires_grad=True)
    gout = torch.randn(3, 7, d, dtype=torch.float64)

    def formula(y, z, w):
        g = (y.double() * torch.nn.functional.silu(z.double())).unflatten(-1, (ngroups, -1))
        g = g / torch.sqrt((g * g).mean(-1, keepdim=True) + norm.eps)
        return w.double() * g.flatten(-2)

    got, want = norm(y, z), formula(y, z, norm.weight)
    assert got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert_close(got, want.to(dtype), rtol=tol, atol=tol)
    params = (y, z, norm.weight)
    for a, b in zip(
        torch.autograd.grad(got, params, gout.to(dtype)), torch.autograd.grad(want, params, gout)
    ):
        assert_close(a, b.to(dtype), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_node_equals_one_projection_split(dtype, monkeypatch):
    """in_proj as ``layers.project_in`` (three contiguous blocks z, xBC, Δ) == in_proj(x).split
    (the path a hooked in_proj takes): output, final state and every gradient; the node runs."""
    from longssm.layers import project_in

    calls = []
    node = project_in.project_in
    monkeypatch.setattr(project_in, "project_in", lambda *a: calls.append(1) or node(*a))
    torch.manual_seed(0)
    fused = make_layer(dtype=dtype)
    plain = copy.deepcopy(fused)
    plain.in_proj.register_forward_hook(lambda module, args, out: None)  # the split path
    x = torch.randn(3, 21, 8, dtype=dtype)
    state = random_state(fused, 3, dtype)
    results = []
    for layer in (fused, plain):
        xi = x.clone().requires_grad_()
        y, new_state = layer(xi, state)
        params = [xi, *layer.parameters()]
        results.append((y, *new_state, *torch.autograd.grad(loss_of(y, new_state), params)))
    assert len(calls) == 1
    tol = 1e-12 if dtype == F64 else 1e-5
    for got, want in zip(*results):
        assert_close(got, want, rtol=tol, atol=tol)


def test_projection_node_with_three_blocks_and_an_unused_one():
    """``project_in`` with sizes (5, 7, 2): each block equals F.linear on its rows of the weight
    (bits), the input gradient the sum of the used blocks', the unused block's weight rows zero."""
    from longssm.layers import project_in

    torch.manual_seed(1)
    u = torch.randn(4, 6, 3, dtype=F64, requires_grad=True)
    weight = torch.randn(14, 3, dtype=F64, requires_grad=True)
    outs = project_in.project_in(u, weight, (5, 7, 2))
    for out, block in zip(outs, weight.split((5, 7, 2))):
        assert out.is_contiguous() and torch.equal(out, torch.nn.functional.linear(u, block))
    g0, g2 = torch.randn(4, 6, 5, dtype=F64), torch.randn(4, 6, 2, dtype=F64)
    du, dW = torch.autograd.grad((outs[0] * g0).sum() + (outs[2] * g2).sum(), (u, weight))
    W0, _, W2 = weight.detach().split((5, 7, 2))
    assert_close(du, g0 @ W0 + g2 @ W2, rtol=1e-13, atol=1e-13)
    assert torch.equal(dW[5:12], torch.zeros(7, 3, dtype=F64))
    assert_close(dW[:5], g0.reshape(-1, 5).t() @ u.detach().reshape(-1, 3), rtol=1e-13, atol=1e-13)
