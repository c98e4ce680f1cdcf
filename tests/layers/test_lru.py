"""LRU layer: scan == independent loop == step loop, split invariance, ring init, γ normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_close
from longssm.layers.base import is_ssm_param
from longssm.layers.lru import LRU, LRUState
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer

H, N = 3, 6


def make(**kw):
    torch.manual_seed(0)
    return LRU(H, N, chunk_size=4, **kw).double()


def random_state(layer, batch):
    zeros = layer.initial_state(batch, dtype=torch.float64).ssm
    return LRUState(torch.randn_like(zeros))


def reference(layer, x, h0):
    """Independent loop of the paper's equations, before the GLU output mixing."""
    lam = torch.exp(torch.complex(-layer.nu_log.exp(), layer.theta_log.exp()))  # (N,)
    # γ is its own parameter (log γ), equal to sqrt(1 - |Λ|²) only at initialisation
    gamma = layer.gamma_log.exp()  # (N,)
    B = torch.view_as_complex(layer.B)  # (N, H)
    C = torch.view_as_complex(layer.C)  # (H, N)
    h, ys = h0, []
    for t in range(x.shape[1]):
        h = lam * h + gamma * (x[:, t].to(B.dtype) @ B.T)
        ys.append((h @ C.T).real + layer.D * x[:, t])
    return torch.stack(ys, 1), h


def test_forward_matches_the_paper_equations_and_step_loop():
    layer = make()
    x = torch.randn(2, 17, H, dtype=torch.float64)
    h0 = random_state(layer, 2)
    y, final = layer(x, h0)
    y_ref, h_ref = reference(layer, x, h0.ssm)
    assert_close(y, layer._output(y_ref), name="y")
    assert_close(final.ssm, h_ref, name="state")
    ys, s = [], h0
    for t in range(17):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y, name="step y")
    assert_close(s.ssm, final.ssm, name="step state")


def test_split_sequence_and_gradient_to_initial_state():
    layer = make()
    x = torch.randn(2, 21, H, dtype=torch.float64)
    h0 = LRUState(random_state(layer, 2).ssm.requires_grad_())
    full, final = layer(x, h0)
    pieces, s = [], h0
    for a, b in [(0, 5), (5, 6), (6, 21)]:
        y, s = layer(x[:, a:b], s)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), full, name="y")
    assert_close(s.ssm, final.ssm, name="state")
    (full.sum() + final.ssm.abs().sum()).backward()
    assert h0.ssm.grad.abs().sum() > 0 and layer.nu_log.grad.abs().sum() > 0


def test_ring_init_and_normalisation():
    layer = LRU(4, 2000, r_min=0.4, r_max=0.9, max_phase=math.pi / 10)
    lam = torch.exp(layer.eigenvalues().to(torch.complex128))
    r, phase = lam.abs(), lam.angle()
    assert r.min() >= 0.4 - 1e-6 and r.max() <= 0.9 + 1e-6
    # |Λ|² is uniform on [r_min², r_max²]: its mean is the midpoint
    assert abs((r**2).mean().item() - (0.4**2 + 0.9**2) / 2) < 0.02
    assert phase.min() >= 0 and phase.max() <= math.pi / 10 + 1e-6
    assert_close(
        layer.gamma_log.exp().double(), torch.sqrt(1 - r**2), atol=1e-6, rtol=1e-5, name="γ"
    )


def test_build_from_config_tags_and_validation():
    cfg = ModelConfig(mixer="lru", d_model=8, d_state=5, mixer_options={"r_min": 0.5})
    layer = build_mixer(cfg, 0)
    assert (layer.d_model, layer.d_state) == (8, 5)
    assert layer.initial_state(3).ssm.shape == (3, 5) and layer.initial_state(3).ssm.is_complex()
    tagged = {n for n, p in layer.named_parameters() if is_ssm_param(p)}
    assert tagged == {"nu_log", "theta_log", "gamma_log", "D"}
    with pytest.raises(ValueError, match="valid options"):
        build_mixer(ModelConfig(mixer="lru", mixer_options={"init": "legs"}), 0)
    with pytest.raises(ValueError, match="r_min"):
        LRU(4, 4, r_min=0.9, r_max=0.5)
