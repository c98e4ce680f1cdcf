"""Longhorn layer: scan forms agree, split-sequence invariance, step loop == forward, options."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.layers.base import is_ssm_param
from longssm.layers.longhorn import Longhorn, LonghornState
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer

D_MODEL = 8


def make(d_conv=4, **kw):
    torch.manual_seed(0)
    return Longhorn(D_MODEL, d_state=4, expand=2, d_conv=d_conv, chunk_size=8, **kw).double()


def random_state(layer, batch):
    zeros = layer.initial_state(batch, dtype=torch.float64)
    return LonghornState(*(torch.randn_like(t) for t in zeros))


@pytest.mark.parametrize("d_conv", [0, 4], ids=["noconv", "conv4"])
def test_split_sequence_with_carried_state_equals_one_pass(d_conv):
    layer = make(d_conv)
    x = torch.randn(2, 29, D_MODEL, dtype=torch.float64)
    state = random_state(layer, 2)
    full, final = layer(x, state)
    pieces, s = [], state
    for a, b in [(0, 1), (1, 9), (9, 10), (10, 29)]:
        y, s = layer(x[:, a:b], s)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), full, name="y")
    for got, want, name in zip(s, final, LonghornState._fields):
        assert_close(got, want, name=name)


@pytest.mark.parametrize("d_conv", [0, 4], ids=["noconv", "conv4"])
def test_step_loop_equals_forward_and_naive_scan(d_conv):
    layer = make(d_conv)
    x = torch.randn(3, 13, D_MODEL, dtype=torch.float64)
    state = random_state(layer, 3)
    full, final = layer(x, state)
    ys, s = [], state
    for t in range(13):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), full, name="step y")
    assert_close(s.ssm, final.ssm, name="step ssm")
    assert_close(s.conv, final.conv, name="step conv")
    layer.scan = "naive"
    naive, naive_final = layer(x, state)
    assert_close(naive, full, name="naive y")
    assert_close(naive_final.ssm, final.ssm, name="naive ssm")


def test_gradient_reaches_the_initial_state_and_parameters():
    layer = make()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    state = LonghornState(*(t.requires_grad_() for t in random_state(layer, 2)))
    y, final = layer(x, state)
    (y.pow(2).sum() + final.ssm.sum()).backward()
    assert state.ssm.grad.abs().sum() > 0 and state.conv.grad.abs().sum() > 0
    assert layer.dt_proj.bias.grad.abs().sum() > 0 and layer.D.grad.abs().sum() > 0


def test_beta_is_initialised_in_range_and_tags():
    layer = Longhorn(16, d_state=4, beta_min=0.01, beta_max=0.2)
    beta = torch.sigmoid(layer.dt_proj.bias.detach())
    assert bool(((beta >= 0.01 - 1e-6) & (beta <= 0.2 + 1e-6)).all())
    tagged = {n for n, p in layer.named_parameters() if is_ssm_param(p)}
    assert tagged == {"dt_proj.bias", "D"}


def test_build_from_config_and_validation():
    cfg = ModelConfig(
        mixer="longhorn",
        d_model=8,
        d_state=4,
        expand=3,
        d_conv=0,
        mixer_options={"scan": "naive", "dt_rank": 2},
    )
    layer = build_mixer(cfg, 0)
    assert (layer.d_inner, layer.d_state, layer.dt_rank, layer.scan, layer.conv1d) == (
        24,
        4,
        2,
        "naive",
        None,
    )
    assert layer.initial_state(5).conv.shape == (5, 24, 0)
    with pytest.raises(ValueError, match="valid options"):
        build_mixer(ModelConfig(mixer="longhorn", mixer_options={"dt_min": 0.1}), 0)
    with pytest.raises(ValueError, match="scan"):
        Longhorn(8, scan="triton")
    with pytest.raises(ValueError, match="beta_min"):
        Longhorn(8, beta_min=0.5, beta_max=0.1)
    layer = make()
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(2, 3, D_MODEL, dtype=torch.float64), layer.initial_state(3))


def test_fused_scan_equals_chunk_and_auto_picks_fused_on_cpu():
    pytest.importorskip("numba")
    layer = make()
    x = torch.randn(2, 45, D_MODEL, dtype=torch.float64, requires_grad=True)
    state = LonghornState(*(t.requires_grad_() for t in random_state(layer, 2)))
    outs = {}
    for scan in ("chunk", "fused", "auto"):
        layer.scan = scan
        layer.zero_grad()
        y, final = layer(x, state)
        loss = y.pow(2).sum() + final.ssm.sum()
        leaves = [x, state.ssm, state.conv, *layer.parameters()]
        outs[scan] = (y, final.ssm, *torch.autograd.grad(loss, leaves))
    for scan in ("fused", "auto"):
        for i, (got, want) in enumerate(zip(outs[scan], outs["chunk"])):
            assert_close(got, want, name=f"{scan} vs chunk, output/grad {i}")
