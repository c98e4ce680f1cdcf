"""S5 layer: scan == step loop == a dense real-state reference, split invariance, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from longssm import hippo
from longssm.layers.base import is_ssm_param
from longssm.layers.s5 import S5, S5State
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer

H, P = 3, 8


def make(discretization="zoh", **kw):
    return S5(H, P, discretization=discretization, **kw).double()


def random_state(layer, batch):
    zeros = layer.initial_state(batch, dtype=torch.float64).ssm
    return S5State(torch.randn_like(zeros))


def run_steps(layer, x, state):
    ys = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


def naive_reference(layer, x, h0):
    """Independent loop with the full conjugate-pair state (P modes, no 2 Re trick)."""
    lam_bar, B_bar, C_t = layer.discretize(torch.complex128)
    lam_full = torch.cat([lam_bar, lam_bar.conj()])  # (P,)
    B_full = torch.cat([B_bar, B_bar.conj()])  # (P, H)
    C_full = torch.cat([C_t, C_t.conj()], dim=1)  # (H, P)
    h = torch.cat([h0, h0.conj()], dim=1)  # (B, P)
    ys = []
    for t in range(x.shape[1]):
        h = lam_full * h + x[:, t].to(torch.complex128) @ B_full.T
        y = h @ C_full.T
        assert y.imag.abs().max() < 1e-10
        ys.append(F.gelu(y.real + layer.D * x[:, t]))
    return torch.stack(ys, 1), h[:, : P // 2]


DISC = ["zoh", "bilinear"]


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("disc", DISC)
@pytest.mark.parametrize("T", [1, 7, 63, 300], ids=lambda t: f"T{t}")
def test_forward_equals_naive(T, disc, with_state):
    layer = make(disc)
    x = torch.randn(2, T, H, dtype=torch.float64)
    s0 = random_state(layer, 2) if with_state else layer.initial_state(2, dtype=torch.float64)
    y, s = layer(x, s0 if with_state else None)
    y_ref, s_ref = naive_reference(layer, x, s0.ssm)
    assert_close(y, y_ref, name="y")
    assert_close(s.ssm, s_ref, name="final state")


@pytest.mark.parametrize("disc", DISC)
@pytest.mark.parametrize("T", [1, 7, 63], ids=lambda t: f"T{t}")
def test_forward_equals_step_loop(T, disc):
    layer = make(disc, init="block", blocks=2)
    x = torch.randn(2, T, H, dtype=torch.float64)
    s0 = random_state(layer, 2)
    y, s = layer(x, s0)
    y_ref, s_ref = run_steps(layer, x, s0)
    assert_close(y, y_ref, name="y")
    assert_close(s.ssm, s_ref.ssm, name="state")


@pytest.mark.parametrize("disc", DISC)
def test_split_sequence_and_prefill_then_step(disc):
    layer = make(disc, chunk_size=8)
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


def grads(layer, x, s0, fn):
    x, ssm = x.clone().requires_grad_(), s0.ssm.clone().requires_grad_()
    layer.zero_grad()
    y, s = fn(layer, x, S5State(ssm))
    g = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    loss = loss + (torch.view_as_real(s.ssm) * torch.randn(*s.ssm.shape, 2, generator=g,
                                                           dtype=y.dtype)).sum()
    loss.backward()
    out = {"x": x.grad, "state": ssm.grad}
    out.update({name: p.grad.clone() for name, p in layer.named_parameters()})
    return out


@pytest.mark.parametrize("disc", DISC)
@pytest.mark.parametrize("T", [7, 63], ids=lambda t: f"T{t}")
def test_gradients_equal_step_loop(T, disc):
    layer = make(disc, chunk_size=16)
    x = torch.randn(2, T, H, dtype=torch.float64)
    s0 = random_state(layer, 2)
    g_f = grads(layer, x, s0, lambda m, x, s: m(x, s))
    g_s = grads(layer, x, s0, run_steps)
    assert set(g_f) >= {"x", "state", "log_dt", "Lambda_re", "Lambda_im", "B", "C", "D"}
    for name in g_f:
        assert g_f[name].abs().sum() > 0, f"no gradient reaches {name}"
        assert_close(g_f[name], g_s[name], name=f"d/d{name}")


@pytest.mark.parametrize("disc", DISC)
def test_gradcheck_input_and_state(disc):
    layer = S5(2, 4, discretization=disc).double()
    x = torch.randn(1, 5, 2, dtype=torch.float64, requires_grad=True)
    ssm = torch.randn(1, 2, dtype=torch.complex128, requires_grad=True)

    def fn(x, ssm):
        y, s = layer(x, S5State(ssm))
        return y, torch.view_as_real(s.ssm)

    assert torch.autograd.gradcheck(fn, (x, ssm))


def test_clip_eigs_keeps_dynamics_stable():
    layer = make(clip_eigs=True)
    with torch.no_grad():
        layer.Lambda_re[:2] = torch.tensor([0.5, 0.0])
    lam = layer.eigenvalues()
    assert bool((lam.real <= -1e-4).all())
    for disc in DISC:
        layer.discretization = disc
        lam_bar, _, _ = layer.discretize(torch.complex128)
        assert bool((lam_bar.abs() < 1).all()), disc
    x = torch.randn(1, 2000, H, dtype=torch.float64)
    assert torch.isfinite(layer(x)[0]).all()
    layer.clip_eigs = False
    assert layer.eigenvalues().real.max() == 0.5
    assert layer.discretize(torch.complex128)[0].abs().max() > 1


def test_inits():
    lam_n, _ = hippo.hippo_n_half(P)
    layer = S5(H, P, init="hippo-n")
    assert_close(layer.eigenvalues().to(torch.complex128), lam_n.real.clamp(max=-1e-4) + 1j * lam_n.imag,
                 atol=1e-6, rtol=1e-6, name="hippo-n Λ")
    block = S5(H, P, init="block", blocks=2)
    lam_b, _ = hippo.hippo_n_half(P // 2)
    assert_close(block.eigenvalues().to(torch.complex128), lam_b.repeat(2), atol=1e-6, rtol=1e-6, name="block")
    with pytest.raises(ValueError, match="blocks"):
        S5(H, P, init="block", blocks=3)


def test_initial_state_dtypes_and_float32():
    layer = S5(H, P)
    s = layer.initial_state(3)
    assert s.ssm.shape == (3, P // 2) and s.ssm.dtype == torch.complex64
    assert not s.ssm.abs().any()
    assert layer.initial_state(1, dtype=torch.float64).ssm.dtype == torch.complex128
    y, s2 = layer(torch.randn(3, 10, H), s)
    assert y.dtype == torch.float32 and s2.ssm.dtype == torch.complex64


def test_bad_inputs_raise_clearly():
    layer = make()
    x = torch.randn(2, 5, H, dtype=torch.float64)
    with pytest.raises(TypeError, match="complex128"):
        layer(x, S5State(torch.zeros(2, P // 2, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        layer(x, S5State(torch.zeros(2, P, dtype=torch.complex128)))
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 5, H + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="d_model"):
        layer.step(x, None)
    with pytest.raises(ValueError, match="discretization"):
        S5(H, P, discretization="euler")
    with pytest.raises(ValueError, match="even"):
        S5(H, 7)


def test_build_from_config_and_tags():
    cfg = ModelConfig(mixer="s5", d_model=8, d_state=8, eigen_param="direct",
                      mixer_options={"discretization": "bilinear", "clip_eigs": False})
    layer = build_mixer(cfg, layer_idx=1)
    assert (layer.d_model, layer.n_modes, layer.discretization, layer.clip_eigs) == (
        8, 4, "bilinear", False)
    with pytest.raises(ValueError, match="valid options"):
        build_mixer(ModelConfig(mixer="s5", mixer_options={"mode": "conv"}), 0)
    tagged = {n for n, p in layer.named_parameters() if is_ssm_param(p)}
    assert tagged == {"Lambda_re", "Lambda_im", "log_dt", "B", "D"}


@pytest.mark.parametrize("disc", DISC)
def test_discretization_matches_dense_formulas(disc):
    """λ̄, B̄ against dense-matrix definitions: ZOH via expm of [[Λ, B], [0, 0]] Δ; bilinear via
    (I - ΔΛ/2)^-1 (I + ΔΛ/2) and (I - ΔΛ/2)^-1 Δ B."""
    layer = make(disc)
    lam_bar, B_bar, _ = layer.discretize(torch.complex128)
    lam = layer.eigenvalues().to(torch.complex128)
    dt = layer.log_dt.exp().to(torch.complex128)
    B_t = torch.view_as_complex(layer.B).to(torch.complex128)
    n = lam.shape[0]
    for i in range(n):
        if disc == "zoh":
            aug = torch.zeros(1 + H, 1 + H, dtype=torch.complex128)
            aug[0, 0], aug[0, 1:] = lam[i], B_t[i]
            e = torch.linalg.matrix_exp(aug * dt[i])
            want_lam, want_B = e[0, 0], e[0, 1:]
        else:
            left = 1 - dt[i] * lam[i] / 2
            want_lam = torch.linalg.solve(left.view(1, 1), (1 + dt[i] * lam[i] / 2).view(1, 1))[0, 0]
            want_B = torch.linalg.solve(left.view(1, 1), (dt[i] * B_t[i]).view(1, H))[0]
        assert_close(lam_bar[i], want_lam, name=f"λ̄[{i}]")
        assert_close(B_bar[i], want_B, name=f"B̄[{i}]")
