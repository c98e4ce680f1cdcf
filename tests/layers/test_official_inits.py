"""The authors' initialisations as options: S5 ``preset=official`` (lindermanlab/S5), Longhorn
``beta_init=official`` (Cranial-XIX/longhorn), S4D's How-to-Train-Your-HiPPO modes and B scale,
and ``step_rescale`` (S4D / S5) — checked against the formulas, not against stored numbers."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_close
from longssm import hippo
from longssm.layers.longhorn import Longhorn
from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5, TRUNC_STD, s5_eigen_init
from longssm.models import ModelConfig
from longssm.models.mixers import MIXERS, S5_OFFICIAL, build_mixer


def official_s5(H=32, P=64, **kw):
    torch.manual_seed(0)
    # the S5 code stores Re Λ directly: eigen_param="direct" (a ModelConfig field, not an option)
    options = {"preset": "official", **kw}
    cfg = ModelConfig(d_model=H, d_state=P, mixer="s5", eigen_param="direct", mixer_options=options)
    return build_mixer(cfg, 0).double()


def test_s5_preset_official_resolves_to_the_authors_defaults():
    opts = MIXERS["s5"].options({"preset": "official", "clip_eigs": True})
    assert opts["blocks"] == 8 and opts["init"] == "block" and opts["activation"] == "half_glu1"
    assert opts["clip_eigs"] is True, "a given option overrides the preset"
    assert {k: MIXERS["s5"].options({"preset": "official"})[k] for k in S5_OFFICIAL} == S5_OFFICIAL
    with pytest.raises(ValueError, match="unknown preset 'nope'; valid presets: \\['official'\\]"):
        MIXERS["s5"].options({"preset": "nope"})
    with pytest.raises(ValueError, match="unknown preset"):
        MIXERS["lru"].options({"preset": "official"})


def test_s5_official_eigenvalues_are_eight_hippo_n_blocks_without_clipping():
    layer = official_s5()
    lam_block, _ = hippo.hippo_n_half(64 // 8)
    assert_close(layer.eigenvalues().detach(), lam_block.repeat(8), atol=1e-6, rtol=1e-6, name="Λ")
    assert not layer.clip_eigs and layer.out2 is not None and layer.out1 is None
    with torch.no_grad():
        layer.Lambda_re.fill_(0.3)
    assert (layer.eigenvalues().real > 0).all(), "no clipping: Re Λ may leave the left half-plane"


def test_s5_official_B_is_lecun_normal_projected_and_C_truncated_normal_times_V():
    H, P = 48, 64
    layer = official_s5(H, P)
    _, V = s5_eigen_init(P, "block", 8)  # (P, P/2)
    B_t = torch.view_as_complex(layer.B.detach())  # (P/2, H)
    # B real and V's other half its conjugate: B = V_full V_full* B = 2 Re(V B̃)
    B = 2 * (V @ B_t).real  # (P, H)
    bound = 2 / math.sqrt(P) / TRUNC_STD
    assert B.abs().max() <= bound + 1e-12, "lecun-normal is truncated at 2σ"
    assert abs(B.var().item() * P - 1) < 0.1, "variance 1/P (fan-in P, as the S5 code)"
    C_t = torch.view_as_complex(layer.C.detach())  # (H, P/2)
    # C complex with Re, Im of variance 1/P each and V's columns unit-norm: E|C̃|² = 2/P
    assert abs((C_t.abs() ** 2).mean().item() * P / 2 - 1) < 0.1
    ours = S5(H, P)
    V_ours = s5_eigen_init(P, "hippo-n", 4)[1]
    B_ours = 2 * (V_ours @ torch.view_as_complex(ours.B.detach().double())).real
    assert abs(B_ours.var().item() * H - 1) < 0.15, "ours: variance 1/H"


def test_s5_activations_follow_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    for act in ("half_glu1", "half_glu2", "full_glu"):
        layer = S5(6, 4, activation=act).double()
        h, _ = layer(x)
        pre = _preactivation(layer, x)
        g = torch.nn.functional.gelu(pre)
        if act == "half_glu1":
            expected = g * torch.sigmoid(layer.out2(g))
        elif act == "half_glu2":
            expected = pre * torch.sigmoid(layer.out2(g))
        else:
            expected = layer.out1(g) * torch.sigmoid(layer.out2(g))
        assert_close(h, expected, name=act)
    with pytest.raises(ValueError, match="activation must be one of"):
        S5(6, 4, activation="relu")


def _preactivation(layer: S5, x: torch.Tensor) -> torch.Tensor:
    """y = 2 Re(C̃ h) + D u by the step loop (independent of forward's scan)."""
    lam_bar, B_bar, C_t = layer.discretize(torch.complex128)
    h = torch.zeros(x.shape[0], layer.n_modes, dtype=torch.complex128)
    ys = []
    for t in range(x.shape[1]):
        h = lam_bar * h + x[:, t].to(torch.complex128) @ B_bar.T
        ys.append(2 * (h @ C_t.T).real + layer.D * x[:, t])
    return torch.stack(ys, 1)


def test_longhorn_official_zeroes_every_linear_bias_so_beta_starts_near_half():
    torch.manual_seed(0)
    layer = Longhorn(32, 8, bias=True, beta_init="official").double()
    for module in (layer.in_proj, layer.dt_proj, layer.out_proj):
        assert module.bias.abs().max() == 0
    x = torch.randn(4, 20, layer.d_inner, dtype=torch.float64)
    beta, _, _ = layer._ssm_inputs(x)
    assert abs(beta.mean().item() - 0.5) < 0.05 and 0.05 < beta.min() and beta.max() < 0.95
    torch.manual_seed(0)
    ours = Longhorn(32, 8).double()
    beta0 = torch.sigmoid(ours.dt_proj.bias)
    assert beta0.min() >= 1e-3 - 1e-12 and beta0.max() <= 0.1 + 1e-12
    with pytest.raises(ValueError, match="beta_init must be one of"):
        Longhorn(8, 4, beta_init="zero")


def test_s4d_httyh_init_modes_and_b_options():
    n = 6
    k = torch.arange(n, dtype=torch.float64)
    assert_close(hippo.diag_init("inv2", n).imag, (n / math.pi) * (n / (k + 1) - 1), name="inv2")
    assert_close(hippo.diag_init("quad", n).imag, (2 * k + 1) ** 2 / math.pi, name="quad")
    assert (hippo.diag_init("quad", n).real == -0.5).all()
    alt = hippo.diag_b_init("alternating", n).real
    assert alt.tolist() == [1, -1, 1, -1, 1, -1]
    cw, ccw = hippo.diag_b_init("unit-cw", n), hippo.diag_b_init("unit-ccw", n)
    assert_close(cw.abs(), torch.ones(n, dtype=torch.float64), name="|unit-cw|")
    assert_close(cw, ccw.conj(), name="cw = conj(ccw)")
    assert_close(cw[1], torch.exp(torch.tensor(-1j * math.pi / n, dtype=torch.complex128)), name="z")
    layer = S4D(3, 2 * n, init="lin", real_scale=2.0, imag_scale=0.5, b_init="legs", b_scale=0.5)
    lam = layer.eigenvalues().detach().to(torch.complex128)
    assert_close(lam[0], torch.complex(-1.0 + 0 * k, 0.5 * math.pi * k), atol=1e-6, rtol=1e-6, name="λ")
    B = torch.view_as_complex(layer.B.detach().double().contiguous())[0]
    assert_close(B, 0.5 * hippo.s4d_legs_B(n), atol=1e-6, rtol=1e-6, name="½ V*B")
    with pytest.raises(ValueError, match="b_init must be auto or one of"):
        S4D(3, 4, b_init="ones")


@pytest.mark.parametrize("cls", [S4D, S5])
def test_step_rescale_scalar_and_per_step(cls):
    torch.manual_seed(0)
    layer = cls(4, 6).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    y1, s1 = layer(x)
    layer.step_rescale = torch.ones(9, dtype=torch.float64)
    y_ones, s_ones = layer(x)
    assert_close(y_ones, y1, name="per-step ones == default")
    assert_close(s_ones.ssm, s1.ssm, name="state")
    layer.step_rescale = 2.0
    y2, _ = layer(x)
    layer.step_rescale = torch.full((9,), 2.0, dtype=torch.float64)
    assert_close(layer(x)[0], y2, name="per-step 2 == scalar 2")
    assert (y2 - y1).abs().max() > 1e-6
    r = torch.rand(9, dtype=torch.float64) + 0.5
    layer.step_rescale = r
    y_r, _ = layer(x)
    layer.step_rescale = r[:4]
    with pytest.raises(ValueError, match="step_rescale has 4 steps"):
        layer(x)
    # the first output depends only on step 0's factor
    layer.step_rescale = float(r[0])
    assert_close(layer(x[:, :1])[0][:, 0], y_r[:, 0], name="t=0")
