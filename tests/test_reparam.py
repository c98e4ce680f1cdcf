"""StableSSM reparameterisations: inverses, derivatives, and layers built with every map."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.interop.hf_mamba import state_dict_from_hf_mamba
from longssm.layers.base import is_ssm_param
from longssm.layers.mamba import Mamba
from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer
from longssm.reparam import DIRECT_EPS, EIGEN_PARAMS, eigen_real, eigen_real_inverse

B_TEST = 0.2


def closed_form_derivative(w: torch.Tensor, kind: str, b: float, eps: float = 1e-4) -> torch.Tensor:
    """dλ/dw of each map, written out by hand."""
    if kind == "direct":
        return (w < -eps).to(w.dtype)
    if kind == "exp":
        return -torch.exp(w)
    if kind == "softplus":
        return -torch.sigmoid(w)
    return 2 * w / (w * w + b) ** 2


@pytest.mark.parametrize("kind", EIGEN_PARAMS)
def test_inverse_recovers_the_eigenvalues(kind):
    # spans the range of the inits: S4D/S5 at -0.5, Mamba's -(1..N), slow modes near 0
    lam = -torch.cat([torch.tensor([0.5, 1.0, 4.0, 1e-3]), torch.rand(50) * 5 + 1e-3]).double()
    w = eigen_real_inverse(lam, kind, B_TEST)
    assert_close(eigen_real(w, kind, B_TEST), lam, name=kind)


@pytest.mark.parametrize("kind", EIGEN_PARAMS)
def test_autograd_matches_the_closed_form_derivative(kind):
    w = torch.cat([torch.linspace(-4, 3, 29), torch.tensor([-1e-5, 0.0, 1e-5])]).double()
    w.requires_grad_()
    (grad,) = torch.autograd.grad(eigen_real(w, kind, B_TEST).sum(), w)
    assert_close(grad, closed_form_derivative(w.detach(), kind, B_TEST), name=kind)


def test_maps_are_negative_and_best_is_bounded():
    w = torch.linspace(-30, 30, 201).double()
    for kind in EIGEN_PARAMS:
        assert bool((eigen_real(w, kind, 0.5) < 0).all()), kind
    assert eigen_real(w, "best", 0.5).min() >= -2.0
    with pytest.raises(ValueError, match="eigen_param_b <= 0.25"):
        eigen_real_inverse(-torch.arange(1.0, 5.0), "best", 0.5)
    with pytest.raises(ValueError, match="< 0"):
        eigen_real_inverse(torch.tensor([-1.0, 0.0]), "exp")
    with pytest.raises(ValueError, match="eigen_param must be one of"):
        eigen_real_inverse(torch.tensor([-1.0]), "tanh")


LAYERS = {
    "mamba": lambda kind: Mamba(6, d_state=4, d_conv=3, eigen_param=kind, eigen_param_b=B_TEST),
    "s4d": lambda kind: S4D(6, d_state=8, mode="recurrent", eigen_param=kind, eigen_param_b=B_TEST),
    "s5": lambda kind: S5(6, d_state=8, eigen_param=kind, eigen_param_b=B_TEST),
}
RAW_NAMES = {
    "mamba": {"exp": "A_log", "direct": "A_direct", "softplus": "A_softplus", "best": "A_best"},
    "s4d": {
        "exp": "A_log_re",
        "direct": "A_re_direct",
        "softplus": "A_re_softplus",
        "best": "A_re_best",
    },
    "s5": {
        "direct": "Lambda_re",
        "exp": "Lambda_re_exp",
        "softplus": "Lambda_re_softplus",
        "best": "Lambda_re_best",
    },
}


@pytest.mark.parametrize("kind", EIGEN_PARAMS)
@pytest.mark.parametrize("family", list(LAYERS))
def test_layer_with_each_map_starts_at_the_direct_eigenvalues_and_steps(family, kind):
    torch.manual_seed(0)
    direct = LAYERS[family]("direct").double()
    torch.manual_seed(0)
    layer = LAYERS[family](kind).double()
    assert_close(
        layer.eigenvalues(), direct.eigenvalues(), atol=1e-6, rtol=1e-5, name="eigenvalues"
    )
    raw = dict(layer.named_parameters())[RAW_NAMES[family][kind]]
    assert is_ssm_param(raw)

    x = torch.randn(2, 11, 6, dtype=torch.float64)
    y, final = layer(x)
    ys, state = [], layer.initial_state(2, dtype=torch.float64)
    for t in range(11):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y, name="step y")
    for got, want in zip(state, final):
        assert_close(got, want, name="state")
    # the map is in the graph: the loss reaches the raw parameter
    y.pow(2).sum().backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0


def test_model_config_selects_and_validates_the_map():
    cfg = ModelConfig(mixer="s4d", d_model=4, d_state=4, eigen_param="softplus")
    layer = build_mixer(cfg, 0)
    assert layer.eigen_param == "softplus" and hasattr(layer, "A_re_softplus")
    assert not hasattr(layer, "A_log_re")
    mamba = build_mixer(
        ModelConfig(d_model=4, d_state=2, eigen_param="best", eigen_param_b=0.4), 0
    )
    assert mamba.eigen_param_b == 0.4 and "A_best" in dict(mamba.named_parameters())
    with pytest.raises(ValueError, match="eigen_param must be one of"):
        ModelConfig(eigen_param="sigmoid")
    with pytest.raises(ValueError, match="eigen_param_b"):
        ModelConfig(eigen_param_b=0.0)
    with pytest.raises(ValueError, match="eigen_param_b <="):
        build_mixer(ModelConfig(d_model=4, d_state=16, eigen_param="best"), 0)


def test_hf_interop_refuses_maps_other_than_exp():
    cfg = ModelConfig(d_model=4, d_state=2, eigen_param="softplus")
    with pytest.raises(ValueError, match="eigen_param='exp'"):
        state_dict_from_hf_mamba({}, cfg)


def test_s4d_unclipped_direct_lets_an_eigenvalue_cross_zero():
    """``clip_eigs=False`` (the StableSSM experiment): Re λ = w exactly, also for w >= 0, so the
    recurrence can grow; the default clips at -DIRECT_EPS with no gradient through the clip."""
    clipped = S4D(4, 4, eigen_param="direct").double()
    free = S4D(4, 4, eigen_param="direct", clip_eigs=False).double()
    free.load_state_dict(clipped.state_dict())
    with torch.no_grad():
        for layer in (clipped, free):
            layer.A_re_raw[0, 0] = 0.05
    assert clipped.eigenvalues().real.max().item() == -DIRECT_EPS
    assert free.eigenvalues().real[0, 0].item() == 0.05
    torch.testing.assert_close(free.eigenvalues().real[1:], clipped.eigenvalues().real[1:])
    free.eigenvalues().real[0, 0].backward()
    assert free.A_re_raw.grad[0, 0] == 1.0
    lam_bar = free.discretize(torch.complex128)[0]
    assert lam_bar.abs().max() > 1  # |exp(Δλ)| > 1: unstable
