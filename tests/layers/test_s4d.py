"""S4D layer: conv == recurrent == step loop, split invariance, gradients incl. the state."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.layers.base import is_ssm_param
from longssm.layers.s4d import S4D, S4DState
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer

H, N = 4, 6


def make(mode="conv", init="legs", **kw):
    return S4D(H, N, init=init, mode=mode, **kw).double()


def random_state(layer, batch):
    zeros = layer.initial_state(batch, dtype=torch.float64).ssm
    return S4DState(torch.randn_like(zeros))


def run_steps(layer, x, state):
    ys = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


def twin(layer, mode):
    """The same weights in the other mode."""
    other = make(mode=mode, init=layer.init)
    other.load_state_dict(layer.state_dict())
    return other


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real"])
@pytest.mark.parametrize("T", [1, 7, 63, 300], ids=lambda t: f"T{t}")
def test_conv_equals_recurrent(T, init, with_state):
    conv = make("conv", init)
    rec = twin(conv, "recurrent")
    x = torch.randn(2, T, H, dtype=torch.float64)
    s0 = random_state(conv, 2) if with_state else None
    y_c, s_c = conv(x, s0)
    y_r, s_r = rec(x, s0)
    assert_close(y_c, y_r, name="y")
    assert_close(s_c.ssm, s_r.ssm, name="final state")


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
@pytest.mark.parametrize("T", [1, 7, 63], ids=lambda t: f"T{t}")
def test_forward_equals_step_loop(T, mode):
    layer = make(mode)
    x = torch.randn(2, T, H, dtype=torch.float64)
    s0 = random_state(layer, 2)
    y, s = layer(x, s0)
    y_ref, s_ref = run_steps(layer, x, s0)
    assert_close(y, y_ref, name="y")
    assert_close(s.ssm, s_ref.ssm, name="state")


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
def test_split_sequence_and_prefill_then_step(mode):
    layer = make(mode)
    x = torch.randn(2, 40, H, dtype=torch.float64)
    s0 = random_state(layer, 2)
    y, s = layer(x, s0)
    y_a, s_a = layer(x[:, :13], s0)
    y_b, s_b = layer(x[:, 13:], s_a)
    assert_close(torch.cat([y_a, y_b], 1), y, name="split y")
    assert_close(s_b.ssm, s.ssm, name="split state")
    y_p, s_p = layer(x[:, :30])
    y_s, s_s = run_steps(layer, x[:, 30:], s_p)
    y_full, s_full = layer(x)
    assert_close(torch.cat([y_p, y_s], 1), y_full, name="prefill + step y")
    assert_close(s_s.ssm, s_full.ssm, name="prefill + step state")


def grads(layer, x, s0):
    x, ssm = x.clone().requires_grad_(), s0.ssm.clone().requires_grad_()
    layer.zero_grad()
    y, s = layer(x, S4DState(ssm))
    g = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    loss = loss + (torch.view_as_real(s.ssm) * torch.randn(*s.ssm.shape, 2, generator=g,
                                                           dtype=y.dtype)).sum()
    loss.backward()
    out = {"x": x.grad, "state": ssm.grad}
    out.update({name: p.grad.clone() for name, p in layer.named_parameters()})
    return out


@pytest.mark.parametrize("T", [7, 63], ids=lambda t: f"T{t}")
def test_gradients_conv_equal_recurrent(T):
    conv = make("conv")
    rec = twin(conv, "recurrent")
    x = torch.randn(2, T, H, dtype=torch.float64)
    s0 = random_state(conv, 2)
    g_c, g_r = grads(conv, x, s0), grads(rec, x, s0)
    assert set(g_c) >= {"x", "state", "log_dt", "A_log_re", "A_im", "B", "C", "D"}
    for name in g_c:
        assert g_c[name].abs().sum() > 0, f"no gradient reaches {name}"
        assert_close(g_c[name], g_r[name], name=f"d/d{name}")


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
def test_gradcheck_input_and_state(mode):
    layer = S4D(2, 4, mode=mode).double()
    x = torch.randn(1, 5, 2, dtype=torch.float64, requires_grad=True)
    ssm = torch.randn(1, 2, 2, dtype=torch.complex128, requires_grad=True)

    def fn(x, ssm):
        y, s = layer(x, S4DState(ssm))
        return y, torch.view_as_real(s.ssm)

    assert torch.autograd.gradcheck(fn, (x, ssm))


def test_initial_state_dtypes_and_float32():
    layer = S4D(H, N)
    s = layer.initial_state(3)
    assert s.ssm.shape == (3, H, N // 2) and s.ssm.dtype == torch.complex64
    assert not s.ssm.abs().any()
    assert layer.initial_state(1, dtype=torch.float64).ssm.dtype == torch.complex128
    y, s2 = layer(torch.randn(3, 10, H), s)
    assert y.dtype == torch.float32 and s2.ssm.dtype == torch.complex64
    y_t, _ = layer.step(torch.randn(3, H), s2)
    assert y_t.shape == (3, H)


def test_bad_inputs_raise_clearly():
    layer = make()
    x = torch.randn(2, 5, H, dtype=torch.float64)
    real_state = S4DState(torch.zeros(2, H, N // 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="complex128"):
        layer(x, real_state)
    with pytest.raises(ValueError, match=r"\(2, 4, 3\)"):
        layer(x, S4DState(torch.zeros(2, H, N, dtype=torch.complex128)))
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 5, H + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="d_model"):
        layer.step(x, layer.initial_state(2))
    with pytest.raises(TypeError, match="S4DState"):
        layer(x, (torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="even"):
        S4D(H, 5)
    with pytest.raises(ValueError, match="mode"):
        S4D(H, N, mode="fft")


def test_build_from_config_and_options():
    cfg = ModelConfig(mixer="s4d", d_model=8, d_state=4,
                      mixer_options={"init": "lin", "mode": "recurrent", "chunk_size": 8})
    layer = build_mixer(cfg, layer_idx=0)
    assert (layer.d_model, layer.n_modes, layer.init, layer.mode) == (8, 2, "lin", "recurrent")
    lam = layer.eigenvalues()
    assert_close(lam.real, torch.full_like(lam.real, -0.5), name="S4D-Lin real part")
    with pytest.raises(ValueError, match="valid options"):
        build_mixer(ModelConfig(mixer="s4d", mixer_options={"bogus": 1}), 0)


def test_parameter_tags_and_dt_range():
    layer = S4D(16, N, dt_min=1e-3, dt_max=0.1)
    tagged = {n for n, p in layer.named_parameters() if is_ssm_param(p)}
    assert tagged == {"log_dt", "A_log_re", "A_im", "B", "D"}
    dt = layer.log_dt.exp()
    assert bool(((dt >= 1e-3) & (dt <= 0.1)).all())
    assert bool((layer.eigenvalues().real < 0).all())


def test_zoh_matches_matrix_exponential():
    """λ̄ and B̄ against expm of the augmented matrix [[λ, B], [0, 0]] Δ (exact ZOH)."""
    layer = make().requires_grad_(False)
    lam_bar, B_bar, _ = layer.discretize(torch.complex128)
    lam = layer.eigenvalues().to(torch.complex128)
    dt = layer.log_dt.exp().to(torch.complex128)
    B = torch.view_as_complex(layer.B).to(torch.complex128)
    for h in range(H):
        for n in range(N // 2):
            aug = torch.tensor([[lam[h, n], B[h, n]], [0, 0]], dtype=torch.complex128)
            e = torch.linalg.matrix_exp(aug * dt[h])
            assert_close(lam_bar[h, n], e[0, 0], name=f"λ̄[{h},{n}]")
            assert_close(B_bar[h, n], e[0, 1], name=f"B̄[{h},{n}]")
